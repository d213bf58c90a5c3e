"""Hot reload of experiments.yaml: a file watch (polled, within a second) and SIGHUP.

A new registry replaces the old one only if it is valid, changes no setting that needs a
restart, and reshuffles no running experiment without a new `revision`. Otherwise the old one
keeps serving and the error shows in the log, in `GET /experiments` and in
`router_config_last_reload_success`. Requests in flight finish on the snapshot they started on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from pathlib import Path
from typing import Optional

from router.proxy.live_registry import LiveRegistry, ReloadStatus
from router.proxy.seams import DecisionRecord, ReloadHook, TrafficPolicy
from router.records.decisions import decision_record
from router.records.jsonl import JsonlWriter
from router.records.metrics import RouterMetrics
from router.registry.loading import ConfigError, load_config
from router.registry.rules import reload_problems
from router.registry.schema import RouterConfig

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
Fingerprint = Optional[bytes]


class ConfigReloader:
    def __init__(
        self,
        path: Path,
        live: LiveRegistry,
        metrics: RouterMetrics,
        decisions: JsonlWriter,
        traffic: TrafficPolicy,
        poll_interval: float = POLL_INTERVAL_S,
        on_install: Optional[ReloadHook] = None,
    ) -> None:
        self._path = path
        self._live = live
        self._metrics = metrics
        self._decisions = decisions
        self._traffic = traffic
        self._poll_interval = poll_interval
        self._on_install: ReloadHook = on_install or self.traffic_change_records
        # Created on first use: on Python 3.9 a Lock binds to the loop current at creation.
        self._lock: Optional[asyncio.Lock] = None
        self._signalled: set[asyncio.Task[bool]] = set()

    async def fingerprint(self) -> Fingerprint:
        """The file's content hash, read in a worker thread: the loop never waits on the disk."""
        return await asyncio.get_running_loop().run_in_executor(None, self._read_fingerprint)

    async def watch_forever(self, seen: Fingerprint) -> None:
        """Reload whenever the file's content differs from `seen`; runs until cancelled.
        `seen` is taken before the app serves, so no edit made after that can be missed."""
        while True:
            await asyncio.sleep(self._poll_interval)
            now = await self.fingerprint()
            if now != seen:
                seen = now
                await self.reload("file")

    def _read_fingerprint(self) -> Fingerprint:
        # The content itself, not mtime: two saves within one timestamp tick look the same to
        # stat, and the file is small enough to read four times a second.
        try:
            return hashlib.sha256(self._path.read_bytes()).digest()
        except OSError:
            return None

    async def reload(self, source: str) -> bool:
        """Load the file again and put it in force if acceptable; True if it was."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            old = self._live.config()
            try:
                new = await asyncio.get_running_loop().run_in_executor(
                    None, load_config, self._path
                )
                problems = reload_problems(old, new)
                if problems:
                    raise ConfigError(str(self._path), problems)
            except ConfigError as exc:
                self._metrics.config_reloads.labels("error").inc()
                self._metrics.config_last_reload_success.set(0)
                self._live.status = ReloadStatus(ok=False, source=source, error=str(exc))
                log.error(
                    "registry reload (%s) refused, the previous one keeps serving: %s", source, exc
                )
                return False
            if new != old:
                self._live.install(new)
                # No await between the two: no request sees the registry before the hook ran.
                for record in self._on_install(old, new):
                    self._decisions.write(record)
                log.warning("registry reloaded (%s): %s", source, self._path)
            self._metrics.config_reloads.labels("ok").inc()
            self._metrics.config_last_reload_success.set(1)
            self._live.status = ReloadStatus(ok=True, source=source)
            return True

    def bind(self, on_install: ReloadHook) -> None:
        """Replace the default reload hook (router.proxy.seams.ReloadHook)."""
        self._on_install = on_install

    def traffic_change_records(self, old: RouterConfig, new: RouterConfig) -> list[DecisionRecord]:
        """The default hook: one `actor: config` decision per experiment whose traffic changed."""
        records = []
        for name, experiment in new.experiments.items():
            before = old.experiments.get(name)
            previous = before.configured_traffic() if before is not None else None
            configured = experiment.configured_traffic()
            if previous == configured:
                continue
            raised = previous is not None and configured > previous
            was = "added" if previous is None else f"traffic {previous:g}% -> {configured:g}%"
            records.append(
                decision_record(
                    ts=time.time(), experiment=name, check=None,
                    action="advance" if raised else "none", actor="config",
                    traffic=self._traffic.effective_traffic(name), previous_traffic=previous,
                    configured_traffic=configured, revision=experiment.revision,
                    reason=f"registry edited: {was}",
                )
            )  # fmt: skip
        return records

    def install_sighup(self) -> bool:
        """Reload on SIGHUP; False where signals cannot be handled (not the main thread)."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError, ValueError):
            return False
        return True

    def _on_sighup(self) -> None:
        task = asyncio.ensure_future(self.reload("sighup"))
        self._signalled.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._signalled.discard)

    def remove_sighup(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
