"""The Guard on a simulated clock: real registries (router.registry.schema), real assignment
(router.experiment.assign), simulated backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from router.auth import admin_token, bearer_token_ok
from router.guard.engine import ActionRefused, Guard, UnknownExperiment
from router.guard.rollout import Decision
from router.guard.state import StateStore
from router.proxy.seams import RequestObserver, TrafficPolicy
from tests.router.guard.simulation import (
    Simulation,
    failing_after,
    healthy,
    registry,
    slow,
    timeouts,
)

SLO = {
    "interval": "1s",
    "window": "5s",
    "min_samples": 50,
    "failed_checks": 3,
    "p99_ms": 100,
    "error_rate": 0.01,
    "on_breach": "rollback",
}
TWO_ARMS = {"control": "v1", "treatment": "v2", "traffic": 50, "slo": SLO}
T0 = 1_800_000_000.0


def _is_rollback(decision: Decision) -> bool:
    return decision.action == "rollback"


@pytest.mark.parametrize(
    ("fault", "reason"),
    [(timeouts(0.5), "error rate"), (slow(0.300), "p99")],
    ids=["treatment times out", "treatment slow"],
)
def test_a_failing_treatment_is_rolled_back_within_interval_times_failed_checks_plus_one(
    fault: Any, reason: str
) -> None:
    config = registry(TWO_ARMS)
    guard = Guard(config, now=T0)
    fault_at = 10.0
    sim = Simulation(
        guard,
        config,
        {"control": healthy(), "treatment": failing_after(fault_at, healthy(), fault)},
        requests_per_s=400,
        now=T0,
    )
    sim.run(60, until=_is_rollback)

    (rollback,) = [d for d in sim.decisions if d.action == "rollback"]
    assert rollback.actor == "slo" and rollback.check == "fail"
    assert reason in rollback.reason
    # The contract: within interval * failed_checks plus one interval of the fault.
    assert rollback.ts - T0 <= fault_at + 1.0 * 3 + 1.0
    assert rollback.traffic == 0 and rollback.previous_traffic == 50
    assert guard.effective_traffic("sentiment") == 0.0
    # Every enrolled unit now gets control.
    assert {sim.assign(f"user-{i}") for i in range(2000)} == {"control"}
    # Healthy checks before the fault passed; none acted.
    before = [d for d in sim.decisions if d.ts < T0 + fault_at and d.check is not None]
    assert before and all(d.check == "pass" and d.action == "none" for d in before)


def test_a_rolled_back_experiment_stays_rolled_back_across_a_restart(tmp_path: Path) -> None:
    config = registry(TWO_ARMS)
    guard = Guard(config, now=T0)
    sim = Simulation(
        guard,
        config,
        {"control": healthy(), "treatment": failing_after(5.0, healthy(), timeouts())},
        requests_per_s=400,
        now=T0,
    )
    treated_before = {u for u in (f"user-{i}" for i in range(3000)) if sim.assign(u) != "control"}
    sim.run(60, until=_is_rollback)
    store = StateStore(tmp_path / "state")
    assert store.save_all(guard.take_dirty()) == []

    # A new router process: the same registry, the state from disk.
    loaded = store.load_all(config.experiments)
    assert loaded.unreadable == {}
    restarted = Guard(config, saved=loaded.states, now=sim.now + 30)
    assert restarted.effective_traffic("sentiment") == 0.0
    (started,) = restarted.tick(sim.now + 30)
    assert (started.action, started.actor, started.status, started.traffic) == (
        "none",
        "config",
        "rolled_back",
        0.0,
    )
    assert "rolled_back" in restarted.describe("sentiment")["status"]

    # Resuming restores the same buckets: the same users are treated again.
    decision = restarted.resume("sentiment", now=sim.now + 40)
    assert (decision.action, decision.traffic, decision.previous_traffic) == ("resume", 50.0, 0.0)
    again = Simulation(restarted, config, {}, requests_per_s=0, now=sim.now + 40)
    assert {u for u in (f"user-{i}" for i in range(3000)) if again.assign(u) != "control"} == (
        treated_before
    )


def test_a_new_revision_after_a_restart_starts_the_rolled_back_experiment_again(
    tmp_path: Path,
) -> None:
    config = registry(TWO_ARMS)
    guard = Guard(config, now=T0)
    guard.rollback("sentiment", now=T0 + 1)
    store = StateStore(tmp_path)
    store.save_all(guard.take_dirty())

    bumped = registry({**TWO_ARMS, "revision": 2})
    restarted = Guard(bumped, saved=store.load_all(bumped.experiments).states, now=T0 + 100)
    (decision,) = restarted.tick(T0 + 100)
    assert (decision.action, decision.actor, decision.revision) == ("resume", "config", 2)
    assert restarted.effective_traffic("sentiment") == 50.0
    assert restarted.state("sentiment").status == "running"


def test_low_traffic_stays_inconclusive_never_advances_and_never_rolls_back() -> None:
    # 20 requests/s at 10%: about 10 treatment calls in a 5 s window, min_samples is 50; and
    # every one of them fails.
    config = registry(
        {
            **TWO_ARMS,
            "traffic": 10,
            "ramp": {"steps": [10, 50, 100], "every": "2s", "min_samples": 0},
        }
    )
    guard = Guard(config, now=T0)
    sim = Simulation(
        guard,
        config,
        {"control": healthy(), "treatment": timeouts()},
        requests_per_s=20,
        now=T0,
    )
    sim.run(120)
    checks = [d for d in sim.decisions if d.check is not None]
    assert len(checks) >= 115
    assert {d.check for d in checks} == {"inconclusive"}
    assert {d.action for d in sim.decisions} == {"none"}
    assert guard.effective_traffic("sentiment") == 10.0
    assert sim.calls["treatment"] > 100  # it did get traffic, just never enough per window


def test_a_healthy_treatment_ramps_through_its_steps() -> None:
    config = registry(
        {
            **TWO_ARMS,
            "traffic": 10,
            "ramp": {"steps": [10, 25, 50, 100], "every": "3s", "min_samples": 100},
        }
    )
    guard = Guard(config, now=T0)
    sim = Simulation(
        guard, config, {"control": healthy(), "treatment": healthy()}, requests_per_s=400, now=T0
    )
    sim.run(40)
    advances = [d for d in sim.actions()]
    assert [(d.action, d.actor, d.previous_traffic, d.traffic) for d in advances] == [
        ("advance", "ramp", 10.0, 25.0),
        ("advance", "ramp", 25.0, 50.0),
        ("advance", "ramp", 50.0, 100.0),
    ]
    starts = [T0] + [d.ts for d in advances]
    assert all(later - earlier >= 3.0 for earlier, later in zip(starts, starts[1:]))
    assert guard.effective_traffic("sentiment") == 100.0
    ramp = guard.describe("sentiment")["ramp"]
    assert (ramp["step"], ramp["next_step"]) == (3, None)


def test_a_failing_variant_of_a_multi_arm_experiment_rolls_the_whole_experiment_back() -> None:
    config = registry(
        {
            "variants": [
                {"name": "baseline", "backend": "v1", "weight": 50},
                {"name": "b", "backend": "v2", "weight": 25},
                {"name": "c", "backend": "v3", "weight": 25},
            ],
            "slo": SLO,
        }
    )
    guard = Guard(config, now=T0)
    sim = Simulation(
        guard,
        config,
        {"baseline": healthy(), "b": healthy(), "c": failing_after(5, healthy(), timeouts())},
        requests_per_s=400,
        now=T0,
    )
    sim.run(30, until=_is_rollback)
    rollback = sim.decisions[-1]
    assert (rollback.action, rollback.variant, rollback.previous_traffic) == ("rollback", "c", 50)
    assert {sim.assign(f"user-{i}") for i in range(1000)} == {"baseline"}
    variants = guard.describe("sentiment")["slo"]["variants"]
    assert variants["b"]["check"] == "pass"
    assert variants["c"]["check"] == "fail"
    assert variants["baseline"]["check"] is None  # control is measured, not judged
    with pytest.raises(ActionRefused, match="multi-arm"):
        guard.promote("sentiment", now=sim.now)


def test_shadow_copies_are_checked_by_the_same_slo_and_agreement_is_reported() -> None:
    config = registry({**TWO_ARMS, "mode": "shadow", "traffic": 100})
    guard = Guard(config, now=T0)
    sim = Simulation(
        guard,
        config,
        {"control": healthy(), "treatment": failing_after(5, healthy(), slow(0.4))},
        requests_per_s=200,
        now=T0,
        shadow=True,
    )
    for i in range(100):
        guard.observe_agreement("sentiment", "treatment", agree=i % 4 != 0, now=T0 + 0.5)
    sim.run(1.0)
    measured = guard.describe("sentiment")["slo"]["variants"]["treatment"]["measured"]
    assert measured["agreement_rate"] == pytest.approx(0.75)
    sim.run(30, until=_is_rollback)
    assert sim.decisions[-1].action == "rollback"
    assert "p99" in sim.decisions[-1].reason


def test_operator_actions_are_decisions_and_mark_the_state_for_saving() -> None:
    guard = Guard(registry(TWO_ARMS), now=T0)
    guard.take_dirty()
    decision = guard.pause("sentiment", now=T0 + 1)
    assert (decision.action, decision.actor, decision.check) == ("pause", "admin", None)
    assert guard.describe("sentiment")["last_decision"]["action"] == "pause"
    assert set(guard.take_dirty()) == {"sentiment"}
    assert guard.take_dirty() == {}
    decision = guard.act("sentiment", "rollback", note="bad reviews", now=T0 + 2)
    assert decision.reason == "rollback by admin: bad reviews"
    with pytest.raises(ActionRefused, match="cannot pause"):
        guard.pause("sentiment", now=T0 + 3)
    with pytest.raises(UnknownExperiment, match="no experiment named 'nope'"):
        guard.resume("nope")
    promoted = guard.promote("sentiment", now=T0 + 4)
    assert (promoted.traffic, guard.effective_traffic("sentiment")) == (100.0, 100.0)


def test_reloads_edit_traffic_bump_revisions_and_keep_state_of_removed_experiments() -> None:
    guard = Guard(registry(TWO_ARMS), now=T0)
    guard.tick(T0)

    (edit,) = guard.apply_config(registry({**TWO_ARMS, "traffic": 80}), now=T0 + 1)
    assert (edit.action, edit.actor, edit.previous_traffic, edit.traffic) == (
        "advance",
        "config",
        50.0,
        80.0,
    )
    assert guard.apply_config(registry({**TWO_ARMS, "traffic": 80}), now=T0 + 2) == []

    guard.rollback("sentiment", now=T0 + 3)
    other = registry(TWO_ARMS, name="other")
    assert guard.apply_config(other, now=T0 + 4) == []
    assert guard.effective_traffic("sentiment") == 0.0  # gone from the registry
    with pytest.raises(UnknownExperiment):
        guard.state("sentiment")
    # Back again, still rolled back: removing an experiment is no way around a rollback.
    guard.apply_config(registry({**TWO_ARMS, "traffic": 80}), now=T0 + 5)
    assert guard.state("sentiment").status == "rolled_back"

    (bump,) = guard.apply_config(registry({**TWO_ARMS, "traffic": 80, "revision": 2}), T0 + 6)
    assert (bump.action, bump.traffic) == ("resume", 80.0)


def test_an_observation_for_an_unknown_experiment_or_arm_is_ignored() -> None:
    guard = Guard(registry(TWO_ARMS), now=T0)
    guard.observe("nope", "treatment", 0.01, True, now=T0)
    guard.observe("sentiment", "nope", 0.01, True, now=T0)
    guard.observe_agreement("nope", "treatment", True, now=T0)
    guard.tick(T0 + 1)
    measured = guard.describe("sentiment")["slo"]["variants"]["treatment"]["measured"]
    assert measured["samples"] == 0


def test_a_changed_window_starts_a_fresh_one_and_no_slo_means_no_checks() -> None:
    guard = Guard(registry(TWO_ARMS), now=T0)
    for _ in range(100):
        guard.observe("sentiment", "treatment", 0.01, True, now=T0 + 0.5)
    guard.apply_config(registry({**TWO_ARMS, "slo": {**SLO, "window": "10s"}}), now=T0 + 0.6)
    guard.tick(T0 + 0.6)  # start decision
    (check,) = guard.tick(T0 + 1.6)
    assert check.measured["samples"] == 0

    no_slo = {k: v for k, v in TWO_ARMS.items() if k != "slo"}
    guard.apply_config(registry(no_slo), now=T0 + 2)
    assert guard.tick(T0 + 100) == []
    assert guard.describe("sentiment")["slo"] is None


def test_checks_run_every_interval_and_a_late_tick_does_not_burst() -> None:
    guard = Guard(registry(TWO_ARMS), now=T0)
    assert guard.seconds_until_due(T0) == 0.0  # the start decisions wait
    assert [d.reason for d in guard.tick(T0)] == ["router started: running (started)"]
    assert guard.seconds_until_due(T0 + 0.25) == pytest.approx(0.75)
    assert guard.tick(T0 + 0.99) == []
    assert len(guard.tick(T0 + 1.0)) == 1
    assert len(guard.tick(T0 + 7.3)) == 1  # late: one check, not six
    assert guard.seconds_until_due(T0 + 7.3) == pytest.approx(1.0)


def test_an_unreadable_saved_state_starts_rolled_back() -> None:
    guard = Guard(registry(TWO_ARMS), unreadable={"sentiment": "state/sentiment.json: not JSON"})
    assert guard.effective_traffic("sentiment") == 0.0
    (decision,) = guard.tick()
    assert (decision.action, decision.actor, decision.status) == (
        "rollback",
        "config",
        "rolled_back",
    )
    assert "not JSON" in decision.reason
    assert "sentiment" in guard.take_dirty()


def test_describe_and_snapshot_are_json_for_get_experiments() -> None:
    config = registry(
        {**TWO_ARMS, "ramp": {"steps": [10, 50, 100], "every": "10m", "min_samples": 500}}
    )
    guard = Guard(config, now=T0)
    for i in range(300):
        guard.observe("sentiment", "treatment", 0.004 + i * 1e-5, True, now=T0 + 0.5)
        guard.observe("sentiment", "control", 0.003, True, now=T0 + 0.5)
    guard.tick(T0 + 1)
    snapshot = guard.snapshot()
    json.dumps(snapshot)  # serializable as is
    entry = snapshot["sentiment"]
    assert entry["traffic"] == 50.0
    assert entry["status"] == "running"
    assert entry["ramp"]["next_step"] == 100
    assert entry["ramp"]["eligible_at"] == "2027-01-15T08:10:00.000Z"
    slo = entry["slo"]
    assert slo["check"] == "pass" and slo["thresholds"]["p99_ms"] == 100
    assert slo["variants"]["treatment"]["measured"]["samples"] == 300
    assert entry["last_decision"]["check"] == "pass"
    assert guard.describe("nope") == {}


@pytest.mark.parametrize(
    ("header", "token", "ok"),
    [
        ("Bearer s3cret-token", "s3cret-token", True),
        ("bearer s3cret-token", "s3cret-token", True),
        ("Bearer  s3cret-token ", "s3cret-token", True),
        ("Bearer s3cret-tokeN", "s3cret-token", False),
        ("Bearer s3cret", "s3cret-token", False),
        ("Basic s3cret-token", "s3cret-token", False),
        ("s3cret-token", "s3cret-token", False),
        ("Bearer ", "s3cret-token", False),
        (None, "s3cret-token", False),
        ("Bearer anything", None, False),
        ("Bearer ", "", False),
    ],
)
def test_bearer_token_check(header: str | None, token: str | None, ok: bool) -> None:
    assert bearer_token_ok(header, token) is ok


def test_admin_token_comes_from_the_named_environment_variable() -> None:
    assert admin_token({"ROUTER_ADMIN_TOKEN": " abc "}, "ROUTER_ADMIN_TOKEN") == "abc"
    assert admin_token({"ROUTER_ADMIN_TOKEN": "  "}, "ROUTER_ADMIN_TOKEN") is None
    assert admin_token({}, "ROUTER_ADMIN_TOKEN") is None


def test_the_guard_fits_the_app_hooks() -> None:
    guard = Guard(registry(TWO_ARMS))
    observer: RequestObserver = guard  # what router.app expects in app[OBSERVER] ...
    traffic: TrafficPolicy = guard  # ... and in app[TRAFFIC]
    observer.observe("sentiment", "treatment", 0.01, True)  # on the guard's own clock
    assert traffic.effective_traffic("sentiment") == 50.0
    assert traffic.describe("sentiment")["status"] == "running"
    assert "traffic" not in traffic.describe("sentiment")  # GET /experiments has its own


def test_after_a_resume_calls_from_before_the_rollback_do_not_count() -> None:
    guard = Guard(registry(TWO_ARMS), now=T0)
    guard.tick(T0)
    for _ in range(100):
        guard.observe("sentiment", "treatment", 0.5, False, now=T0 + 0.5)
    (check,) = guard.tick(T0 + 1)
    assert check.check == "fail"
    guard.rollback("sentiment", now=T0 + 1.2)
    guard.resume("sentiment", now=T0 + 1.5)
    (check,) = guard.tick(T0 + 2)
    assert (check.check, check.measured["samples"]) == ("inconclusive", 0)
    assert guard.state("sentiment").consecutive_fails == 0
