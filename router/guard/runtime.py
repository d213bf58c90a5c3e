"""The SLO guard inside the running router: its checks, decision records and saved state.

`router.guard.engine.Guard` is pure logic (no clock loop, files or aiohttp). `GuardRuntime`
runs it:

- a background task calls `guard.tick()` whenever a check is due (and at least every second),
  writes each decision to decisions.jsonl, counts it in `router_decisions_total`, and saves the
  states that changed, in the executor;
- `act` (the admin API) takes an operator action, writes and flushes its decision and saves the
  state before returning, so an answered rollback survives an immediate restart;
- `on_reload` (the `router.proxy.seams.ReloadHook`) puts a reloaded registry into the guard and
  returns the guard's decision records; the task then saves the changed states;
- as the `router.proxy.seams.ShadowListener` it counts shadow copies and compares the candidate's
  answer with control's (router.guard.agreement).

Every save takes the dirty states and writes them under one asyncio.Lock, so an older state
never lands after a newer one. `stop()` ends the task and runs a last round (due checks,
decisions, saves) before the event logs close.

Each state is saved with its experiment's assignment (`assignment_facets`: a digest of the salt,
the variants and the layer slice, what router.registry.rules.reshuffle_problems guards on a
reload). `GuardSetup.load` refuses to start, with `StartRefused`, when the registry would
reshuffle units against what was saved: a changed salt, variants or layer with the same
`revision`, or a `revision` lower than the saved one. It refuses before it changes anything on
disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from prometheus_client import CollectorRegistry

from router.guard.agreement import same_top_class
from router.guard.engine import Guard
from router.guard.metrics import SloMetrics
from router.guard.rollout import Decision, OperatorAction
from router.guard.state import LoadedStates, StateStore
from router.proxy.seams import DecisionRecord
from router.records.jsonl import JsonlWriter
from router.registry.layers import layer_slices
from router.registry.schema import RouterConfig

log = logging.getLogger(__name__)

# The task wakes at least this often, so a check is never more than this late.
MAX_SLEEP_S = 1.0


@dataclass(frozen=True)
class ActionResult:
    decision: Decision
    experiment: dict[str, Any]  # the experiment's live state after the action
    saved: bool  # the state reached the disk before the answer


# --- what decides assignment, kept with the state ---------------------------------------------


def assignment_facets(config: RouterConfig) -> dict[str, dict[str, str]]:
    """Per experiment, a digest of each setting that decides a unit's arm: the salt, the
    variants (names and weights, in order; two arms: none, their traffic may move) and the
    layer with the experiment's slice of it. The same settings as
    router.registry.rules.reshuffle_problems, which refuses their change on a reload."""
    slices = layer_slices(config.experiments)
    facets = {}
    for name, experiment in config.experiments.items():
        variants = (
            [[v.name, v.weight] for v in experiment.variants]
            if experiment.variants is not None
            else None
        )
        layer_slice = slices.get(name)
        layer = [experiment.layer, list(layer_slice) if layer_slice is not None else None]
        facets[name] = {
            "salt": _digest(experiment.salt),
            "variants": _digest(variants),
            "layer": _digest(layer),
        }
    return facets


def _digest(value: Any) -> str:
    # A digest, not the value: the salt need not be readable in state_dir.
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:32]


class StartRefused(Exception):
    """The registry would reshuffle units against the saved rollout state; one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def restart_problems(
    config: RouterConfig,
    loaded: LoadedStates,
    facets: dict[str, dict[str, str]],
    store: StateStore,
) -> list[str]:
    """Why the router must not start on `config` with these saved states (none: it may).

    The rules of a reload (router.registry.rules.reshuffle_problems) against the last run: a
    restart is a reload whose old registry is what the saved state remembers."""
    problems = []
    for name, experiment in config.experiments.items():
        saved = loaded.states.get(name)
        if saved is None:
            continue
        place, where = f"experiments.{name}", store.path_for(name)
        if experiment.revision < saved.revision:
            problems.append(
                f"{place}.revision: went down from {saved.revision} (the rollout state in "
                f"{where}); restore revision {saved.revision}"
            )
            continue
        before = loaded.assignments.get(name)
        if experiment.revision > saved.revision or before is None:
            continue  # a new revision reshuffles on purpose; an old file knows no assignment
        for setting, digest in facets[name].items():
            if setting in before and before[setting] != digest:
                problems.append(
                    f"{place}.{setting}: changed since the last run (the rollout state in "
                    f"{where}); bump revision (now {saved.revision}) to reshuffle units"
                )
    return problems


# --- the guard at startup ----------------------------------------------------------------------


@dataclass(frozen=True)
class GuardSetup:
    """A guard started from the saved states, the store to save them to, and the assignment
    of each experiment (assignment_facets) to save with them."""

    guard: Guard
    store: StateStore
    assignment: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    async def load(cls, config: RouterConfig) -> GuardSetup:
        """Read `state_dir` (in the executor) and start the guard from what was saved; raises
        StartRefused (having changed nothing on disk) if the registry would reshuffle units
        against it."""
        store = StateStore(config.router.state_dir)
        loop = asyncio.get_running_loop()
        loaded = await loop.run_in_executor(None, store.read_all, list(config.experiments))
        facets = assignment_facets(config)
        problems = restart_problems(config, loaded, facets, store)
        if problems:
            raise StartRefused(problems)
        await loop.run_in_executor(None, store.set_aside_unreadable, loaded)
        guard = Guard(config, saved=loaded.states, unreadable=loaded.unreadable)
        # Files written before the assignment was kept: save it now, for the next start.
        guard.mark_dirty(name for name in loaded.states if name not in loaded.assignments)
        return cls(guard, store, facets)


class GuardRuntime:
    def __init__(
        self, setup: GuardSetup, decisions: JsonlWriter, registry: CollectorRegistry
    ) -> None:
        self.guard = setup.guard
        self.metrics = SloMetrics(registry, setup.guard)
        self._store = setup.store
        self._assignment = setup.assignment
        self._decisions = decisions
        self._unsaved: set[str] = set()  # experiments whose last save failed
        # Created in start(): on Python 3.9 they bind to the loop current at creation.
        self._lock: Optional[asyncio.Lock] = None
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._stopping = False

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """End the task, then run a last round: due checks, their decisions, unsaved states."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
        await self.step()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            delay = min(self.guard.seconds_until_due(), MAX_SLEEP_S)
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.step()
            except Exception:  # a bug here must not end the guard for good
                log.exception("SLO guard: a round of checks failed")
                await asyncio.sleep(MAX_SLEEP_S)

    async def step(self) -> list[Decision]:
        """Run the checks that are due, write their decisions, save what changed."""
        decisions = self.guard.tick()
        self._record(decisions)
        await self._save()
        return decisions

    # --- admin -------------------------------------------------------------------------------

    async def act(
        self, experiment: str, action: OperatorAction, note: Optional[str]
    ) -> ActionResult:
        """An operator action; raises UnknownExperiment or ActionRefused (router.guard.engine)."""
        decision = self.guard.act(experiment, action, note=note)
        self._record([decision])
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._decisions.flush)
        await self._save()
        return ActionResult(
            decision=decision,
            experiment=self.describe(experiment),
            saved=experiment not in self._unsaved,
        )

    def describe(self, experiment: str) -> dict[str, Any]:
        return {
            "name": experiment,
            "traffic": self.guard.effective_traffic(experiment),
            **self.guard.describe(experiment),
        }

    # --- reloads (router.proxy.seams.ReloadHook) ---------------------------------------------

    def on_reload(self, old: RouterConfig, new: RouterConfig) -> list[DecisionRecord]:
        """The guard's decisions for a reloaded registry; the task saves the changed states."""
        # Before the guard's save: a new revision's state goes with the new assignment.
        self._assignment = assignment_facets(new)
        decisions = self.guard.apply_config(new)
        self.metrics.record_decisions(decisions)
        if self._wake is not None:
            self._wake.set()
        return [decision.to_record() for decision in decisions]

    # --- shadow copies (router.proxy.seams.ShadowListener) -----------------------------------

    def shadow_answered(
        self,
        experiment: str,
        variant: str,
        control: Optional[dict[str, Any]],
        shadow: Optional[dict[str, Any]],
    ) -> None:
        self.metrics.record_shadow(experiment, "ok" if shadow is not None else "error")
        if control is None or shadow is None:
            return
        agree = same_top_class(control, shadow)
        if agree is None:  # answers of another shape: nothing to compare
            return
        self.guard.observe_agreement(experiment, variant, agree)
        self.metrics.record_agreement(experiment, agree)

    def shadow_dropped(self, experiment: str, variant: str) -> None:
        self.metrics.record_shadow(experiment, "dropped")

    # --- internals ---------------------------------------------------------------------------

    def _record(self, decisions: Iterable[Decision]) -> None:
        decisions = list(decisions)
        for decision in decisions:
            self._decisions.write(decision.to_record())
        self.metrics.record_decisions(decisions)

    async def _save(self) -> None:
        assert self._lock is not None, "start() first"
        async with self._lock:
            dirty = self.guard.take_dirty()
            if not dirty:
                return
            loop = asyncio.get_running_loop()
            failed = await loop.run_in_executor(None, self._store.save_all, dirty, self._assignment)
            self.guard.mark_dirty(failed)
            self._unsaved.difference_update(dirty)
            self._unsaved.update(failed)
