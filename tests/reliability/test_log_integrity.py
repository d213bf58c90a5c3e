"""The logs hold whole lines with exact counts, and no client makes them grow without bound.

The real router (`python -m router`) in front of the real Paddle Serving servers:
- its log directory on a real small disk (a 256 KiB tmpfs) that fills up in the middle of a
  write under thousands of requests, then gets space back: every line of every file parses,
  and written + dropped = answered, exactly (router_events_{written,dropped}_total);
- a log left ending in the middle of a line (a router killed mid-write): the next record
  starts on a fresh line;
- 2,000 days of past outcomes in one request: refused whole, no file made;
- attribute headers of 300 characters to 1 MB: logged cut to router.max_attribute_chars and
  marked, the exposure line stays short.

Mounting a tmpfs needs root (or CAP_SYS_ADMIN); where it is refused that case is skipped, and
tests/router/records/test_jsonl.py shows the same with a file that writes part of a buffer and
then fails with ENOSPC.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.conftest import Backend
from tests.reliability.conftest import Launch, Stack, Table
from tests.reliability.load import LoadResult, run_load
from tests.reliability.stack import BODY, ROUTE, metric_value, registry
from tests.reliability.summary import Row
from tests.support import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

SMALL_DISK = "256k"  # a few hundred exposure lines


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (skips the test where mounting is not allowed)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode}); "
            "tests/router/records/test_jsonl.py covers a disk filling mid-write in-process"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def grow(disk: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def file_lines(log_dir: Path, pattern: str) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Every record in the matching files, and every line that is not one (a last line too)."""
    records, broken = [], []
    for path in sorted(log_dir.glob(pattern)):
        for line in path.read_bytes().split(b"\n"):
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                broken.append(line)
    return records, broken


async def log_counts(stack: Stack, session: aiohttp.ClientSession, log: str) -> tuple[int, int]:
    """(written, dropped) of one log, from the router's metrics."""
    text = await stack.metrics(session)
    return (
        int(metric_value(text, "router_events_written_total", log=log)),
        int(metric_value(text, "router_events_dropped_total", log=log)),
    )


async def post_events(
    session: aiohttp.ClientSession, stack: Stack, prefix: str, batches: int
) -> tuple[int, int]:
    """`batches` lists of 10 events; (events accepted, requests not answered 202)."""
    accepted = refused = 0
    for batch in range(batches):
        events = [{"unit_id": f"{prefix}-{batch}-{i}", "metric": "conversion"} for i in range(10)]
        async with session.post(f"{stack.url}/events", json=events) as response:
            if response.status == 202:
                accepted += (await response.json())["accepted"]
            else:
                refused += 1
    return accepted, refused


# --- fault: a disk that fills up mid-write ---------------------------------------------------


async def test_a_disk_filling_up_mid_write_leaves_whole_lines_and_exact_counts(
    paddle_backends: dict[str, Backend], launch: Launch, session: aiohttp.ClientSession,
    table: Table, tmp_path: Path,
) -> None:  # fmt: skip
    with small_disk(tmp_path / "disk", SMALL_DISK) as disk:
        stack = launch(
            registry(
                [paddle_backends["sentiment-v1"].url], [paddle_backends["sentiment-v2"].url],
                log_dir=str(disk),
            )
        )  # fmt: skip
        try:
            await _fill_then_free(stack, session, table, disk)
        finally:
            stack.router.stop()  # before the disk goes: nothing may be writing to it


async def _fill_then_free(
    stack: Stack, session: aiohttp.ClientSession, table: Table, disk: Path
) -> None:
    url = stack.url + ROUTE
    # The disk fills within the first thousand requests, in the middle of a batch of lines.
    full = await run_load(session, url, BODY, requests=3000, rate=400, id_prefix="full")
    full_events = await post_events(session, stack, "full", 20)

    async def exposures_counted(answered: int) -> bool:
        return sum(await log_counts(stack, session, "exposures")) == answered

    await eventually(lambda: exposures_counted(len(full.answered())), timeout=30)
    written_full, dropped_full = await log_counts(stack, session, "exposures")
    grow(disk, "32m")  # space is back
    freed = await run_load(session, url, BODY, requests=1000, rate=400, id_prefix="freed")
    freed_events = await post_events(session, stack, "freed", 20)
    answered = len(full.answered()) + len(freed.answered())
    accepted = full_events[0] + freed_events[0]
    await eventually(lambda: exposures_counted(answered), timeout=30)

    async def outcomes_counted() -> bool:
        return sum(await log_counts(stack, session, "outcomes")) == accepted

    await eventually(outcomes_counted, timeout=30)
    written, dropped = await log_counts(stack, session, "exposures")
    outcome_counts = await log_counts(stack, session, "outcomes")
    exposures, broken_exposures = file_lines(disk, "exposures-*.jsonl")
    outcomes, broken_outcomes = file_lines(disk, "outcomes-*.jsonl")
    unparseable = len(broken_exposures) + len(broken_outcomes)
    logged_after = {r["request_id"] for r in exposures} & {a.request_id for a in freed.answered()}
    missing_after = len(freed.answered()) - len(logged_after)
    failed = _failed(full, freed) + full_events[1] + freed_events[1]
    table.add(
        Row("fault", "log disk full mid-write",
            f"log directory on a {SMALL_DISK} tmpfs that fills up in the middle of a write "
            "under 3,000 requests and 200 events, then grows to 32 MiB for 1,000 requests and "
            "200 events more", full.sent + freed.sent + 40, failed,
            abs(answered - written - dropped) + abs(accepted - sum(outcome_counts))
            + unparseable + missing_after,
            f"{answered:,} answered: {written:,} exposure lines written + {dropped:,} dropped "
            f"and counted ({written_full:,} + {dropped_full:,} while full); {accepted} events "
            f"accepted: {outcome_counts[0]} written + {outcome_counts[1]} dropped; "
            f"{unparseable} lines that do not parse; every request after the space came back "
            "logged")
    )  # fmt: skip
    assert failed == 0
    assert unparseable == 0
    assert dropped_full > 0, "the disk never filled: nothing was tested"
    assert written_full > 0, "the disk was full from the start: no write was cut short"
    assert (written + dropped, sum(outcome_counts)) == (answered, accepted)
    assert len(exposures) == written and len(outcomes) == outcome_counts[0]
    assert missing_after == 0
    assert len({r["request_id"] for r in exposures}) == written  # no record written twice


def _failed(*results: LoadResult) -> int:
    return sum(len(result.failed()) for result in results)


# --- fault: a log left ending mid-line -------------------------------------------------------


async def test_a_log_left_ending_mid_line_gets_the_next_record_on_a_fresh_line(
    paddle_backends: dict[str, Backend], launch: Launch, session: aiohttp.ClientSession,
    table: Table, tmp_path: Path,
) -> None:  # fmt: skip
    # What a router killed in the middle of a write leaves: half a record, no newline.
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    today = datetime.now(timezone.utc)
    torn = b'{"ts":"' + today.strftime("%Y-%m-%d").encode() + b'T00:00:00.000Z","request_id":"to'
    for day in (today, today + timedelta(days=1)):  # should the test cross midnight
        (log_dir / f"exposures-{day:%Y-%m-%d}.jsonl").write_bytes(b'{"request_id":"old"}\n' + torn)
    stack = launch(
        registry(
            [paddle_backends["sentiment-v1"].url], [paddle_backends["sentiment-v2"].url],
            log_dir=str(log_dir),
        )
    )  # fmt: skip
    result = await run_load(session, stack.url + ROUTE, BODY, requests=50, rate=50, id_prefix="t")
    answered = {a.request_id for a in result.answered()}

    def logged() -> set[str]:
        return {r["request_id"] for r in file_lines(log_dir, "exposures-*.jsonl")[0]}

    await eventually(lambda: answered <= logged(), timeout=15)
    records, broken = file_lines(log_dir, "exposures-*.jsonl")
    table.add(
        Row("fault", "log left ending mid-line",
            "today's exposure file ends in half a record (a router killed mid-write) when the "
            "router starts; 50 requests", result.sent, len(result.failed()),
            len(answered - logged()),
            f"{len(records) - 2} new records each on a line of their own; the half line stays, "
            "the one unreadable line (the analysis counts it)")
    )  # fmt: skip
    assert result.failed() == []
    assert torn in broken and all(line == torn for line in broken)
    assert len(records) == len(answered) + 2  # the "old" line of each file, and the new ones


# --- hostile input: past-dated outcomes, long attribute headers ------------------------------


async def test_two_thousand_past_days_of_events_are_refused_and_make_no_file(
    paddle_backends: dict[str, Backend], launch: Launch, session: aiohttp.ClientSession,
    table: Table,
) -> None:  # fmt: skip
    stack = launch(
        registry([paddle_backends["sentiment-v1"].url], [paddle_backends["sentiment-v2"].url])
    )
    now = datetime.now(timezone.utc)
    past = [
        {"unit_id": f"u{day}", "metric": "m", "ts": (now - timedelta(days=day)).isoformat()}
        for day in range(8, 2008)
    ]
    async with session.post(f"{stack.url}/events", json=past) as response:
        refused = (response.status, await response.json())
    files_after_refusal = sorted(p.name for p in stack.log_dir.glob("outcomes-*"))
    inside = [
        {"unit_id": "recent", "metric": "m", "ts": (now - timedelta(days=6)).isoformat()},
        {"unit_id": "now", "metric": "m"},
        {"unit_id": "ahead", "metric": "m", "ts": (now + timedelta(minutes=4)).isoformat()},
    ]
    async with session.post(f"{stack.url}/events", json=inside) as response:
        accepted = (response.status, await response.json())

    def logged() -> list[dict[str, Any]]:
        return file_lines(stack.log_dir, "outcomes-*.jsonl")[0]

    await eventually(lambda: len(logged()) >= 3, timeout=15)
    table.add(
        Row("hostile input", "/events far in the past",
            "one request with outcomes of 2,000 past days (8 to 2,007 days old), then 3 events "
            "inside the window (6 days old, now, 4 minutes ahead)", 2,
            (refused[0] != 400) + (accepted[0] != 202), max(0, 3 - len(logged())),
            f"refused whole with 400 {refused[1].get('code')} naming events[0].ts and the "
            f"window; {len(files_after_refusal)} outcome files made by it; the 3 inside logged")
    )  # fmt: skip
    assert refused[0] == 400 and refused[1]["code"] == "bad_event"
    assert refused[1]["error"].startswith("events[0].ts: ")
    assert "more than 7d old (router.events_max_age): accepted from " in refused[1]["error"]
    assert files_after_refusal == []
    assert accepted == (202, {"accepted": 3})
    assert sorted(r["unit"] for r in logged()) == ["ahead", "now", "recent"]


async def test_long_attribute_headers_are_logged_bounded_and_marked(
    paddle_backends: dict[str, Backend], launch: Launch, session: aiohttp.ClientSession,
    table: Table,
) -> None:  # fmt: skip
    stack = launch(
        registry([paddle_backends["sentiment-v1"].url], [paddle_backends["sentiment-v2"].url])
    )
    # 300 and 8,000 characters pass any HTTP header limit up to 8 KiB a field; a megabyte is
    # either refused by the HTTP layer (then nothing is logged) or logged cut.
    cities = {"c300": "é" * 300, "c8000": "k" * 8000, "c1m": "m" * (1 << 20), "short": "Paris"}
    statuses = {}
    for name, city in cities.items():
        headers = {"X-User-Id": name, "X-Request-Id": name, "X-City": city}
        async with session.post(stack.url + ROUTE, data=BODY, headers=headers) as response:
            statuses[name] = response.status
    answered = {name for name, status in statuses.items() if status == 200}
    records = {r["request_id"]: r for r in await stack.wait_logged(len(answered))}
    lines = [
        line
        for path in stack.log_dir.glob("exposures-*.jsonl")
        for line in path.read_bytes().splitlines()
    ]
    longest = max(map(len, lines))
    table.add(
        Row("hostile input", "long attribute headers",
            "X-City of 300 (2-byte) characters, 8,000 characters and 1 MiB, and a short one",
            len(cities), len({"c300", "c8000", "short"} - answered), len(answered - set(records)),
            f"answered: {', '.join(f'{n} {s}' for n, s in statuses.items())}; each logged "
            f"value at most 256 characters and named in `truncated`; longest exposure line "
            f"{longest:,} bytes")
    )  # fmt: skip
    assert {"c300", "c8000", "short"} <= answered
    assert set(records) == answered
    for name in answered - {"short"}:
        assert records[name]["city"] == cities[name][:256]
        assert records[name]["truncated"] == ["city"]
    assert records["short"]["city"] == "Paris" and "truncated" not in records["short"]
    assert longest < 2048
