"""The fast path's limits on one client, each decided as soon as it is crossed, over raw sockets:
what nginx and aiohttp refuse, the router refuses too, and what a client makes it hold or wait
for is bounded. (Figures with the real router process: tests/reliability/test_hostile_traffic.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from tests.router.fakes import FakePipeline, url_of
from tests.router.harness import FastPathTestServer, build_app, exposures, registry
from tests.router.transport.rawclient import BODY, ROUTE, Connection, post

pytestmark = pytest.mark.asyncio

LIMITS = {
    "max_body_bytes": 4096,
    "max_line_bytes": 1024,
    "max_head_bytes": 4096,
    "max_header_count": 20,
    "head_timeout": "400ms",
    "body_timeout": "400ms",
    "lingering_timeout": "300ms",
    "max_client_connections": 8,
    "max_unread_answer_bytes": 65536,
}

Connect = Callable[[], Awaitable[Connection]]
Start = Callable[..., Awaitable[tuple[FastPathTestServer, Connect]]]


@pytest_asyncio.fixture
async def start(tmp_path: Path, backend: tuple[FakePipeline, TestServer]) -> AsyncIterator[Start]:
    """Starts a router with LIMITS (and `router` settings over them); gives it and a way to
    open raw connections to it. Everything is closed after the test."""
    servers: list[FastPathTestServer] = []
    opened: list[Connection] = []

    async def start_router(**router: Any) -> tuple[FastPathTestServer, Connect]:
        url = url_of(backend[1])
        raw = registry(tmp_path / "logs", [url], [url], {"router": {**LIMITS, **router}})
        server = FastPathTestServer(build_app(raw), host="127.0.0.1")
        await server.start_server()
        servers.append(server)

        async def connect() -> Connection:
            assert server.port is not None
            opened.append(await Connection.open(server.port))
            return opened[-1]

        return server, connect

    yield start_router
    for connection in opened:
        connection.close()
    for server in servers:
        await server.close()


async def refused(connection: Connection, status: int, code: str) -> None:
    """The answer is `status` with error `code`, then the connection closes."""
    answer = await connection.answer()
    assert (answer.status, answer.code) == (status, code), answer.body
    assert answer.headers["connection"] == "close"
    assert await connection.closed()


async def test_a_long_request_line_is_refused_before_it_ends(start: Start) -> None:
    _, connect = await start()
    client = await connect()
    await client.send(b"POST /" + b"a" * 1100)  # no end of line yet
    await refused(client, 414, "uri_too_long")


async def test_a_long_header_field_is_refused(start: Start) -> None:
    _, connect = await start()
    client = await connect()
    await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nX-City: " + b"c" * 1100 + b"\r\nX-")
    await refused(client, 431, "header_too_large")


async def test_a_head_growing_past_the_limit_is_refused_as_it_grows(start: Start) -> None:
    """One field that never ends (httptools keeps it whole until it does), and many small ones:
    refused once the head passes max_head_bytes, not when (if ever) it ends."""
    _, connect = await start()
    endless = await connect()
    await endless.send(b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: ")
    for _ in range(5):
        await endless.send(b"b" * 1000)
        await asyncio.sleep(0.02)  # separate reads
    await refused(endless, 431, "head_too_large")

    many = await connect()
    await many.send(b"POST / HTTP/1.1\r\nHost: x\r\n")
    for index in range(6):
        await many.send(b"X-Filler-%d: %s\r\n" % (index, b"f" * 900))
        await asyncio.sleep(0.02)
    await refused(many, 431, "head_too_large")


async def test_too_many_header_fields(start: Start) -> None:
    _, connect = await start()
    client = await connect()
    fields = [b"X-Field-%d: 1" % index for index in range(21)]
    await client.send(post(BODY, ROUTE, *fields))
    await refused(client, 431, "too_many_headers")


async def test_a_head_or_body_sent_too_slowly_times_out(start: Start) -> None:
    _, connect = await start()
    dripping = await connect()
    await dripping.send(b"POST / HTTP/1.1\r\nHost: x\r\n")

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(40):  # one byte every 0.1 s: never idle for long
                await dripping.send(b"X")
                await asyncio.sleep(0.1)

    dripper = asyncio.ensure_future(drip())
    try:
        await refused(dripping, 408, "request_timeout")
    finally:
        dripper.cancel()

    slow_body = await connect()
    head = post(BODY).split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    await slow_body.send(head + BODY[:10])
    await refused(slow_body, 408, "request_timeout")


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(
    start: Start, backend: tuple[FakePipeline, TestServer]
) -> None:
    """413 as the head ends; what the client still sends is read and dropped (a lingering
    close), so it reads the answer instead of a reset; the connection closes when it stops."""
    _, connect = await start()
    client = await connect()
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (ROUTE, 10 << 20)
    await client.send(head)
    answer = await client.answer()
    assert (answer.status, answer.code) == (413, "body_too_large")
    for _ in range(20):  # the client, not listening, goes on sending its body
        await client.send(b"x" * 65536)
    assert await client.closed()  # after lingering_timeout without a byte: a close, no reset
    assert backend[0].received == []


async def test_a_chunked_body_is_refused_as_it_crosses_the_limit(start: Start) -> None:
    _, connect = await start()
    client = await connect()
    await client.send(post(b"", ROUTE, b"Transfer-Encoding: chunked"))
    for _ in range(3):
        await client.send(b"800\r\n" + b"x" * 0x800 + b"\r\n")  # 2 KiB a chunk, never a last
    await refused(client, 413, "body_too_large")


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (post(BODY, ROUTE, b"Transfer-Encoding: gzip, chunked"), 501,
         "unsupported_transfer_encoding"),
        (post(BODY).replace(b"Host: router\r\n", b""), 400, "bad_request"),
        (post(BODY, ROUTE, b"Host: other"), 400, "bad_request"),
        (post(BODY).replace(b"HTTP/1.1", b"HTTP/2.0", 1), 505, "http_version_not_supported"),
        (post(b"0\r\n\r\n", ROUTE, b"Transfer-Encoding: chunked").replace(
            b"HTTP/1.1", b"HTTP/1.0", 1), 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_request"),
    ],
    ids=["te-gzip-chunked", "no-host", "two-hosts", "http-2.0", "chunked-http-1.0",
         "two-hosts-for-aiohttp"],
)  # fmt: skip
async def test_what_nginx_refuses_is_refused(
    start: Start,
    backend: tuple[FakePipeline, TestServer],
    request_bytes: bytes,
    status: int,
    code: str,
) -> None:
    _, connect = await start()
    client = await connect()
    await client.send(request_bytes)
    await refused(client, status, code)
    assert backend[0].received == []


async def test_http_10_without_host_is_served(start: Start) -> None:
    server, connect = await start()
    client = await connect()
    await client.send(post(BODY).replace(b"Host: router\r\n", b"").replace(b"1.1", b"1.0", 1))
    assert (await client.answer()).status == 200
    assert len(exposures(server.app)) == 1


async def test_connections_over_the_limit_get_503(start: Start) -> None:
    _, connect = await start(max_client_connections=2)
    first, second = await connect(), await connect()
    third = await connect()
    answer = await third.answer()
    assert (answer.status, answer.code) == (503, "too_many_connections")
    assert await third.closed()
    for held in (first, second):  # the two within the limit are served
        await held.send(post())
        assert (await held.answer()).status == 200
    first.close()
    await first.writer.wait_closed()
    await asyncio.sleep(0.05)  # the router sees the close
    fourth = await connect()
    await fourth.send(post())
    assert (await fourth.answer()).status == 200


async def test_a_client_that_does_not_read_stops_its_requests_going_to_the_backend(
    start: Start, backend: tuple[FakePipeline, TestServer]
) -> None:
    """200 pipelined requests for 256 KiB answers, none read: once max_unread_answer_bytes are
    waiting on the client, no further request of its starts (nginx forwarded 4 of 200)."""
    backend[0].padding = 256 << 10
    _, connect = await start()
    client = await connect()
    client.writer.transport.set_write_buffer_limits(high=64 << 20)  # send without waiting
    client.writer.write(post() * 200)
    await asyncio.sleep(1.5)  # plenty for 200 local backend calls if nothing held them back
    forwarded = len(backend[0].received)
    assert forwarded < 64, forwarded  # the kernel's socket buffers hold some answers
    answers = [await client.answer() for _ in range(200)]  # now read them: all arrive
    assert {a.status for a in answers} == {200}
    assert len(backend[0].received) == 200


async def test_a_body_for_aiohttp_sent_too_slowly_is_cut_off(start: Start) -> None:
    _, connect = await start()
    client = await connect()
    await client.send(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    assert await client.closed()
