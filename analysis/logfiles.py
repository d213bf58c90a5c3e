"""Finding the log files, and reading the small decision log.

Exposures and outcomes rotate daily (`exposures-YYYY-MM-DD.jsonl`, optionally gzipped by a log
rotator); the engine reads those. `decisions.jsonl` is small and read here. A writer that dies
mid-line leaves an incomplete last line: it is skipped and counted, never fatal.
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

_DAILY = re.compile(r"^(exposures|outcomes)-\d{4}-\d{2}-\d{2}\.jsonl(\.gz)?$")
_DECISIONS = re.compile(r"^decisions(-[\w.-]+)?\.jsonl(\.gz)?$")


class LogError(Exception):
    """The log directory cannot be read; the message names the place."""


@dataclass(frozen=True)
class LogFiles:
    directory: Path
    exposures: tuple[Path, ...]
    outcomes: tuple[Path, ...]
    decisions: tuple[Path, ...]


def find_logs(directory: Path) -> LogFiles:
    if not directory.is_dir():
        raise LogError(f"{directory}: log directory not found")
    found: dict[str, list[Path]] = {"exposures": [], "outcomes": [], "decisions": []}
    for path in sorted(directory.iterdir()):
        match = _DAILY.match(path.name)
        if match and path.is_file():
            found[match.group(1)].append(path)
        elif _DECISIONS.match(path.name) and path.is_file():
            found["decisions"].append(path)
    return LogFiles(
        directory,
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
