"""The rollout state machine of one experiment: ramp, pause, rollback, promote (pure logic).

Inputs are check results, operator actions and registry changes, each with its time; every
transition returns the new state and the `Decision` that explains it. Nothing here reads a
clock, a file or the network.

Rules (docs/rollout.md tells them to users):

- `status` is running, paused, rolled_back or promoted. Traffic in force is 0 when rolled back,
  100 when promoted, else the ramp's override if any, else the registry's `traffic`.
- A check result updates two streaks: pass adds to passes and clears fails; fail adds to fails
  and clears passes; inconclusive clears passes and leaves fails alone (no data is no evidence
  of health, and no excuse for a failing treatment either).
- While running, `failed_checks` consecutive fails act: `on_breach: rollback` or `pause`.
- While running with a ramp, the treatment moves to the next step above the traffic in force
  when the check passes, the last `failed_checks` checks passed, `every` has passed since the
  traffic last changed, and the treatment has had `ramp.min_samples` calls at this step.
- A manual edit of `traffic` in the registry is an operator decision and wins: the ramp's
  override is dropped, the new value is in force at once (after resume, if rolled back) and the
  ramp continues from the first step above it after a full `every`.
- A new `revision` starts the rollout afresh (a rolled-back experiment runs again).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Optional

from router.guard.slo import Check, CheckResult
from router.records.decisions import decision_record

Status = Literal["running", "paused", "rolled_back", "promoted"]
Action = Literal["none", "advance", "pause", "resume", "rollback", "promote"]
Actor = Literal["slo", "ramp", "admin", "config"]
OperatorAction = Literal["pause", "resume", "rollback", "promote"]

STATUSES: tuple[Status, ...] = ("running", "paused", "rolled_back", "promoted")
OPERATOR_ACTIONS: tuple[OperatorAction, ...] = ("pause", "resume", "rollback", "promote")
_EPSILON = 1e-9  # traffic is a multiple of 0.01; compare with slack for float noise


class ActionRefused(Exception):
    """An operator action that does not apply to the experiment's state (HTTP 409)."""


@dataclass(frozen=True)
class RampPlan:
    steps: tuple[float, ...]
    every_s: float
    min_samples: int = 0

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("ramp.steps: must list at least one step")
        if any(not 0 <= s <= 100 for s in self.steps):
            raise ValueError(f"ramp.steps: must be between 0 and 100, got {list(self.steps)}")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:])):
            raise ValueError(f"ramp.steps: must be strictly increasing, got {list(self.steps)}")
        if not self.every_s > 0:
            raise ValueError(f"ramp.every: must be > 0, got {self.every_s}")
        if self.min_samples < 0:
            raise ValueError(f"ramp.min_samples: must be >= 0, got {self.min_samples}")

    def step_index(self, traffic: float) -> Optional[int]:
        """The highest step at or below `traffic`; None below the first step."""
        index = None
        for i, step in enumerate(self.steps):
            if step <= traffic + _EPSILON:
                index = i
        return index

    def next_step(self, traffic: float) -> Optional[float]:
        """The first step above `traffic`; None at or past the last one."""
        return next((s for s in self.steps if s > traffic + _EPSILON), None)


@dataclass(frozen=True)
class Policy:
    """What the registry says about acting on checks, for one experiment."""

    failed_checks: int = 3
    on_breach: Literal["rollback", "pause"] = "rollback"
    ramp: Optional[RampPlan] = None
    multi_arm: bool = False

    def __post_init__(self) -> None:
        if self.failed_checks < 1:
            raise ValueError(f"slo.failed_checks: must be >= 1, got {self.failed_checks}")
        if self.on_breach not in ("rollback", "pause"):
            raise ValueError(f"slo.on_breach: must be rollback or pause, got {self.on_breach!r}")

    @property
    def passes_to_advance(self) -> int:
        # As many passes to move forward as fails to act: one lucky window is not enough.
        return self.failed_checks


@dataclass(frozen=True)
class RolloutState:
    revision: int
    configured_traffic: float  # the registry's traffic when last seen (to notice edits)
    status: Status = "running"
    traffic: Optional[float] = None  # the ramp's (or promote's) override; None: the registry's
    step_index: Optional[int] = None
    consecutive_fails: int = 0
    consecutive_passes: int = 0
    step_samples: int = 0  # treatment calls since the traffic last changed
    last_advance_at: float = 0.0  # when the traffic in force last changed (epoch seconds)
    status_since: float = 0.0
    last_check: Optional[Check] = None
    last_check_at: Optional[float] = None
    reason: str = ""


@dataclass(frozen=True)
class Decision:
    """One check or action, as written to decisions.jsonl and shown in /experiments."""

    ts: float  # epoch seconds
    experiment: str
    action: Action
    actor: Actor
    check: Optional[Check]
    traffic: float  # treatment percent in force after the decision
    previous_traffic: Optional[float]  # set only when the decision changed the traffic
    configured_traffic: float
    status: Status
    step_index: Optional[int]
    revision: int
    reason: str
    measured: Mapping[str, Any] = field(default_factory=dict)
    thresholds: Mapping[str, Any] = field(default_factory=dict)
    variant: Optional[str] = None  # the arm whose check is reported (the worst one)

    def to_record(self) -> dict[str, Any]:
        return decision_record(
            ts=self.ts, experiment=self.experiment, check=self.check, action=self.action,
            actor=self.actor, traffic=self.traffic, previous_traffic=self.previous_traffic,
            configured_traffic=self.configured_traffic, revision=self.revision,
            reason=self.reason, rollout=(self.status, self.step_index), variant=self.variant,
            measured=self.measured, thresholds=self.thresholds,
        )  # fmt: skip


def effective_traffic(state: RolloutState, registry_traffic: Optional[float] = None) -> float:
    """Percent of enrolled units outside control in force; `registry_traffic` defaults to the
    registry value the state last saw."""
    if state.status == "rolled_back":
        return 0.0
    if state.status == "promoted":
        return 100.0
    if state.traffic is not None:
        return state.traffic
    return state.configured_traffic if registry_traffic is None else registry_traffic


def held_traffic(state: RolloutState) -> float:
    """The traffic the experiment holds when running: what a rollback returns to on resume."""
    if state.status == "promoted":
        return 100.0
    return state.traffic if state.traffic is not None else state.configured_traffic


def initial_state(
    revision: int, configured_traffic: float, policy: Policy, now: float
) -> RolloutState:
    return RolloutState(
        revision=revision,
        configured_traffic=configured_traffic,
        step_index=_step_index(policy, configured_traffic),
        last_advance_at=now,
        status_since=now,
        reason="started",
    )


def unreadable_state(
    revision: int,
    configured_traffic: float,
    policy: Policy,
    now: float,
    *,
    experiment: str,
    problem: str,
) -> tuple[RolloutState, Decision]:
    """The state when the saved one cannot be read: rolled back until an operator resumes.

    The lost state may have been a rollback; serving a possibly bad treatment is worse than
    holding an experiment at control until someone looks.
    """
    fresh = initial_state(revision, configured_traffic, policy, now)
    reason = f"saved state unreadable ({problem}); rolled back until an operator resumes"
    state = replace(fresh, status="rolled_back", reason=reason)
    return state, _decision(experiment, now, fresh, state, "rollback", "config", reason)


# --- transitions -----------------------------------------------------------------------------


def on_check(
    state: RolloutState,
    result: CheckResult,
    policy: Policy,
    *,
    experiment: str,
    now: float,
    new_samples: int = 0,
    variant: Optional[str] = None,
) -> tuple[RolloutState, Decision]:
    """Feed one check result; `new_samples` are treatment calls since the previous check."""
    fails, passes = state.consecutive_fails, state.consecutive_passes
    if result.check == "pass":
        fails, passes = 0, passes + 1
    elif result.check == "fail":
        fails, passes = fails + 1, 0
    else:
        passes = 0
    checked = replace(
        state,
        consecutive_fails=fails,
        consecutive_passes=passes,
        step_samples=state.step_samples + max(0, new_samples),
        last_check=result.check,
        last_check_at=now,
    )

    def decide(after: RolloutState, action: Action, actor: Actor, reason: str) -> Decision:
        return _decision(
            experiment, now, state, after, action, actor, reason, result=result, variant=variant
        )

    if state.status != "running":
        reason = f"{result.check}: {result.reason} (experiment {state.status}: no action)"
        return checked, decide(checked, "none", "slo", reason)

    if fails >= policy.failed_checks:
        action: Action = "rollback" if policy.on_breach == "rollback" else "pause"
        reason = f"{fails} consecutive failed checks: {result.reason}"
        after = replace(
            checked,
            status="rolled_back" if action == "rollback" else "paused",
            status_since=now,
            reason=reason,
        )
        return after, decide(after, action, "slo", reason)

    waiting = _ramp_wait(checked, policy, now)
    if waiting is None:
        return _advance(checked, policy, now, decide)
    reason = f"{result.check}: {result.reason}"
    if waiting:
        reason += f"; ramp: {waiting}"
    return checked, decide(checked, "none", "slo", reason)


def _ramp_wait(state: RolloutState, policy: Policy, now: float) -> Optional[str]:
    """Why the ramp does not advance now ("" without a ramp or past its end); None: advance."""
    ramp = policy.ramp
    if ramp is None:
        return ""
    target = ramp.next_step(effective_traffic(state))
    if target is None:
        return ""
    if state.last_check != "pass" or state.consecutive_passes < policy.passes_to_advance:
        return (
            f"{state.consecutive_passes}/{policy.passes_to_advance} passing checks "
            f"before {target:g}%"
        )
    remaining = state.last_advance_at + ramp.every_s - now
    if remaining > _EPSILON:
        return f"next step {target:g}% in {remaining:.0f} s"
    if state.step_samples < ramp.min_samples:
        return f"{state.step_samples}/{ramp.min_samples} samples at this step before {target:g}%"
    return None


Decide = Callable[[RolloutState, Action, Actor, str], Decision]


def _advance(
    state: RolloutState, policy: Policy, now: float, decide: Decide
) -> tuple[RolloutState, Decision]:
    assert policy.ramp is not None
    before = effective_traffic(state)
    target = policy.ramp.next_step(before)
    assert target is not None
    reason = (
        f"ramp {before:g}% -> {target:g}%: {state.consecutive_passes} passing checks, "
        f"{state.step_samples} samples, {now - state.last_advance_at:.0f} s at the step"
    )
    after = replace(
        state,
        traffic=target,
        step_index=policy.ramp.step_index(target),
        consecutive_passes=0,
        step_samples=0,
        last_advance_at=now,
        reason=reason,
    )
    return after, decide(after, "advance", "ramp", reason)


def on_action(
    state: RolloutState,
    action: OperatorAction,
    policy: Policy,
    *,
    experiment: str,
    now: float,
    actor: Actor = "admin",
    note: Optional[str] = None,
) -> tuple[RolloutState, Decision]:
    """An operator's pause, resume, rollback or promote; raises ActionRefused if it does not
    apply. Repeating the action the state already reflects is a no-op decision (action none)."""
    status = state.status
    reason = f"{action} by {actor}" + (f": {note}" if note else "")
    if action == "pause":
        if status in ("rolled_back", "promoted"):
            raise ActionRefused(f"cannot pause: the experiment is {status}")
        target: Status = "paused"
    elif action == "resume":
        if status == "promoted":
            raise ActionRefused(
                "cannot resume: the experiment is promoted (done); edit traffic or bump revision"
            )
        target = "running"
    elif action == "rollback":
        target = "rolled_back"
    elif action == "promote":
        if policy.multi_arm:
            raise ActionRefused(
                "cannot promote a multi-arm experiment: set the variants' weights instead"
            )
        target = "promoted"
    else:
        raise ValueError(f"unknown operator action {action!r}")

    if status == target:
        return state, _decision(
            experiment, now, state, state, "none", actor, f"{reason} (already {status})"
        )
    after = replace(state, status=target, status_since=now, reason=reason)
    if action == "resume":
        # A fresh start at the traffic held before: new streaks, and a full `every` to advance.
        after = replace(
            after, consecutive_fails=0, consecutive_passes=0, step_samples=0, last_advance_at=now
        )
    elif action == "promote":
        after = replace(after, traffic=100.0, step_index=_step_index(policy, 100.0))
    return after, _decision(experiment, now, state, after, action, actor, reason)


def on_config(
    state: RolloutState,
    policy: Policy,
    *,
    experiment: str,
    revision: int,
    configured_traffic: float,
    now: float,
) -> tuple[RolloutState, Optional[Decision]]:
    """Reconcile with the registry in force (at startup and on every reload)."""
    if revision != state.revision:
        fresh = initial_state(revision, configured_traffic, policy, now)
        reason = (
            f"revision {state.revision} -> {revision}: rollout state reset (was {state.status})"
        )
        fresh = replace(fresh, reason=reason)
        action: Action = "resume" if state.status in ("paused", "rolled_back") else "none"
        return fresh, _decision(experiment, now, state, fresh, action, "config", reason)

    if abs(configured_traffic - state.configured_traffic) > _EPSILON:
        edit = f"traffic edited {state.configured_traffic:g}% -> {configured_traffic:g}%"
        after = replace(state, configured_traffic=configured_traffic, traffic=None)
        if state.status == "rolled_back":
            reason = f"{edit} while rolled back: in force after resume"
        else:
            reason = f"{edit}: the operator's value wins over the ramp"
            after = replace(after, consecutive_passes=0, step_samples=0, last_advance_at=now)
            if state.status == "promoted":
                after = replace(after, status="running", status_since=now)
        after = replace(after, step_index=_step_index(policy, held_traffic(after)), reason=reason)
        moved_up = effective_traffic(after) > effective_traffic(state) + _EPSILON
        return after, _decision(
            experiment, now, state, after, "advance" if moved_up else "none", "config", reason
        )

    # The ramp itself may have changed.
    step = _step_index(policy, held_traffic(state))
    return (replace(state, step_index=step) if step != state.step_index else state), None


def startup_decision(state: RolloutState, *, experiment: str, now: float) -> Decision:
    """The record of the state an experiment starts in when the router starts."""
    reason = f"router started: {state.status}" + (f" ({state.reason})" if state.reason else "")
    return _decision(experiment, now, state, state, "none", "config", reason)


# --- helpers ---------------------------------------------------------------------------------


def _step_index(policy: Policy, traffic: float) -> Optional[int]:
    return policy.ramp.step_index(traffic) if policy.ramp is not None else None


def _decision(
    experiment: str,
    now: float,
    before: RolloutState,
    after: RolloutState,
    action: Action,
    actor: Actor,
    reason: str,
    *,
    result: Optional[CheckResult] = None,
    variant: Optional[str] = None,
) -> Decision:
    traffic = effective_traffic(after)
    previous = effective_traffic(before)
    return Decision(
        ts=now,
        experiment=experiment,
        action=action,
        actor=actor,
        check=result.check if result is not None else None,
        traffic=traffic,
        previous_traffic=previous if abs(previous - traffic) > _EPSILON else None,
        configured_traffic=after.configured_traffic,
        status=after.status,
        step_index=after.step_index,
        revision=after.revision,
        reason=reason,
        measured=dict(result.measured) if result is not None else {},
        thresholds=dict(result.thresholds) if result is not None else {},
        variant=variant if result is not None else None,
    )
