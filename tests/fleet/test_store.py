"""The fleet's store on a real Redis: compare-and-set, published changes, the lease, the
measurements; and one replica's guard cut off from Redis and back (in process)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from router.fleet.runtime import FleetRuntime
from router.fleet.store import FleetStore
from router.guard.engine import Guard
from router.guard.runtime import GuardSetup, assignment_facets
from router.guard.state import StateStore, state_from_json
from router.records.jsonl import EventLogs
from router.registry.schema import FleetSettings
from tests.redis_server import RedisServer
from tests.router.guard.simulation import registry
from tests.support import eventually

pytestmark = pytest.mark.asyncio

DOC = {"schema": 1, "experiment": "sentiment"}


@pytest_asyncio.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[FleetStore]:
    shared = FleetStore(redis_server.url, "store-test")
    yield shared
    await shared.close()


async def test_two_writers_of_one_version_cannot_both_win(store: FleetStore) -> None:
    first = await store.write_state("sentiment", {**DOC, "by": "a"}, expected_version=0)
    second = await store.write_state("sentiment", {**DOC, "by": "b"}, expected_version=0)
    assert first == (True, 1) and second == (False, 1)
    [(version, doc)] = (await store.read_states(["sentiment"])).values()
    assert (version, doc) == (1, {**DOC, "by": "a"})
    assert await store.write_state("sentiment", {**DOC, "by": "b"}, expected_version=1) == (
        True,
        2,
    )
    assert (await store.read_states(["other"]))["other"] == (0, None)


async def test_a_written_state_is_published(store: FleetStore) -> None:
    heard: list[str] = []

    async def listen() -> None:
        async for experiment in store.changes():
            heard.append(experiment)

    listener = asyncio.ensure_future(listen())
    await asyncio.sleep(0.3)  # subscribed
    await store.write_state("sentiment", DOC, expected_version=0)
    await eventually(lambda: heard == ["sentiment"], timeout=5)
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener


async def test_one_holder_of_the_lease_until_it_lapses_or_is_given_up(store: FleetStore) -> None:
    assert await store.hold_lease("a", 0.5)
    assert not await store.hold_lease("b", 0.5)
    assert await store.hold_lease("a", 0.5)  # renewed
    assert await store.leader() == "a"
    await asyncio.sleep(0.7)  # a stopped renewing
    assert await store.hold_lease("b", 5)
    await store.release_lease("a")  # not a's to give up
    assert await store.leader() == "b"
    await store.release_lease("b")
    assert await store.leader() is None


async def test_measurements_of_the_other_replicas(store: FleetStore) -> None:
    await store.publish_windows("a", {"sentiment": {"control": {"total": 1, "slices": []}}})
    await store.publish_windows("b", {"sentiment": {"control": {"total": 2, "slices": []}}})
    others = await store.read_windows(except_replica="a")
    assert others == [{"sentiment": {"control": {"total": 2, "slices": []}}}]


SLO = {
    "interval": "1s", "window": "5s", "min_samples": 20, "failed_checks": 2,
    "p99_ms": 100, "error_rate": 0.05,
}  # fmt: skip


async def test_cut_off_a_replica_rolls_back_alone_and_publishes_it_when_redis_is_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    config = registry({"control": "v1", "treatment": "v2", "traffic": 50, "slo": SLO})
    logs = EventLogs.open(tmp_path / "logs", on_drop=lambda log, count: None)
    logs.start()
    setup = GuardSetup(Guard(config), StateStore(tmp_path / "state"), assignment_facets(config))
    runtime = FleetRuntime(
        setup, logs.decisions, CollectorRegistry(), replica="a", experiments=config.experiments,
        fleet=FleetSettings(redis=redis_server.url, name="cut-off-test"),
    )  # fmt: skip
    try:
        await runtime.join()
        assert runtime.in_sync
        runtime.start()
        redis_server.kill()
        await eventually(lambda: not runtime.in_sync, timeout=10)
        guard = runtime.guard

        def failing_calls() -> bool:
            for _ in range(30):
                guard.observe("sentiment", "treatment", 0.5, False)
                guard.observe("sentiment", "control", 0.004, True)
            return guard.state("sentiment").status == "rolled_back"

        await eventually(failing_calls, timeout=10, interval=0.5)
        redis_server.start()  # empty: the fleet lost its state
        await eventually(lambda: runtime.in_sync, timeout=10)
        shared = FleetStore(redis_server.url, "cut-off-test")
        [(_, doc)] = (await shared.read_states(["sentiment"])).values()
        await shared.close()
        assert doc is not None and state_from_json(doc, "sentiment").status == "rolled_back"
    finally:
        await runtime.stop()
        logs.close()
