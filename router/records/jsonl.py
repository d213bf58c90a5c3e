"""Buffered JSON Lines logs written by a background thread.

The request path only appends a dict to a deque; a writer thread serializes and appends the
records to their file every `flush_interval` seconds. A full buffer or a failing disk drops
records and counts them; it never raises into a request. `close()` writes what is left.

A file only ever holds whole lines, and every record is counted once, as written or dropped:
- a write cut short (a disk filling up in the middle of a batch) is cut back to its last whole
  line: the records before it are written, the rest dropped, and the next batch (once there is
  space again) starts on a fresh line;
- a file that does not end with a newline (a router killed in the middle of a write, or a cut
  that itself failed) gets a newline before the next record: the broken line stays for the
  analysis to count as unreadable, and no record is glued onto it.

Files: `exposures-YYYY-MM-DD.jsonl` and `outcomes-YYYY-MM-DD.jsonl` (UTC date of the record's
`ts`: a record lives in the file of its own day) and `decisions.jsonl`.

In a fleet (router.fleet) each router process has a replica id: its files are named by it,
`exposures-YYYY-MM-DD.<replica>.jsonl`, `outcomes-YYYY-MM-DD.<replica>.jsonl` and
`decisions.<replica>.jsonl`, so that replicas and workers can share a directory, and each of its
records ends with `"replica":"<id>"`. The field is a constant piece of text built once and put
in place of the closing brace of the encoded record, in the writer thread: the request path
does nothing more for it. In file names only, a character other than a letter, a digit, `_`,
`.` or `-` (the `:` of the default `host:port`) is written `_`; the record keeps the id exact.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from router.records.timestamps import utc_now_iso

log = logging.getLogger(__name__)

Record = dict[str, Any]
PathFor = Callable[[Record], Path]
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}")
_NOT_IN_FILE_NAMES = re.compile(r"[^A-Za-z0-9_.-]")
# One encoder: `json.dumps` with options builds a new one per record.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def replica_in_file_names(replica: str) -> str:
    """The replica id as log file names spell it: `host:port` is `host_port`."""
    return _NOT_IN_FILE_NAMES.sub("_", replica)


def log_suffix(replica: Optional[str]) -> str:
    """What ends a log file's name: `.jsonl`, or `.<replica>.jsonl` in a fleet."""
    return ".jsonl" if replica is None else f".{replica_in_file_names(replica)}.jsonl"


def daily_files(directory: Path, prefix: str, replica: Optional[str] = None) -> PathFor:
    """`directory/prefix-YYYY-MM-DD.jsonl` (`...YYYY-MM-DD.<replica>.jsonl` with a replica id),
    the day taken from the record's ISO `ts`."""
    paths: dict[str, Path] = {}
    suffix = log_suffix(replica)

    def path_for(record: Record) -> Path:
        ts = record.get("ts")
        day = ts[:10] if isinstance(ts, str) and _DAY.match(ts) else utc_now_iso()[:10]
        path = paths.get(day)
        if path is None:
            if len(paths) > 64:  # a client sending outcomes of many days must not grow this
                paths.clear()
            path = paths[day] = directory / f"{prefix}-{day}{suffix}"
        return path

    return path_for


def single_file(path: Path) -> PathFor:
    return lambda record: path


class JsonlWriter:
    """Appends records (dicts, not mutated after `write`) to JSON Lines files off the event loop.

    With `replica`, every line ends with `"replica":"<id>"` (unless the record has its own)."""

    def __init__(
        self,
        path_for: PathFor,
        *,
        on_drop: Callable[[int], None] = lambda count: None,
        on_write: Callable[[int], None] = lambda count: None,
        flush_interval: float = 0.2,
        max_pending: int = 100_000,
        name: str = "events",
        replica: Optional[str] = None,
    ) -> None:
        self._path_for = path_for
        # What takes the place of a record's closing brace: the replica field, built once.
        self._end = None if replica is None else f',"replica":{_ENCODER.encode(replica)}}}\n'
        self._on_drop = on_drop
        self._on_write = on_write
        # Records whole in their file, and records dropped: with those pending, every record
        # ever given to `write`. Both change under this lock (drops come from two threads).
        self._counts_lock = threading.Lock()
        self.written = 0
        self.dropped = 0
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
            self._drop(1)
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
        end = self._end
        for record in records:
            try:
                line = _ENCODER.encode(record)
            except (TypeError, ValueError) as exc:  # one bad record must not stop the writer
                self._drop(1)
                self._warn(f"{self._name}: dropped a record that is not JSON: {exc}")
                continue
            if end is None or "replica" in record:
                line += "\n"
            elif len(line) > 2:  # '{"ts":...}' -> '{"ts":...,"replica":"r1"}'
                line = line[:-1] + end
            else:  # '{}'
                line = "{" + end[1:]
            by_path.setdefault(self._path_for(record), []).append(line)
        for path, lines in by_path.items():
            # Request text may hold lone surrogates (undecodable header bytes, a JSON "\ud800"):
            # UTF-8 cannot encode them, and `backslashreplace` writes them as the JSON escape
            # `\udcff`. JSON text never holds a raw newline: each "\n" ends one record.
            data = "".join(lines).encode("utf-8", "backslashreplace")
            written, error = _append_lines(path, data)
            if written:
                self._wrote(written)
            if error is not None:
                self._drop(len(lines) - written)
                self._warn(
                    f"{self._name}: dropped {len(lines) - written} of {len(lines)} record(s): "
                    f"cannot write {path}: {error}"
                )

    def _wrote(self, count: int) -> None:
        with self._counts_lock:
            self.written += count
        self._on_write(count)

    def _drop(self, count: int) -> None:
        with self._counts_lock:
            self.dropped += count
        self._on_drop(count)

    def _warn(self, message: str) -> None:
        # A dead disk would otherwise log five times a second.
        now = time.monotonic()
        if now - self._last_warning >= 10:
            self._last_warning = now
            log.warning(message)


def _append_lines(path: Path, data: bytes) -> tuple[int, Optional[OSError]]:
    """Appends `data`, whole lines, to `path`. Returns how many of its lines are now whole in
    the file, and the error that kept the others out (None when all of them are in)."""
    try:
        file = _open_for_append(path)
    except OSError as exc:
        return 0, exc
    try:
        return _append_to(file, data)
    except OSError as exc:  # the file's size or last byte could not be read: nothing written
        return 0, exc
    finally:
        with contextlib.suppress(OSError):  # write() took the bytes: they count as written
            file.close()


def _open_for_append(path: Path) -> io.FileIO:
    # Unbuffered: each write() says how many bytes reached the file. Read access for the last
    # byte (_ends_a_line). Tests put a small disk in the place of `open`.
    try:
        return open(path, "ab+", buffering=0)
    except FileNotFoundError:  # the first write, or someone removed the directory
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "ab+", buffering=0)


def _append_to(file: io.FileIO, data: bytes) -> tuple[int, Optional[OSError]]:
    start = os.fstat(file.fileno()).st_size
    # A broken last line (a writer killed mid-record, a cut that failed) stays; ours start after.
    head = b"" if _ends_a_line(file, start) else b"\n"
    done, error = _write_all(file, head + data)
    if error is None:
        return data.count(b"\n"), None
    written = done - len(head)  # bytes of `data` in the file (< 0: not even the head)
    if written <= 0:
        return 0, error
    whole = data.rfind(b"\n", 0, written) + 1  # bytes of `data` in whole lines
    if whole < written:
        # On failure the part line stays, unreadable; the next append starts after it.
        with contextlib.suppress(OSError):
            file.truncate(start + len(head) + whole)
    return data.count(b"\n", 0, whole), error


def _ends_a_line(file: io.FileIO, size: int) -> bool:
    return size == 0 or os.pread(file.fileno(), 1, size - 1) == b"\n"


def _write_all(file: io.FileIO, data: bytes) -> tuple[int, Optional[OSError]]:
    """(bytes written, None), or (bytes written before it, the error) when a write fails."""
    view = memoryview(data)
    done = 0
    try:
        while done < len(view):
            count = file.write(view[done:])  # may take fewer bytes than given
            if not count:  # no progress: never loop forever
                raise OSError(errno.EIO, f"{file.name}: no byte written")
            done += count
    except OSError as exc:
        return done, exc
    return done, None


@dataclass
class EventLogs:
    exposures: JsonlWriter
    outcomes: JsonlWriter
    decisions: JsonlWriter

    @classmethod
    def open(
        cls,
        log_dir: Path,
        on_drop: Callable[[str, int], None],
        flush_interval: float = 0.2,
        on_write: Callable[[str, int], None] = lambda log, count: None,
        replica: Optional[str] = None,
    ) -> EventLogs:
        """`on_drop(log, count)` and `on_write(log, count)` count each log's records dropped
        and written (called from the writer threads, and `on_drop` from `write` too).
        `replica`: this process's id in a fleet, in its file names and records (None: alone)."""

        def writer(log: str, path_for: PathFor) -> JsonlWriter:
            return JsonlWriter(
                path_for,
                on_drop=lambda count: on_drop(log, count),
                on_write=lambda count: on_write(log, count),
                flush_interval=flush_interval,
                name=log,
                replica=replica,
            )

        return cls(
            exposures=writer("exposures", daily_files(log_dir, "exposures", replica)),
            outcomes=writer("outcomes", daily_files(log_dir, "outcomes", replica)),
            decisions=writer("decisions", single_file(log_dir / f"decisions{log_suffix(replica)}")),
        )

    def start(self) -> None:
        for writer in self._writers():
            writer.start()

    def close(self) -> None:
        for writer in self._writers():
            writer.close()

    def _writers(self) -> tuple[JsonlWriter, ...]:
        return (self.exposures, self.outcomes, self.decisions)
