"""Fixtures shared by the router's in-process tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.router.fakes import Fakes, start_fake


@pytest_asyncio.fixture
async def fakes() -> AsyncIterator[Fakes]:
    """Fake pipeline backends `v1`, `v2` and `v2b` (a second treatment endpoint), closed after
    the test."""
    started = {name: await start_fake(name) for name in ("v1", "v2", "v2b")}
    yield started
    for _, server in started.values():
        await server.close()
