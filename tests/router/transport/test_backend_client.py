"""The router's backend client (router.transport.backend_client) against scripted servers on
real sockets.

Each scripted server answers the n-th request it reads with the n-th reply of its script (raw
bytes, so framing, closing and garbage are exact). Every test runs on asyncio's loop and on
uvloop, the loop `python -m router` uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, Callable, Optional, Union

import pytest
import uvloop

from router.transport import backend_client as backend_http
from router.transport.backend_client import (
    BackendHttpError,
    BackendHttpTimeout,
    ConnectionPool,
    HttpReply,
    Origin,
    request_head,
)
from tests.support import eventually

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
# A scripted reply: bytes to send (then keep the connection), "close" (close without a
# word), or a coroutine function given the writer (anything else).
Reply = Union[bytes, str, Callable[[asyncio.StreamWriter], Awaitable[None]]]

LOOPS = pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


def ok(body: bytes = b'{"err_no":0}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class Scripted:
    """A backend that answers request n with `replies[n]` and records what it read."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: Optional[asyncio.AbstractServer] = None

    async def start(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return Origin.parse(f"http://127.0.0.1:{port}")

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(head + await reader.readexactly(length))
                reply = self.replies[len(self.requests) - 1]
                if reply == "close":
                    break
                if isinstance(reply, bytes):
                    writer.write(reply)
                    await writer.drain()
                else:
                    assert callable(reply)
                    await reply(writer)
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run(new_loop: LoopFactory, test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    loop = new_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(test(), 10))
    finally:
        loop.close()


async def call(
    pool: ConnectionPool, origin: Origin, body: bytes = b"{}", timeout_s: float = 2.0
) -> HttpReply:
    head = request_head(origin, "POST", "/m/prediction", "application/json")
    return await pool.request(origin, head, body, timeout_s)


def new_pool(**limits: int) -> ConnectionPool:
    return ConnectionPool(
        limit=limits.get("limit", 16), limit_per_origin=limits.get("per_origin", 8)
    )


@LOOPS
def test_keep_alive_reuses_one_connection_and_sends_the_body_as_is(new_loop: LoopFactory) -> None:
    async def test() -> None:
        backend = Scripted([ok(b'{"n":1}'), ok(b'{"n":2}')])
        origin = await backend.start()
        pool = new_pool()
        assert await call(pool, origin, b'{"a": 1}') == HttpReply(200, b'{"n":1}')
        assert await call(pool, origin, b"[2]") == HttpReply(200, b'{"n":2}')
        assert backend.connections == 1 and pool.open_connections == 1
        first = backend.requests[0]
        assert first.startswith(b"POST /m/prediction HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n" in first
        assert first.endswith(b'\r\n\r\n{"a": 1}')
        await pool.close()
        await backend.stop()

    run(new_loop, test)


@LOOPS
def test_chunked_close_delimited_and_informational_replies(new_loop: LoopFactory) -> None:
    async def close_delimited(writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"end":')
        await writer.drain()
        writer.write(b"true}")

    async def test() -> None:
        backend = Scripted(
            [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b'4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n',
                b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"{}"),
                close_delimited,
            ]
        )
        origin = await backend.start()
        pool = new_pool()
        assert await call(pool, origin) == HttpReply(200, b'{"a":1}')
        assert await call(pool, origin) == HttpReply(200, b"{}")
        assert await call(pool, origin) == HttpReply(200, b'{"end":true}')
        await pool.close()
        await backend.stop()

    run(new_loop, test)


@LOOPS
def test_connection_close_and_http10_replies_are_not_reused(new_loop: LoopFactory) -> None:
    async def test() -> None:
        backend = Scripted(
            [
                ok(extra=b"Connection: close\r\n"),
                b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
                ok(),
            ]
        )
        origin = await backend.start()
        pool = new_pool()
        for _ in range(3):
            assert (await call(pool, origin)).status == 200
        assert backend.connections == 3
        await pool.close()
        await backend.stop()

    run(new_loop, test)


@LOOPS
def test_a_keep_alive_connection_closed_by_the_server_is_not_an_error(
    new_loop: LoopFactory,
) -> None:
    async def answer_then_hang_up(writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b'{"n":1}'))  # no Connection: close, yet the server closes

    async def test() -> None:
        # 1: answered, then closed while idle; 2: on a new connection, closed as it arrives
        # (a reused connection: retried on a new one); 3: the retry.
        backend = Scripted(
            [answer_then_hang_up, ok(b'{"n":2}'), "close", ok(b'{"n":3}'), ok(b'{"n":4}')]
        )
        origin = await backend.start()
        pool = new_pool()
        assert (await call(pool, origin)).body == b'{"n":1}'
        await eventually(lambda: not pool._origins[origin].idle)  # the hang-up has arrived
        assert (await call(pool, origin)).body == b'{"n":2}'
        assert (await call(pool, origin)).body == b'{"n":3}'
        assert backend.connections == 3 and len(backend.requests) == 4
        # Closed on our side, connection_lost not delivered yet: not picked again.
        [idle] = pool._origins[origin].idle
        assert idle.transport is not None
        idle.transport.close()
        assert (await call(pool, origin)).body == b'{"n":4}'
        await pool.close()
        await backend.stop()

    run(new_loop, test)


@LOOPS
def test_broken_replies_are_errors_and_drop_the_connection(new_loop: LoopFactory) -> None:
    async def truncated(writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"err_no": 0')

    async def test() -> None:
        backend = Scripted(["close", truncated, b"NOT HTTP AT ALL\r\n\r\n", ok()])
        origin = await backend.start()
        pool = new_pool()
        with pytest.raises(BackendHttpError, match="closed the connection before replying"):
            await call(pool, origin)
        with pytest.raises(BackendHttpError, match="closed the connection mid-reply"):
            await call(pool, origin)
        with pytest.raises(BackendHttpError, match="malformed reply"):
            await call(pool, origin)
        assert (await call(pool, origin)).status == 200
        assert backend.connections == 4
        await pool.close()
        await backend.stop()

    run(new_loop, test)


@LOOPS
def test_a_reply_over_the_size_limit_is_an_error(
    new_loop: LoopFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend_http, "MAX_REPLY_BYTES", 1000)

    async def test() -> None:
        backend = Scripted([ok(b"x" * 1001), ok(b"x" * 1000)])
        origin = await backend.start()
        pool = new_pool()
        with pytest.raises(BackendHttpError, match="reply over 1000 bytes"):
            await call(pool, origin)
        assert len((await call(pool, origin)).body) == 1000
        await pool.close()
        await backend.stop()

    run(new_loop, test)


@LOOPS
def test_deadline_covers_the_reply_and_the_wait_for_a_slot(new_loop: LoopFactory) -> None:
    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)
        writer.write(ok())

    async def test() -> None:
        backend = Scripted([slow, slow, ok()])
        origin = await backend.start()
        pool = new_pool(per_origin=1)
        with pytest.raises(BackendHttpTimeout):
            await call(pool, origin, timeout_s=0.1)
        assert pool.open_connections == 0  # a timed-out connection is never reused
        # One connection allowed: the second call waits for the first and misses its deadline.
        first = asyncio.ensure_future(call(pool, origin, timeout_s=2.0))
        await eventually(lambda: len(backend.requests) == 2)  # the first holds the one slot
        with pytest.raises(BackendHttpTimeout, match="waiting for a free connection"):
            await call(pool, origin, timeout_s=0.1)
        assert (await first).status == 200
        assert (await call(pool, origin)).status == 200
        await pool.close()
        await backend.stop()

    run(new_loop, test)


@LOOPS
def test_limits_bound_open_connections(new_loop: LoopFactory) -> None:
    async def test() -> None:
        one = Scripted([ok()] * 4)
        two = Scripted([ok()] * 4)
        first, second = await one.start(), await two.start()
        pool = new_pool(limit=1, per_origin=1)
        await asyncio.gather(*(call(pool, first) for _ in range(4)))
        assert one.connections == 1 and pool.open_connections == 1
        # The idle connection to `first` is closed to make room under the total limit.
        await call(pool, second)
        assert pool.open_connections == 1
        await pool.close()
        await one.stop()
        await two.stop()

    run(new_loop, test)


@LOOPS
def test_refused_connection(new_loop: LoopFactory) -> None:
    async def test() -> None:
        backend = Scripted([])
        origin = await backend.start()
        await backend.stop()
        pool = new_pool()
        with pytest.raises(BackendHttpError, match="cannot connect: connection refused"):
            await call(pool, origin)
        assert pool.open_connections == 0
        await pool.close()

    run(new_loop, test)


def test_request_head_quotes_the_path_and_strips_control_characters() -> None:
    origin = Origin.parse("http://[::1]:8080")
    assert (origin.host, origin.port, str(origin)) == ("::1", 8080, "http://[::1]:8080")
    head = request_head(origin, "POST", "/a b/\u00e9", "text/plain\r\nX-Evil: 1")
    assert head == (
        b"POST /a%20b/%C3%A9 HTTP/1.1\r\nHost: [::1]:8080\r\n"
        b"Content-Type: text/plainX-Evil: 1\r\nContent-Length: "
    )
    assert request_head(origin, "GET", "/", None) == (
        b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nContent-Length: "
    )
    with pytest.raises(ValueError, match="not an http"):
        Origin.parse("ftp://example.com:21")


async def start_now(
    pool: ConnectionPool, origin: Origin, timeout_s: float = 2.0
) -> tuple[Optional[backend_http.Connection], asyncio.Future[Union[HttpReply, BackendHttpError]]]:
    """`pool.start_now`, its outcome in a future."""
    outcome: asyncio.Future[Union[HttpReply, BackendHttpError]] = (
        asyncio.get_running_loop().create_future()
    )
    head = request_head(origin, "POST", "/m/prediction", "application/json")
    connection = pool.start_now(origin, head, b"{}", timeout_s, outcome.set_result)
    return connection, outcome


@LOOPS
def test_start_now_uses_an_idle_connection_within_the_limits(new_loop: LoopFactory) -> None:
    async def test() -> None:
        backend = Scripted([ok(b'{"n":1}'), ok(b'{"n":2}'), ok(b'{"n":3}')])
        origin = await backend.start()
        pool = new_pool(per_origin=1)
        connection, _ = await start_now(pool, origin)
        assert connection is None, "nothing idle yet: the caller must use request()"
        assert (await call(pool, origin)).body == b'{"n":1}'

        connection, outcome = await start_now(pool, origin)
        assert connection is not None
        busy, _ = await start_now(pool, origin)
        assert busy is None, "the one slot per origin is taken"
        assert await outcome == HttpReply(200, b'{"n":2}')
        pool.done(origin, connection)

        assert (await call(pool, origin)).body == b'{"n":3}'
        assert backend.connections == 1 and pool.open_connections == 1
        await pool.close()
        await backend.stop()

    run(new_loop, test)


@LOOPS
def test_start_now_delivers_a_closed_idle_connection_as_stale(new_loop: LoopFactory) -> None:
    async def test() -> None:
        backend = Scripted([ok(), "close"])
        origin = await backend.start()
        pool = new_pool()
        await call(pool, origin)
        connection, outcome = await start_now(pool, origin)
        assert connection is not None
        assert isinstance(await outcome, backend_http.StaleConnection)
        pool.done(origin, connection)
        assert pool.open_connections == 0
        await pool.close()
        await backend.stop()

    run(new_loop, test)


# Bytes a backend sent after its reply, in the same packet: on a reused connection, each would
# be read as (the start of) the next call's reply.
UNSOLICITED = {
    "the head of another reply": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
    "a whole other reply": ok(b'{"n":0}'),
    "a status line": b"HTTP/1.1 200 OK\r\n",
}


@LOOPS
@pytest.mark.parametrize("extra", list(UNSOLICITED.values()), ids=list(UNSOLICITED))
def test_a_connection_that_received_bytes_nobody_asked_for_is_never_reused(
    new_loop: LoopFactory, extra: bytes
) -> None:
    async def check(pool: ConnectionPool, backend: Scripted, origin: Origin) -> None:
        assert (await call(pool, origin)).body == b'{"n":1}'

        # As the request path does: the connection goes back to the pool from the reply's
        # callback, before the bytes after the reply are read.
        outcome: asyncio.Future[Union[HttpReply, BackendHttpError]] = (
            asyncio.get_running_loop().create_future()
        )
        taken: list[backend_http.Connection] = []

        def deliver(delivered: Union[HttpReply, BackendHttpError]) -> None:
            outcome.set_result(delivered)
            pool.done(origin, taken[0])

        head = request_head(origin, "POST", "/m/prediction", "application/json")
        connection = pool.start_now(origin, head, b"{}", 2.0, deliver)
        assert connection is not None
        taken.append(connection)
        assert await outcome == HttpReply(200, b'{"n":2}')
        assert connection.closed and pool.open_connections == 0, "dropped, not pooled"

        # The next call goes out on a new connection and gets its own reply, at once (before:
        # the stale bytes were read as the start of its reply, and it waited out its deadline).
        assert await call(pool, origin, timeout_s=1.0) == HttpReply(200, b'{"n":3}')
        assert backend.connections == 2 and pool.open_connections == 0

    async def test() -> None:
        backend = Scripted([ok(b'{"n":1}'), ok(b'{"n":2}') + extra, ok(b'{"n":3}') + extra])
        origin = await backend.start()
        pool = new_pool()
        try:
            await check(pool, backend, origin)
        finally:  # a failure must leave nothing open: uvloop's close would wait for it
            await pool.close()
            await backend.stop()

    run(new_loop, test)
