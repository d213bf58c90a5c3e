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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

from prometheus_client import CollectorRegistry

from router.guard.agreement import same_top_class
from router.guard.engine import Guard
from router.guard.metrics import SloMetrics
from router.guard.rollout import Decision, OperatorAction
from router.guard.state import StateStore
from router.proxy.seams import DecisionRecord
from router.records.jsonl import JsonlWriter
from router.registry.schema import RouterConfig

log = logging.getLogger(__name__)

# The task wakes at least this often, so a check is never more than this late.
MAX_SLEEP_S = 1.0


@dataclass(frozen=True)
class ActionResult:
    decision: Decision
    experiment: dict[str, Any]  # the experiment's live state after the action
    saved: bool  # the state reached the disk before the answer


@dataclass(frozen=True)
class GuardSetup:
    """A guard started from the saved states, and the store to save them to."""

    guard: Guard
    store: StateStore

    @classmethod
    async def load(cls, config: RouterConfig) -> GuardSetup:
        """Read `state_dir` (in the executor) and start the guard from what was saved."""
        store = StateStore(config.router.state_dir)
        loaded = await asyncio.get_running_loop().run_in_executor(
            None, store.load_all, list(config.experiments)
        )
        guard = Guard(config, saved=loaded.states, unreadable=loaded.unreadable)
        return cls(guard, store)


class GuardRuntime:
    def __init__(
        self, setup: GuardSetup, decisions: JsonlWriter, registry: CollectorRegistry
    ) -> None:
        self.guard = setup.guard
        self.metrics = SloMetrics(registry, setup.guard)
        self._store = setup.store
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
            failed = await loop.run_in_executor(None, self._store.save_all, dirty)
            self.guard.mark_dirty(failed)
            self._unsaved.difference_update(dirty)
            self._unsaved.update(failed)
