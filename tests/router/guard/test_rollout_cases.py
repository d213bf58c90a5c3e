"""The rollout state machine, from the data table tests/data/rollout_cases.json."""

from __future__ import annotations

from typing import Any

import pytest

from router.guard.rollout import (
    ActionRefused,
    Decision,
    RolloutState,
    effective_traffic,
    initial_state,
    on_action,
    on_check,
    on_config,
)
from tests.router.guard.tables import case_id, check_result, load_cases, policy_from

CASES = load_cases("rollout_cases.json")
EXPERIMENT = "sentiment"


def _step(
    state: RolloutState, event: dict[str, Any], case: dict[str, Any]
) -> tuple[RolloutState, Decision | None]:
    policy = policy_from(case["policy"])
    now = float(event["t"])
    if "check" in event:
        return on_check(
            state,
            check_result(event["check"], event["samples"]),
            policy,
            experiment=EXPERIMENT,
            now=now,
            new_samples=event["samples"],
            variant="treatment",
        )
    if "action" in event:
        return on_action(state, event["action"], policy, experiment=EXPERIMENT, now=now)
    change = event["config"]
    return on_config(
        state,
        policy,
        experiment=EXPERIMENT,
        revision=change.get("revision", state.revision),
        configured_traffic=float(change.get("traffic", state.configured_traffic)),
        now=now,
    )


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_rollout_sequence(case: dict[str, Any]) -> None:
    start = case["start"]
    policy = policy_from(case["policy"])
    state = initial_state(start["revision"], float(start["traffic"]), policy, float(start["t"]))
    for index, event in enumerate(case["events"]):
        where = f"event {index} at t={event['t']}"
        if "refused" in event:
            with pytest.raises(ActionRefused, match=event["refused"]):
                _step(state, event, case)
            continue
        state, decision = _step(state, event, case)
        if event["expect"] is None:
            assert decision is None, where
            continue
        assert decision is not None, where
        record = decision.to_record()
        for key, expected in event["expect"].items():
            if key == "reason":
                assert expected in record["reason"], (where, record["reason"])
            else:
                assert record.get(key) == expected, (where, key, record)
        # The record's traffic is always the traffic in force after the decision.
        assert record["traffic"] == effective_traffic(state), where
    for key, expected in case["state"].items():
        assert getattr(state, key) == expected, (key, state)


def test_decision_record_has_the_contract_fields() -> None:
    policy = policy_from({"failed_checks": 1, "on_breach": "rollback", "ramp": None})
    state = initial_state(3, 10.0, policy, 0.0)
    _, decision = on_check(
        state,
        check_result("fail", 400),
        policy,
        experiment=EXPERIMENT,
        now=1_795_000_000.25,
        new_samples=400,
        variant="treatment",
    )
    record = decision.to_record()
    assert record == {
        "ts": "2026-11-18T11:06:40.250Z",
        "experiment": EXPERIMENT,
        "check": "fail",
        "action": "rollback",
        "actor": "slo",
        "traffic": 0.0,
        "previous_traffic": 10.0,
        "configured_traffic": 10.0,
        "status": "rolled_back",
        "step": None,
        "revision": 3,
        "variant": "treatment",
        "measured": {"samples": 400},
        "thresholds": {"min_samples": 100},
        "reason": "1 consecutive failed checks: table says fail",
    }


def test_effective_traffic_follows_status_then_override_then_registry() -> None:
    base = RolloutState(revision=1, configured_traffic=10.0)
    assert effective_traffic(base) == 10.0
    assert effective_traffic(base, 25.0) == 25.0
    assert effective_traffic(RolloutState(1, 10.0, traffic=50.0), 25.0) == 50.0
    assert effective_traffic(RolloutState(1, 10.0, status="paused", traffic=50.0)) == 50.0
    assert effective_traffic(RolloutState(1, 10.0, status="rolled_back", traffic=50.0)) == 0.0
    assert effective_traffic(RolloutState(1, 10.0, status="promoted")) == 100.0


@pytest.mark.parametrize(
    ("ramp", "message"),
    [
        ({"steps": [], "every_s": 60, "min_samples": 0}, "ramp.steps: must list at least one"),
        ({"steps": [10, 5], "every_s": 60, "min_samples": 0}, "ramp.steps: must be strictly"),
        ({"steps": [10, 150], "every_s": 60, "min_samples": 0}, "ramp.steps: must be between"),
        ({"steps": [10], "every_s": 0, "min_samples": 0}, "ramp.every: must be > 0"),
        ({"steps": [10], "every_s": 60, "min_samples": -1}, "ramp.min_samples: must be >= 0"),
    ],
)
def test_bad_ramp_names_the_field(ramp: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        policy_from({"failed_checks": 1, "on_breach": "rollback", "ramp": ramp})


def test_bad_policy_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"slo\.failed_checks: must be >= 1"):
        policy_from({"failed_checks": 0, "on_breach": "rollback"})
    with pytest.raises(ValueError, match=r"slo\.on_breach: must be rollback or pause"):
        policy_from({"failed_checks": 1, "on_breach": "explode"})
