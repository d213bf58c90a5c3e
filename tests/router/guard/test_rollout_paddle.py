"""The SLO guard and ramp of the real router process, in front of real Paddle Serving servers.

Short SLO settings (checks every 0.5-1 s over 2-5 s) keep each test to seconds. The fault is
real: the treatment's whole server process group is stopped with SIGSTOP. The shared demo
servers (`paddle_backends`) are never stopped here; the fault test starts its own treatment.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import aiohttp
import pytest
import pytest_asyncio

from router.experiment.assign import bucket
from router.guard.agreement import same_top_class
from tests.conftest import Backend, BackendFactory
from tests.router.guard.real import (
    AUTH,
    ROUTE,
    SALT,
    TOKEN,
    TOKEN_ENV,
    Load,
    Router,
    epoch,
    failures,
    metric_value,
    paddle_registry,
    units_in,
)
from tests.support import demo_request, eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

# A limit the healthy demo model on a busy 2-core machine keeps, and the one it never can.
LENIENT_P99_MS = 5000
IMPOSSIBLE_P99_MS = 0.001


class MakeRouter(Protocol):
    def __call__(
        self,
        control: str,
        treatment: str,
        experiment: dict[str, Any],
        treatment_timeout_ms: Optional[int] = None,
    ) -> Router: ...


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # The router process inherits the environment: this is its admin token.
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as client:
        yield client


@pytest.fixture
def make_router(tmp_path: Path) -> Iterator[MakeRouter]:
    """`make_router(control_url, treatment_url, experiment_patch)`: a started router on the
    demo experiment in tmp_path; stopped at the end if still running."""
    made: list[Router] = []

    def make(
        control: str,
        treatment: str,
        experiment: dict[str, Any],
        treatment_timeout_ms: Optional[int] = None,
    ) -> Router:
        raw = paddle_registry(tmp_path, control, treatment, experiment)
        if treatment_timeout_ms is not None:
            raw["backends"]["sentiment-v2"]["timeout_ms"] = treatment_timeout_ms
        router = Router(tmp_path, raw)
        made.append(router)
        return router.start()

    yield make
    for router in made:
        if router.running:
            router.stop()


def demo_urls(backends: dict[str, Backend]) -> tuple[str, str]:
    return backends["sentiment-v1"].url, backends["sentiment-v2"].url


def slo(interval: str, window: str, min_samples: int, failed_checks: int, p99_ms: float) -> Any:
    return {
        "interval": interval, "window": window, "min_samples": min_samples,
        "failed_checks": failed_checks, "p99_ms": p99_ms, "error_rate": 0.05,
    }  # fmt: skip


# --- 1. a real fault ---------------------------------------------------------------------------


async def test_a_stopped_treatment_is_rolled_back_in_time_and_no_client_sees_an_error(
    demo_models: Path,
    paddle_backends: dict[str, Backend],
    paddle_backend_factory: BackendFactory,
    make_router: MakeRouter,
    session: aiohttp.ClientSession,
) -> None:
    treatment = paddle_backend_factory(demo_models / "sentiment_v2")
    interval_s, failed_checks = 1.0, 2
    # A stopped server accepts connections and never answers: each call times out at 300 ms.
    router = make_router(
        paddle_backends["sentiment-v1"].url,
        treatment.url,
        {"slo": slo("1s", "3s", min_samples=10, failed_checks=failed_checks, p99_ms=250)},
        treatment_timeout_ms=300,
    )
    try:
        load = Load(session, router.url + ROUTE, rate=40, prefix="sigstop").start()
        # Healthy first: a passing check with the treatment's calls in the window.
        await router.wait_for(session, lambda s: s["slo"]["check"] == "pass", timeout=15)
        treatment.suspend()
        fault = time.time()
        seen = await router.wait_for(session, lambda s: s["status"] == "rolled_back", timeout=10)
        await load.answered(40, sent_after=seen + 0.1)
        answers = await load.stop()
    finally:
        treatment.stop()  # SIGCONT, then SIGTERM to its process group
    assert router.stop() == 0

    [record] = [d for d in router.decisions() if d["action"] == "rollback"]
    decided_at = epoch(record["ts"])
    bound = interval_s * failed_checks + interval_s
    print(
        f"\nrollback decided {decided_at - fault:.2f} s after SIGSTOP, seen in /experiments "
        f"after {seen - fault:.2f} s (bound {bound:.1f} s): {record['reason']}"
    )
    assert record["actor"] == "slo" and record["check"] == "fail"
    assert record["traffic"] == 0 and record["previous_traffic"] == 50
    assert 0 < decided_at - fault <= bound
    assert seen - fault <= bound + 0.5  # polled every 50 ms
    # Nobody saw an error: treatment users got control's answer while the guard decided ...
    assert failures(answers) == []
    hidden = [a for a in answers if fault < a.started < decided_at and a.variant == "treatment"]
    assert hidden and all(a.fallback is True and a.version == "legacy_v1" for a in hidden)
    # ... and after the rollback every enrolled unit is on control, no fallback needed.
    after = [a for a in answers if a.started > decided_at + 0.1]
    assert len(after) >= 40
    assert all(a.variant == "control" and a.fallback is False and a.enrolled for a in after)
    assert any(bucket(SALT, a.unit) < 5000 for a in after)  # units the treatment had
    assert router.saved_state()["status"] == "rolled_back"


# --- 2. restart, resume, revision ----------------------------------------------------------------


async def test_a_rollback_survives_a_restart_until_resumed_or_a_new_revision(
    paddle_backends: dict[str, Backend], make_router: MakeRouter, session: aiohttp.ClientSession
) -> None:
    lenient = slo("500ms", "2s", min_samples=5, failed_checks=2, p99_ms=LENIENT_P99_MS)
    router = make_router(*demo_urls(paddle_backends), {"slo": lenient})
    units = units_in("treatment", 8) + units_in("control", 8)
    assigned = ["treatment"] * 8 + ["control"] * 8
    assert await router.variants(session, units) == assigned

    # The treatment breaks its SLO (a limit no model meets): the guard rolls it back.
    router.edit({"slo": {**lenient, "p99_ms": IMPOSSIBLE_P99_MS}})
    load = Load(session, router.url + ROUTE, rate=30, prefix="restart").start()
    await router.wait_for(session, lambda s: s["status"] == "rolled_back", timeout=10)
    assert failures(await load.stop()) == []
    assert router.stop() == 0
    assert router.saved_state()["status"] == "rolled_back"

    # The limit is fixed while the router is down; the saved rollback still wins.
    router.edit({"slo": lenient})
    router.start()
    state = await router.state(session)
    assert (state["status"], state["traffic"]) == ("rolled_back", 0)
    assert await router.variants(session, units) == ["control"] * 16
    status, body = await router.admin(session, "resume")
    assert status == 200 and body["experiment"]["status"] == "running"
    assert await router.variants(session, units) == assigned  # the same units, same arms

    # Rolled back by an operator, then a new revision starts over: the same units again.
    assert (await router.admin(session, "rollback"))[0] == 200
    assert await router.variants(session, units) == ["control"] * 16
    router.edit({"revision": 2})
    await router.wait_for(session, lambda s: s["status"] == "running", timeout=10)
    assert await router.variants(session, units) == assigned
    assert router.stop() == 0

    records = router.decisions()
    starts = [d for d in records if d["reason"].startswith("router started")]
    assert [d["status"] for d in starts] == ["running", "rolled_back"]
    [revision] = [d for d in records if d["revision"] == 2 and d["actor"] == "config"]
    assert (revision["action"], revision["status"], revision["traffic"]) == (
        "resume",
        "running",
        50,
    )
    assert [d["action"] for d in records if d["actor"] == "admin"] == ["resume", "rollback"]
    assert router.saved_state()["revision"] == 2


# --- 3. the ramp -----------------------------------------------------------------------------


async def test_a_healthy_treatment_ramps_through_its_steps(
    paddle_backends: dict[str, Backend], make_router: MakeRouter, session: aiohttp.ClientSession
) -> None:
    router = make_router(
        *demo_urls(paddle_backends),
        {
            "traffic": 10,
            "ramp": {"steps": [10, 25, 50, 100], "every": "1s", "min_samples": 5},
            "slo": slo("500ms", "2s", min_samples=5, failed_checks=2, p99_ms=LENIENT_P99_MS),
        },
    )
    load = Load(session, router.url + ROUTE, rate=40, prefix="ramp").start()
    try:
        at_full = await router.wait_for(session, lambda s: s["traffic"] == 100, timeout=20)
        await load.answered(20, sent_after=at_full + 0.1)  # the last step's users
    finally:
        answers = await load.stop()
    state = await router.state(session)
    assert router.stop() == 0

    assert failures(answers) == []
    assert state["status"] == "running" and state["ramp"]["step"] == 3
    assert state["ramp"]["next_step"] is None
    advances = [d for d in router.decisions() if d["action"] == "advance"]
    assert [(d["previous_traffic"], d["traffic"]) for d in advances] == [
        (10, 25), (25, 50), (50, 100),
    ]  # fmt: skip
    assert all(d["actor"] == "ramp" and d["check"] == "pass" for d in advances)
    times = [epoch(router.decisions()[0]["ts"])] + [epoch(d["ts"]) for d in advances]
    # `every` apart (timestamps are truncated to milliseconds)
    assert all(later - earlier >= 0.99 for earlier, later in zip(times, times[1:]))
    # Users followed each step exactly: treatment iff the unit's bucket is below the traffic.
    shares = []
    steps = [10, *(d["traffic"] for d in advances)]
    for traffic, start, end in zip(steps, times, [*times[1:], time.time()]):
        seen = [a for a in answers if start + 0.1 < a.started < end - 0.05]
        assert len(seen) >= 10
        assert all(
            (a.variant == "treatment") == (bucket(SALT, a.unit) < traffic * 100) for a in seen
        )
        shares.append(round(sum(a.variant == "treatment" for a in seen) / len(seen), 2))
    print(f"\nramp {steps}: treatment share of the load per step {shares}")


# --- 4. too little traffic ------------------------------------------------------------------


async def test_low_traffic_stays_inconclusive_and_never_acts(
    paddle_backends: dict[str, Backend], make_router: MakeRouter, session: aiohttp.ClientSession
) -> None:
    # One conclusive check acts (failed_checks 1): a pass would advance the ramp at once, a
    # fail roll back. Below min_samples neither may happen, whatever the limits say.
    lenient = slo("500ms", "2s", min_samples=40, failed_checks=1, p99_ms=LENIENT_P99_MS)
    router = make_router(
        *demo_urls(paddle_backends),
        {"ramp": {"steps": [50, 100], "every": "500ms", "min_samples": 0}, "slo": lenient},
    )

    def slo_checks() -> list[dict[str, Any]]:
        return [d for d in router.decisions() if d["actor"] == "slo"]

    def checked(times: int) -> Callable[[], bool]:
        return lambda: len(slo_checks()) >= times

    answers = []
    for phase, limit in enumerate((LENIENT_P99_MS, IMPOSSIBLE_P99_MS), start=1):
        router.edit({"slo": {**lenient, "p99_ms": limit}})
        load = Load(session, router.url + ROUTE, rate=4, prefix=f"quiet-{limit}").start()
        # Four checks under each limit (every 500 ms), however long the machine takes for them.
        await eventually(checked(4 * phase), timeout=30)
        answers += await load.stop()
    state = await router.state(session)
    checks = [d for d in router.decisions() if d["actor"] == "slo"]
    assert failures(answers) == []
    assert len(checks) >= 8
    assert all(d["check"] == "inconclusive" and d["action"] == "none" for d in checks)
    assert all(d["measured"]["samples"] < 40 for d in checks)
    assert not [d for d in router.decisions() if d["actor"] == "ramp"]
    assert (state["status"], state["traffic"]) == ("running", 50)
    assert state["slo"]["check"] == "inconclusive"

    # The same registry with enough calls acts at once: the quiet phase was a real test.
    load = Load(session, router.url + ROUTE, rate=60, prefix="busy").start()
    await router.wait_for(session, lambda s: s["status"] == "rolled_back", timeout=10)
    assert failures(await load.stop()) == []
    assert router.stop() == 0


# --- 5. the admin API --------------------------------------------------------------------------


async def test_admin_actions_and_the_override_on_the_real_router(
    paddle_backends: dict[str, Backend], make_router: MakeRouter, session: aiohttp.ClientSession
) -> None:
    router = make_router(*demo_urls(paddle_backends), {})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, body = await router.admin(session, "rollback", headers=headers)
        assert (status, body["code"]) == (401, "unauthorized")
    assert (await router.state(session))["status"] == "running"

    controls = units_in("control", 6)
    for action, status_after in [
        ("pause", "paused"), ("resume", "running"), ("rollback", "rolled_back"),
        ("resume", "running"), ("promote", "promoted"),
    ]:  # fmt: skip
        status, body = await router.admin(session, action)
        assert status == 200 and body["experiment"]["status"] == status_after
        assert router.decisions()[-1]["action"] == action  # flushed before the answer
    # Promoted: everyone enrolled is on the treatment, answered by the new version.
    answers = [await router.predict(session, unit) for unit in controls]
    assert all(a.variant == "treatment" and a.version == "paddle_new_v2" for a in answers)
    assert all(a.enrolled and a.fallback is False for a in answers)

    # QA override: only with the token; never enrolled.
    assert (await router.admin(session, "rollback"))[0] == 200
    unit = controls[0]
    refused = await router.predict(session, unit, headers={"X-Variant-Override": "treatment"})
    assert refused.status == 403
    qa = await router.predict(session, unit, headers={"X-Variant-Override": "treatment", **AUTH})
    assert (qa.status, qa.variant, qa.version, qa.enrolled) == (
        200, "treatment", "paddle_new_v2", False,
    )  # fmt: skip
    assert router.stop() == 0
    admin = [d["action"] for d in router.decisions() if d["actor"] == "admin"]
    assert admin == ["pause", "resume", "rollback", "resume", "promote", "rollback"]
    exposures = [
        json.loads(line)
        for path in sorted((router.folder / "logs").glob("exposures-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    overridden = [e for e in exposures if e.get("override")]
    assert len(overridden) == 1 and overridden[0]["enrolled"] is False
    assert overridden[0]["served"] == "treatment" and overridden[0]["unit"] == unit


# --- 6. shadow -------------------------------------------------------------------------------


async def test_shadow_users_get_control_while_the_candidate_is_compared(
    paddle_backends: dict[str, Backend], make_router: MakeRouter, session: aiohttp.ClientSession
) -> None:
    control_url, candidate_url = demo_urls(paddle_backends)
    router = make_router(
        control_url,
        candidate_url,
        {
            "mode": "shadow",
            "traffic": 100,
            "slo": slo("500ms", "60s", min_samples=5, failed_checks=2, p99_ms=LENIENT_P99_MS),
        },
    )
    bodies = [json.dumps(demo_request(1, seed=seed)).encode() for seed in range(24)]
    expected_agree = 0
    for index, body in enumerate(bodies):
        answer = await router.predict(session, f"shadow-{index}", body=body)
        direct = {}
        for name, url in (("control", control_url), ("candidate", candidate_url)):
            async with session.post(url + ROUTE, data=body) as reply:
                direct[name] = await reply.json(content_type=None)
        assert answer.status == 200 and answer.payload is not None
        assert (answer.variant, answer.version, answer.fallback) == ("control", "legacy_v1", False)
        assert answer.payload["value"] == direct["control"]["value"]  # control's own answer
        expected_agree += bool(same_top_class(direct["control"], direct["candidate"]))

    async def compared() -> bool:
        text = await router.metrics(session)
        total = sum(
            metric_value(text, "router_shadow_agreement_total", agree=agree)
            for agree in ("true", "false")
        )
        return total == len(bodies)

    await eventually(compared, timeout=15)
    text = await router.metrics(session)
    print(f"\nshadow: {expected_agree}/{len(bodies)} answers with control's top class")
    assert metric_value(text, "router_shadow_requests_total", outcome="ok") == len(bodies)
    assert metric_value(text, "router_shadow_agreement_total", agree="true") == expected_agree
    assert metric_value(text, "router_slo_state", variant="treatment") in (0, 1)

    await router.wait_for(
        session,
        lambda s: s["slo"]["variants"]["treatment"]["measured"]["compared"] == len(bodies),
        timeout=15,
    )
    measured = (await router.state(session))["slo"]["variants"]["treatment"]["measured"]
    assert measured["agreement_rate"] == pytest.approx(expected_agree / len(bodies), abs=1e-6)
    assert measured["samples"] == len(bodies)  # every copy reached the candidate
    assert router.stop() == 0
