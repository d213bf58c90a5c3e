"""Fixtures shared by the in-process guard tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from aiohttp.test_utils import TestServer

from tests.router.fakes import FakePipeline, start_fake

Fakes = dict[str, tuple[FakePipeline, TestServer]]


@pytest_asyncio.fixture
async def fakes() -> AsyncIterator[Fakes]:
    """Two fake pipeline backends, `v1` and `v2`, closed after the test."""
    started = {name: await start_fake(name) for name in ("v1", "v2")}
    yield started
    for _, server in started.values():
        await server.close()
