"""Calling backends: one shared connection pool, round-robin endpoints, ejection and probing.

A backend is one model version behind one or more Paddle Serving pipeline endpoints. An endpoint
that fails `eject_after` times in a row at the transport level (refused, timeout, HTTP 5xx,
non-JSON body) leaves the rotation; a background prober brings it back once it answers again.
A pipeline reply with `err_no != 0` is a backend error for the request but proves the endpoint
alive, so it never ejects (a client sending bad input must not empty the rotation). One `err_no`,
BAD_INPUT_ERR_NO, says the input is invalid for the model: a BackendFailure of kind `bad_input`,
which the request path asks control to confirm before it blames anyone (router.proxy.handler).

Two ways to call: `call`, a coroutine that waits for a connection if it must, and `try_call`
for the request path, which starts the call at once on an idle connection (an Attempt, whose
reply comes to a callback) or says it cannot; `call(..., resume=...)` then goes on from there.
Both judge a reply by the same rule (`judge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Optional, Protocol, TypeVar, Union

from router.proxy.intake import parse_json
from router.records.metrics import RouterMetrics
from router.registry.schema import BackendConfig, RouterSettings
from router.transport.backend_client import (
    BackendHttpError,
    BackendHttpTimeout,
    Connection,
    ConnectionPool,
    Deliver,
    HttpReply,
    Origin,
    StaleConnection,
    request_head,
)

log = logging.getLogger(__name__)

FailureKind = Literal["error", "timeout", "bad_input"]
PROBE_TICK_S = 0.1


class Probed(Protocol):
    """An endpoint the prober watches (HTTP here, gRPC in router.proxy.grpc_path)."""

    up: bool
    probing: bool
    next_probe_at: float


BackendT = TypeVar("BackendT")
EndpointT = TypeVar("EndpointT", bound=Probed)


async def probe_ejected_forever(
    endpoints: Callable[[], Iterable[tuple[BackendT, EndpointT]]],
    probe: Callable[[BackendT, EndpointT], Awaitable[None]],
) -> None:
    """Every PROBE_TICK_S, start `probe` on each ejected endpoint due for one (one at a time
    per endpoint); runs until cancelled, then cancels the probes under way."""
    probes: set[asyncio.Task[None]] = set()
    try:
        while True:
            now = time.monotonic()
            for backend, endpoint in endpoints():
                if endpoint.up or endpoint.probing or now < endpoint.next_probe_at:
                    continue
                endpoint.probing = True
                task = asyncio.ensure_future(probe(backend, endpoint))
                probes.add(task)
                task.add_done_callback(probes.discard)
            await asyncio.sleep(PROBE_TICK_S)
    finally:
        for task in probes:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*probes, return_exceptions=True)


# The pipeline reply's `err_no` for input the model cannot take: the first of the codes Paddle
# Serving leaves to products (51-99; its own are 0, 50 and 3000-10000). The serving op sends it
# (serving.pipeline_service.BAD_INPUT_ERR_NO, kept equal by a test: the router imports nothing
# of `serving`, which needs Paddle).
BAD_INPUT_ERR_NO = 51
# Request heads kept per endpoint, and the longest content type kept (`EndpointState.head`):
# "application/json; charset=utf-8" is 31 characters.
MAX_CACHED_HEADS = 32
MAX_CACHED_CONTENT_TYPE = 64
# How much of a backend's `err_msg` a failure keeps (the log line and the 400's message).
MAX_ERR_MSG_CHARS = 1000


class BackendFailure(Exception):
    """A backend call that produced no usable answer."""

    def __init__(
        self,
        backend: str,
        kind: FailureKind,
        detail: str,
        latency_s: float,
        *,
        retryable: bool = False,
        err_msg: str = "",
    ) -> None:
        super().__init__(f"{backend}: {detail}")
        self.backend = backend
        self.kind = kind
        self.detail = detail
        self.latency_s = latency_s
        # Another endpoint may answer: the endpoint failed, not the request (never a timeout).
        self.retryable = retryable
        self.err_msg = err_msg  # the pipeline reply's own message, if it had one


class BackendReply(NamedTuple):
    body: bytes  # the backend's JSON, exactly as received
    payload: dict[str, Any]
    version: str
    latency_s: float


@dataclass
class EndpointState:
    """Health of one endpoint; shared across registry reloads while the endpoint stays listed."""

    backend: str
    url: str
    up: bool = True
    failures: int = 0
    next_probe_at: float = 0.0
    probing: bool = False
    origin: Origin = field(init=False, repr=False)
    heads: dict[tuple[str, str, Optional[str]], bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.origin = Origin.parse(self.url)

    def head(self, method: str, path: str, content_type: Optional[str]) -> bytes:
        """The request head for `path` here: built once per path (paths come from the registry)
        and usual content type. Content types come from clients, so an unusual one (long, or
        one of too many) costs a head built for its call, never memory kept."""
        key = (method, path, content_type)
        head = self.heads.get(key)
        if head is None:
            head = request_head(self.origin, method, path, content_type)
            if content_type is None or len(content_type) <= MAX_CACHED_CONTENT_TYPE:
                if len(self.heads) >= MAX_CACHED_HEADS:
                    # A client cycling through content types: start over rather than lock
                    # the usual ones out (each costs one rebuild per MAX_CACHED_HEADS of them).
                    self.heads.clear()
                self.heads[key] = head
        return head


@dataclass
class BackendRuntime:
    name: str
    config: BackendConfig
    endpoints: list[EndpointState]
    timeout_s: float
    cursor: int = 0
    # The last request this backend answered well: replayed to probe an ejected endpoint.
    last_good: Optional[tuple[str, bytes, str]] = field(default=None, repr=False)

    def pick(self) -> Optional[EndpointState]:
        """The next endpoint in rotation, round-robin; None when all are ejected."""
        count = len(self.endpoints)
        endpoint = self.endpoints[self.cursor]
        if endpoint.up:  # the usual case, in short
            self.cursor = (self.cursor + 1) % count
            return endpoint
        for offset in range(count):
            endpoint = self.endpoints[(self.cursor + offset) % count]
            if endpoint.up:
                self.cursor = (self.cursor + offset + 1) % count
                return endpoint
        return None

    def pick_other(self, failed: EndpointState) -> Optional[EndpointState]:
        """The next endpoint in rotation but `failed`, for a retry (other requests move the
        cursor meanwhile: `pick` could give `failed` again)."""
        for _ in range(len(self.endpoints)):
            endpoint = self.pick()
            if endpoint is None or endpoint is not failed:
                return endpoint
        return None

    def healthy(self) -> bool:
        return any(endpoint.up for endpoint in self.endpoints)


def make_pool(settings: RouterSettings) -> ConnectionPool:
    """The router's one connection pool (needs a running loop); timeouts come with each call."""
    return ConnectionPool(
        limit=settings.max_connections,
        limit_per_origin=settings.max_connections_per_endpoint,
        keepalive_s=30.0,
        connect_timeout_s=5.0,
    )


class Upstreams:
    """Calls backends; owns endpoint health and the prober."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self._pool: Optional[ConnectionPool] = None
        self._metrics = metrics
        self._endpoints: dict[tuple[str, str], EndpointState] = {}
        # Calls made and not yet counted in the metrics: (backend, outcome, seconds or None).
        self._uncounted: list[tuple[str, str, Optional[float]]] = []
        self.current: dict[str, BackendRuntime] = {}
        metrics.add_live_gauge(
            "router_endpoint_up",
            "1 while an endpoint is in rotation, 0 while it is ejected.",
            ["backend", "endpoint"],
            self._endpoint_samples,
        )

    def configure(self, backends: Mapping[str, BackendConfig]) -> dict[str, BackendRuntime]:
        """Runtimes for a registry; endpoints listed before keep their health."""
        endpoints = {
            (name, url): self._endpoints.get((name, url)) or EndpointState(name, url)
            for name, config in backends.items()
            for url in config.endpoints
        }
        self._endpoints = endpoints
        runtimes = {}
        for name, config in backends.items():
            previous = self.current.get(name)
            runtimes[name] = BackendRuntime(
                name=name,
                config=config,
                endpoints=[endpoints[(name, url)] for url in config.endpoints],
                timeout_s=config.timeout_ms / 1000,
                last_good=previous.last_good if previous is not None else None,
            )
        self.current = runtimes
        return runtimes

    def attach(self, pool: Optional[ConnectionPool]) -> None:
        """The shared pool, opened and closed by the app (it needs a running loop)."""
        self._pool = pool

    def settle(self) -> None:
        """Count the calls made so far in the metrics; the request path only notes them."""
        uncounted, self._uncounted = self._uncounted, []
        requests, duration = self._metrics.backend_requests, self._metrics.backend_duration
        for backend, outcome, seconds in uncounted:
            requests.add((backend, outcome))
            if seconds is not None:
                duration.observe((backend,), seconds)

    def _request(
        self,
        backend: BackendRuntime,
        endpoint: EndpointState,
        method: str,
        path: str,
        body: bytes,
        content_type: Optional[str],
    ) -> Awaitable[HttpReply]:
        if self._pool is None:
            raise RuntimeError("Upstreams used before the app started")
        head = endpoint.head(method, path, content_type)
        return self._pool.request(endpoint.origin, head, body, backend.timeout_s)

    def try_call(
        self, backend: BackendRuntime, path: str, body: bytes, content_type: str, deliver: Deliver
    ) -> Union[Attempt, EndpointState, None]:
        """Start the call `call` would make, at once if an idle connection is free: the Attempt,
        whose connection hands the outcome to `deliver` (for `Attempt.reply`). Otherwise the
        endpoint picked, for `call(..., resume=Resume(endpoint))`, or None if none is in
        rotation (`call` fails it)."""
        endpoint = backend.pick()
        if endpoint is None or self._pool is None:
            return None
        target_path = backend.config.path or path
        head = endpoint.heads.get(("POST", target_path, content_type)) or endpoint.head(
            "POST", target_path, content_type
        )
        started = time.perf_counter()
        connection = self._pool.start_now(endpoint.origin, head, body, backend.timeout_s, deliver)
        if connection is None:
            return endpoint
        return Attempt(
            self,
            self._pool,
            backend,
            endpoint,
            connection,
            started,
            target_path,
            body,
            content_type,
        )

    async def call(
        self,
        backend: BackendRuntime,
        path: str,
        body: bytes,
        content_type: str,
        resume: Optional[Resume] = None,
    ) -> BackendReply:
        """POST `body` to the next endpoint of `backend`; raises BackendFailure.

        When the endpoint fails at the transport level without a timeout (refused, reset,
        HTTP 5xx, not JSON: a dead or broken replica), the request goes once to the next
        endpoint in rotation; a prediction is safe to repeat. The reply's latency covers both.
        `resume` goes on from a call `try_call` started: to its endpoint, or past its failure.
        """
        endpoint = backend.pick() if resume is None else resume.endpoint
        if endpoint is None:
            self._uncounted.append((backend.name, "error", None))
            raise BackendFailure(backend.name, "error", "no endpoint in rotation", 0.0)
        try:
            if resume is not None and resume.failure is not None:
                raise resume.failure
            return await self._call_endpoint(backend, endpoint, path, body, content_type)
        except BackendFailure as failure:
            other = backend.pick_other(endpoint) if failure.retryable else None
            if other is None:
                raise
            first = failure
        try:
            reply = await self._call_endpoint(backend, other, path, body, content_type)
        except BackendFailure as second:
            raise BackendFailure(
                backend.name,
                second.kind,
                f"{first.detail}; then {second.detail}",
                first.latency_s + second.latency_s,
            ) from None
        return reply._replace(latency_s=first.latency_s + reply.latency_s)

    async def _call_endpoint(
        self,
        backend: BackendRuntime,
        endpoint: EndpointState,
        path: str,
        body: bytes,
        content_type: str,
    ) -> BackendReply:
        target_path = backend.config.path or path
        started = time.perf_counter()
        try:
            delivered: Union[HttpReply, BackendHttpError] = await self._request(
                backend, endpoint, "POST", target_path, body, content_type
            )
        except BackendHttpError as exc:
            delivered = exc
        return self.judge(backend, endpoint, delivered, started, target_path, body, content_type)

    def judge(
        self,
        backend: BackendRuntime,
        endpoint: EndpointState,
        delivered: Union[HttpReply, BackendHttpError],
        started: float,
        target_path: str,
        body: bytes,
        content_type: str,
    ) -> BackendReply:
        """What an endpoint's call came to: the reply, or the BackendFailure raised."""
        if isinstance(delivered, BackendHttpTimeout):
            raise self._transport_failure(
                backend,
                endpoint,
                "timeout",
                f"no answer in {backend.config.timeout_ms} ms",
                started,
            )
        if isinstance(delivered, BackendHttpError):
            raise self._transport_failure(backend, endpoint, "error", str(delivered), started)
        status, raw = delivered
        if status >= 500:
            raise self._transport_failure(backend, endpoint, "error", f"HTTP {status}", started)
        try:
            payload = parse_json(raw, strict=False)
        except ValueError:
            raise self._transport_failure(
                backend, endpoint, "error", "reply is not JSON", started
            ) from None
        if not isinstance(payload, dict):
            raise self._transport_failure(
                backend, endpoint, "error", "reply is not a JSON object", started
            )
        endpoint.failures = 0
        latency = time.perf_counter() - started
        err_no = payload.get("err_no", 0)
        if status != 200 or err_no != 0:
            raise self._reply_failure(backend, status, err_no, payload, latency)
        self._uncounted.append((backend.name, "ok", latency))
        backend.last_good = (target_path, body, content_type)
        return BackendReply(raw, payload, backend.config.version, latency)

    def _reply_failure(
        self,
        backend: BackendRuntime,
        status: int,
        err_no: object,
        payload: dict[str, Any],
        latency: float,
    ) -> BackendFailure:
        """A JSON reply that is no answer: HTTP 4xx, `err_no != 0`, or the input is bad."""
        kind: FailureKind = "bad_input" if status == 200 and err_no == BAD_INPUT_ERR_NO else "error"
        self._uncounted.append((backend.name, kind, latency))
        message = str(payload.get("err_msg", ""))[:MAX_ERR_MSG_CHARS]
        detail = f"HTTP {status}" if status != 200 else f"err_no {err_no}: {message[:200]}"
        return BackendFailure(backend.name, kind, detail, latency, err_msg=message)

    def _transport_failure(
        self,
        backend: BackendRuntime,
        endpoint: EndpointState,
        kind: FailureKind,
        detail: str,
        started: float,
    ) -> BackendFailure:
        latency = time.perf_counter() - started
        self._uncounted.append((backend.name, kind, latency))
        endpoint.failures += 1
        if endpoint.up and endpoint.failures >= backend.config.eject_after:
            endpoint.up = False
            endpoint.next_probe_at = time.monotonic() + backend.config.probe_interval_s
            log.warning(
                "endpoint %s of %s ejected after %d failures (last: %s)",
                endpoint.url, backend.name, endpoint.failures, detail,
            )  # fmt: skip
        return BackendFailure(
            backend.name, kind, f"{endpoint.url}: {detail}", latency, retryable=kind != "timeout"
        )

    async def probe_forever(self) -> None:
        """Bring ejected endpoints back once they answer; runs until cancelled."""
        await probe_ejected_forever(
            lambda: ((b, e) for b in self.current.values() for e in b.endpoints), self._probe
        )

    async def _probe(self, backend: BackendRuntime, endpoint: EndpointState) -> None:
        try:
            alive = await self._answers(backend, endpoint)
        finally:
            endpoint.probing = False
        if alive:
            endpoint.up, endpoint.failures = True, 0
            log.warning("endpoint %s of %s is back in rotation", endpoint.url, backend.name)
        else:
            endpoint.next_probe_at = time.monotonic() + backend.config.probe_interval_s

    async def _answers(self, backend: BackendRuntime, endpoint: EndpointState) -> bool:
        """Replay the last good request; without one, any HTTP answer below 500 will do."""
        try:
            if backend.last_good is None:
                status, _ = await self._request(backend, endpoint, "GET", "/", b"", None)
                return status < 500
            path, body, content_type = backend.last_good
            status, raw = await self._request(backend, endpoint, "POST", path, body, content_type)
            payload = parse_json(raw, strict=False)
        except (BackendHttpError, ValueError):
            return False
        return status == 200 and isinstance(payload, dict) and payload.get("err_no", 0) == 0

    def _endpoint_samples(self) -> list[tuple[tuple[str, str], float]]:
        return [((e.backend, e.url), 1.0 if e.up else 0.0) for e in self._endpoints.values()]


class Resume(NamedTuple):
    """Where `Upstreams.call` goes on from an Attempt: its endpoint, and its failure if any
    (None: the call is made again there, as when the idle connection had closed)."""

    endpoint: EndpointState
    failure: Optional[BackendFailure] = None


class Attempt:
    """A backend call under way on an idle connection, started by `Upstreams.try_call`."""

    __slots__ = (
        "_body",
        "_connection",
        "_content_type",
        "_path",
        "_pool",
        "_started",
        "_upstreams",
        "backend",
        "endpoint",
    )

    def __init__(
        self,
        upstreams: Upstreams,
        pool: ConnectionPool,
        backend: BackendRuntime,
        endpoint: EndpointState,
        connection: Connection,
        started: float,
        path: str,
        body: bytes,
        content_type: str,
    ) -> None:
        self._upstreams = upstreams
        self._pool = pool
        self.backend = backend
        self.endpoint = endpoint
        self._connection = connection
        self._started = started
        self._path = path
        self._body = body
        self._content_type = content_type

    def reply(self, delivered: Union[HttpReply, BackendHttpError]) -> BackendReply:
        """What the connection delivered, judged as `call` would: raises BackendFailure, or
        StaleConnection when the idle connection had closed (make the call again). Call
        `release` after it: the answer goes out first."""
        if isinstance(delivered, StaleConnection):
            raise delivered
        return self._upstreams.judge(
            self.backend,
            self.endpoint,
            delivered,
            self._started,
            self._path,
            self._body,
            self._content_type,
        )

    def release(self) -> None:
        """The connection back to the pool."""
        self._pool.done(self.endpoint.origin, self._connection)
