"""`FleetRuntime`: the SLO guard of one replica of a fleet (router.fleet in the registry).

Like Flagger's scheduler: one decision maker, the state in a shared store, measurements from
the whole fleet. Every replica (and every worker process) runs the request path alone, from
the rollout state it holds; Redis (router.fleet.store) is never on a request's way.

- Shared state: a rollout state changes only by a compare-and-set on its version in Redis;
  the change is published, and every replica puts it in force within a second (at once on the
  published message; a re-read every RESYNC_S catches a missed one). A replica started later
  starts from the fleet's state, not from its registry.
- One decider: the replica holding the lease (LEASE_S, renewed every SYNC_S) runs the checks
  and the ramp, over its own calls and those every replica publishes every SYNC_S
  (`SlidingWindow.export`), and writes each decision once, to its own decisions log, only
  after the state it leads to is written. When it dies, another takes the lease within
  LEASE_S + SYNC_S.
- Operator actions on any replica apply to the fleet (compare-and-set, retried on a newer
  state).
- Redis unreachable: every replica keeps serving with the state it last knew, takes no ramp
  step and lifts no rollback; it may still roll back or pause on its own calls to protect its
  users, and publishes that when Redis is back, after re-reading the fleet's state. A state the
  fleet lost (an empty Redis after a restart) is written back from what the replicas know.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Gauge
from redis.exceptions import RedisError

from router.fleet.store import FleetStore
from router.guard.engine import ActionRefused, RemoteWindows
from router.guard.rollout import Decision, OperatorAction
from router.guard.runtime import ActionResult, GuardRuntime, GuardSetup
from router.guard.slo import WindowExport
from router.guard.state import StateFileError, state_from_json, state_to_json
from router.proxy.seams import DecisionRecord
from router.records.jsonl import JsonlWriter
from router.registry.schema import FleetSettings, RouterConfig

log = logging.getLogger(__name__)

SYNC_S = 0.5  # publish measurements, hold the lease
RESYNC_S = 1.0  # re-read every state: the safety net for a missed message
LEASE_S = 3.0
START_SYNC_TIMEOUT_S = 3.0
ACT_ATTEMPTS = 3
PROTECTIVE: tuple[OperatorAction, ...] = ("rollback", "pause")
# Cut off from Redis: the errors that say so.
UNREACHABLE = (RedisError, OSError, asyncio.TimeoutError)


class FleetRuntime(GuardRuntime):
    def __init__(
        self,
        setup: GuardSetup,
        decisions: JsonlWriter,
        registry: CollectorRegistry,
        *,
        fleet: FleetSettings,
        replica: str,
        experiments: Iterable[str],
    ) -> None:
        super().__init__(setup, decisions, registry)
        self.replica = replica
        self.in_sync = False
        self.leading = False
        self.last_sync_at: Optional[float] = None
        self._shared = FleetStore(fleet.redis, fleet.name)
        self._experiments = list(experiments)
        self._versions: dict[str, int] = {}  # the fleet's version of each state in force here
        self._pending: dict[str, OperatorAction] = {}  # taken while cut off, to publish
        self._unpublished: set[str] = set()  # changed by a reload here
        self._tasks: list[asyncio.Task[None]] = []
        in_sync = Gauge(
            "router_fleet_in_sync",
            "1 while this replica reaches the fleet's Redis and holds the fleet's state.",
            registry=registry,
        )
        in_sync.set_function(lambda: float(self.in_sync))
        leading = Gauge(
            "router_fleet_leader",
            "1 while this replica holds the lease to decide the fleet's checks and ramps.",
            registry=registry,
        )
        leading.set_function(lambda: float(self.leading))

    # --- lifecycle ---------------------------------------------------------------------------

    async def join(self) -> None:
        """Before serving: take the fleet's states (or give it ours), if Redis answers soon."""
        try:
            await asyncio.wait_for(self._resync(), START_SYNC_TIMEOUT_S)
        except UNREACHABLE as exc:
            log.warning(
                "fleet: Redis unreachable at start (%s); serving the state in state_dir", exc
            )

    def start(self) -> None:
        super().start()
        self._tasks = [
            asyncio.ensure_future(self._sync_forever()),
            asyncio.ensure_future(self._follow_changes()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await super().stop()
        if self.leading:
            with contextlib.suppress(*UNREACHABLE):
                await self._shared.release_lease(self.replica)  # the next decider need not wait
        await self._shared.close()

    def describe_fleet(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "in_sync": self.in_sync,
            "leader": self.leading,
            "last_sync_ago_s": (
                round(time.time() - self.last_sync_at, 3) if self.last_sync_at else None
            ),
        }

    # --- the guard's round (GuardRuntime's task calls step) ----------------------------------

    async def step(self) -> list[Decision]:
        try:
            if self.in_sync and self.leading:
                remote = _by_experiment(await self._shared.read_windows(self.replica))
                decisions = self.guard.tick(remote=remote)
                decisions = await self._publish(decisions)
            elif self.in_sync:
                self.guard.tick(
                    checks=False
                )  # the start's decisions: the fleet's history is the decider's
                decisions = await self._publish([])
            else:
                decisions = self._protect_alone()
        except UNREACHABLE as exc:
            self._cut_off(exc)
            decisions = []
        await self._save()
        return decisions

    def _protect_alone(self) -> list[Decision]:
        """Cut off: check this replica's own calls; no ramp step; keep what protects users."""
        decisions = self.guard.tick(may_advance=False)
        for decision in decisions:
            if decision.action in PROTECTIVE:
                self._pending[decision.experiment] = decision.action  # type: ignore[assignment]
        self._record(decisions)
        return decisions

    async def _publish(self, decisions: list[Decision]) -> list[Decision]:
        """Write the states these decisions (and reloads here) led to; record the decisions of
        the states written. A state changed meanwhile by another replica wins: it is put in
        force here, and the decision made on the older one is dropped."""
        changed = {d.experiment for d in decisions} | self._unpublished
        self._unpublished = set()
        lost = set()
        for experiment in changed:
            if not await self._write(experiment):
                lost.add(experiment)
        if lost:
            await self._refresh(lost)
        kept = [d for d in decisions if d.experiment not in lost]
        self._record(kept)
        return kept

    # --- operator actions --------------------------------------------------------------------

    async def act(
        self, experiment: str, action: OperatorAction, note: Optional[str]
    ) -> ActionResult:
        if self.in_sync:
            try:
                return await self._act_for_fleet(experiment, action, note)
            except UNREACHABLE as exc:
                self._cut_off(exc)
        if action not in PROTECTIVE:
            raise ActionRefused(
                "the fleet's Redis is unreachable: only rollback and pause are taken now (on "
                "this replica, published when Redis is back); retry the action later"
            )
        result = await super().act(experiment, action, note)
        self._pending[experiment] = action
        return result

    async def _act_for_fleet(
        self, experiment: str, action: OperatorAction, note: Optional[str]
    ) -> ActionResult:
        for _ in range(ACT_ATTEMPTS):
            before = self.guard.state(experiment)
            decision = self.guard.act(experiment, action, note=note)
            if await self._write(experiment):
                self._record([decision])
                await asyncio.get_running_loop().run_in_executor(None, self._decisions.flush)
                await self._save()
                return ActionResult(decision, self.describe(experiment), True)
            self.guard.adopt(experiment, before)
            await self._refresh([experiment])  # a newer state: act on it
        raise ActionRefused("the experiment's state kept changing on other replicas; retry")

    # --- reloads -----------------------------------------------------------------------------

    def on_reload(self, old: RouterConfig, new: RouterConfig) -> list[DecisionRecord]:
        records = super().on_reload(old, new)
        self._experiments = list(new.experiments)
        self._unpublished.update(record["experiment"] for record in records)
        return records

    # --- keeping in sync ---------------------------------------------------------------------

    async def _sync_forever(self) -> None:
        last_resync = 0.0
        while True:
            try:
                if not self.in_sync or time.monotonic() - last_resync >= RESYNC_S:
                    await self._resync()
                    last_resync = time.monotonic()
                await self._shared.publish_windows(self.replica, self.guard.export_windows())
                leading = await self._shared.hold_lease(self.replica, LEASE_S)
                if leading and not self.leading:
                    log.warning("fleet: %s now decides the fleet's checks", self.replica)
                    self.guard.begin_deciding()
                self.leading = leading
                self.last_sync_at = time.time()
            except UNREACHABLE as exc:
                self._cut_off(exc)
            await asyncio.sleep(SYNC_S)

    async def _follow_changes(self) -> None:
        while True:
            try:
                async for experiment in self._shared.changes():
                    if self.in_sync and experiment in self._experiments:
                        await self._refresh([experiment])
            except UNREACHABLE as exc:
                self._cut_off(exc)
            await asyncio.sleep(SYNC_S)

    def _cut_off(self, exc: BaseException) -> None:
        if self.in_sync:
            log.warning("fleet: Redis unreachable (%s); serving the last state known", exc)
        self.in_sync = False
        self.leading = False

    async def _resync(self) -> None:
        """Put the fleet's states in force; write back those it lacks; then publish what was
        done while cut off (on the fleet's state as it is now)."""
        fleet = await self._shared.read_states(self._experiments)
        for experiment, (version, doc) in fleet.items():
            if doc is None:
                self._versions[experiment] = 0
                if not await self._write(experiment):
                    await self._refresh([experiment])
            elif version != self._versions.get(experiment):
                self._adopt(experiment, version, doc)
        if not self.in_sync:
            log.warning("fleet: %s in sync with the fleet", self.replica)
        self.in_sync = True
        for experiment, action in list(self._pending.items()):
            self._pending.pop(experiment)
            with contextlib.suppress(ActionRefused):
                await self._act_for_fleet(
                    experiment, action, f"taken by {self.replica} while Redis was unreachable"
                )

    async def _refresh(self, experiments: Iterable[str]) -> None:
        fleet = await self._shared.read_states(experiments)
        for experiment, (version, doc) in fleet.items():
            if doc is not None and version > self._versions.get(experiment, 0):
                self._adopt(experiment, version, doc)

    def _adopt(self, experiment: str, version: int, doc: Mapping[str, Any]) -> None:
        try:
            state = state_from_json(doc, experiment)
        except StateFileError as exc:
            log.error(
                "fleet: state of %s version %d unreadable (%s); kept mine", experiment, version, exc
            )
            return
        self._versions[experiment] = version
        self.guard.adopt(experiment, state)

    async def _write(self, experiment: str) -> bool:
        """Compare-and-set this replica's state of `experiment` as the fleet's."""
        doc = state_to_json(
            experiment, self.guard.state(experiment), self._assignment.get(experiment)
        )
        written, version = await self._shared.write_state(
            experiment, doc, self._versions.get(experiment, 0)
        )
        if written:
            self._versions[experiment] = version
        return written


def _by_experiment(payloads: list[dict[str, Any]]) -> RemoteWindows:
    """Replicas' `Guard.export_windows()` -> experiment -> arm -> their exports."""
    merged: dict[str, dict[str, list[WindowExport]]] = {}
    for payload in payloads:
        for experiment, arms in payload.items():
            for arm, exported in arms.items():
                merged.setdefault(experiment, {}).setdefault(arm, []).append(exported)
    return merged
