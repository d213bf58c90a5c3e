"""Bad input is the client's error, and never ends an experiment: the real router in front of
real Paddle Serving pipeline servers.

The client picks its unit id, so it can send from units it knows are in treatment. Input the
model cannot take (a wrong feed name, a wrong shape) is rejected by both arms with the serving
op's bad-input `err_no`; the router answers 400 `bad_input` and counts it against no arm, so an
SLO guard that a few dozen treatment failures would trip never moves. Input that only the
treatment rejects, while control answers it, is the treatment's failure: fallback to control,
counted against the treatment, and the same guard rolls it back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import aiohttp
import pytest
import pytest_asyncio

from router.experiment.assign import compile_plans
from router.registry.loading import load_config
from tests.conftest import Backend, BackendFactory
from tests.reliability.conftest import Launch, Stack, Table
from tests.reliability.load import run_load
from tests.reliability.stack import BODY, ROUTE, read_jsonl, registry
from tests.reliability.summary import Row
from tests.support import demo_request, eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

# 300 treatment failures in a 4 s window would fail every check (min_samples 20, error rate
# 5 %), and two failed checks in a row roll back: if bad input counted, it would end the
# experiment within about 2 s.
SLO = {
    "interval": "1s", "window": "4s", "min_samples": 20, "failed_checks": 2,
    "p99_ms": 1000, "error_rate": 0.05, "on_breach": "rollback",
}  # fmt: skip
FAILED_CHECKS = 2
TOKENS = demo_request(1)["value"][0]  # one real review: 128 token ids
BAD_INPUTS = {  # what the demo models reject, and the message the client gets
    "wrong feed name": (
        {"key": ["tokens"], "value": [TOKENS]},
        "unknown feed(s) ['tokens']; this model takes ['x']",
    ),
    "wrong shape": (
        {"key": ["x"], "value": ["[[1, 2, 3]]"]},
        "feed 'x': expected shape [-1, 128] (-1 = any), got [1, 3] (axis 1)",
    ),
}
SHORT_FEED = 64  # the feed length of a treatment that rejects the demo's 128-token reviews


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture(scope="module")
def short_feed_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentiment bundle whose feed `x` takes 64 tokens, not 128: exported from the demo's
    network (untrained: only its input matters here) by the same export code."""
    import paddle

    from serving.demo_models import SERVICE_NAME, SentimentModel
    from serving.export import export_bundle

    folder = tmp_path_factory.mktemp("short-feed")
    paddle.seed(3)
    model = SentimentModel(hidden=8)
    model.eval()
    prefix = folder / "jit" / "model"
    spec = paddle.static.InputSpec(shape=[None, SHORT_FEED], dtype="int64", name="x")
    paddle.jit.save(model, str(prefix), input_spec=[spec])
    bundle = folder / "sentiment_short"
    export_bundle(prefix, bundle, name=SERVICE_NAME, version="short_v3", fetch_names=["prob"])
    return bundle


def treatment_units(stack: Stack, count: int, prefix: str) -> list[str]:
    """Unit ids the router assigns to treatment, found by its own assignment code."""
    experiment = load_config(stack.config).experiments["sentiment"]
    plan = compile_plans({"sentiment": experiment})["sentiment"]
    units: list[str] = []
    index = 0
    while len(units) < count:
        unit = f"{prefix}-{index}"
        if not plan.assign(unit, experiment.configured_traffic()).is_control:
            units.append(unit)
        index += 1
    return units


@dataclass(frozen=True)
class Reply:
    status: Optional[int]  # None: no HTTP answer
    code: Optional[str]
    message: Optional[str]


async def send(session: aiohttp.ClientSession, url: str, body: bytes, unit: str) -> Reply:
    headers = {"X-User-Id": unit, "Content-Type": "application/json"}
    try:
        async with session.post(url, data=body, headers=headers) as response:
            payload = await response.json(content_type=None)
            return Reply(response.status, payload.get("code"), payload.get("error"))
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        return Reply(None, None, f"{type(exc).__name__}: {exc}")


async def send_paced(
    session: aiohttp.ClientSession, url: str, requests: list[tuple[bytes, str]], rate: float
) -> list[Reply]:
    """Each (body, unit) at `rate` per second, at most 8 in flight; the replies in order."""
    slots = asyncio.Semaphore(8)
    started = time.monotonic()

    async def one(index: int, body: bytes, unit: str) -> Reply:
        await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
        async with slots:
            return await send(session, url, body, unit)

    return list(await asyncio.gather(*(one(i, b, u) for i, (b, u) in enumerate(requests))))


def slo_checks(stack: Stack, after: float) -> list[dict[str, Any]]:
    """The guard's checks of the treatment made after `after` (time.time())."""
    return [
        d
        for d in read_jsonl([stack.log_dir / "decisions.jsonl"])
        if d["actor"] == "slo" and d.get("variant") == "treatment" and _epoch(d["ts"]) > after
    ]


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


async def test_bad_input_from_treatment_units_is_400_and_never_rolls_back(
    paddle_backends: dict[str, Backend],
    launch: Launch,
    session: aiohttp.ClientSession,
    table: Table,
) -> None:
    stack = launch(
        registry(
            [paddle_backends["sentiment-v1"].url],
            [paddle_backends["sentiment-v2"].url],
            patch={"experiments": {"sentiment": {"slo": SLO}}},
        )
    )
    units = treatment_units(stack, 300, "attacker")
    cases = list(BAD_INPUTS.values())
    requests = [(json.dumps(cases[i % 2][0]).encode(), unit) for i, unit in enumerate(units)]
    began = time.time()
    replies = await send_paced(session, stack.url + ROUTE, requests, rate=100)
    ended = time.time()
    burst_s = ended - began

    wrong = [
        (i, r)
        for i, r in enumerate(replies)
        if (r.status, r.code, r.message) != (400, "bad_input", cases[i % 2][1])
    ]
    # Every check while the burst is in the 4 s window would have failed had it counted:
    # wait for more than failed_checks of them after the last request.
    await eventually(lambda: len(slo_checks(stack, ended)) > FAILED_CHECKS, timeout=30)
    checks = slo_checks(stack, began)
    state = (await stack.state(session))["experiments"]["sentiment"]
    decisions = read_jsonl([stack.log_dir / "decisions.jsonl"])
    records = await stack.wait_logged(len(units))
    logged = [r for r in records if r["status"] == 400 and r["error"].startswith("bad_input")]
    counted = await stack.metric(
        session,
        "router_requests_total",
        experiment="sentiment",
        variant="treatment",
        outcome="bad_input",
    )
    answers = Counter(f"{r.status} {r.code}" for r in replies)
    rollbacks = [d for d in decisions if d["action"] == "rollback"]
    rollback = (
        f"rolled back {_epoch(rollbacks[0]['ts']) - began:.1f} s after the first request"
        if rollbacks
        else "no rollback"
    )
    table.add(
        Row("hostile input", "bad input from treatment units",
            "300 requests with a wrong feed name or a wrong shape, from unit ids the router "
            "assigns to treatment, at 100/s (SLO: interval 1 s, window 4 s, min_samples 20, "
            "failed_checks 2, error_rate 0.05, on_breach rollback)",
            len(replies), len(wrong), len(units) - len(logged),
            f"{', '.join(f'{n} x {a}' for a, n in answers.items())} in {burst_s:.1f} s; "
            f"{len(checks)} SLO checks from the first request until "
            f"{_epoch(checks[-1]['ts']) - ended:.1f} s after the last, "
            f"{sum(c['check'] == 'fail' for c in checks)} failed; {rollback}, "
            f"status {state['status']}")
    )  # fmt: skip
    assert wrong == []
    assert state["status"] == "running" and state["traffic"] == 50
    assert rollbacks == []
    assert all(c["check"] != "fail" and c["measured"]["errors"] == 0 for c in checks), checks
    assert len(logged) == len(units) and all(r["assigned"] == "treatment" for r in logged)
    assert counted == len(units)


async def test_input_only_the_treatment_rejects_falls_back_and_rolls_it_back(
    paddle_backends: dict[str, Backend],
    paddle_backend_factory: BackendFactory,
    short_feed_bundle: Path,
    launch: Launch,
    session: aiohttp.ClientSession,
    table: Table,
) -> None:
    treatment = paddle_backend_factory(short_feed_bundle)
    stack = launch(
        registry(
            [paddle_backends["sentiment-v1"].url],
            [treatment.url],
            patch={"experiments": {"sentiment": {"slo": SLO}}},
        )
    )
    units = treatment_units(stack, 2000, "user")
    stop = asyncio.Event()

    async def rolled_back() -> bool:
        state = await stack.state(session)
        return bool(state["experiments"]["sentiment"]["status"] == "rolled_back")

    async def stop_once_rolled_back() -> float:
        try:
            return await eventually(rolled_back, timeout=30)
        finally:
            stop.set()

    # The demo's valid 128-token reviews: control answers them, the treatment calls them bad.
    result, rollback_s = await asyncio.gather(
        run_load(
            session, stack.url + ROUTE, BODY, requests=len(units), rate=40, concurrency=8,
            unit_of=units.__getitem__, id_prefix="short", stop=stop, max_seconds=40,
        ),
        stop_once_rolled_back(),
    )  # fmt: skip
    fell_back = [a for a in result.answers if a.fallback]
    answered = {a.request_id for a in result.answered()}
    logged = {r["request_id"] for r in await stack.wait_logged(len(answered))}
    lost = len(answered - logged)
    rejected = await stack.metric(
        session, "router_backend_requests_total", backend="sentiment-v2", outcome="bad_input"
    )
    decisions = read_jsonl([stack.log_dir / "decisions.jsonl"])
    rollbacks = [d for d in decisions if d["action"] == "rollback" and d["actor"] == "slo"]
    table.add(
        Row("hostile input", "input only the treatment rejects",
            f"valid 128-token reviews at 40/s from treatment units, to a treatment whose feed "
            f"takes {SHORT_FEED} tokens (same SLO)", result.sent, len(result.failed()), lost,
            f"{len(fell_back)} answered by control with fallback: true, counted against the "
            f"treatment; rolled back by the SLO guard {rollback_s:.1f} s after the first")
    )  # fmt: skip
    assert result.failed() == []
    assert fell_back and all(a.version == "legacy_v1" for a in fell_back)
    assert rejected >= len(fell_back)
    assert len(rollbacks) == 1 and rollbacks[0]["measured"]["errors"] > 0
    assert lost == 0
