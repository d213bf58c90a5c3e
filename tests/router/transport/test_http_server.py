"""The fast path's HTTP/1.1 handling over raw sockets: keep-alive, pipelining, handing a
connection over to aiohttp, limits, malformed requests and draining on stop.

(The request path itself runs through the fast path in test_proxy.py too.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from router.transport import http_server as fastpath
from tests.router.fakes import FakePipeline, url_of
from tests.router.harness import FastPathTestServer, build_app, exposures, registry
from tests.router.transport.rawclient import BODY, ROUTE, Connection, post
from tests.support import eventually

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def router(
    tmp_path: Path, backend: tuple[FakePipeline, TestServer]
) -> AsyncIterator[FastPathTestServer]:
    url = url_of(backend[1])
    raw = registry(tmp_path / "logs", [url], [url], {"router": {"max_body_bytes": 4096}})
    server = FastPathTestServer(build_app(raw), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


Connect = Callable[[], Awaitable[Connection]]


@pytest_asyncio.fixture
async def connect(router: FastPathTestServer) -> AsyncIterator[Connect]:
    """Opens raw connections to the router; closes them after the test."""
    opened: list[Connection] = []

    async def open_one() -> Connection:
        assert router.port is not None
        opened.append(await Connection.open(router.port))
        return opened[-1]

    yield open_one
    for connection in opened:
        connection.writer.close()
        with contextlib.suppress(ConnectionError):
            await connection.writer.wait_closed()


async def test_keep_alive_and_handing_the_connection_to_aiohttp(
    router: FastPathTestServer, connect: Connect
) -> None:
    connection = await connect()
    await connection.send(post(target=ROUTE + b"?debug=1"))  # a query string stays fast
    first = await connection.answer()
    assert first.status == 200 and first.json()["experiment"]["name"] == "sentiment"
    assert first.headers["x-experiment"] == "sentiment" and "date" in first.headers
    await connection.send(post())
    again = await connection.answer()
    assert again.status == 200 and again.json()["experiment"]["name"] == "sentiment"
    # Not an experiment route: the connection goes over to aiohttp, which answers and closes
    # it (every request head is read by the fast path, within its limits).
    await connection.send(b"GET /healthz HTTP/1.1\r\nHost: router\r\n\r\n")
    health = await connection.answer()
    assert health.status == 200 and health.headers["connection"] == "close"
    assert await connection.closed()
    other = await connect()
    await other.send(b"GET /sentiment/prediction HTTP/1.1\r\nHost: router\r\n\r\n")
    refused = await other.answer()
    assert refused.status == 405 and refused.json()["code"] == "method_not_allowed"
    assert await other.closed()
    assert len(exposures(router.app)) == 2


async def test_pipelined_requests_are_answered_in_order(
    router: FastPathTestServer, backend: tuple[FakePipeline, TestServer], connect: Connect
) -> None:
    backend[0].mode, backend[0].delay_s = "slow", 0.05
    connection = await connect()
    ids = [b"first", b"second", b"third"]
    await connection.send(b"".join(post(BODY, ROUTE, b"X-Request-Id: " + i) for i in ids))
    answers = [await connection.answer() for _ in ids]
    assert [a.headers["x-request-id"] for a in answers] == [i.decode() for i in ids]
    # A request for aiohttp pipelined in the same packet cannot be replayed: 400, then close.
    await connection.send(post() + b"GET /healthz HTTP/1.1\r\nHost: router\r\n\r\n")
    assert (await connection.answer()).status == 200
    refused = await connection.answer()
    assert (refused.status, refused.json()["code"]) == (400, "pipelining_unsupported")
    assert await connection.closed()


async def test_chunked_bodies_http10_and_connection_close(
    router: FastPathTestServer, connect: Connect
) -> None:
    connection = await connect()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    await connection.send(post(chunked, ROUTE, b"Transfer-Encoding: chunked"))
    assert (await connection.answer()).status == 200
    await connection.send(post(BODY, ROUTE, b"Connection: close"))
    last = await connection.answer()
    assert last.status == 200 and last.headers["connection"] == "close"
    assert await connection.closed()

    old = await connect()
    await old.send(post().replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    assert (await old.answer()).status == 200
    assert await old.closed()  # HTTP/1.0 without keep-alive


async def test_limits_and_malformed_requests_get_json_errors(
    router: FastPathTestServer, connect: Connect
) -> None:
    too_big = await connect()
    await too_big.send(post(b"[" * 5000))
    answer = await too_big.answer()  # read, not reset: the body was read and dropped
    assert (answer.status, answer.json()["code"]) == (413, "body_too_large")
    assert await too_big.closed()

    garbage = await connect()
    await garbage.send(b"POST /sentiment/prediction HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    answer = await garbage.answer()
    assert (answer.status, answer.json()["code"]) == (400, "bad_request")
    assert await garbage.closed()

    # What the fast path leaves to aiohttp still works: Expect: 100-continue, %-encoding.
    expecting = await connect()
    await expecting.send(post(BODY, ROUTE, b"Expect: 100-continue"))
    answer = await expecting.answer()
    if answer.status == 100:
        answer = await expecting.answer()
    assert answer.status == 200
    encoded = await connect()
    await encoded.send(post(BODY, b"/sentiment%2Fprediction"))
    assert (await encoded.answer()).status in (200, 404)  # aiohttp decides what %2F means


async def test_stopping_lets_the_answer_in_progress_finish(
    router: FastPathTestServer, backend: tuple[FakePipeline, TestServer], connect: Connect
) -> None:
    backend[0].mode, backend[0].delay_s = "slow", 0.15
    busy, idle = await connect(), await connect()
    await idle.send(post())
    assert (await idle.answer()).status == 200
    backend[0].arrived.clear()
    await busy.send(post())
    await asyncio.wait_for(backend[0].arrived.wait(), 5)
    assert router.runner is not None
    stopping = asyncio.ensure_future(router.runner.cleanup())
    answer = await busy.answer()
    assert answer.status == 200 and answer.headers["connection"] == "close"
    assert await busy.closed() and await idle.closed()
    await stopping


async def test_a_request_sent_as_the_router_stops_is_still_answered(
    router: FastPathTestServer, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that just had its answer may be sending the next request when the stop comes:
    its keep-alive connection stays open SHUTDOWN_GRACE_S (long here), not closed under it."""
    monkeypatch.setattr(fastpath, "SHUTDOWN_GRACE_S", 5.0)
    client = await connect()
    await client.send(post())
    assert (await client.answer()).status == 200
    assert router.runner is not None
    stopping = asyncio.ensure_future(router.runner.cleanup())
    port = router.port

    async def refuses_new_connections() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return True
        writer.close()
        return False

    await eventually(refuses_new_connections)  # the stop is under way
    await client.send(post())
    answer = await client.answer()
    assert answer.status == 200 and answer.headers["connection"] == "close"
    assert await client.closed()
    await stopping
