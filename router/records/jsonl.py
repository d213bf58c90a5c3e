"""Buffered JSON Lines logs written by a background thread.

The request path only appends a dict to a deque; a writer thread serializes and appends the
records to their file every `flush_interval` seconds. A full buffer or a failing disk drops
records and counts them; it never raises into a request. `close()` writes what is left.

Files: `exposures-YYYY-MM-DD.jsonl` and `outcomes-YYYY-MM-DD.jsonl` (UTC date of the record's
`ts`: a record lives in the file of its own day) and `decisions.jsonl`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from router.records.timestamps import utc_now_iso

log = logging.getLogger(__name__)

Record = dict[str, Any]
PathFor = Callable[[Record], Path]
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}")
# One encoder: `json.dumps` with options builds a new one per record.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def daily_files(directory: Path, prefix: str) -> PathFor:
    """`directory/prefix-YYYY-MM-DD.jsonl`, the day taken from the record's ISO `ts`."""
    paths: dict[str, Path] = {}

    def path_for(record: Record) -> Path:
        ts = record.get("ts")
        day = ts[:10] if isinstance(ts, str) and _DAY.match(ts) else utc_now_iso()[:10]
        path = paths.get(day)
        if path is None:
            if len(paths) > 64:  # a client sending outcomes of many days must not grow this
                paths.clear()
            path = paths[day] = directory / f"{prefix}-{day}.jsonl"
        return path

    return path_for


def single_file(path: Path) -> PathFor:
    return lambda record: path


class JsonlWriter:
    """Appends records (dicts, not mutated after `write`) to JSON Lines files off the event loop."""

    def __init__(
        self,
        path_for: PathFor,
        *,
        on_drop: Callable[[int], None] = lambda count: None,
        flush_interval: float = 0.2,
        max_pending: int = 100_000,
        name: str = "events",
    ) -> None:
        self._path_for = path_for
        self._on_drop = on_drop
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._name = name
        self._pending: deque[Record] = deque()
        self._drain_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._last_warning = 0.0
        self._thread = threading.Thread(target=self._run, name=f"jsonl-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def write(self, record: Record) -> None:
        if self._closed or len(self._pending) >= self._max_pending:
            self._on_drop(1)
            return
        self._pending.append(record)

    def flush(self) -> None:
        """Write everything pending now (blocking; safe from any thread)."""
        with self._drain_lock:
            records = []
            while True:
                try:
                    records.append(self._pending.popleft())
                except IndexError:
                    break
            if records:
                self._append(records)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._flush_interval)
            self.flush()

    def _append(self, records: Iterable[Record]) -> None:
        by_path: dict[Path, list[str]] = {}
        for record in records:
            try:
                line = _ENCODER.encode(record)
            except (TypeError, ValueError) as exc:  # one bad record must not stop the writer
                self._on_drop(1)
                self._warn(f"{self._name}: dropped a record that is not JSON: {exc}")
                continue
            by_path.setdefault(self._path_for(record), []).append(line + "\n")
        for path, lines in by_path.items():
            try:
                _append_text(path, "".join(lines))
            except OSError as exc:
                self._on_drop(len(lines))
                self._warn(
                    f"{self._name}: dropped {len(lines)} record(s): cannot write {path}: {exc}"
                )

    def _warn(self, message: str) -> None:
        # A dead disk would otherwise log five times a second.
        now = time.monotonic()
        if now - self._last_warning >= 10:
            self._last_warning = now
            log.warning(message)


def _append_text(path: Path, text: str) -> None:
    # Request text may hold lone surrogates (undecodable header bytes, a JSON "\ud800"): UTF-8
    # cannot encode them, and `backslashreplace` writes them as the JSON escape `\udcff`.
    try:
        with open(path, "a", encoding="utf-8", errors="backslashreplace") as file:
            file.write(text)
    except FileNotFoundError:  # the first write, or someone removed the directory
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8", errors="backslashreplace") as file:
            file.write(text)


@dataclass
class EventLogs:
    exposures: JsonlWriter
    outcomes: JsonlWriter
    decisions: JsonlWriter

    @classmethod
    def open(
        cls, log_dir: Path, on_drop: Callable[[str, int], None], flush_interval: float = 0.2
    ) -> EventLogs:
        def writer(log: str, path_for: PathFor) -> JsonlWriter:
            return JsonlWriter(
                path_for,
                on_drop=lambda count: on_drop(log, count),
                flush_interval=flush_interval,
                name=log,
            )

        return cls(
            exposures=writer("exposures", daily_files(log_dir, "exposures")),
            outcomes=writer("outcomes", daily_files(log_dir, "outcomes")),
            decisions=writer("decisions", single_file(log_dir / "decisions.jsonl")),
        )

    def start(self) -> None:
        for writer in self._writers():
            writer.start()

    def close(self) -> None:
        for writer in self._writers():
            writer.close()

    def _writers(self) -> tuple[JsonlWriter, ...]:
        return (self.exposures, self.outcomes, self.decisions)
