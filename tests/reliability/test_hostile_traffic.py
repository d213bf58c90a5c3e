"""One hostile client against the real router process in front of the real Paddle Serving demo
backends: it can neither freeze the router nor make it hold much memory.

Each case prints its figures into the reliability table (docs/reliability.md): how fast the
limit decided, how a normal client fared meanwhile, how much the router grew.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import Backend
from tests.reliability.conftest import Launch, Stack, Table
from tests.reliability.stack import BODY, ROUTE, registry, rss_kib
from tests.reliability.summary import Row
from tests.router.transport.rawclient import Connection, post

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

MIB = 1 << 20
R = ROUTE.encode()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def demo_registry(paddle_backends: dict[str, Backend], **router: Any) -> dict[str, Any]:
    return registry(
        [paddle_backends["sentiment-v1"].url],
        [paddle_backends["sentiment-v2"].url],
        patch={"router": router},
    )


def port_of(stack: Stack) -> int:
    return int(stack.url.rsplit(":", 1)[1])


class PeakRss:
    """The router's resident memory: before, and the highest seen while a case runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before_kib = rss_kib(pid)
        self.peak_kib = self.before_kib
        self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            await asyncio.sleep(0.02)

    async def stop(self) -> float:
        """Growth in MiB."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
        return (self.peak_kib - self.before_kib) / 1024


async def normal_client(
    session: aiohttp.ClientSession, url: str, stop: asyncio.Event
) -> list[float]:
    """Requests one after another until `stop`; the latency of each, in ms (all must be 200)."""
    latencies = []
    index = 0
    while not stop.is_set():
        started = time.perf_counter()
        headers = {"X-User-Id": f"normal-{index}", "Content-Type": "application/json"}
        async with session.post(url + ROUTE, data=BODY, headers=headers) as response:
            await response.read()
            assert response.status == 200, await response.text()
        latencies.append((time.perf_counter() - started) * 1000)
        index += 1
        await asyncio.sleep(0.01)
    return latencies


async def test_a_64_mb_head_is_refused_within_a_second_and_others_are_not_slowed(
    paddle_backends: dict[str, Backend],
    launch: Launch,
    session: aiohttp.ClientSession,
    table: Table,
) -> None:
    stack = launch(demo_registry(paddle_backends))
    for _ in range(5):  # warm: the backends' first answers are slower
        async with session.post(stack.url + ROUTE, data=BODY) as response:
            assert response.status == 200
    stop = asyncio.Event()
    normal = asyncio.ensure_future(normal_client(session, stack.url, stop))
    await asyncio.sleep(0.3)
    hostile = await Connection.open(port_of(stack))
    sent = 0

    async def send_head() -> None:
        nonlocal sent
        piece = b"h" * 65536
        with contextlib.suppress(ConnectionError):
            await hostile.send(b"POST " + R + b" HTTP/1.1\r\nHost: x\r\nX-Huge: ")
            while sent < 64 * MIB:
                await hostile.send(piece)
                sent += len(piece)

    started = time.perf_counter()
    sender = asyncio.ensure_future(send_head())
    answer = await hostile.answer()
    refused_s = time.perf_counter() - started
    sender.cancel()
    await hostile.aclose()
    await asyncio.sleep(0.5)
    stop.set()
    latencies = await normal
    table.add(
        Row("hostile input", "a 64 MB request head",
            "one connection sends a head of up to 64 MB in 64 KB pieces while a normal client "
            "sends requests one after another", len(latencies) + 1, 0, 0,
            f"refused {answer.status} in {refused_s * 1000:.0f} ms; normal "
            f"client: {len(latencies)} requests, slowest {max(latencies):.0f} ms")
    )  # fmt: skip
    assert (answer.status, answer.code) == (431, "head_too_large")
    assert refused_s < 1.0
    assert len(latencies) >= 10 and max(latencies) < 100, latencies


async def test_big_bodies_on_ten_connections_cost_little_memory(
    paddle_backends: dict[str, Backend], launch: Launch, table: Table
) -> None:
    """10 connections declare 16 MiB and send 15 MB each: 413 at once, the rest read and
    dropped (a lingering close), the router grows by less than 64 MB."""
    stack = launch(demo_registry(paddle_backends))
    peak = PeakRss(stack.router.process.pid)

    async def send_big() -> tuple[int, str]:
        client = await Connection.open(port_of(stack))
        head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (R, 16 * MIB)
        await client.send(head)
        chunk = b"b" * MIB
        with contextlib.suppress(ConnectionError):
            for _ in range(15):
                await client.send(chunk)
        answer = await client.answer()
        await client.aclose()
        return answer.status, answer.code

    answers = await asyncio.gather(*(send_big() for _ in range(10)))
    grew_mib = await peak.stop()
    table.add(
        Row("hostile input", "big bodies on 10 connections",
            "10 connections declare 16 MiB bodies and send 15 MB each", 10,
            sum(a != (413, "body_too_large") for a in answers), 0,
            f"all refused 413 as the head ended; router RSS +{grew_mib:.1f} MiB at most")
    )  # fmt: skip
    assert answers == [(413, "body_too_large")] * 10
    assert grew_mib < 64


class BigAnswers:
    """A backend whose answers are 1 MB (fault injection: it counts the calls it gets)."""

    def __init__(self) -> None:
        self.calls = 0
        self.body = json.dumps(
            {"err_no": 0, "err_msg": "", "key": ["pad"], "value": ["x" * MIB]}
        ).encode()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls += 1
        return web.Response(body=self.body, content_type="application/json")


@pytest_asyncio.fixture
async def big_answers() -> AsyncIterator[tuple[BigAnswers, str]]:
    backend = BigAnswers()
    app = web.Application()
    app.router.add_post("/{path:.*}", backend.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield backend, f"http://127.0.0.1:{server.port}"
    await server.close()


async def test_a_client_that_never_reads_holds_little(
    big_answers: tuple[BigAnswers, str], launch: Launch, table: Table
) -> None:
    backend, url = big_answers
    stack = launch(registry([url], [url], patch={"router": {"max_body_bytes": 4 * MIB}}))
    peak = PeakRss(stack.router.process.pid)
    client = await Connection.open(port_of(stack))
    client.writer.transport.set_write_buffer_limits(high=64 * MIB)  # send without waiting
    client.writer.write(post(BODY, R) * 200)
    await asyncio.sleep(3)  # ample for 200 local calls if nothing held them back
    forwarded = backend.calls
    grew_mib = await peak.stop()
    client.writer.transport.abort()
    await client.aclose()
    table.add(
        Row("hostile input", "a client that never reads",
            "200 pipelined requests for 1 MB answers on one connection, no answer read", 200,
            0, 0, f"{forwarded} forwarded to the backend; router RSS +{grew_mib:.1f} MiB at most")
    )  # fmt: skip
    assert forwarded < 40
    assert grew_mib < 64


async def test_a_head_sent_a_byte_at_a_time_times_out(
    paddle_backends: dict[str, Backend], launch: Launch, table: Table
) -> None:
    stack = launch(demo_registry(paddle_backends, head_timeout="3s"))
    client = await Connection.open(port_of(stack))
    started = time.perf_counter()

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            await client.send(b"POST " + R + b" HTTP/1.1\r\n")
            while True:
                await client.send(b"X")
                await asyncio.sleep(1)

    dripping = asyncio.ensure_future(drip())
    try:
        answer = await client.answer(timeout=30)
        closed = await client.closed(timeout=30)
    finally:
        dripping.cancel()
        await client.aclose()
    took_s = time.perf_counter() - started
    table.add(
        Row("hostile input", "a head sent a byte at a time",
            "one byte every second of a request head (head_timeout 3s; the default is 60s)", 1,
            int(answer.status != 408), 0, f"408 and closed after {took_s:.1f} s")
    )  # fmt: skip
    assert (answer.status, answer.code, closed) == (408, "request_timeout", True)
    assert took_s < 10


async def test_a_64_mb_body_from_urllib_reads_413_not_a_reset(
    paddle_backends: dict[str, Backend], launch: Launch, table: Table
) -> None:
    stack = launch(demo_registry(paddle_backends))
    request = urllib.request.Request(stack.url + ROUTE, data=b"x" * (64 * MIB))
    started = time.perf_counter()
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: urllib.request.urlopen(request, timeout=30)
        )
    took_s = time.perf_counter() - started
    body = json.loads(refused.value.read())
    table.add(
        Row("hostile input", "a 64 MB body from urllib",
            "urllib sends a 64 MB body whole before it reads an answer", 1, 0, 0,
            f"{refused.value.code} {body['code']} read by the client after {took_s:.1f} s")
    )  # fmt: skip
    assert (refused.value.code, body["code"]) == (413, "body_too_large")
