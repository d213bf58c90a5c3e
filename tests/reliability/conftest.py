"""Fixtures of the reliability suite: the real router as a process, and the results table.

`launch(raw_registry, *router_args)` starts `python -m router` on a registry written to a
fresh folder (logs next to it) and stops it at the end of the test. `table.add(Row(...))`
records a row of the reliability table; the session writes them to
build/reliability/summary.json and prints them (tests/reliability/summary.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import aiohttp
import pytest

from tests.reliability.stack import exposures, metric_value, write_registry
from tests.reliability.summary import Row, markdown, merge
from tests.router.router_process import RouterProcess, start_router

_ROWS: list[tuple[str, Row]] = []
_PASSED: dict[str, bool] = {}


@dataclass
class Stack:
    """A running router and the files around it."""

    router: RouterProcess
    config: Path
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.router.url

    async def metrics(self, session: aiohttp.ClientSession) -> str:
        async with session.get(f"{self.url}/metrics") as response:
            assert response.status == 200
            return await response.text()

    async def metric(self, session: aiohttp.ClientSession, name: str, **labels: str) -> float:
        return metric_value(await self.metrics(session), name, **labels)

    async def state(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.url}/experiments") as response:
            assert response.status == 200
            data: dict[str, Any] = await response.json()
            return data

    def exposures(self) -> list[dict[str, Any]]:
        return exposures(self.log_dir)

    async def wait_logged(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The exposure records once there are at least `count` (the writer flushes every 0.2 s)."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.exposures()
            if len(records) >= count or time.monotonic() > deadline:
                return records
            await asyncio.sleep(0.1)


Launch = Callable[..., Stack]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    stacks: list[Stack] = []

    def start(raw: dict[str, Any], *args: str, env: Optional[dict[str, str]] = None) -> Stack:
        folder = tmp_path / f"stack-{len(stacks)}"
        folder.mkdir()
        config = write_registry(folder / "experiments.yaml", raw)
        saved = {key: os.environ.get(key) for key in env or {}}
        os.environ.update(env or {})
        try:
            router = start_router(config, folder / "router.log", *args)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        stack = Stack(router, config, folder / raw["router"].get("log_dir", "logs"), env or {})
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        stack.router.stop()


class Table:
    def __init__(self, nodeid: str) -> None:
        self._nodeid = nodeid

    def add(self, row: Row) -> Row:
        _ROWS.append((self._nodeid, row))
        return row


@pytest.fixture
def table(request: pytest.FixtureRequest) -> Table:
    return Table(request.node.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    _PASSED[item.nodeid] = _PASSED.get(item.nodeid, True) and not report.failed


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _ROWS:
        return
    for nodeid, row in _ROWS:
        row.passed = _PASSED.get(nodeid)
    merge([row for _, row in _ROWS])


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _ROWS:
        return
    terminalreporter.write_sep("=", "reliability table (build/reliability/summary.json)")
    terminalreporter.write_line(markdown([row for _, row in _ROWS]))
