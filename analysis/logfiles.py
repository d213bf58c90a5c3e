"""Finding the log files, and reading the small decision log.

Exposures and outcomes rotate daily (`exposures-YYYY-MM-DD.jsonl`, optionally gzipped by a log
rotator); the engine reads those. `decisions.jsonl` is small and read here. A writer that dies
mid-line leaves an incomplete last line: it is skipped and counted, never fatal.

A router in a fleet names its files by its replica id (`exposures-YYYY-MM-DD.<replica>.jsonl`,
`outcomes-YYYY-MM-DD.<replica>.jsonl`, `decisions.<replica>.jsonl`; router.records.jsonl), so
one directory may hold the files of several replicas, beside files without a replica. The
replica that counts is the one in each record; the name only keeps the files apart. Logs may
also lie in several directories (one per replica, or shipped from several nodes): `find_logs`
takes them all, and a file reached twice (the same directory given twice, or through a link)
is read once.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# The replica part: router.records.jsonl.replica_in_file_names spells ids with these characters.
_REPLICA = r"(?:\.[A-Za-z0-9_.-]+)?"
_DAILY = re.compile(rf"^(exposures|outcomes)-\d{{4}}-\d{{2}}-\d{{2}}{_REPLICA}\.jsonl(\.gz)?$")
# `decisions-<anything>.jsonl`: a rotated decision log.
_DECISIONS = re.compile(rf"^decisions(-[\w.-]+)?{_REPLICA}\.jsonl(\.gz)?$")


class LogError(Exception):
    """The log directory cannot be read; the message names the place."""


@dataclass(frozen=True)
class LogFiles:
    directories: tuple[Path, ...]
    exposures: tuple[Path, ...]
    outcomes: tuple[Path, ...]
    decisions: tuple[Path, ...]


def find_logs(*directories: Path) -> LogFiles:
    """The log files of one or more directories, in the order given (each sorted by name)."""
    for directory in directories:
        if not directory.is_dir():
            raise LogError(f"{directory}: log directory not found")
    found: dict[str, list[Path]] = {"exposures": [], "outcomes": [], "decisions": []}
    seen: set[tuple[int, int]] = set()
    for directory in directories:
        for path in sorted(directory.iterdir()):
            match = _DAILY.match(path.name)
            kind = match.group(1) if match else "decisions" if _DECISIONS.match(path.name) else None
            if kind is None or not path.is_file():
                continue
            stat = path.stat()
            if (stat.st_dev, stat.st_ino) in seen:  # the same file, found again
                continue
            seen.add((stat.st_dev, stat.st_ino))
            found[kind].append(path)
    return LogFiles(
        tuple(directories),
        tuple(found["exposures"]),
        tuple(found["outcomes"]),
        tuple(found["decisions"]),
    )


@dataclass(frozen=True)
class DecisionRecords:
    records: list[tuple[str, Mapping[str, Any]]]  # (file:line, record)
    unreadable: int
    truncated_last_lines: int


def read_decisions(paths: tuple[Path, ...]) -> DecisionRecords:
    records: list[tuple[str, Mapping[str, Any]]] = []
    unreadable = truncated = 0
    for path in paths:
        with _open_text(path) as file:
            lines = file.read().split("\n")
        # The text after the last newline is an incomplete line (or "" when the file is whole).
        tail = lines.pop()
        if tail.strip():
            truncated += 1
            unreadable += 1
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                unreadable += 1
                continue
            if isinstance(record, dict):
                records.append((f"{path.name}:{number}", record))
            else:
                unreadable += 1
    return DecisionRecords(records, unreadable, truncated)


def last_line_truncated(path: Path) -> bool:
    """Whether the file ends inside a line (the writer died mid-record)."""
    if path.suffix == ".gz":
        tail = _gzip_tail(path)
        return bool(tail) and tail != b"\n"
    with open(path, "rb") as file:
        file.seek(0, 2)
        if file.tell() == 0:
            return False
        file.seek(-1, 2)
        return file.read(1) != b"\n"


def gzip_complete(path: Path) -> bool:
    """Whether every gzip member in the file runs to its end-of-stream marker and checksum.

    A copy or a rotation cut short leaves a stream that simply stops: a reader sees fewer
    lines, possibly ending on a whole one, and nothing else tells that records are missing.
    """
    decompressor = zlib.decompressobj(wbits=31)
    with open(path, "rb") as file:
        while True:
            block = file.read(1 << 20)
            if not block:
                return decompressor.eof
            while block:
                try:
                    decompressor.decompress(block)
                except zlib.error:
                    return False
                block = decompressor.unused_data if decompressor.eof else b""
                if block:  # the next member of a multi-member file
                    decompressor = zlib.decompressobj(wbits=31)


def _gzip_tail(path: Path) -> bytes:
    """The last bytes of a gzip file's content (it has to be decompressed to get there)."""
    tail = b""
    for chunk in _gzip_chunks(path):
        tail = (tail + chunk)[-1:]
    return tail


def _gzip_chunks(path: Path) -> Iterator[bytes]:
    decompressor = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header, auto-detected
    with open(path, "rb") as file:
        while True:
            block = file.read(1 << 20)
            if not block:
                return
            yield decompressor.decompress(block)


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")
