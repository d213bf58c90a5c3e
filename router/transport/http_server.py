"""The fast path: an HTTP/1.1 server for the requests that matter most, aiohttp for the rest.

`python -m router` listens with FastPathSite. Each connection's requests are parsed by llhttp
(httptools, the parser uvicorn uses). A POST to one of the `FastRoutes` goes straight to the
injected `start(request, respond)` from the parser's callback, and the answer `respond` gets is
written as bytes: no Task per request. This module knows nothing of experiments: which paths
are fast, the body limit and what answers a request are all given to it. Anything else (the
admin API, /metrics, /events, a percent-encoded path, a body with a Content-Encoding, `Expect`,
an upgrade) hands the connection over to aiohttp for good: the bytes of that request are
replayed into aiohttp's own protocol, which serves the rest of the connection.

Why: on the benchmark machine aiohttp's server side cost about 0.2 ms of CPU per request, and
it set the router's latency overhead in front of Paddle Serving (docs/router.md, "How a
request is served").

Keep-alive, HTTP/1.0 and pipelining work: the requests of one connection are answered one at a
time, in order. One limit: a request for aiohttp that was pipelined in the same packet behind
another request cannot be replayed (where its bytes start is unknown); it gets 400
`pipelining_unsupported` after the earlier answers, and the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Callable, NamedTuple, Optional, Union, cast

import httptools
from aiohttp import web

from router.transport.messages import HttpAnswer, HttpRequest, Respond

log = logging.getLogger(__name__)

KEEPALIVE_S = 75.0  # aiohttp's default: an idle connection closes after this
# On shutdown, a keep-alive connection answered less than this ago stays open until then: its
# client may be sending the next request right now, and closing under it would fail that.
SHUTDOWN_GRACE_S = 0.25
MAX_QUEUED = 16  # pipelined requests waiting on one connection before reading pauses
# A body over max_body_bytes is read and dropped up to this many times the limit, then cut off.
DISCARD_FACTOR = 16
# Requests with these headers go to aiohttp, which implements what they ask for.
ASK_AIOHTTP = frozenset(("content-encoding", "expect", "upgrade"))


class FastRoutes(NamedTuple):
    """The requests the fast path answers itself: POSTs to these paths (by the request target's
    raw bytes: one dict lookup, no decoding), with bodies of at most `max_body_bytes`."""

    paths: Mapping[bytes, str]  # raw target -> the path handed to `start`
    max_body_bytes: int


# The callables the fast path is given: the routes in force (asked once per request, so they
# may change at any time), the request path, and the server's own error answers.
RoutesNow = Callable[[], FastRoutes]
Start = Callable[[HttpRequest, Respond], None]
Refuse = Callable[[int, str, str], HttpAnswer]


class _Handover(Exception):
    """Raised from a parser callback: this request is for aiohttp."""


class _Refusal(Exception):
    """Raised from a parser callback with (status, code, message): answer that, then close."""


# A parsed request waiting for its answer: the request, keep-alive, HTTP/1.0.
_Queued = Union[tuple[HttpRequest, bool, bool], HttpAnswer]


class FastPath:
    """What the connections share: the injected callables and aiohttp's protocol factory."""

    def __init__(
        self, routes: RoutesNow, start: Start, refuse: Refuse, aiohttp_server: web.Server
    ) -> None:
        self.routes = routes
        self.start = start
        self.refuse = refuse
        self.aiohttp_server = aiohttp_server
        self.connections: set[FastPathProtocol] = set()
        self.closing = False
        self._drained: Optional[asyncio.Event] = None

    def __call__(self) -> FastPathProtocol:
        return FastPathProtocol(self)

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections (after SHUTDOWN_GRACE_S); the others after their answer."""
        self.closing = True
        self._drained = asyncio.Event()
        for connection in list(self.connections):
            connection.close_when_idle(SHUTDOWN_GRACE_S)
        if self.connections:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        for connection in list(self.connections):
            connection.abort()

    def forget(self, connection: FastPathProtocol) -> None:
        """`connection` closed or went over to aiohttp."""
        self.connections.discard(connection)
        if self._drained is not None and not self.connections:
            self._drained.set()


class FastPathProtocol(asyncio.Protocol):
    """One client connection, until it closes or is handed over to aiohttp."""

    def __init__(self, shared: FastPath) -> None:
        self._shared = shared
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: Optional[asyncio.Transport] = None
        # The request being parsed.
        self._in_message = False
        self._url = b""
        # By lower-case name, the first of repeated ones (cheaper than a CIMultiDict; the
        # request path only looks names up, in lower case).
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._body_limit = 0
        self._path = ""
        # Raw bytes since the request being parsed began, to replay into aiohttp.
        self._chunks: list[bytes] = []
        self._completed_in_chunk = False
        self._began_mid_chunk = False
        # Answering.
        self._queue: deque[_Queued] = deque()
        self._answering: Optional[tuple[bool, bool]] = None  # keep-alive, HTTP/1.0; or idle
        self._draining = False  # in _answer_queued
        self._answered_last = False  # an answer with `Connection: close` went out
        self._handover: Optional[bytes] = None
        self._reading_paused = False
        self._closing = False
        self._idle_timer: Optional[asyncio.TimerHandle] = None
        self._last_active = 0.0  # loop time of the last byte received or answer written

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self._transport = cast(asyncio.Transport, transport)
        self._shared.connections.add(self)
        if self._shared.closing:
            self.abort()
        else:
            self._last_active = self._loop.time()
            self._idle_timer = self._loop.call_later(KEEPALIVE_S, self._close_if_idle)

    def data_received(self, data: bytes) -> None:
        self._last_active = self._loop.time()
        if self._in_message:
            self._chunks.append(data)
        else:
            self._chunks = [data]
        self._completed_in_chunk = False
        try:
            self._parser.feed_data(data)
            return
        except httptools.HttpParserCallbackError as exc:
            reason = exc.__context__
        except httptools.HttpParserError as exc:
            reason = exc
        # Out of the except block: what aiohttp raises after a handover is not chained to it.
        if isinstance(reason, _Handover):
            self._hand_over_when_idle(b"".join(self._chunks))
        elif isinstance(reason, _Refusal):
            self._refuse(*reason.args)
        elif isinstance(reason, httptools.HttpParserError):
            self._refuse(400, "bad_request", f"malformed HTTP request: {reason}")
        else:
            log.error("fast path: parser callback failed", exc_info=reason)
            self._refuse(500, "internal_error", "the router failed to read this request")

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._transport = None
        self._shared.forget(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        # A request in progress still finishes (its backend call, its exposure record).
        self._queue.clear()

    # --- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._began_mid_chunk = self._completed_in_chunk
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.setdefault(
            name.decode("latin-1").lower(), value.decode("utf-8", "surrogateescape")
        )

    def on_headers_complete(self) -> None:
        parser, routes = self._parser, self._shared.routes()
        path = routes.paths.get(self._url.split(b"?", 1)[0])
        if (
            path is None
            or parser.get_method() != b"POST"
            or parser.should_upgrade()
            or not ASK_AIOHTTP.isdisjoint(self._headers)
        ):  # aiohttp's request
            if self._began_mid_chunk:
                raise _Refusal(
                    400,
                    "pipelining_unsupported",
                    "a request to this path must not be pipelined behind another one "
                    "on the same connection; send it after the previous answer",
                )
            raise _Handover()
        self._path = path
        self._body_limit = routes.max_body_bytes

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size <= self._body_limit:
            self._body.append(body)
        elif self._size > DISCARD_FACTOR * self._body_limit:
            raise _Refusal(413, "body_too_large", f"request body over {self._body_limit} bytes")
        # Over the limit: read the rest and drop it, so that the client, still sending, reads
        # our 413 instead of a connection reset.

    def on_message_complete(self) -> None:
        self._in_message = False
        self._completed_in_chunk = True
        self._chunks = []
        if self._size > self._body_limit:
            self._refuse(413, "body_too_large", f"request body over {self._body_limit} bytes")
            return
        parser = self._parser
        request = HttpRequest("POST", self._path, self._headers, b"".join(self._body))
        keep_alive, http10 = parser.should_keep_alive(), parser.get_http_version() == "1.0"
        if self._answering is None and not self._queue and not self._answered_last:
            self._answering = (keep_alive, http10)  # the usual case: answer it now
            self._shared.start(request, self._answered)
        else:
            self._enqueue((request, keep_alive, http10))

    # --- answering ------------------------------------------------------------------------

    def _enqueue(self, item: _Queued) -> None:
        if self._answered_last:
            return
        self._queue.append(item)
        if self._answering is None:
            self._answer_queued()
        elif len(self._queue) >= MAX_QUEUED:
            self._pause_reading()

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._reading_paused:
            self._transport.pause_reading()
            self._reading_paused = True

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer this error after the answers in progress, then close; read nothing more."""
        self._pause_reading()
        self._enqueue(self._shared.refuse(status, code, message))

    def _answer_queued(self) -> None:
        """Answer the queued requests in order, one at a time; then go on with the connection.
        (A loop, not recursion: `start` may answer at once, an error, through `_answered`.)"""
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue and self._answering is None and not self._answered_last:
                item = self._queue.popleft()
                if isinstance(item, HttpAnswer):
                    self._write(item, keep_alive=False, http10=False)
                    break
                request, keep_alive, http10 = item
                self._answering = (keep_alive, http10)
                self._shared.start(request, self._answered)
        finally:
            self._draining = False
        if self._answering is None:
            self._went_idle()

    def _answered(self, answer: HttpAnswer) -> None:
        """`respond`, as given to `start`."""
        answering, self._answering = self._answering, None
        assert answering is not None
        keep_alive, http10 = answering
        keep_alive = keep_alive and not self._closing and not self._shared.closing
        transport = self._transport
        if keep_alive and transport is not None:
            transport.write(_encode(answer, True, http10))  # the usual case, in short
        else:
            self._write(answer, keep_alive, http10)
        if self._queue:
            self._answer_queued()
        elif not self._draining:
            self._went_idle()

    def _went_idle(self) -> None:
        transport = self._transport
        if transport is None or self._answered_last:
            return
        if self._handover is not None:
            self._hand_over(self._handover)
        elif self._closing or self._shared.closing:
            transport.close()
        else:
            if self._reading_paused:
                self._reading_paused = False
                transport.resume_reading()
            self._last_active = self._loop.time()

    def _write(self, answer: HttpAnswer, keep_alive: bool, http10: bool) -> None:
        if not keep_alive:
            self._answered_last = True
            self._queue.clear()
        transport = self._transport
        if transport is None:
            return
        transport.write(_encode(answer, keep_alive, http10))
        if not keep_alive:
            transport.close()

    # --- handing over, closing ------------------------------------------------------------

    def _hand_over_when_idle(self, replay: bytes) -> None:
        if self._answering is None:
            self._hand_over(replay)
        else:  # answer what came before first; read nothing until then
            self._handover = replay
            self._pause_reading()

    def _hand_over(self, replay: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        self._transport = None
        self._shared.forget(self)
        if self._idle_timer is not None:  # aiohttp keeps its own time from here
            self._idle_timer.cancel()
            self._idle_timer = None
        protocol = self._shared.aiohttp_server()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(replay)
        if self._reading_paused:
            transport.resume_reading()

    def _close_if_idle(self) -> None:
        """Close after KEEPALIVE_S without a byte or an answer; otherwise look again then.
        (One timer per connection, not one per request: less work on the request path.)"""
        idle_s = self._loop.time() - self._last_active
        if self._answering is None and idle_s >= KEEPALIVE_S:
            self._idle_timer = None
            self.close_when_idle()
        else:
            self._idle_timer = self._loop.call_later(
                max(KEEPALIVE_S - idle_s, 1.0), self._close_if_idle
            )

    def close_when_idle(self, grace_s: float = 0.0) -> None:
        """Close when no request is in progress (else after its answer), and not before
        `grace_s` after the last byte received or answer written."""
        self._closing = True
        if self._answering is not None or self._transport is None:
            return
        wait_s = self._last_active + grace_s - self._loop.time()
        if wait_s > 0:
            self._loop.call_later(wait_s, self.close_when_idle)
        else:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("ascii")
    for status in HTTPStatus
}


_HEADER_LINE = "%s: %s\r\n"


class _HttpDate:
    """The Date header's value, formatted once a second."""

    def __init__(self) -> None:
        self._cached = (-1, "")

    def now(self) -> str:
        second = int(time.time())
        if self._cached[0] != second:
            self._cached = (second, formatdate(second, usegmt=True))
        return self._cached[1]


_http_date = _HttpDate().now


def _encode(answer: HttpAnswer, keep_alive: bool, http10: bool) -> bytes:
    head = "".join(map(_HEADER_LINE.__mod__, answer.headers.items()))  # no Python-level loop
    if not keep_alive:
        head += "Connection: close\r\n"
    elif http10:
        head += "Connection: keep-alive\r\n"
    head += f"Date: {_http_date()}\r\nContent-Length: {len(answer.body)}\r\n\r\n"
    return _STATUS_LINES[answer.status] + head.encode("latin-1") + answer.body


class FastPathSite(web.TCPSite):
    """A TCPSite whose connections start on the fast path; stopping it drains them too."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: Optional[str],
        port: int,
        *,
        routes: RoutesNow,
        start: Start,
        refuse: Refuse,
        backlog: int = 1024,
        shutdown_timeout: float = 10.0,
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog)
        assert runner.server is not None  # runner.setup() ran (TCPSite checks it too)
        self._fast = FastPath(routes, start, refuse, runner.server)
        self._shutdown_timeout = shutdown_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        self._server = await asyncio.get_running_loop().create_server(
            self._fast,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )

    async def stop(self) -> None:
        await super().stop()  # no new connections
        await self._fast.shutdown(self._shutdown_timeout)
