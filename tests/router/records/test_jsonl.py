from __future__ import annotations

import json
import time
from pathlib import Path

from router.records.jsonl import JsonlWriter, daily_files, single_file


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
