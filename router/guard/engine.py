"""`Guard`: the SLO guard and ramp of every experiment, behind one object the app holds.

No aiohttp, no files, no clock of its own unless asked: every method takes `now` (epoch
seconds; default `clock()`, i.e. time.time). The app wires it like this (docs/rollout.md):

- request path: `observe(experiment, variant, latency_s, ok)` after every backend call (it is
  a `router.proxy.seams.RequestObserver`), `effective_traffic(experiment)` before assigning (it
  is a `router.proxy.seams.TrafficPolicy`, with `describe` for GET /experiments);
- a background task: `decisions = tick()` every `seconds_until_due()` (or simply every 0.5 s),
  then write `d.to_record()` of each to decisions.jsonl and `SloMetrics.record_decisions`, then
  `store.save_all(guard.take_dirty())` in an executor (`mark_dirty(failed)` on failure);
- admin endpoints: `act(experiment, action)` -> Decision (raises UnknownExperiment,
  ActionRefused);
- on reload: `apply_config(new_config)` -> decisions to write.

The registry is read through the Protocols below (the attribute names of
router.registry.schema), so this module does not depend on how the registry is parsed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Protocol

from router.guard.rollout import (
    ActionRefused,
    Actor,
    Decision,
    OperatorAction,
    Policy,
    RampPlan,
    RolloutState,
    Status,
    effective_traffic,
    initial_state,
    on_action,
    on_check,
    on_config,
    startup_decision,
    unreadable_state,
)
from router.guard.slo import (
    CheckResult,
    SlidingWindow,
    SloConfigLike,
    SloThresholds,
    WindowExport,
    WindowStats,
    evaluate,
    worst,
)
from router.records.timestamps import utc_iso

__all__ = ["ActionRefused", "Guard", "UnknownExperiment"]

# Slices per window: the window's edge is exact to within 1/WINDOW_SLICES of its length.
WINDOW_SLICES = 10
MAX_RESOLUTION_S = 1.0
# What seconds_until_due says when no experiment has an slo (nothing to check).
IDLE_WAIT_S = 60.0
# Other processes' windows: experiment -> arm -> their SlidingWindow.export()s.
RemoteWindows = Mapping[str, Mapping[str, Sequence[WindowExport]]]


# --- the registry as the guard reads it ------------------------------------------------------


class VariantLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def weight(self) -> float: ...


class RampLike(Protocol):
    @property
    def steps(self) -> Sequence[float]: ...
    @property
    def every_s(self) -> float: ...
    @property
    def min_samples(self) -> int: ...


class SloLike(SloConfigLike, Protocol):
    @property
    def interval_s(self) -> float: ...
    @property
    def window_s(self) -> float: ...
    @property
    def failed_checks(self) -> int: ...
    @property
    def on_breach(self) -> str: ...


class ExperimentLike(Protocol):
    @property
    def revision(self) -> int: ...
    @property
    def mode(self) -> str: ...
    @property
    def traffic(self) -> Optional[float]: ...
    @property
    def variants(self) -> Optional[Sequence[VariantLike]]: ...
    @property
    def ramp(self) -> Optional[RampLike]: ...
    @property
    def slo(self) -> Optional[SloLike]: ...


class RegistryLike(Protocol):
    @property
    def experiments(self) -> Mapping[str, ExperimentLike]: ...


def arm_names(experiment: ExperimentLike) -> tuple[str, ...]:
    """Arm names as the request path reports them, control first."""
    if experiment.variants is not None:
        return tuple(v.name for v in experiment.variants)
    return ("control", "treatment")


def configured_traffic(experiment: ExperimentLike) -> float:
    """Percent outside control as the registry says (multi-arm: 100 - control's weight)."""
    if experiment.variants is not None:
        return round(100 - experiment.variants[0].weight, 2)
    return experiment.traffic or 0.0


def policy_of(experiment: ExperimentLike) -> Policy:
    ramp = experiment.ramp
    slo = experiment.slo
    return Policy(
        failed_checks=slo.failed_checks if slo is not None else 3,
        on_breach="pause" if slo is not None and slo.on_breach == "pause" else "rollback",
        ramp=(
            RampPlan(tuple(float(s) for s in ramp.steps), ramp.every_s, ramp.min_samples)
            if ramp is not None
            else None
        ),
        multi_arm=experiment.variants is not None,
    )


# --- views -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmView:
    name: str
    evaluated: bool  # checked against the SLO (every arm but control)
    stats: Optional[WindowStats]  # at the last check
    result: Optional[CheckResult]  # at the last check, for evaluated arms


@dataclass(frozen=True)
class ExperimentView:
    name: str
    status: Status
    traffic: float
    arms: tuple[ArmView, ...]


class UnknownExperiment(LookupError):
    """No experiment of that name in the registry in force (HTTP 404)."""


# --- the guard -------------------------------------------------------------------------------


@dataclass
class _Tracked:
    """Runtime of one experiment: its windows, its rollout state and the last check."""

    name: str
    policy: Policy
    state: RolloutState
    thresholds: Optional[SloThresholds] = None
    interval_s: float = 0.0
    window_s: float = 0.0
    arms: tuple[str, ...] = ()
    windows: dict[str, SlidingWindow] = field(default_factory=dict)
    next_check_at: float = 0.0
    counted: Optional[int] = 0  # evaluated arms' calls seen by the previous check
    stats: dict[str, WindowStats] = field(default_factory=dict)
    results: dict[str, CheckResult] = field(default_factory=dict)
    last_decision: Optional[Decision] = None

    @property
    def evaluated(self) -> tuple[str, ...]:
        return self.arms[1:]


class Guard:
    def __init__(
        self,
        config: RegistryLike,
        *,
        saved: Optional[Mapping[str, RolloutState]] = None,
        unreadable: Optional[Mapping[str, str]] = None,
        now: Optional[float] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Start with the registry and the states saved by the last run (StateStore.load_all).

        The decisions of the start (one per experiment: the state it starts in, or what the
        registry changed while the router was down) come out of the first `tick()`.
        """
        self._clock = clock
        self._tracked: dict[str, _Tracked] = {}
        self._windows: dict[str, dict[str, SlidingWindow]] = {}  # the request path's lookup
        self._parked: dict[str, RolloutState] = {}  # states of experiments not in the registry
        self._dirty: set[str] = set()
        self._outbox: list[Decision] = []
        start = self._now(now)
        saved = dict(saved or {})
        unreadable = dict(unreadable or {})
        for name, experiment in config.experiments.items():
            policy = policy_of(experiment)
            traffic = configured_traffic(experiment)
            if name in unreadable:
                state, decision = unreadable_state(
                    experiment.revision,
                    traffic,
                    policy,
                    start,
                    experiment=name,
                    problem=unreadable[name],
                )
                self._dirty.add(name)
            elif name in saved:
                state, change = on_config(
                    saved[name],
                    policy,
                    experiment=name,
                    revision=experiment.revision,
                    configured_traffic=traffic,
                    now=start,
                )
                decision = change or startup_decision(state, experiment=name, now=start)
                if state != saved[name]:
                    self._dirty.add(name)
            else:
                state = initial_state(experiment.revision, traffic, policy, start)
                decision = startup_decision(state, experiment=name, now=start)
                self._dirty.add(name)
            tracked = _Tracked(name, policy, state)
            self._configure(tracked, experiment, start)
            self._tracked[name] = tracked
            self._emit(tracked, decision)

    # --- request path ------------------------------------------------------------------------

    def observe(
        self, experiment: str, variant: str, latency_s: float, ok: bool, now: Optional[float] = None
    ) -> None:
        """One backend call of an arm: its latency and whether it answered well."""
        windows = self._windows.get(experiment)
        if windows is None:
            return
        window = windows.get(variant)
        if window is not None:
            window.record(latency_s, ok, self._clock() if now is None else now)

    def observe_agreement(
        self, experiment: str, variant: str, agree: bool, now: Optional[float] = None
    ) -> None:
        """A shadow answer compared with control's (same top class or not)."""
        window = self._windows.get(experiment, {}).get(variant)
        if window is not None:
            window.record_agreement(agree, self._clock() if now is None else now)

    def effective_traffic(self, experiment: str) -> float:
        tracked = self._tracked.get(experiment)
        return effective_traffic(tracked.state) if tracked is not None else 0.0

    # --- the periodic check ------------------------------------------------------------------

    def seconds_until_due(self, now: Optional[float] = None) -> float:
        """Seconds until the next check is due (or start decisions wait): sleep that long."""
        if self._outbox:
            return 0.0
        current = self._now(now)
        due = [t.next_check_at for t in self._tracked.values() if t.thresholds is not None]
        return max(0.0, min(due) - current) if due else IDLE_WAIT_S

    def tick(
        self,
        now: Optional[float] = None,
        *,
        checks: bool = True,
        remote: Optional[RemoteWindows] = None,
        may_advance: bool = True,
    ) -> list[Decision]:
        """Run the checks that are due; returns their decisions, after those of the start.

        In a fleet (router.fleet): only the replica that decides runs `checks`, over its own
        calls and those of the others (`remote`: per experiment and arm, their
        `SlidingWindow.export`s); a replica cut off from the fleet checks its own calls but
        takes no ramp step (`may_advance=False`). (Operator actions and reloads return their
        decisions directly.)"""
        current = self._now(now)
        for tracked in self._tracked.values():
            if tracked.thresholds is None or current < tracked.next_check_at:
                continue
            following = tracked.next_check_at + tracked.interval_s
            # A late tick does not run the missed checks in a burst.
            tracked.next_check_at = (
                following if following > current else current + tracked.interval_s
            )
            if checks:
                others = (remote or {}).get(tracked.name, {})
                self._check(tracked, current, others, may_advance)
        decisions, self._outbox = self._outbox, []
        return decisions

    def _check(
        self,
        tracked: _Tracked,
        now: float,
        others: Mapping[str, Sequence[WindowExport]],
        may_advance: bool,
    ) -> None:
        assert tracked.thresholds is not None
        windows = {
            arm: window.merged(others[arm]) if others.get(arm) else window
            for arm, window in tracked.windows.items()
        }
        stats = {arm: window.snapshot(now, tracked.window_s) for arm, window in windows.items()}
        control = stats[tracked.arms[0]]
        results = {
            arm: evaluate(tracked.thresholds, stats[arm], control) for arm in tracked.evaluated
        }
        variant, result = worst(results)
        counted = sum(windows[arm].total for arm in tracked.evaluated)
        # None: the first check since this guard began to decide counts no calls as new.
        previous = counted if tracked.counted is None else tracked.counted
        new_samples, tracked.counted = counted - previous, counted
        tracked.stats, tracked.results = stats, results
        policy = tracked.policy if may_advance else replace(tracked.policy, ramp=None)
        state, decision = on_check(
            tracked.state,
            result,
            policy,
            experiment=tracked.name,
            now=now,
            new_samples=new_samples,
            variant=variant,
        )
        self._set_state(tracked, state)
        self._emit(tracked, decision)

    # --- operator actions --------------------------------------------------------------------

    def act(
        self,
        experiment: str,
        action: OperatorAction,
        actor: Actor = "admin",
        note: Optional[str] = None,
        now: Optional[float] = None,
    ) -> Decision:
        """Pause, resume, rollback or promote; raises UnknownExperiment or ActionRefused.

        `note` (e.g. an operator's reason from the request body) is added to the decision's
        reason."""
        tracked = self._tracked.get(experiment)
        if tracked is None:
            raise UnknownExperiment(f"no experiment named {experiment!r}")
        state, decision = on_action(
            tracked.state,
            action,
            tracked.policy,
            experiment=experiment,
            now=self._now(now),
            actor=actor,
            note=note,
        )
        self._set_state(tracked, state)
        tracked.last_decision = decision
        if decision.action == "resume":
            self._fresh_windows(tracked)
        return decision

    def pause(
        self, experiment: str, actor: Actor = "admin", now: Optional[float] = None
    ) -> Decision:
        return self.act(experiment, "pause", actor, now=now)

    def resume(
        self, experiment: str, actor: Actor = "admin", now: Optional[float] = None
    ) -> Decision:
        return self.act(experiment, "resume", actor, now=now)

    def rollback(
        self, experiment: str, actor: Actor = "admin", now: Optional[float] = None
    ) -> Decision:
        return self.act(experiment, "rollback", actor, now=now)

    def promote(
        self, experiment: str, actor: Actor = "admin", now: Optional[float] = None
    ) -> Decision:
        return self.act(experiment, "promote", actor, now=now)

    # --- registry reloads --------------------------------------------------------------------

    def apply_config(self, config: RegistryLike, now: Optional[float] = None) -> list[Decision]:
        """Put a new registry in force; returns the decisions it caused (traffic edits, new
        revisions). Call it before the request path uses the new registry."""
        current = self._now(now)
        decisions: list[Decision] = []
        for name in list(self._tracked):
            if name not in config.experiments:
                tracked = self._tracked.pop(name)
                self._windows.pop(name, None)
                self._parked[name] = tracked.state
        for name, experiment in config.experiments.items():
            policy = policy_of(experiment)
            tracked_or_none = self._tracked.get(name)
            if tracked_or_none is None:
                previous = self._parked.pop(name, None)
                state = previous or initial_state(
                    experiment.revision, configured_traffic(experiment), policy, current
                )
                tracked = _Tracked(name, policy, state)
                self._tracked[name] = tracked
                self._dirty.add(name)
            else:
                tracked = tracked_or_none
            tracked.policy = policy
            self._configure(tracked, experiment, current)
            state, decision = on_config(
                tracked.state,
                policy,
                experiment=name,
                revision=experiment.revision,
                configured_traffic=configured_traffic(experiment),
                now=current,
            )
            new_revision = state.revision != tracked.state.revision
            self._set_state(tracked, state)
            if decision is not None:
                tracked.last_decision = decision
                decisions.append(decision)
            if new_revision:
                self._fresh_windows(tracked)
        return decisions

    def _configure(self, tracked: _Tracked, experiment: ExperimentLike, now: float) -> None:
        """Thresholds and windows for the experiment's slo; windows survive unless their
        length or the arms change."""
        slo = experiment.slo
        arms = arm_names(experiment)
        if slo is None:
            tracked.thresholds, tracked.windows, tracked.arms = None, {}, arms
            self._windows.pop(tracked.name, None)
            return
        tracked.thresholds = SloThresholds.from_config(slo)
        reshaped = tracked.arms != arms or tracked.window_s != slo.window_s
        if tracked.interval_s != slo.interval_s:
            tracked.next_check_at = now + slo.interval_s
        tracked.arms, tracked.window_s, tracked.interval_s = arms, slo.window_s, slo.interval_s
        if reshaped or not tracked.windows:
            self._fresh_windows(tracked)

    def _fresh_windows(self, tracked: _Tracked) -> None:
        """Empty windows: after a resume or a new revision, calls from before do not count."""
        if tracked.thresholds is None:
            return
        resolution = min(MAX_RESOLUTION_S, tracked.window_s / WINDOW_SLICES)
        tracked.windows = {arm: SlidingWindow(tracked.window_s, resolution) for arm in tracked.arms}
        tracked.counted = 0
        self._windows[tracked.name] = tracked.windows

    # --- a fleet ----------------------------------------------------------------------------

    def adopt(self, experiment: str, state: RolloutState) -> bool:
        """Put in force a state another replica decided (router.fleet); no decision is
        emitted, it was written where it was made. True if the state changed."""
        tracked = self._tracked.get(experiment)
        if tracked is None or state == tracked.state:
            return False
        resumed = state.status == "running" and tracked.state.status != "running"
        new_revision = state.revision != tracked.state.revision
        tracked.state = state
        self._dirty.add(experiment)  # saved in state_dir too: where a cut-off restart begins
        if resumed or new_revision:
            self._fresh_windows(tracked)
        return True

    def export_windows(self) -> dict[str, dict[str, WindowExport]]:
        """This process's calls, per experiment and arm, for the replica that decides."""
        return {
            name: {arm: window.export() for arm, window in tracked.windows.items()}
            for name, tracked in self._tracked.items()
            if tracked.windows
        }

    def begin_deciding(self) -> None:
        """This guard now decides for the fleet: its next checks count ramp samples from the
        fleet's calls as they are then, not from zero."""
        for tracked in self._tracked.values():
            tracked.counted = None

    # --- persistence -------------------------------------------------------------------------

    def take_dirty(self) -> dict[str, RolloutState]:
        """States changed since the last call, to save (StateStore.save_all, off the loop)."""
        dirty = {name: self._tracked[name].state for name in self._dirty if name in self._tracked}
        self._dirty.clear()
        return dirty

    def mark_dirty(self, experiments: Iterable[str]) -> None:
        """Save these again next time (their last save failed)."""
        self._dirty.update(experiments)

    def state(self, experiment: str) -> RolloutState:
        tracked = self._tracked.get(experiment)
        if tracked is None:
            raise UnknownExperiment(f"no experiment named {experiment!r}")
        return tracked.state

    # --- what /experiments and /metrics show -------------------------------------------------

    def views(self) -> list[ExperimentView]:
        return [
            ExperimentView(
                name=t.name,
                status=t.state.status,
                traffic=effective_traffic(t.state),
                arms=tuple(
                    ArmView(arm, arm in t.evaluated, t.stats.get(arm), t.results.get(arm))
                    for arm in t.arms
                ),
            )
            for t in self._tracked.values()
        ]

    def describe(self, experiment: str) -> dict[str, Any]:
        """Live rollout state of one experiment, merged into its GET /experiments entry."""
        tracked = self._tracked.get(experiment)
        if tracked is None:
            return {}
        state = tracked.state
        return {
            "status": state.status,
            "status_since": utc_iso(state.status_since),
            "reason": state.reason,
            "ramp": self._describe_ramp(tracked),
            "slo": self._describe_slo(tracked),
            "last_decision": (
                tracked.last_decision.to_record() if tracked.last_decision is not None else None
            ),
        }

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every experiment's `describe`, with the traffic in force."""
        return {
            name: {"traffic": effective_traffic(t.state), **self.describe(name)}
            for name, t in self._tracked.items()
        }

    @staticmethod
    def _describe_ramp(tracked: _Tracked) -> Optional[dict[str, Any]]:
        ramp = tracked.policy.ramp
        if ramp is None:
            return None
        state = tracked.state
        following = ramp.next_step(effective_traffic(state)) if state.status == "running" else None
        return {
            "steps": list(ramp.steps),
            "step": state.step_index,
            "next_step": following,
            "every_s": ramp.every_s,
            "min_samples": ramp.min_samples,
            "step_samples": state.step_samples,
            "eligible_at": (
                utc_iso(state.last_advance_at + ramp.every_s) if following is not None else None
            ),
        }

    @staticmethod
    def _describe_slo(tracked: _Tracked) -> Optional[dict[str, Any]]:
        if tracked.thresholds is None:
            return None
        state = tracked.state
        variants: dict[str, Any] = {}
        for arm in tracked.arms:
            stats = tracked.stats.get(arm)
            result = tracked.results.get(arm)
            variants[arm] = {
                "check": result.check if result is not None else None,
                "measured": stats.as_measured() if stats is not None else None,
                "reasons": list(result.reasons) if result is not None else [],
            }
        return {
            "check": state.last_check,
            "checked_at": (
                utc_iso(state.last_check_at) if state.last_check_at is not None else None
            ),
            "interval_s": tracked.interval_s,
            "window_s": tracked.window_s,
            "consecutive_fails": state.consecutive_fails,
            "consecutive_passes": state.consecutive_passes,
            "failed_checks": tracked.policy.failed_checks,
            "on_breach": tracked.policy.on_breach,
            "thresholds": tracked.thresholds.as_record(),
            "variants": variants,
        }

    # --- internals ---------------------------------------------------------------------------

    def _now(self, now: Optional[float]) -> float:
        return self._clock() if now is None else now

    def _set_state(self, tracked: _Tracked, state: RolloutState) -> None:
        if state != tracked.state:
            tracked.state = state
            self._dirty.add(tracked.name)

    def _emit(self, tracked: _Tracked, decision: Decision) -> None:
        tracked.last_decision = decision
        self._outbox.append(decision)


# --- operator authentication -----------------------------------------------------------------
