"""A lean HTTP/1.1 client for backend calls: keep-alive connections, limits and a deadline.

Why not aiohttp's ClientSession here: on the benchmark machine it cost about 0.45 ms of CPU per
backend call, more than everything else the router does per request, and it set the router's
throughput against Paddle Serving (docs/router.md, "How a request is served").
This client does one thing, the call a Paddle Serving pipeline needs, in a tenth of that:

- one request (`POST` with a body, or a bodyless `GET` for probes) per connection at a time;
- replies with `Content-Length`, chunked, or ended by the server closing the connection,
  parsed by llhttp (httptools, the parser uvicorn uses);
- keep-alive reuse, newest idle connection first; idle connections close after `keepalive_s`;
- at most `limit` open connections in all and `limit_per_origin` per endpoint; a call waits
  for a slot within its deadline;
- one deadline per call covering the wait for a slot, the connect, the send and the reply;
- a reused connection that closes before the first byte of the reply (the server closed it as
  idle) is retried once on a new one, as browsers and Go's http.Transport do; a prediction is
  safe to repeat;
- a connection that receives bytes nobody asked for (after the reply, or while idle) or that
  the server closed is dropped, never reused: its next reply could not be told from what the
  server sent before (a call on it would wait out its deadline, or read a stale answer).

Two ways to call: `request`, a coroutine that waits for a free slot or connects if it must, and
`start_now` for the request path, which sends at once on an idle connection whose reply goes to
a callback (no future, no Task), or returns None when it would have to wait.

Every failure is a BackendHttpError with a short reason for the logs; a missed deadline is its
subclass BackendHttpTimeout.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from collections import deque
from typing import Callable, NamedTuple, Optional, Union, cast
from urllib.parse import quote, urlsplit

import httptools

MAX_REPLY_BYTES = 64 * 1024 * 1024
# Characters a request target may carry as they are; anything else is percent-encoded.
PATH_SAFE = "/:@!$&'()*+,;=-._~%"


class BackendHttpError(Exception):
    """A call that produced no HTTP reply (refused, reset, malformed, too large)."""


class BackendHttpTimeout(BackendHttpError):
    """A call that missed its deadline."""


class StaleConnection(BackendHttpError):
    """A connection closed before the first byte of the reply: on a reused one, retried."""


class HttpReply(NamedTuple):
    status: int
    body: bytes


# Where a connection hands the outcome of a call: the reply, or why there is none.
Deliver = Callable[[Union[HttpReply, BackendHttpError]], None]


class Origin(NamedTuple):
    """Where an endpoint lives: `http://host:port` or `https://host:port`.
    (A NamedTuple: the pool looks it up per call, and a dataclass hashes in Python.)"""

    scheme: str
    host: str  # for connecting: an IPv6 address without brackets
    port: int
    host_header: bytes

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise ValueError(f"not an http(s)://HOST:PORT endpoint: {url!r}")
        return cls(parts.scheme, parts.hostname, parts.port, parts.netloc.encode("ascii"))

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header.decode()}"


def request_head(origin: Origin, method: str, path: str, content_type: Optional[str]) -> bytes:
    """The request line and headers up to `Content-Length: ` (the caller appends the length).
    Build it once per endpoint and path, not per call."""
    target = quote(path, safe=PATH_SAFE)
    lines = [f"{method} {target} HTTP/1.1".encode("ascii"), b"Host: " + origin.host_header]
    if content_type is not None:
        lines.append(b"Content-Type: " + _header_value(content_type))
    return b"\r\n".join(lines) + b"\r\nContent-Length: "


def _header_value(value: str) -> bytes:
    """`value` as header bytes, without the control characters that could end the header."""
    encoded = value.encode("latin-1", errors="replace")
    return bytes(byte for byte in encoded if (byte >= 0x20 and byte != 0x7F) or byte == 0x09)


class Connection(asyncio.Protocol):
    """One keep-alive connection; `start` sends a request and hands over the whole reply."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_closed: Callable[[Connection], None]
    ) -> None:
        self._loop = loop
        self._on_closed = on_closed
        self._parser = httptools.HttpResponseParser(self)
        self.transport: Optional[asyncio.Transport] = None
        self.closed = False
        self.idle_since = 0.0
        self._deliver: Optional[Deliver] = None
        self._deadline_timer: Optional[asyncio.TimerHandle] = None
        self.keep_alive = False  # the last reply allows another request on this connection
        self._received = False  # any byte of the current reply
        self._headers_done = False
        # The current reply's bytes up to its headers' end, read only if the connection
        # closes mid-reply (no per-header callback: this is the request path).
        self._head: list[bytes] = []
        self._body: list[bytes] = []
        self._size = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._deliver is None:
            self._abandon(BackendHttpError("reply without a request"))
            return
        self._received = True
        if not self._headers_done:
            self._head.append(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # A callback below raised (e.g. the size limit): httptools wraps it.
            reason = exc.__context__
            if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(
                reason, BackendHttpError
            ):
                self._abandon(reason)
            else:
                self._abandon(BackendHttpError(f"malformed reply: {exc}"))

    def eof_received(self) -> Optional[bool]:
        self.keep_alive = False  # the server is done with it: never back to the pool
        return False  # close our side too

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        if self._headers_done and not self._framed():
            self._finish()  # the reply was delimited by the close
        deliver = self._end_call()
        if deliver is not None:
            if not self._received:
                deliver(StaleConnection("server closed the connection before replying"))
            else:
                deliver(BackendHttpError("server closed the connection mid-reply"))
        self._on_closed(self)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._deliver is None:  # a reply after the reply: bytes nobody asked for
            # Raised inside feed_data, which wraps it; data_received then drops the connection.
            raise BackendHttpError("the server sent bytes after its reply")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_REPLY_BYTES:
            raise BackendHttpError(f"reply over {MAX_REPLY_BYTES} bytes")  # feed_data re-raises
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # informational: the real reply follows
            self._headers_done = False
            self._head = []
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._finish()

    # the client side

    def start(self, data: bytes, deadline: float, deliver: Deliver) -> None:
        """Send `data`; `deliver` gets the whole reply, or the error, at the latest when
        `deadline` passes. Raises StaleConnection if the connection is already gone."""
        assert self.transport is not None
        try:
            self.transport.write(data)
        except (RuntimeError, OSError):  # closed, and connection_lost not yet delivered
            raise StaleConnection("connection closed before the request went out") from None
        # The reply can only come from a later turn of the loop; the request goes out first
        # because every step before it adds to the latency (docs/benchmarks.md).
        self._deliver = deliver
        self._received = self._headers_done = self.keep_alive = False
        self._head, self._body, self._size = [], [], 0
        self._deadline_timer = self._loop.call_at(deadline, self._expire)

    def send(self, data: bytes, deadline: float) -> asyncio.Future[HttpReply]:
        """`start` for a coroutine: the future gets the reply or the error."""
        waiter: asyncio.Future[HttpReply] = self._loop.create_future()
        self.start(data, deadline, functools.partial(_resolve, waiter))
        return waiter

    def _framed(self) -> bool:
        """Content-Length or chunked: the reply does not end with the connection.
        (Asked only when the connection closes, so each header is not examined as it comes.)"""
        head = b"".join(self._head).split(b"\r\n\r\n", 1)[0].lower()
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip()
            if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value):
                return True
        return False

    def _end_call(self) -> Optional[Deliver]:
        """The call in progress is over: stop its deadline; where its outcome goes, if
        not yet delivered."""
        deliver, self._deliver = self._deliver, None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        return deliver

    def _finish(self) -> None:
        # The deadline's timer is cancelled after the reply is on its way.
        timer, self._deadline_timer = self._deadline_timer, None
        deliver = self._end_call()
        reply = HttpReply(self._parser.get_status_code(), b"".join(self._body))
        self._body = []
        if deliver is not None:
            deliver(reply)
        if timer is not None:
            timer.cancel()

    def _expire(self) -> None:
        self._abandon(BackendHttpTimeout("deadline passed"))

    def _abandon(self, error: BackendHttpError) -> None:
        """Fail the call in progress and drop the connection: its state is unknown now."""
        deliver = self._end_call()
        self.close()  # before delivering: whoever gets the error finds it closed
        if deliver is not None:
            deliver(error)

    def closing(self) -> bool:
        return self.closed or self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
        self._on_closed(self)  # now, not at connection_lost: the pool's count must be exact


class _Slots:
    """At most `limit` holders; a taker waits in line, within its deadline, for a free one.
    (asyncio.Semaphore would do, at about 60 bytecode instructions more per call.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self.free = limit
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def take(self, deadline: float) -> None:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self.waiters.append(waiter)
        timer = self._loop.call_at(deadline, _time_out, waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.give_back()  # handed a slot, then cancelled before it could use it
            raise
        finally:
            timer.cancel()

    def give_back(self) -> None:
        while self.waiters:  # hand the slot straight to the first one still waiting
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


def _resolve(
    waiter: asyncio.Future[HttpReply], outcome: Union[HttpReply, BackendHttpError]
) -> None:
    if waiter.done():  # the caller was cancelled
        return
    if isinstance(outcome, BackendHttpError):
        waiter.set_exception(outcome)
    else:
        waiter.set_result(outcome)


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(BackendHttpTimeout("deadline passed waiting for a free connection"))


class _OriginState:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, limit: int, on_closed: Callable[[Connection], None]
    ) -> None:
        self.idle: deque[Connection] = deque()
        self.open: set[Connection] = set()
        self.slots = _Slots(loop, limit)
        self.on_closed = on_closed  # given to each connection: bookkeeping when it closes


class ConnectionPool:
    """Keep-alive connections to every backend endpoint; one per router, opened in the loop."""

    def __init__(
        self,
        *,
        limit: int,
        limit_per_origin: int,
        keepalive_s: float = 30.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._limit = limit
        self._limit_per_origin = limit_per_origin
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._slots = _Slots(self._loop, limit)
        self._origins: dict[Origin, _OriginState] = {}
        self._tls: Optional[ssl.SSLContext] = None
        self._open = 0
        self._closing = False

    @property
    def open_connections(self) -> int:
        return self._open

    async def request(
        self,
        origin: Origin,
        head: bytes,
        body: bytes,
        timeout_s: float,
    ) -> HttpReply:
        """Send `head` (from `request_head`) with `body`; the reply, whatever its status."""
        if self._closing:
            raise BackendHttpError("client closed")
        deadline = self._loop.time() + timeout_s
        data = head + b"%d\r\n\r\n" % len(body) + body
        state = self._origins.get(origin)
        if state is None:
            state = self._origins[origin] = _OriginState(
                self._loop, self._limit_per_origin, functools.partial(self._forget, origin)
            )
        await state.slots.take(deadline)
        try:
            await self._slots.take(deadline)
            try:
                connection = self._idle(state)
                if connection is not None:
                    try:
                        return await self._exchange(origin, state, connection, data, deadline)
                    except StaleConnection:
                        pass
                connection = await self._connect(origin, state, deadline)
                return await self._exchange(origin, state, connection, data, deadline)
            finally:
                self._slots.give_back()
        finally:
            state.slots.give_back()

    def start_now(
        self, origin: Origin, head: bytes, body: bytes, timeout_s: float, deliver: Deliver
    ) -> Optional[Connection]:
        """`request` without waiting, for the request path: on the newest idle connection,
        when the limits have room. Returns the connection, which the caller hands to `done`
        once `deliver` has the outcome; None when the call would wait or connect (then use
        `request`). A StaleConnection is delivered like any error, not retried: the caller
        retries it.
        """
        state = self._origins.get(origin)
        if state is None or not state.idle or self._closing:
            return None
        slots, all_slots, loop = state.slots, self._slots, self._loop
        if slots.free <= 0 or slots.waiters or all_slots.free <= 0 or all_slots.waiters:
            return None
        connection = state.idle[-1]
        transport = connection.transport
        if (
            connection.idle_since < loop.time() - self._keepalive_s
            or connection.closed
            or transport is None
            or transport.is_closing()
        ):
            return None  # `request` closes it
        try:
            connection.start(
                head + b"%d\r\n\r\n" % len(body) + body, loop.time() + timeout_s, deliver
            )
        except StaleConnection:
            return None  # `request` closes it
        state.idle.pop()
        slots.free -= 1
        all_slots.free -= 1
        return connection

    def done(self, origin: Origin, connection: Connection) -> None:
        """A call from `start_now` is over: its connection back to the idle ones, or closed."""
        state = self._origins[origin]
        self._slots.give_back()
        state.slots.give_back()
        self._recycle(state, connection)

    async def close(self) -> None:
        """Close every connection; calls still in progress fail."""
        self._closing = True
        for state in self._origins.values():
            for connection in list(state.open):
                connection.close()
        await asyncio.sleep(0)  # let the transports run connection_lost

    def _idle(self, state: _OriginState) -> Optional[Connection]:
        """The newest idle connection still usable; older ones past keepalive are closed."""
        expired_before = self._loop.time() - self._keepalive_s
        while state.idle:
            connection = state.idle.pop()
            if connection.idle_since < expired_before or connection.closing():
                connection.close()
                continue
            return connection
        return None

    async def _connect(self, origin: Origin, state: _OriginState, deadline: float) -> Connection:
        if self._open >= self._limit:
            self._close_oldest_idle()
        tls = self._tls_context() if origin.scheme == "https" else None
        timeout = min(self._connect_timeout_s, deadline - self._loop.time())
        try:
            _, connection = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: Connection(self._loop, state.on_closed),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                ),
                max(0.0, timeout),
            )
        except asyncio.TimeoutError:
            raise BackendHttpTimeout("deadline passed connecting") from None
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc) or repr(exc)
            raise BackendHttpError(f"cannot connect: {reason}") from None
        state.open.add(connection)
        self._open += 1
        return connection

    async def _exchange(
        self,
        origin: Origin,
        state: _OriginState,
        connection: Connection,
        data: bytes,
        deadline: float,
    ) -> HttpReply:
        try:
            reply = await connection.send(data, deadline)
        except BaseException:
            connection.close()  # a cancelled or failed call leaves the stream mid-reply
            raise
        self._recycle(state, connection)
        return reply

    def _recycle(self, state: _OriginState, connection: Connection) -> None:
        if connection.keep_alive and not connection.closed and not self._closing:
            connection.idle_since = self._loop.time()
            state.idle.append(connection)
        else:
            connection.close()

    def _forget(self, origin: Origin, connection: Connection) -> None:
        state = self._origins.get(origin)
        if state is not None and connection in state.open:
            state.open.discard(connection)
            self._open -= 1
            if connection in state.idle:
                state.idle.remove(connection)

    def _close_oldest_idle(self) -> None:
        """Make room under `limit`: slots are held, so some other endpoint has an idle one."""
        candidates = [s.idle[0] for s in self._origins.values() if s.idle]
        if candidates:
            min(candidates, key=lambda c: c.idle_since).close()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls
