"""The registry watch of the real router against files it cannot use, in front of Paddle Serving.

The router watches its experiments.yaml; the test puts in its place, in turn, files no registry
is: a complex key, 100k nested `[`, a symlink to /dev/zero, a FIFO, a 2 MiB and a 50 MB file,
bytes that are not UTF-8, an empty file. After each the router still serves, `GET /experiments`
shows the error and since when the file is not in force, `router_config_last_reload_success`
is 0; then a valid edit, by the watch alone (no SIGHUP), is in force within the second
docs/router.md promises, and the metric is 1 again. The 50 MB file is refused from its size: the
time until the error shows and the router's peak memory are measured.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Callable

import aiohttp
import pytest
import pytest_asyncio

from tests.conftest import Backend
from tests.reliability.conftest import Launch, Stack, Table
from tests.reliability.stack import BODY, ROUTE, registry, rss_kib, write_registry
from tests.reliability.summary import Row
from tests.support import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

# docs/router.md: "Editing experiments.yaml takes effect within a second".
PROMISED_S = 1.0
REQUESTS_PER_CASE = 5


def replace_with(path: Path, make: Callable[[Path], object]) -> None:
    """Put what `make` creates in place of the registry in one rename, as editors save."""
    scratch = path.with_name(path.name + ".new")
    make(scratch)
    os.replace(scratch, path)


def sized(size: int) -> Callable[[Path], object]:
    """A file of `size` bytes of YAML comments (the parser would take it whole)."""
    line = b"# a registry far too large for anyone to have meant it, line after line\n"

    def make(path: Path) -> None:
        with open(path, "wb") as file:
            for _ in range(size // len(line) + 1):
                file.write(line)

    return make


# (case, how the file is made, what the error says)
HOSTILE: list[tuple[str, Callable[[Path], object], str]] = [
    ("complex key", lambda p: p.write_text("? [a, b] : c\n"), "a key must be a plain value"),
    ("100k nested [", lambda p: p.write_text("[" * 100_000), "nested deeper than 64 levels"),
    ("symlink to /dev/zero", lambda p: p.symlink_to("/dev/zero"), "a character device"),
    ("FIFO", os.mkfifo, "a FIFO, not a regular file"),
    ("2 MiB file", sized(2 << 20), "too large"),
    ("invalid UTF-8", lambda p: p.write_bytes(b"router: {host: \xff}\n"), "not UTF-8 text"),
    ("empty file", lambda p: p.write_text(""), "the file is empty"),
    ("50 MB file", sized(50_000_000), "too large"),
]  # fmt: skip


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for {pid}")


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def last_reload(stack: Stack, session: aiohttp.ClientSession) -> dict[str, Any]:
    last: dict[str, Any] = (await stack.state(session))["config"]["last_reload"]
    return last


async def serves(stack: Stack, session: aiohttp.ClientSession, prefix: str) -> int:
    """Requests to the experiment's route, all of which must be answered: the failed count."""
    failed = 0
    for index in range(REQUESTS_PER_CASE):
        headers = {"X-User-Id": f"{prefix}-{index}", "Content-Type": "application/json"}
        async with session.post(stack.url + ROUTE, data=BODY, headers=headers) as response:
            await response.read()
            failed += response.status != 200
    return failed


async def test_the_watch_survives_files_it_cannot_use(
    paddle_backends: dict[str, Backend],
    launch: Launch,
    session: aiohttp.ClientSession,
    table: Table,
) -> None:
    control, treatment = paddle_backends["sentiment-v1"].url, paddle_backends["sentiment-v2"].url
    stack = launch(registry([control], [treatment], traffic=10))
    pid = stack.router.pid
    failed = sent = 0
    recovery_s: list[float] = []
    refused_s: dict[str, float] = {}
    peak_before_50mb = peak_after_50mb = 0
    for index, (case, make, says) in enumerate(HOSTILE):
        if case == "50 MB file":
            peak_before_50mb = peak_rss_kib(pid)
        put_at = time.monotonic()
        replace_with(stack.config, make)

        async def refused(says: str = says) -> bool:
            last = await last_reload(stack, session)
            return last["ok"] is False and says in (last["error"] or "")

        await eventually(refused, 10)
        refused_s[case] = time.monotonic() - put_at
        if case == "50 MB file":
            peak_after_50mb = peak_rss_kib(pid)
        last = await last_reload(stack, session)
        assert "\n" not in last["error"] and last["not_in_force_since"] is not None, case
        assert await stack.metric(session, "router_config_last_reload_success") == 0, case
        failed += await serves(stack, session, f"watch-{index}")
        sent += REQUESTS_PER_CASE

        # A valid edit, seen by the watch alone.
        traffic = 11 + index
        valid = registry([control], [treatment], traffic=traffic)
        edited_at = time.monotonic()
        write_registry(stack.config, valid)

        async def applied(traffic: float = traffic) -> bool:
            state = await stack.state(session)
            return bool(
                state["experiments"]["sentiment"]["configured_traffic"] == traffic
                and state["config"]["last_reload"]["ok"]
            )

        await eventually(applied, 10)
        recovery_s.append(time.monotonic() - edited_at)
        assert (await last_reload(stack, session))["not_in_force_since"] is None
        assert await stack.metric(session, "router_config_last_reload_success") == 1

    refusals = await stack.metric(session, "router_config_reloads_total", result="error")
    records = await stack.wait_logged(sent)
    lost = sent - failed - len(records)
    rss_now_mib = rss_kib(pid) / 1024
    growth_mib = (peak_after_50mb - peak_before_50mb) / 1024
    median = statistics.median(recovery_s)
    table.add(
        Row("hostile input", "registry files the watch cannot use",
            "experiments.yaml replaced in turn by: " + ", ".join(c for c, _, _ in HOSTILE)
            + f"; after each {REQUESTS_PER_CASE} requests, then a valid edit (no SIGHUP)",
            sent, failed, lost,
            f"each refused and shown (error, not_in_force_since, metric 0), {refusals:g} "
            f"refusals; valid edit in force in median {median:.2f} s, max "
            f"{max(recovery_s):.2f} s; 50 MB file refused {refused_s['50 MB file']:.2f} s after "
            f"it was put in place, peak RSS +{growth_mib:.1f} MiB (RSS now {rss_now_mib:.0f} MiB)")
    )  # fmt: skip
    print(f"refused after (s): {refused_s}; recovery (s): {recovery_s}")
    assert (failed, lost) == (0, 0)
    assert refusals == len(HOSTILE)  # one each: a refused file is not read again and again
    assert median < PROMISED_S
    assert growth_mib < 20  # the 50 MB file was never read
