from __future__ import annotations

import errno
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from router.records import jsonl
from router.records.jsonl import (
    EventLogs,
    JsonlWriter,
    daily_files,
    log_suffix,
    replica_in_file_names,
    single_file,
)


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_go_to_the_file_of_their_utc_day(tmp_path: Path) -> None:
    writer = JsonlWriter(daily_files(tmp_path, "exposures"), flush_interval=60)
    writer.start()
    writer.write({"ts": "2026-11-27T23:59:59.999Z", "n": 1})
    writer.write({"ts": "2026-11-28T00:00:00.000Z", "n": 2})
    writer.write({"ts": "2026-11-28T10:00:00.000Z", "n": 3})
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "exposures-2026-11-27.jsonl",
        "exposures-2026-11-28.jsonl",
    ]
    assert [r["n"] for r in read_lines(tmp_path / "exposures-2026-11-28.jsonl")] == [2, 3]


def test_close_flushes_everything_in_order(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    # A long interval: only close() can have written the records.
    writer = JsonlWriter(single_file(path), flush_interval=3600)
    writer.start()
    for index in range(5000):
        writer.write({"i": index, "text": "naïve ✓"})
    writer.close()
    records = read_lines(path)
    assert [r["i"] for r in records] == list(range(5000))
    assert records[0]["text"] == "naïve ✓"


def test_writes_happen_off_the_calling_thread(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    writer = JsonlWriter(single_file(path), flush_interval=0.01)
    writer.start()
    writer.write({"a": 1})
    deadline = time.monotonic() + 10
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read_lines(path) == [{"a": 1}]
    writer.close()


def test_a_full_disk_drops_and_counts_but_never_raises() -> None:
    dropped: list[int] = []
    # /dev/full answers every write with ENOSPC, like a full disk.
    writer = JsonlWriter(single_file(Path("/dev/full")), on_drop=dropped.append, flush_interval=60)
    writer.start()
    for index in range(10):
        writer.write({"i": index})
    writer.close()
    assert sum(dropped) == 10


def test_an_unwritable_directory_drops_and_counts(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log directory should be")
    dropped: list[int] = []
    writer = JsonlWriter(daily_files(blocker / "logs", "outcomes"), on_drop=dropped.append)
    writer.start()
    writer.write({"ts": "2026-11-28T00:00:00Z"})
    writer.close()
    assert dropped == [1]


def test_a_full_buffer_drops_new_records(tmp_path: Path) -> None:
    dropped: list[int] = []
    path = tmp_path / "x.jsonl"
    writer = JsonlWriter(single_file(path), on_drop=dropped.append, max_pending=3)
    # not started: nothing drains the buffer
    for index in range(5):
        writer.write({"i": index})
    assert dropped == [1, 1]
    writer.close()
    assert [r["i"] for r in read_lines(path)] == [0, 1, 2]
    writer.write({"i": 99})  # after close: counted, not written
    assert dropped == [1, 1, 1]


# --- a disk that fills in the middle of a write ------------------------------------------------


class SmallDisk:
    """A disk of `free` bytes for the files the writer opens, in place of the module's `open`.

    Each write stores at most `chunk` bytes (a short write, as the kernel may do), and the one
    after the last free byte fails with ENOSPC: a batch of lines is cut in the middle of one.
    Truncating a file gives its bytes back, as on a real disk."""

    def __init__(self, free: int, chunk: int = 1000, truncate_fails: bool = False) -> None:
        self.free = free
        self.chunk = chunk
        self.truncate_fails = truncate_fails

    def open(self, file: Any, mode: str = "r", buffering: int = -1, **text: Any) -> Any:
        raw = _SmallDiskFile(file, mode.replace("b", "").replace("t", ""))
        raw.disk = self
        if "b" in mode and buffering == 0:
            return raw
        buffered = io.BufferedRandom(raw) if "+" in mode else io.BufferedWriter(raw)
        return buffered if "b" in mode else io.TextIOWrapper(buffered, **text)


class _SmallDiskFile(io.FileIO):
    disk: SmallDisk

    def write(self, data: Any) -> int:
        if self.disk.free <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        part = bytes(memoryview(data)[: min(len(data), self.disk.free, self.disk.chunk)])
        written = super().write(part) or 0
        self.disk.free -= written
        return written

    def truncate(self, size: Optional[int] = None) -> int:
        if self.disk.truncate_fails:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        before = os.fstat(self.fileno()).st_size
        after = super().truncate(size)
        self.disk.free += before - after
        return after


def parsed_lines(path: Path) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The records of a file, and its lines that are not records (a last line included)."""
    records, broken = [], []
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            broken.append(line)
    return records, broken


def test_a_disk_filling_mid_write_leaves_whole_lines_and_exact_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = SmallDisk(free=50_000)
    monkeypatch.setattr(jsonl, "open", disk.open, raising=False)
    path = tmp_path / "exposures.jsonl"
    dropped: list[int] = []
    writer = JsonlWriter(single_file(path), on_drop=dropped.append, flush_interval=3600)
    # Lines of varied length, so that the disk runs out in the middle of one.
    submitted = 0
    for _ in range(100):
        for _record in range(37):
            writer.write({"i": submitted, "pad": "x" * (submitted % 97)})
            submitted += 1
        writer.flush()
    full_records, full_broken = parsed_lines(path)
    disk.free += 1 << 20  # space is back
    for _ in range(500):
        writer.write({"i": submitted, "pad": "after"})
        submitted += 1
    writer.close()

    records, broken = parsed_lines(path)
    assert full_broken == [] and broken == []  # whole lines, also while the disk was full
    assert path.read_bytes().endswith(b"\n")
    assert len(records) + sum(dropped) == submitted == 4200
    assert 0 < len(full_records) < 3700 and sum(dropped) == 3700 - len(full_records)
    # once space is back, every record is written, each on a line of its own
    assert [r["i"] for r in records[-500:]] == list(range(3700, 4200))
    assert len({r["i"] for r in records}) == len(records)
    assert (writer.written, writer.dropped) == (len(records), sum(dropped))


def test_a_cut_that_fails_still_starts_the_next_record_on_a_fresh_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The partial line cannot be cut away: it stays as one unreadable line (its records were
    # counted as dropped), and what comes after it is whole.
    disk = SmallDisk(free=1500, truncate_fails=True)
    monkeypatch.setattr(jsonl, "open", disk.open, raising=False)
    path = tmp_path / "outcomes.jsonl"
    writer = JsonlWriter(single_file(path), flush_interval=3600)
    for index in range(100):
        writer.write({"i": index, "pad": "y" * 20})
    writer.flush()
    disk.free += 1 << 20
    writer.write({"i": 100})
    writer.close()
    records, broken = parsed_lines(path)
    assert len(broken) == 1 and not broken[0].endswith(b"}")
    assert records[-1] == {"i": 100}
    assert writer.written == len(records) and writer.written + writer.dropped == 101


def test_a_log_ending_mid_line_gets_the_next_record_on_a_fresh_line(tmp_path: Path) -> None:
    # A router killed in the middle of a write left half a line; the next one appends.
    path = tmp_path / "exposures-2026-11-28.jsonl"
    path.write_bytes(b'{"i":0}\n{"i":1,"te')
    writer = JsonlWriter(single_file(path), flush_interval=3600)
    writer.write({"i": 2})
    writer.close()
    assert path.read_bytes() == b'{"i":0}\n{"i":1,"te\n{"i":2}\n'
    # the half line stays for the analysis to count as an unreadable line
    records, broken = parsed_lines(path)
    assert records == [{"i": 0}, {"i": 2}] and broken == [b'{"i":1,"te']


def test_written_and_dropped_are_counted_per_record(tmp_path: Path) -> None:
    written: list[int] = []
    dropped: list[int] = []
    writer = JsonlWriter(
        single_file(tmp_path / "x.jsonl"), on_write=written.append, on_drop=dropped.append,
        flush_interval=3600, max_pending=5,
    )  # fmt: skip
    for index in range(7):  # the buffer holds 5: two dropped
        writer.write({"i": index})
    writer.flush()
    circular: dict[str, Any] = {}
    circular["self"] = circular
    writer.write(circular)  # not JSON: dropped
    writer.write({"i": {1, 2}})  # a set is written as its str()
    writer.close()
    writer.write({"i": 8})  # after close: dropped
    assert (sum(written), sum(dropped)) == (6, 4) == (writer.written, writer.dropped)

    full = JsonlWriter(single_file(Path("/dev/full")), on_write=written.append)
    full.write({"i": 1})
    full.close()
    assert (full.written, full.dropped) == (0, 1)


# --- a replica of a fleet (router.fleet) ------------------------------------------------------


def test_a_replica_names_its_files_and_ends_every_record_with_its_id(tmp_path: Path) -> None:
    logs = EventLogs.open(tmp_path, on_drop=lambda log, count: None, replica="node-1:8080-w2")
    logs.start()
    logs.exposures.write({"ts": "2026-11-28T10:00:00.000Z", "request_id": "r1", "unit": "u"})
    logs.outcomes.write({"ts": "2026-11-27T23:00:00.000Z", "unit": "u", "metric": "m"})
    logs.decisions.write({"ts": "2026-11-28T10:00:01.000Z", "action": "none"})
    logs.close()
    # `:` is `_` in file names only; the record keeps the id as it is.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "decisions.node-1_8080-w2.jsonl",
        "exposures-2026-11-28.node-1_8080-w2.jsonl",
        "outcomes-2026-11-27.node-1_8080-w2.jsonl",
    ]
    exposures = (tmp_path / "exposures-2026-11-28.node-1_8080-w2.jsonl").read_bytes()
    assert exposures == (
        b'{"ts":"2026-11-28T10:00:00.000Z","request_id":"r1","unit":"u","replica":"node-1:8080-w2"}\n'
    )
    [decision] = read_lines(tmp_path / "decisions.node-1_8080-w2.jsonl")
    assert decision == {
        "ts": "2026-11-28T10:00:01.000Z",
        "action": "none",
        "replica": "node-1:8080-w2",
    }


def test_without_a_replica_names_and_lines_are_as_ever(tmp_path: Path) -> None:
    logs = EventLogs.open(tmp_path, on_drop=lambda log, count: None)
    logs.start()
    logs.exposures.write({"ts": "2026-11-28T10:00:00.000Z", "unit": "u"})
    logs.decisions.write({"ts": "2026-11-28T10:00:01.000Z"})
    logs.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "decisions.jsonl", "exposures-2026-11-28.jsonl",
    ]  # fmt: skip
    exposures = (tmp_path / "exposures-2026-11-28.jsonl").read_bytes()
    assert exposures == b'{"ts":"2026-11-28T10:00:00.000Z","unit":"u"}\n'


def test_the_replica_field_is_one_key_in_any_record(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    writer = JsonlWriter(single_file(path), flush_interval=3600, replica="r1")
    writer.write({})
    writer.write({"replica": "relayed", "n": 1})  # a record that names its own: kept
    writer.write({"text": "naïve } ✓"})
    writer.close()
    assert path.read_text(encoding="utf-8").splitlines() == [
        '{"replica":"r1"}',
        '{"replica":"relayed","n":1}',
        '{"text":"naïve } ✓","replica":"r1"}',
    ]
    assert writer.written == 3


def test_replica_ids_in_file_names() -> None:
    assert log_suffix(None) == ".jsonl"
    assert log_suffix("router-a") == ".router-a.jsonl"
    assert log_suffix("10.0.0.7:8080-w1") == ".10.0.0.7_8080-w1.jsonl"
    assert replica_in_file_names("[::1]:8080/x") == "___1__8080_x"
