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
`pipelining_unsupported` after the earlier answers, and the connection closes. A connection
handed over to aiohttp closes after that request's answer, so that every request head is read
here, within the limits below.

What one client can make the server hold or wait for is bounded (`ClientLimits`, nginx's
defaults where nginx has the same limit), and each limit is decided as soon as it is crossed:
the request line and each header field (414, 431), the whole head and its number of fields
(431), the body (413 as soon as `Content-Length` says so, or as soon as a chunked body crosses
it), the time to send a head and then a body (408), the connections open at once (503), and the
answer bytes queued for a client that does not read (past that, the connection reads nothing
more and starts no further request until the client catches up). Requests nginx refuses are
refused too: HTTP versions other than 1.0 and 1.1 (505), an HTTP/1.1 request without exactly
one Host (400), a Transfer-Encoding other than `chunked` alone (501), a chunked HTTP/1.0
request (400). After a refusal the answer goes out, the write side is shut and what the client
still sends is read and dropped for a while (a lingering close, as nginx does): closing at once
would let the client's kernel reset the connection before the client reads why.
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
from aiohttp.typedefs import Handler, Middleware

from router.transport.messages import HttpAnswer, HttpRequest, Respond

log = logging.getLogger(__name__)

KEEPALIVE_S = 75.0  # aiohttp's default: an idle connection closes after this
# On shutdown, a keep-alive connection answered less than this ago stays open until then: its
# client may be sending the next request right now, and closing under it would fail that.
SHUTDOWN_GRACE_S = 0.25
MAX_QUEUED = 16  # pipelined requests waiting on one connection before reading pauses
# A lingering close ends after this long in all, however slowly the client keeps sending
# (nginx's lingering_time).
LINGERING_TIME_S = 30.0
# Requests with these headers go to aiohttp, which implements what they ask for.
ASK_AIOHTTP = frozenset(("content-encoding", "expect", "upgrade"))
# Headers a request may carry once at most: two could be read two ways (request smuggling).
SINGLE_HEADERS = frozenset(("host", "content-length", "transfer-encoding"))


class ClientLimits(NamedTuple):
    """What one client may send or make the server hold or wait for (`router.*` in the
    registry: `max_line_bytes`, `head_timeout`, ...)."""

    max_line_bytes: int  # the request line, and each header field
    max_head_bytes: int
    max_header_count: int
    head_timeout_s: float  # from a request's first byte to the end of its head
    body_timeout_s: float  # from the end of the head to the end of the body
    max_connections: int
    max_unread_answer_bytes: int
    lingering_timeout_s: float  # a lingering close ends after this long without a byte


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
        self,
        routes: RoutesNow,
        start: Start,
        refuse: Refuse,
        aiohttp_server: web.Server,
        limits: ClientLimits,
    ) -> None:
        self.routes = routes
        self.start = start
        self.refuse = refuse
        self.aiohttp_server = aiohttp_server
        self.limits = limits
        self.connections: set[FastPathProtocol] = set()
        self.lingering: set[_Lingering] = set()
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
        for lingering in list(self.lingering):
            lingering.abort()

    def full(self) -> bool:
        return len(self.connections) + len(self.lingering) >= self.limits.max_connections

    def forget(self, connection: FastPathProtocol) -> None:
        """`connection` closed or went over to aiohttp."""
        self.connections.discard(connection)
        if self._drained is not None and not self.connections:
            self._drained.set()


class FastPathProtocol(asyncio.Protocol):
    """One client connection, until it closes or is handed over to aiohttp."""

    def __init__(self, shared: FastPath) -> None:
        self._shared = shared
        self._limits = shared.limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: Optional[asyncio.Transport] = None
        # The request being parsed.
        self._in_message = False
        self._in_head = False
        self._head_bytes = 0  # of a head that spans reads; see data_received
        self._message_started_at = 0.0
        self._head_done_at = 0.0
        self._deadline: Optional[asyncio.TimerHandle] = None  # of a request cut across reads
        self._http10 = False
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
        self._writing_paused = False  # the client is not reading its answers
        self._closing = False
        self._idle_timer: Optional[asyncio.TimerHandle] = None
        self._last_active = 0.0  # loop time of the last byte received or answer written

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self._transport = cast(asyncio.Transport, transport)
        shared = self._shared
        if shared.full():
            answer = shared.refuse(
                503, "too_many_connections", "the router has too many open connections; retry"
            )
            self._transport.write(_encode(answer, False, False))
            self._transport.close()
            return
        shared.connections.add(self)
        if shared.closing:
            self.abort()
        else:
            self._transport.set_write_buffer_limits(high=self._limits.max_unread_answer_bytes)
            self._last_active = self._loop.time()
            self._idle_timer = self._loop.call_later(KEEPALIVE_S, self._close_if_idle)

    def data_received(self, data: bytes) -> None:
        self._last_active = self._loop.time()
        head_went_on = self._in_head
        if head_went_on:
            self._chunks.append(data)
        else:  # the bytes to replay start with this read
            self._chunks = [data]
        self._completed_in_chunk = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            reason = exc.__context__
        except httptools.HttpParserError as exc:
            reason = exc
        else:
            reason = None
        if reason is not None:  # out of the except block: see _parser_stopped
            self._parser_stopped(reason)
        elif self._in_message:  # a request cut across reads (rare): bound it
            # All of this read is head if the head began before it, or at its start. A head
            # that began after another request in this read is counted from the next read on:
            # llhttp does not say where it began, and one read is a bounded amount.
            self._cut_across_reads(len(data) if head_went_on or not self._began_mid_chunk else 0)

    def _parser_stopped(self, reason: BaseException) -> None:
        # Called out of the except block: what aiohttp raises after a handover must not be
        # chained to the parser's error.
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
        self._stop_timers()
        # A request in progress still finishes (its backend call, its exposure record).
        self._queue.clear()

    def pause_writing(self) -> None:
        """The client left `max_unread_answer_bytes` unread: start no further request of its
        and read nothing more until it catches up."""
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._queue and self._answering is None:
            self._answer_queued()
        elif self._answering is None:
            self._went_idle()

    # --- limits on a request cut across reads ---------------------------------------------

    def _cut_across_reads(self, head_bytes: int) -> None:
        if self._in_head:
            self._head_bytes += head_bytes
            if self._head_bytes > self._limits.max_head_bytes:
                self._refuse(
                    431, "head_too_large", f"request head over {self._limits.max_head_bytes} bytes"
                )
                return
        if self._deadline is None:
            self._deadline = self._loop.call_at(self._time_limit(), self._time_limit_passed)

    def _time_limit(self) -> float:
        """When the head, or else the body, of the request being read must have arrived."""
        if self._in_head:
            return self._message_started_at + self._limits.head_timeout_s
        return self._head_done_at + self._limits.body_timeout_s

    def _time_limit_passed(self) -> None:
        self._deadline = None
        if not self._in_message or self._answered_last:
            return
        now = self._loop.time()
        if self._reading_paused:  # the router holds the bytes back, not the client
            self._message_started_at = self._head_done_at = now
        if now < self._time_limit():
            self._deadline = self._loop.call_at(self._time_limit(), self._time_limit_passed)
            return
        part, limit_s = (
            ("head", self._limits.head_timeout_s)
            if self._in_head
            else ("body", self._limits.body_timeout_s)
        )
        self._refuse(408, "request_timeout", f"the request {part} took over {limit_s:g} s")

    # --- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = self._in_head = True
        self._head_bytes = 0
        self._message_started_at = self._last_active
        self._began_mid_chunk = self._completed_in_chunk
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_line_bytes:
            raise _Refusal(
                414, "uri_too_long", f"request target over {self._limits.max_line_bytes} bytes"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools hands over a field when it is whole; the head limit bounds it before that.
        if len(name) + len(value) > self._limits.max_line_bytes:
            raise _Refusal(
                431, "header_too_large", f"a header field over {self._limits.max_line_bytes} bytes"
            )
        key, headers = name.decode("latin-1").lower(), self._headers
        if key in headers:
            if key in SINGLE_HEADERS:
                raise _Refusal(400, "bad_request", f"the {key} header is given twice")
            return  # the first one counts
        if len(headers) >= self._limits.max_header_count:
            raise _Refusal(
                431, "too_many_headers", f"over {self._limits.max_header_count} header fields"
            )
        headers[key] = value.decode("utf-8", "surrogateescape")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_done_at = self._last_active
        parser, routes, headers = self._parser, self._shared.routes(), self._headers
        self._check_framing(parser.get_http_version(), headers)
        length = headers.get("content-length")
        if length is not None and int(length) > routes.max_body_bytes:
            raise _Refusal(
                413, "body_too_large", f"request body over {routes.max_body_bytes} bytes"
            )
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

    def _check_framing(self, version: str, headers: Mapping[str, str]) -> None:
        """Refuse what nginx refuses: what two servers in a row could read two ways."""
        http10 = self._http10 = version == "1.0"
        if version != "1.1" and not http10:
            raise _Refusal(505, "http_version_not_supported", "HTTP/1.1 or HTTP/1.0 only")
        if not http10 and "host" not in headers:
            raise _Refusal(400, "bad_request", "an HTTP/1.1 request must have a Host header")
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if http10:
                raise _Refusal(400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request")
            if coding.strip().lower() != "chunked":
                raise _Refusal(
                    501, "unsupported_transfer_encoding", "Transfer-Encoding: chunked only"
                )

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._body_limit:  # chunked: no Content-Length said so before
            raise _Refusal(413, "body_too_large", f"request body over {self._body_limit} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._completed_in_chunk = True
        self._chunks = []
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        request = HttpRequest("POST", self._path, self._headers, b"".join(self._body))
        keep_alive, http10 = self._parser.should_keep_alive(), self._http10
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
        """Answer this error after the answers in progress, then close (lingering); read
        nothing more meanwhile."""
        self._pause_reading()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._enqueue(self._shared.refuse(status, code, message))

    def _answer_queued(self) -> None:
        """Answer the queued requests in order, one at a time; then go on with the connection.
        (A loop, not recursion: `start` may answer at once, an error, through `_answered`.)"""
        if self._draining:
            return
        self._draining = True
        try:
            while (
                self._queue
                and self._answering is None
                and not self._answered_last
                and not self._writing_paused
            ):
                item = self._queue.popleft()
                if isinstance(item, HttpAnswer):
                    self._write_refusal(item)
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
        if transport is None or self._answered_last or self._queue:
            return  # (a queue: it waits for the client to read its answers)
        if self._handover is not None:
            self._hand_over(self._handover)
        elif self._closing or self._shared.closing:
            transport.close()
        else:
            if self._reading_paused and not self._writing_paused:
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

    def _write_refusal(self, answer: HttpAnswer) -> None:
        self._answered_last = True
        self._queue.clear()
        transport = self._transport
        if transport is None:
            return
        transport.write(_encode(answer, False, False))
        self._transport = None
        self._shared.forget(self)
        self._stop_timers()
        lingering = _Lingering(self._shared, transport)
        transport.set_protocol(lingering)
        lingering.start(reading_paused=self._reading_paused)

    def _stop_timers(self) -> None:
        for timer in (self._idle_timer, self._deadline):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._deadline = None

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
        self._stop_timers()  # aiohttp keeps its own time from here
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


class _Lingering(asyncio.Protocol):
    """A refused connection, its answer written and its write side shut: what the client still
    sends is read and dropped until it stops sending for `lingering_timeout_s` (or
    LINGERING_TIME_S in all), then the connection closes. Closing with unread bytes would make
    the kernel reset the connection, and the client would lose the answer."""

    def __init__(self, shared: FastPath, transport: asyncio.Transport) -> None:
        self._shared = shared
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._last_byte_at = self._loop.time()
        self._ends_at = self._last_byte_at + LINGERING_TIME_S
        self._timer: Optional[asyncio.TimerHandle] = None

    def start(self, reading_paused: bool) -> None:
        self._shared.lingering.add(self)
        if self._transport.can_write_eof():
            self._transport.write_eof()
        if reading_paused:
            self._transport.resume_reading()
        self._timer = self._loop.call_later(
            self._shared.limits.lingering_timeout_s, self._maybe_close
        )

    def data_received(self, data: bytes) -> None:
        self._last_byte_at = self._loop.time()

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._shared.lingering.discard(self)
        if self._timer is not None:
            self._timer.cancel()

    def _maybe_close(self) -> None:
        now, quiet_s = self._loop.time(), self._shared.limits.lingering_timeout_s
        if now >= self._ends_at:
            self.abort()
        elif now - self._last_byte_at >= quiet_s:
            self._transport.close()
            # close() waits until the answer is written: a client that reads nothing would
            # hold the connection for good.
            self._timer = self._loop.call_at(self._ends_at, self.abort)
        else:
            wait_s = min(self._last_byte_at + quiet_s, self._ends_at) - now
            self._timer = self._loop.call_later(wait_s, self._maybe_close)

    def abort(self) -> None:
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


def handed_over_requests(limits: ClientLimits) -> Middleware:
    """aiohttp middleware for the requests the fast path hands over: the answer closes the
    connection, so that the next request's head is read by the fast path, within its limits;
    a body that is not all there `body_timeout_s` after the head closes it too."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        timer = None
        if request.body_exists and not request.content.is_eof():
            timer = asyncio.get_running_loop().call_later(
                limits.body_timeout_s, _cut_off_unless_read, request
            )
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.force_close()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        response.force_close()
        return response

    return middleware


def _cut_off_unless_read(request: web.Request) -> None:
    if not request.content.is_eof() and request.transport is not None:
        request.transport.close()


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
        limits: ClientLimits,
        backlog: int = 1024,
        shutdown_timeout: float = 10.0,
        reuse_port: Optional[bool] = None,
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog, reuse_port=reuse_port)
        assert runner.server is not None  # runner.setup() ran (TCPSite checks it too)
        self._fast = FastPath(routes, start, refuse, runner.server, limits)
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
