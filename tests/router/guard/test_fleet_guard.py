"""The guard's part in a fleet, as pure logic: windows exported by several processes merge into
the fleet's window (p99 within 1% of exact, counts exact), the decider checks the fleet's calls,
a follower puts in force what the decider decided, a cut-off replica takes no ramp step."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from router.guard.engine import Guard
from router.guard.rollout import RolloutState
from router.guard.slo import SlidingWindow
from tests.router.guard.simulation import registry

T0 = 1_800_000_000.0
SLO = {
    "interval": "1s", "window": "5s", "min_samples": 60, "failed_checks": 2,
    "p99_ms": 100, "error_rate": 0.05,
}  # fmt: skip


def test_windows_of_three_processes_merge_into_the_fleets_within_one_percent() -> None:
    rng = np.random.default_rng(20261206)
    processes = [SlidingWindow(10.0, 1.0) for _ in range(3)]
    everything: list[float] = []
    for index, window in enumerate(processes):
        latencies = rng.lognormal(math.log(0.003 * (index + 1)), 0.6, 5000)
        for n, latency in enumerate(latencies):
            window.record(float(latency), n % 50 != 0, T0 + n * 0.001)
        everything.extend(latencies)
    # Through JSON, as they travel through Redis.
    exports = [json.loads(json.dumps(w.export())) for w in processes[1:]]
    fleet = processes[0].merged(exports).snapshot(T0 + 5, 10.0)
    exact_p99_ms = float(np.percentile(everything, 99)) * 1000
    assert fleet.count == 15_000 and fleet.errors == 300
    assert fleet.p99_ms is not None
    assert abs(fleet.p99_ms - exact_p99_ms) / exact_p99_ms < 0.01
    assert processes[0].merged(exports).total == 15_000


def test_merging_keeps_time_slices_apart() -> None:
    early, late = SlidingWindow(5.0, 1.0), SlidingWindow(5.0, 1.0)
    early.record(0.01, True, T0)
    late.record(0.01, False, T0 + 4.5)
    merged = late.merged([early.export()])
    assert merged.snapshot(T0 + 4.5, 5.0).count == 2
    assert merged.snapshot(T0 + 6.5, 5.0).count == 1  # the early call slid out


def _guard() -> Guard:
    return Guard(registry({"control": "v1", "treatment": "v2", "traffic": 50, "slo": SLO}), now=T0)


def _calls(guard: Guard, arm: str, count: int, ok: bool, start: float) -> None:
    for n in range(count):
        guard.observe("sentiment", arm, 0.004, ok, now=start + n * 0.01)


def test_the_decider_counts_every_replicas_calls_toward_min_samples() -> None:
    decider, other = _guard(), _guard()
    decider.tick(now=T0)  # the start's decisions
    for guard in (decider, other):  # 40 failing treatment calls each: under min_samples alone
        _calls(guard, "treatment", 40, False, T0 + 0.1)
        _calls(guard, "control", 40, True, T0 + 0.1)
    alone = decider.tick(now=T0 + 1.0)
    assert [d.check for d in alone] == ["inconclusive"]
    remote = {"sentiment": {arm: [w] for arm, w in other.export_windows()["sentiment"].items()}}
    checks = [decider.tick(now=T0 + 2.0, remote=remote), decider.tick(now=T0 + 3.0, remote=remote)]
    assert [d.check for round_ in checks for d in round_] == ["fail", "fail"]
    assert checks[-1][0].action == "rollback"


def test_a_follower_runs_no_check_and_takes_the_deciders_state_without_a_decision() -> None:
    follower = _guard()
    follower.tick(now=T0)
    _calls(follower, "treatment", 100, False, T0 + 0.1)
    assert follower.tick(now=T0 + 5.0, checks=False) == []
    rolled_back = RolloutState(revision=1, configured_traffic=50, status="rolled_back")
    assert follower.adopt("sentiment", rolled_back)
    assert follower.effective_traffic("sentiment") == 0.0
    assert not follower.adopt("sentiment", rolled_back)  # the same state: nothing changes
    assert follower.tick(now=T0 + 6.0, checks=False) == []
    assert "sentiment" in follower.take_dirty()  # kept in state_dir too


@pytest.mark.parametrize("may_advance", [True, False])
def test_cut_off_from_the_fleet_a_replica_takes_no_ramp_step(may_advance: bool) -> None:
    ramp = {"steps": [10, 50], "every": "1s", "min_samples": 0}
    lenient = {**SLO, "min_samples": 0}
    guard = Guard(
        registry({"control": "v1", "treatment": "v2", "traffic": 10, "ramp": ramp,
                  "slo": lenient}),
        now=T0,
    )  # fmt: skip
    guard.tick(now=T0)
    actions = []
    for second in range(1, 4):
        _calls(guard, "treatment", 20, True, T0 + second - 0.5)
        _calls(guard, "control", 20, True, T0 + second - 0.5)
        actions += [d.action for d in guard.tick(now=T0 + second, may_advance=may_advance)]
    assert ("advance" in actions) is may_advance
    assert guard.effective_traffic("sentiment") == (50 if may_advance else 10)


def test_a_new_decider_counts_ramp_samples_from_when_it_began() -> None:
    ramp = {"steps": [10, 50], "every": "1s", "min_samples": 500}
    guard = Guard(
        registry({"control": "v1", "treatment": "v2", "traffic": 10, "ramp": ramp,
                  "slo": {**SLO, "min_samples": 0}}),
        now=T0,
    )  # fmt: skip
    guard.tick(now=T0)
    _calls(guard, "treatment", 400, True, T0 + 0.1)  # before it decided: not this step's
    guard.begin_deciding()
    guard.tick(now=T0 + 1.0)
    assert guard.describe("sentiment")["ramp"]["step_samples"] == 0
