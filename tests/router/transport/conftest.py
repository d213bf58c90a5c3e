"""What the fast path's tests share: a fake pipeline backend (tests/router/fakes.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from aiohttp.test_utils import TestServer

from tests.router.fakes import FakePipeline, start_fake


@pytest_asyncio.fixture
async def backend() -> AsyncIterator[tuple[FakePipeline, TestServer]]:
    fake, server = await start_fake("v1")
    yield fake, server
    await server.close()
