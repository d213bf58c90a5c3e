"""Hot reload of experiments.yaml: a file watch (polled, within a second) and SIGHUP.

A new registry replaces the old one only if it is valid, changes no setting that needs a
restart, and reshuffles no running experiment without a new `revision`. Otherwise the old one
keeps serving and the error shows in the log, in `GET /experiments` (`config.last_reload`: the
error, and since when the file is not in force) and in `router_config_last_reload_success` (0).
Requests in flight finish on the snapshot they started on.

The watch survives anything the file holds or any bug a reload runs into: a failed reload is
logged, counted and shown, and the next edit is picked up as usual. The file is read and parsed
in a worker thread (the loop never waits on the disk or the parser) and never more than
router.registry.loading.MAX_REGISTRY_BYTES of it: a FIFO, a device or a huge file is refused
from its metadata, before it is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Optional

from router.proxy.live_registry import LiveRegistry, ReloadStatus
from router.proxy.seams import DecisionRecord, ReloadHook, TrafficPolicy
from router.records.decisions import decision_record
from router.records.jsonl import JsonlWriter
from router.records.metrics import RouterMetrics
from router.records.timestamps import utc_now_iso
from router.registry.loading import ConfigError, load_config, read_registry
from router.registry.problems import exception_line
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
        """What the file is now, read in a worker thread: the loop never waits on the disk."""
        return await asyncio.get_running_loop().run_in_executor(None, self._read_fingerprint)

    async def watch_forever(self, seen: Fingerprint) -> None:
        """Reload whenever the file's fingerprint differs from `seen`; runs until cancelled.
        `seen` is taken before the app serves, so no edit made after that can be missed."""
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                now = await self.fingerprint()
                if now != seen:
                    seen = now
                    await self.reload("file")
            except Exception:  # reload() catches its own; this is a bug, and the watch goes on
                log.exception("registry watch: a poll of %s failed", self._path)

    def _read_fingerprint(self) -> Fingerprint:
        """The content's hash; for a file that cannot be read as a registry (gone, not a regular
        file, too large) a hash of its metadata, so that it is not read again and again, and
        the next change to it is still seen."""
        # The content itself, not mtime: two saves within one timestamp tick look the same to
        # stat, and the file is small enough to read four times a second.
        try:
            return hashlib.sha256(read_registry(self._path)).digest()
        except ConfigError as refused:
            try:
                info = os.stat(self._path)
            except OSError as exc:
                return hashlib.sha256(f"unreadable: {exc}".encode()).digest()
            meta = (info.st_dev, info.st_ino, info.st_mode, info.st_size, info.st_mtime_ns)
            return hashlib.sha256(f"refused: {meta} {refused}".encode()).digest()

    async def reload(self, source: str) -> bool:
        """Load the file again and put it in force if acceptable; True if it was.

        Never raises (but CancelledError): whatever goes wrong is logged, counted and shown."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            old = self._live.config()
            try:
                new = await self._load_acceptable(old)
                if new != old:
                    self._live.install(new)  # builds the new snapshot, then swaps it in
            except ConfigError as exc:
                log.error(
                    "registry reload (%s) refused, the previous one keeps serving: %s", source, exc
                )
                self._failed(source, str(exc))
                return False
            except Exception as exc:  # a bug: the old registry still serves, the watch goes on
                log.exception("registry reload (%s) failed, the previous one keeps serving", source)
                self._failed(source, f"{self._path}: reload failed: {exception_line(exc)}")
                return False
            if new != old:
                # No await since the install: no request sees the registry before the hook ran.
                try:
                    for record in self._on_install(old, new):
                        self._decisions.write(record)
                except Exception as exc:
                    log.exception("registry reload (%s): in force, but its hook failed", source)
                    error = f"{self._path}: in force, but the reload hook failed: "
                    self._failed(source, error + exception_line(exc), in_force=True)
                    return True
                log.warning("registry reloaded (%s): %s", source, self._path)
            self._metrics.config_reloads.labels("ok").inc()
            self._metrics.config_last_reload_success.set(1)
            self._live.status = ReloadStatus(ok=True, source=source)
            return True

    async def _load_acceptable(self, old: RouterConfig) -> RouterConfig:
        """The file's registry, read and validated in a worker thread; ConfigError if it is
        invalid or a running router must not put it in place of `old`."""
        new = await asyncio.get_running_loop().run_in_executor(None, load_config, self._path)
        problems = reload_problems(old, new)
        if problems:
            raise ConfigError(str(self._path), problems)
        return new

    def _failed(self, source: str, error: str, *, in_force: bool = False) -> None:
        """Count and show a failed reload; `in_force`: the file is in force all the same."""
        self._metrics.config_reloads.labels("error").inc()
        self._metrics.config_last_reload_success.set(0)
        before = self._live.status
        now = utc_now_iso()
        if in_force:
            since = None
        elif before.not_in_force_since is not None:
            since = before.not_in_force_since  # the file has not been in force since then
        else:
            since = now
        self._live.status = ReloadStatus(
            ok=False, source=source, at=now, error=error, not_in_force_since=since
        )

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
