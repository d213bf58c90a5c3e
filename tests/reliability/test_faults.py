"""Faults under load: the real router and real Paddle Serving servers, a bounded load on loopback.

Each case sends a few hundred requests at tens per second while it breaks something, then
checks that no client saw an error where an answer was possible and that every answered
request left its exposure record (or, for a broken log disk, was counted as dropped).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.conftest import Backend, BackendFactory
from tests.reliability.conftest import Launch, Stack, Table
from tests.reliability.faults import BadBackend
from tests.reliability.load import Answer, LoadResult, run_load
from tests.reliability.stack import BODY, ROUTE, read_jsonl, registry, write_registry
from tests.reliability.summary import Row
from tests.support import eventually, settled

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


class Background:
    """A load at `rate` requests per second (at most 8 in flight) beside the test, until
    `finish()`: it lasts as long as the events it must overlap, however fast the machine."""

    def __init__(self, session: aiohttp.ClientSession, stack: Stack, rate: float, prefix: str):
        self.answers: list[Answer] = []  # in the order they came
        self._stop = asyncio.Event()
        self._task = asyncio.ensure_future(
            run_load(
                session, stack.url + ROUTE, BODY, requests=1_000_000, rate=rate, concurrency=8,
                id_prefix=prefix, unit_of=lambda i: f"{prefix}-unit-{i}", max_seconds=120,
                stop=self._stop, on_answer=self.answers.append,
            )
        )  # fmt: skip

    async def answered(self, count: int, sent_after: float = 0.0, timeout: float = 60) -> None:
        """Until `count` requests sent after `sent_after` (time.monotonic()) have their answer."""
        await eventually(
            lambda: sum(a.started > sent_after for a in self.answers) >= count, timeout
        )

    async def finish(self) -> LoadResult:
        """Sends no more; the result once every request sent has its answer."""
        self._stop.set()
        return await self._task


async def lost_exposures(stack: Stack, *results: LoadResult) -> int:
    """Answered requests without an exposure record, once the writer had time to flush."""
    answered = {a.request_id for r in results for a in r.answered()}
    await settled(lambda: answered <= {r["request_id"] for r in stack.exposures()}, 10)
    return len(answered - {r["request_id"] for r in stack.exposures()})


def endpoint_up(state: dict[str, Any], backend: str, url: str) -> bool:
    [endpoint] = [e for e in state["backends"][backend]["endpoints"] if e["url"] == url]
    return bool(endpoint["up"])


def failures(result: LoadResult) -> list[tuple[str, Any, Any]]:
    return [(a.request_id, a.status, a.error) for a in result.failed()]


async def test_kill_one_replica_then_restart_it(
    demo_models: Path,
    paddle_backends: dict[str, Backend],
    paddle_backend_factory: BackendFactory,
    launch: Launch,
    session: aiohttp.ClientSession,
    table: Table,
) -> None:
    replica = paddle_backend_factory(demo_models / "sentiment_v1")
    shared = paddle_backends["sentiment-v1"].url
    stack = launch(
        registry([shared, replica.url], [paddle_backends["sentiment-v2"].url]),
    )
    load = Background(session, stack, 40, "kill")
    await load.answered(60)
    replica.kill()  # SIGKILL to its whole process group, mid-load
    await load.answered(120, sent_after=time.monotonic())
    killed = await load.finish()
    state = await stack.state(session)
    ejected = not endpoint_up(state, "sentiment-v1", replica.url)
    lost = await lost_exposures(stack, killed)
    table.add(
        Row("fault", "kill -9 one of two control replicas",
            "SIGKILL to one of the control backend's two Paddle Serving servers after 60 "
            "answers of a load at 40/s, which went on for 120 more", killed.sent, len(killed.failed()), lost,
            "requests in flight and refused connections retried on the other replica; "
            f"replica ejected: {ejected}")
    )  # fmt: skip
    assert failures(killed) == []
    assert lost == 0 and ejected

    # Restart it on the same port under load: the prober brings it back into rotation.
    port = int(replica.url.rsplit(":", 1)[1])
    load = Background(session, stack, 40, "restart")
    loop = asyncio.get_running_loop()
    restarted = await loop.run_in_executor(
        None, lambda: paddle_backend_factory(demo_models / "sentiment_v1", http_port=port)
    )
    ready_at = time.monotonic()

    async def back_in() -> bool:
        return endpoint_up(await stack.state(session), "sentiment-v1", restarted.url)

    probed_in = await eventually(back_in, timeout=10)
    errors_before = await stack.metric(
        session, "router_backend_requests_total", backend="sentiment-v1", outcome="error"
    )
    await load.answered(80, sent_after=time.monotonic())  # the replica has its share
    during = await load.finish()
    after = await run_load(
        session, stack.url + ROUTE, BODY, requests=100, rate=40, concurrency=8, id_prefix="after"
    )
    errors_after = await stack.metric(
        session, "router_backend_requests_total", backend="sentiment-v1", outcome="error"
    )
    lost = await lost_exposures(stack, during, after)
    table.add(
        Row("fault", "restart a backend",
            "the killed replica restarted on its port during a load at 40/s, then 100 more",
            during.sent + after.sent, len(during.failed()) + len(after.failed()), lost,
            f"back in rotation {probed_in:.1f} s after the restarted server answered; no backend "
            "error after that")
    )  # fmt: skip
    assert failures(during) == [] and failures(after) == []
    assert lost == 0
    assert errors_after == errors_before  # the restarted replica answered its share
    assert time.monotonic() - ready_at < 15


async def test_treatment_answering_garbage_resetting_or_hanging_falls_back(
    paddle_backends: dict[str, Backend], launch: Launch, session: aiohttp.ClientSession,
    table: Table,
) -> None:  # fmt: skip
    bad = BadBackend()
    server = await bad.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        patch = {"backends": {"sentiment-v2": {"timeout_ms": 300, "eject_after": 1000}}}
        stack = launch(registry([paddle_backends["sentiment-v1"].url], [url], patch=patch))
        result = await run_load(
            session, stack.url + ROUTE, BODY, requests=200, rate=40, concurrency=16,
            id_prefix="garbage",
        )  # fmt: skip
    finally:
        await server.close()
    treated = [a for a in result.answers if a.variant == "treatment"]
    lost = await lost_exposures(stack, result)
    table.add(
        Row("fault", "treatment misbehaves (in-process fake)",
            "the treatment answers garbage, an HTML 500, resets the connection, sends half a "
            "reply or hangs past timeout_ms, in turn", result.sent, len(result.failed()), lost,
            f"{len(treated)} treatment users, all answered by control with fallback: true")
    )  # fmt: skip
    assert failures(result) == []
    assert lost == 0 and bad.received >= len(treated) > 0
    assert all(a.fallback is True and a.version == "legacy_v1" for a in treated)


async def test_sigstop_the_treatment_falls_back_then_rolls_back(
    demo_models: Path,
    paddle_backends: dict[str, Backend],
    paddle_backend_factory: BackendFactory,
    launch: Launch,
    session: aiohttp.ClientSession,
    table: Table,
) -> None:
    treatment = paddle_backend_factory(demo_models / "sentiment_v2")
    slo = {
        "interval": "1s", "window": "4s", "min_samples": 20, "failed_checks": 2,
        "p99_ms": 250, "error_rate": 0.05, "on_breach": "rollback",
    }  # fmt: skip
    patch = {
        "backends": {"sentiment-v2": {"timeout_ms": 300}},
        "experiments": {"sentiment": {"slo": slo}},
    }
    stack = launch(registry([paddle_backends["sentiment-v1"].url], [treatment.url], patch=patch))
    try:
        load = Background(session, stack, 40, "sigstop")
        # Healthy first: the treatment's calls fill the SLO window (4 s at 40/s).
        await load.answered(120)
        treatment.suspend()  # SIGSTOP: connections are accepted, nothing answers
        stopped_at = time.monotonic()

        async def rolled_back() -> bool:
            state = await stack.state(session)
            return bool(state["experiments"]["sentiment"].get("status") == "rolled_back")

        rollback_s = await eventually(rolled_back, timeout=15)
        await load.answered(40, sent_after=time.monotonic() + 0.5)  # all on control by then
        result = await load.finish()
    finally:
        treatment.resume()
        treatment.stop()
    after_fault = [a for a in result.answers if a.started > stopped_at + 0.5]
    fell_back = [a for a in after_fault if a.fallback]
    # once rolled back, every enrolled unit is on control: no fallback any more
    on_control = [a for a in result.answers if a.started > stopped_at + rollback_s + 0.5]
    lost = await lost_exposures(stack, result)
    decisions = read_jsonl([stack.log_dir / "decisions.jsonl"])
    rollbacks = [d for d in decisions if d["action"] == "rollback" and d["actor"] == "slo"]
    table.add(
        Row("fault", "SIGSTOP the treatment",
            "SIGSTOP to the treatment's Paddle Serving server after 120 answers of a load at "
            "40/s (timeout_ms 300; SLO interval 1 s, failed_checks 2)", result.sent,
            len(result.failed()), lost,
            f"{len(fell_back)} treatment users answered by control (fallback), then rolled "
            f"back by the SLO guard {rollback_s:.1f} s after the stop")
    )  # fmt: skip
    assert failures(result) == []
    assert lost == 0
    assert fell_back and all(a.version == "legacy_v1" for a in fell_back)
    assert on_control and all(a.variant == "control" and not a.fallback for a in on_control)
    assert len(rollbacks) == 1


async def test_100_registry_reloads_during_load(
    paddle_backends: dict[str, Backend], launch: Launch, session: aiohttp.ClientSession,
    table: Table,
) -> None:  # fmt: skip
    control, treatment = paddle_backends["sentiment-v1"].url, paddle_backends["sentiment-v2"].url
    stack = launch(registry([control], [treatment], traffic=10), "--no-watch")
    load = Background(session, stack, 40, "reload")
    for index in range(100):
        traffic = 20 if index % 2 == 0 else 10
        write_registry(stack.config, registry([control], [treatment], traffic=traffic))
        stack.router.signal(signal.SIGHUP)

        async def reloaded(count: int = index + 1) -> bool:
            done = await stack.metric(session, "router_config_reloads_total", result="ok")
            return done >= count

        await eventually(reloaded)
    await load.answered(40, sent_after=time.monotonic())  # and traffic after the last one
    result = await load.finish()
    reloads = await stack.metric(session, "router_config_reloads_total", result="ok")
    refused = await stack.metric(session, "router_config_reloads_total", result="error")
    lost = await lost_exposures(stack, result)
    table.add(
        Row("fault", "100 registry reloads during load",
            "100 edits of experiments.yaml (traffic 10 <-> 20), each applied by SIGHUP, during a "
            "load at 40/s", result.sent, len(result.failed()), lost,
            f"{reloads:g} reloads applied, {refused:g} refused")
    )  # fmt: skip
    assert failures(result) == []
    assert (reloads, refused, lost) == (100, 0, 0)


async def test_sigterm_under_load_finishes_and_logs_what_it_answered(
    paddle_backends: dict[str, Backend], launch: Launch, session: aiohttp.ClientSession,
    table: Table,
) -> None:  # fmt: skip
    stack = launch(
        registry([paddle_backends["sentiment-v1"].url], [paddle_backends["sentiment-v2"].url])
    )
    signalled_at: list[float] = []
    enough = asyncio.Event()
    count = 0

    def on_answer(answer: Answer) -> None:
        # 8 clients back to back: when an answer comes, the other 7 requests are in flight,
        # so the signal sent from here always finds work under way, at any machine speed.
        nonlocal count
        count += 1
        if count == 50:
            stack.router.signal(signal.SIGTERM)
            signalled_at.append(time.monotonic())
        elif signalled_at and answer.status is None:
            enough.set()  # the stopping router refuses new requests: seen, no need for more

    load = asyncio.ensure_future(
        run_load(
            session, stack.url + ROUTE, BODY, requests=100_000, rate=1_000_000, concurrency=8,
            id_prefix="sigterm", unit_of=lambda i: f"sigterm-unit-{i}", max_seconds=90,
            stop=enough, on_answer=on_answer,
        )
    )  # fmt: skip
    await eventually(lambda: signalled_at, timeout=60)
    signalled = signalled_at[0]
    loop = asyncio.get_running_loop()
    code = await loop.run_in_executor(None, stack.router.wait, 15)
    enough.set()
    result = await load
    answered = {a.request_id for a in result.answered()}
    logged = {r["request_id"] for r in stack.exposures()}
    refused = [a for a in result.answers if a.status is None]
    bad = [a for a in result.answered() if a.status != 200]
    in_flight = [
        a for a in result.answers if a.started < signalled < a.started + a.latency_ms / 1000
    ]
    lost = len(answered - logged)
    table.add(
        Row("fault", "SIGTERM to the router under load",
            "SIGTERM at the 50th answer of a load of 8 clients back to back", result.sent,
            len(bad) + sum(a.status != 200 for a in in_flight), lost,
            f"{len(in_flight)} in flight at the signal all answered 200; {len(answered)} answered "
            f"and {len(logged)} exposures logged; {len(refused)} not accepted after the stop "
            f"(connection refused or closed before the request was sent); exit code {code}")
    )  # fmt: skip
    assert code == 0
    assert bad == []
    assert in_flight
    assert [a for a in in_flight if a.status != 200] == []
    assert answered == logged  # exposures logged = responses sent
    assert refused, "the stop came after the load: nothing was tested"


def _today_and_tomorrow() -> list[str]:
    now = datetime.now(timezone.utc)
    return [(now + timedelta(days=d)).strftime("%Y-%m-%d") for d in (0, 1)]


async def test_full_or_unwritable_log_directory(
    paddle_backends: dict[str, Backend], launch: Launch, session: aiohttp.ClientSession,
    table: Table,
) -> None:  # fmt: skip
    stack = launch(
        registry([paddle_backends["sentiment-v1"].url], [paddle_backends["sentiment-v2"].url])
    )
    log_dir = stack.log_dir
    log_dir.mkdir(exist_ok=True)
    url = stack.url + ROUTE

    async def dropped(log: str) -> float:
        return await stack.metric(session, "router_events_dropped_total", log=log)

    async def dropped_once_flushed(log: str, expected: float) -> float:
        """The drop count once it reaches `expected`, or as it stands after 10 s."""

        async def reached() -> bool:
            return await dropped(log) >= expected

        await settled(reached, timeout=10)
        return await dropped(log)

    async def events(count: int) -> list[int]:
        statuses = []
        for i in range(count):
            event = {"unit_id": f"disk-{i}", "metric": "conversion"}
            async with session.post(f"{stack.url}/events", json=event) as response:
                statuses.append(response.status)
        return statuses

    # A full disk: every log file of today (and tomorrow, should the test cross midnight) is
    # /dev/full, where every write fails with ENOSPC.
    for day in _today_and_tomorrow():
        for prefix in ("exposures", "outcomes"):
            (log_dir / f"{prefix}-{day}.jsonl").symlink_to("/dev/full")
    full = await run_load(session, url, BODY, requests=150, rate=50, id_prefix="full")
    full_events = await events(10)
    full_dropped = (
        await dropped_once_flushed("exposures", 150),
        await dropped_once_flushed("outcomes", 10),
    )
    for link in log_dir.iterdir():
        link.unlink()
    healed = await run_load(session, url, BODY, requests=50, rate=50, id_prefix="healed")
    healed_lost = await lost_exposures(stack, healed)
    table.add(
        Row("fault", "log directory full",
            "the day's exposure and outcome files on /dev/full (ENOSPC) for 150 requests and "
            "10 events, then the disk 'freed' for 50 more", full.sent + healed.sent + 10,
            len(full.failed()) + len(healed.failed()) + sum(s != 202 for s in full_events),
            int(150 + 10 - sum(full_dropped)) + healed_lost,
            f"{full_dropped[0]:g} exposures and {full_dropped[1]:g} outcomes dropped and "
            "counted; logging resumed")
    )  # fmt: skip
    assert failures(full) == [] and failures(healed) == [] and set(full_events) == {202}
    assert full_dropped == (150, 10)
    assert healed_lost == 0

    # An unwritable directory: read-only for a normal user; root ignores permission bits, so
    # as root the directory is replaced by a plain file (every open below it fails).
    as_root = os.geteuid() == 0
    aside = log_dir.with_name("logs-aside")
    if as_root:
        log_dir.rename(aside)
        log_dir.write_text("not a directory\n")
    else:
        log_dir.chmod(0o500)
    try:
        before = await dropped("exposures")
        blocked = await run_load(session, url, BODY, requests=100, rate=50, id_prefix="ro")
        blocked_dropped = await dropped_once_flushed("exposures", before + 100) - before
    finally:
        if as_root:
            log_dir.unlink()
            aside.rename(log_dir)
        else:
            log_dir.chmod(0o700)
    healed = await run_load(session, url, BODY, requests=50, rate=50, id_prefix="rw")
    healed_lost = await lost_exposures(stack, healed)
    how = "replaced by a plain file (running as root)" if as_root else "chmod 0500"
    table.add(
        Row("fault", "log directory unwritable",
            f"the log directory {how} for 100 requests, then restored for 50 more",
            blocked.sent + healed.sent, len(blocked.failed()) + len(healed.failed()),
            int(100 - blocked_dropped) + healed_lost,
            f"{blocked_dropped:g} exposures dropped and counted; logging resumed")
    )  # fmt: skip
    assert failures(blocked) == [] and failures(healed) == []
    assert blocked_dropped == 100 and healed_lost == 0
    shutil.rmtree(aside, ignore_errors=True)
