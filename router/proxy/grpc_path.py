"""The gRPC request path: Paddle Serving's own client (`PipelineClient`) through the router.

Served when `router.grpc_port` is set (router.transport.pipeline_rpc serves the method). A call
of `PipelineService/inference` goes through the same steps as an HTTP request
(router.proxy.handler), over gRPC to the backends' `grpc_endpoints`:

- The experiment: the one named by the metadata `x-experiment` or the request's `name`, else
  the registry's only experiment whose arms all have `grpc_endpoints`.
- The unit: the metadata named like `router.unit_id.header` (lower case, `x-user-id`), else the
  feed key named like `router.unit_id.json_field` (`user_id`: a key/value pair, or a string
  tensor). That key is removed before the request goes on; no unit id: control, unenrolled.
- The same assignment, shadow mode, fallback to control, and the same rule on bad input:
  control is the reference. When control calls the input bad (`err_no` 51), the client gets
  control's reply, `err_no` 51 and its `err_msg`, with status OK (what PipelineClient's users
  read), and no arm counts it. When no arm answers: status UNAVAILABLE, or DEADLINE_EXCEEDED
  when the last failure was a timeout.
- Trailing metadata `x-experiment`, `x-variant`, `x-model-version` (when an arm answered),
  `x-request-id`.
- `x-variant-override` with `authorization: Bearer <token>` serves that arm, unenrolled.
- Counted in `router_grpc_requests_total{experiment,variant,outcome}` and
  `router_grpc_request_duration_seconds`, each backend call in `router_backend_requests_total`
  as over HTTP; observed by the SLO guard; one exposure record per call with
  `"protocol": "grpc"`, all RECORD_DELAY_S after the answer.

Endpoints: one keep-alive channel each; the backend's `timeout_ms` is each call's deadline;
`eject_after` transport failures in a row (UNAVAILABLE, a deadline, any status but OK) take an
endpoint out of rotation, and a prober brings it back once it answers (the backend's last good
request replayed every `probe_interval`). A failure other than a timeout is retried once on the
next endpoint. The health of the gRPC endpoints is their own: an HTTP endpoint and the same
server's RPC port are ejected apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import grpc

from router.auth import AdminAuth
from router.experiment.assign import Arm, Assignment, ExperimentPlan
from router.experiment.units import BadUnit, checked_unit, logged_unit
from router.proxy.intake import request_id_of
from router.proxy.live_registry import LiveRegistry, Snapshot
from router.proxy.seams import (
    ConfiguredTraffic,
    NullObserver,
    RequestObserver,
    ShadowListener,
    TrafficPolicy,
)
from router.proxy.upstreams import BAD_INPUT_ERR_NO, MAX_ERR_MSG_CHARS, probe_ejected_forever
from router.records.exposure import exposure_record
from router.records.jsonl import EventLogs
from router.records.metrics import LATENCY_BUCKETS, RouterMetrics, Tally, TallyHistogram
from router.registry.schema import BackendConfig, RouterConfig
from router.transport.pipeline_rpc import (
    PipelineRequest,
    PipelineResponse,
    RpcAnswer,
    RpcCallFailed,
    RpcChannels,
    RpcRefusal,
)

log = logging.getLogger(__name__)

RECORD_DELAY_S = 0.02
MAX_SHADOW_IN_FLIGHT = 64
STRING_TENSOR = 12  # Tensor.elem_type of a string (PipelineClient's pack_tensor_format)


class RpcFailure(Exception):
    """A gRPC backend call that produced no usable answer (as router.proxy.upstreams'
    BackendFailure: kind `error`, `timeout` or `bad_input`)."""

    def __init__(
        self, backend: str, kind: str, detail: str, latency_s: float, err_msg: str = ""
    ) -> None:
        super().__init__(f"{backend}: {detail}")
        self.kind = kind
        self.latency_s = latency_s
        self.err_msg = err_msg
        self.retryable = kind == "error" and not err_msg


class RpcReply(NamedTuple):
    response: Any  # PipelineResponse
    version: str
    latency_s: float


@dataclass
class RpcEndpointState:
    backend: str
    target: str
    up: bool = True
    failures: int = 0
    next_probe_at: float = 0.0
    probing: bool = False


@dataclass
class RpcBackend:
    name: str
    config: BackendConfig
    endpoints: list[RpcEndpointState]
    cursor: int = 0
    last_good: Optional[bytes] = field(default=None, repr=False)

    def pick(self, other_than: Optional[RpcEndpointState] = None) -> Optional[RpcEndpointState]:
        count = len(self.endpoints)
        for offset in range(count):
            endpoint = self.endpoints[(self.cursor + offset) % count]
            if endpoint.up and endpoint is not other_than:
                self.cursor = (self.cursor + offset + 1) % count
                return endpoint
        return None


class _Outcome(NamedTuple):
    served: Optional[Arm]
    reply: Optional[RpcReply]
    fallback: bool
    failures: tuple[RpcFailure, ...]
    verdict: Optional[bool]  # control's verdict on the input (router.proxy.handler)


class _Done(NamedTuple):
    started: float
    answered_at: float
    latency_s: float
    request_id: str
    experiment: str
    plan: ExperimentPlan
    unit: Optional[str]
    assignment: Assignment
    assigned: Arm
    overridden: bool
    metadata: dict[str, str]
    outcome: _Outcome
    status: int
    settings: Any  # RouterSettings of the snapshot


class RpcUpstreams:
    """The backends' gRPC endpoints: channels, health, probes."""

    def __init__(self, metrics: RouterMetrics, channels: RpcChannels) -> None:
        self._metrics = metrics
        self._channels = channels
        self._states: dict[tuple[str, str], RpcEndpointState] = {}
        self._backends: dict[str, RpcBackend] = {}
        self._config: Optional[RouterConfig] = None
        metrics.add_live_gauge(
            "router_grpc_endpoint_up",
            "1 while a gRPC endpoint is in rotation, 0 while it is ejected.",
            ["backend", "endpoint"],
            lambda: [((s.backend, s.target), 1.0 if s.up else 0.0) for s in self._states.values()],
        )

    def backends(self, config: RouterConfig) -> dict[str, RpcBackend]:
        """The runtimes of a registry's backends with `grpc_endpoints` (health kept)."""
        if config is self._config:
            return self._backends
        states = {
            (name, target): self._states.get((name, target)) or RpcEndpointState(name, target)
            for name, backend in config.backends.items()
            for target in backend.grpc_endpoints or ()
        }
        runtimes = {}
        for name, backend in config.backends.items():
            if backend.grpc_endpoints:
                previous = self._backends.get(name)
                runtimes[name] = RpcBackend(
                    name,
                    backend,
                    [states[(name, target)] for target in backend.grpc_endpoints],
                    last_good=previous.last_good if previous else None,
                )
        self._states, self._backends, self._config = states, runtimes, config
        return runtimes

    async def call(self, backend: RpcBackend, request: Any) -> RpcReply:
        endpoint = backend.pick()
        if endpoint is None:
            self._metrics.backend_requests.add((backend.name, "error"))
            raise RpcFailure(backend.name, "error", "no gRPC endpoint in rotation", 0.0)
        try:
            return await self._call_endpoint(backend, endpoint, request)
        except RpcFailure as failure:
            other = backend.pick(other_than=endpoint) if failure.retryable else None
            if other is None:
                raise
            first = failure
        try:
            reply = await self._call_endpoint(backend, other, request)
        except RpcFailure as second:
            raise RpcFailure(
                backend.name,
                second.kind,
                f"{first}; then {second}",
                first.latency_s + second.latency_s,
                second.err_msg,
            ) from None
        return reply._replace(latency_s=first.latency_s + reply.latency_s)

    async def _call_endpoint(
        self, backend: RpcBackend, endpoint: RpcEndpointState, request: Any
    ) -> RpcReply:
        started = time.perf_counter()
        config = backend.config
        try:
            response = await self._channels.call(endpoint.target, request, config.timeout_ms / 1000)
        except RpcCallFailed as exc:
            latency = time.perf_counter() - started
            kind = "timeout" if exc.timeout else "error"
            self._count(backend.name, kind, latency)
            endpoint.failures += 1
            if endpoint.up and endpoint.failures >= config.eject_after:
                endpoint.up = False
                endpoint.next_probe_at = time.monotonic() + config.probe_interval_s
                log.warning(
                    "gRPC endpoint %s of %s ejected after %d failures (last: %s)",
                    endpoint.target, backend.name, endpoint.failures, exc,
                )  # fmt: skip
            detail = f"no answer in {config.timeout_ms} ms" if exc.timeout else str(exc)
            raise RpcFailure(backend.name, kind, f"{endpoint.target}: {detail}", latency) from None
        latency = time.perf_counter() - started
        endpoint.failures = 0
        err_no = response.err_no
        if err_no != 0:
            kind = "bad_input" if err_no == BAD_INPUT_ERR_NO else "error"
            self._count(backend.name, kind, latency)
            message = response.err_msg[:MAX_ERR_MSG_CHARS] or f"err_no {err_no}"
            raise RpcFailure(
                backend.name, kind, f"err_no {err_no}: {message[:200]}", latency, message
            )
        self._count(backend.name, "ok", latency)
        backend.last_good = request.SerializeToString()
        return RpcReply(response, config.version, latency)

    def _count(self, backend: str, outcome: str, latency: float) -> None:
        self._metrics.backend_requests.add((backend, outcome))
        self._metrics.backend_duration.observe((backend,), latency)

    async def probe_forever(self) -> None:
        await probe_ejected_forever(
            lambda: ((b, e) for b in self._backends.values() for e in b.endpoints), self._probe
        )

    async def _probe(self, backend: RpcBackend, endpoint: RpcEndpointState) -> None:
        """Replay the last good request (err_no 0 wanted); without one, any reply will do."""
        request = PipelineRequest.FromString(backend.last_good or b"")
        try:
            response = await self._channels.call(
                endpoint.target, request, backend.config.timeout_ms / 1000
            )
            alive = backend.last_good is None or response.err_no == 0
        except RpcCallFailed:
            alive = False
        finally:
            endpoint.probing = False
        if alive:
            endpoint.up, endpoint.failures = True, 0
            log.warning("gRPC endpoint %s of %s is back in rotation", endpoint.target, backend.name)
        else:
            endpoint.next_probe_at = time.monotonic() + backend.config.probe_interval_s


class RpcProxy:
    """`PipelineService/inference` answered as the HTTP request path answers a request."""

    def __init__(
        self,
        live: LiveRegistry,
        upstreams: RpcUpstreams,
        metrics: RouterMetrics,
        logs: EventLogs,
        auth: AdminAuth,
    ) -> None:
        self._live = live
        self.upstreams = upstreams
        self._metrics = metrics
        self._logs = logs
        self._auth = auth
        self._observer: RequestObserver = NullObserver()
        self._traffic: TrafficPolicy = ConfiguredTraffic(live.config)
        self._shadow_listener: Optional[ShadowListener] = None
        self._shadows: set[asyncio.Task[None]] = set()
        self._unrecorded: list[_Done] = []
        self._timer: Optional[asyncio.TimerHandle] = None
        self.requests = Tally(
            "router_grpc_requests",
            "gRPC calls by experiment, assigned variant and outcome (ok, fallback, error, "
            "bad_input).",
            ["experiment", "variant", "outcome"],
        )
        self.request_duration = TallyHistogram(
            "router_grpc_request_duration_seconds",
            "End-to-end gRPC call time in the router, by experiment and assigned variant.",
            ["experiment", "variant"],
            LATENCY_BUCKETS,
        )
        metrics.registry.register(self.requests)
        metrics.registry.register(self.request_duration)
        metrics.before_scrape(self.settle)

    def bind(
        self,
        observer: RequestObserver,
        traffic: TrafficPolicy,
        shadow_listener: Optional[ShadowListener] = None,
    ) -> None:
        self._observer = observer
        self._traffic = traffic
        self._shadow_listener = shadow_listener

    async def inference(self, request: Any, metadata: dict[str, str]) -> RpcAnswer:
        started = time.perf_counter()
        snapshot = self._live.current
        name = self._experiment(snapshot, request, metadata)
        plan = snapshot.plans[name]
        settings = snapshot.config.router
        unit = self._take_unit(
            request, metadata, settings.unit_id.header, settings.unit_id.json_field
        )
        wanted = metadata.get("x-variant-override")
        if wanted is None:
            assignment = plan.assign(unit, self._traffic.effective_traffic(name))
        else:
            assignment = self._override(metadata, plan, wanted)
        assigned, shadow_arm = assignment.arm, None
        if snapshot.config.experiments[name].mode == "shadow" and wanted is None:
            if not assignment.is_control:
                shadow_arm = assigned
            assigned = plan.control
        backends = self.upstreams.backends(snapshot.config)
        for arm in (assigned, plan.control, *([shadow_arm] if shadow_arm else [])):
            if arm.backend not in backends:
                raise self._refuse(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "no_grpc_endpoints",
                    f"backend {arm.backend} has no grpc_endpoints",
                )
        control_answer: Optional[asyncio.Future[Optional[_Outcome]]] = None
        if shadow_arm is not None:
            control_answer = self._shadow(name, backends[shadow_arm.backend], shadow_arm, request)
        try:
            outcome = await self._serve(snapshot, name, plan, backends, assigned, request)
        except BaseException:
            if control_answer is not None:  # the shadow copy must not wait forever
                control_answer.set_result(None)
            raise
        if control_answer is not None:
            control_answer.set_result(outcome)
        request_id = request_id_of(metadata)
        trailing = [("x-experiment", name), ("x-variant", assigned.name)]
        if outcome.reply is not None:
            trailing.append(("x-model-version", outcome.reply.version))
        trailing.append(("x-request-id", request_id))
        refusal: Optional[RpcRefusal] = None
        if outcome.reply is not None:
            status, response = 200, outcome.reply.response
        elif outcome.verdict is False:
            status = 400
            response = PipelineResponse(
                err_no=BAD_INPUT_ERR_NO, err_msg=outcome.failures[-1].err_msg
            )
        else:
            timeout = outcome.failures[-1].kind == "timeout"
            status = 504 if timeout else 502
            code = grpc.StatusCode.DEADLINE_EXCEEDED if timeout else grpc.StatusCode.UNAVAILABLE
            detail = "no variant could answer: " + "; ".join(str(f) for f in outcome.failures)
            refusal = RpcRefusal(code, detail, trailing)
        latency_s = time.perf_counter() - started
        done = _Done(
            started, time.time(), latency_s, request_id, name, plan, unit, assignment,
            assigned, wanted is not None, metadata, outcome, status, settings,
        )  # fmt: skip
        self._unrecorded.append(done)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(RECORD_DELAY_S, self.settle)
        if refusal is not None:
            raise refusal
        return RpcAnswer(response, trailing)

    def _experiment(self, snapshot: Snapshot, request: Any, metadata: dict[str, str]) -> str:
        experiments = snapshot.config.experiments
        named = metadata.get("x-experiment") or request.name
        if named:
            if named not in experiments:
                raise self._refuse(
                    grpc.StatusCode.NOT_FOUND, "not_found", f"no experiment {named!r}"
                )
            return str(named)
        backends = snapshot.config.backends
        served = [
            name
            for name, plan in snapshot.plans.items()
            if all(backends[arm.backend].grpc_endpoints for arm in (plan.control, *plan.others))
        ]
        if len(served) != 1:
            raise self._refuse(
                grpc.StatusCode.NOT_FOUND,
                "not_found",
                "name the experiment in the metadata x-experiment (or the request's name): "
                f"{len(served)} experiments have grpc_endpoints on every arm",
            )
        return served[0]

    def _take_unit(
        self,
        request: Any,
        metadata: dict[str, str],
        header: Optional[str],
        json_field: Optional[str],
    ) -> Optional[str]:
        """The unit id (metadata first, else the feed key), the feed key taken out."""
        from_feed: Optional[str] = None
        if json_field:
            keys = request.key
            for index in range(len(keys) - 1, -1, -1):
                if keys[index] == json_field:
                    if index < len(request.value):
                        from_feed = request.value[index]
                        del request.value[index]
                    del keys[index]
            tensors = request.tensors
            for index in range(len(tensors) - 1, -1, -1):
                if tensors[index].name == json_field:
                    if tensors[index].elem_type == STRING_TENSOR:
                        from_feed = "".join(tensors[index].str_data)
                    del tensors[index]
        try:
            if header:
                unit = metadata.get(header.lower())
                if unit:
                    return checked_unit(unit)
            if from_feed:
                return checked_unit(from_feed)
        except BadUnit as exc:
            raise self._refuse(grpc.StatusCode.INVALID_ARGUMENT, "bad_unit", str(exc)) from None
        return None

    def _override(self, metadata: dict[str, str], plan: ExperimentPlan, wanted: str) -> Assignment:
        if not self._auth.allows(metadata.get("authorization")):
            raise self._refuse(
                grpc.StatusCode.PERMISSION_DENIED,
                "override_forbidden",
                "x-variant-override needs the admin token (authorization: Bearer <token>)",
            )
        arms = (plan.control, *plan.others)
        arm = next((a for a in arms if a.name == wanted.strip()), None)
        if arm is None:
            known = ", ".join(a.name for a in arms)
            raise self._refuse(
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad_override",
                f"x-variant-override: no arm {wanted!r} here (arms: {known})",
            )
        return Assignment(arm, enrolled=False, bucket=None, is_control=arm is plan.control)

    def _refuse(self, code: grpc.StatusCode, error: str, details: str) -> RpcRefusal:
        self._metrics.http_errors.labels(error).inc()
        return RpcRefusal(code, details)

    async def _serve(
        self,
        snapshot: Snapshot,
        name: str,
        plan: ExperimentPlan,
        backends: dict[str, RpcBackend],
        assigned: Arm,
        request: Any,
    ) -> _Outcome:
        control, call = plan.control, self.upstreams.call
        try:
            reply = await call(backends[assigned.backend], request)
            return _Outcome(assigned, reply, False, (), True if assigned is control else None)
        except RpcFailure as failure:
            if assigned is control:
                return _Outcome(None, None, False, (failure,), _verdict(failure))
            first = failure
        falls_back = snapshot.config.experiments[name].fallback
        if falls_back != "control" and first.kind != "bad_input":
            return _Outcome(None, None, False, (first,), None)
        try:
            reply = await call(backends[control.backend], request)
        except RpcFailure as second:
            return _Outcome(None, None, False, (first, second), _verdict(second))
        if falls_back == "control":
            return _Outcome(control, reply, True, (first,), True)
        return _Outcome(None, None, False, (first,), True)

    def _shadow(
        self, experiment: str, backend: RpcBackend, arm: Arm, request: Any
    ) -> Optional[asyncio.Future[Optional[_Outcome]]]:
        if len(self._shadows) >= MAX_SHADOW_IN_FLIGHT:
            self._metrics.shadow_skipped.labels(experiment).inc()
            if self._shadow_listener is not None:
                self._shadow_listener.shadow_dropped(experiment, arm.name)
            return None
        control_answer: asyncio.Future[Optional[_Outcome]] = (
            asyncio.get_running_loop().create_future()
        )
        copy = PipelineRequest()
        copy.CopyFrom(request)

        async def mirror() -> None:
            shadow: Optional[RpcReply] = None
            try:
                shadow = await self.upstreams.call(backend, copy)
                self._observer.observe(experiment, arm.name, shadow.latency_s, True)
            except RpcFailure as failure:
                if not _blamed(failure, _control_verdict(await control_answer)):
                    return
                self._observer.observe(experiment, arm.name, failure.latency_s, False)
            if self._shadow_listener is not None:
                control = await control_answer
                self._shadow_listener.shadow_answered(
                    experiment,
                    arm.name,
                    _payload(control.reply.response) if control and control.reply else None,
                    _payload(shadow.response) if shadow else None,
                )

        task = asyncio.ensure_future(mirror())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)
        return control_answer

    def settle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._unrecorded = self._unrecorded, []
        for done in pending:
            self._record(done)

    def _record(self, done: _Done) -> None:
        outcome, experiment = done.outcome, done.experiment
        control = done.plan.control
        for arm, failure in zip((done.assigned, control), outcome.failures):
            if _blamed(failure, outcome.verdict):
                self._observer.observe(experiment, arm.name, failure.latency_s, False)
        if outcome.served is not None and outcome.reply is not None:
            self._observer.observe(experiment, outcome.served.name, outcome.reply.latency_s, True)
        if outcome.reply is None:
            result = "bad_input" if outcome.verdict is False else "error"
        elif outcome.fallback:
            result = "fallback"
            self._metrics.fallbacks.add((experiment,))
        else:
            result = "ok"
        self.requests.add((experiment, done.assigned.name, result))
        self.request_duration.observe((experiment, done.assigned.name), done.latency_s)
        settings = done.settings
        record = exposure_record(
            ts=done.answered_at,
            request_id=done.request_id,
            experiment=experiment,
            unit=logged_unit(done.unit, settings.hash_unit_ids),
            enrolled=done.assignment.enrolled,
            assigned=done.assigned.name,
            served=outcome.served.name if outcome.served else None,
            model_version=outcome.reply.version if outcome.reply else None,
            status=done.status,
            latency_s=done.latency_s,
            fallback=outcome.fallback,
            errors=("bad_input", *outcome.failures)
            if outcome.verdict is False
            else outcome.failures,
            overridden=done.overridden,
            attributes=[
                (name, done.metadata.get(header.lower()))
                for name, header in settings.attributes.items()
            ],
            max_attribute_chars=settings.max_attribute_chars,
        )
        record["protocol"] = "grpc"
        self._logs.exposures.write(record)

    async def close(self) -> None:
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)
        self.settle()


def _payload(response: Any) -> dict[str, Any]:
    """A reply in the pipeline's JSON shape, for the shadow listener's comparison."""
    return {
        "err_no": response.err_no,
        "err_msg": response.err_msg,
        "key": list(response.key),
        "value": list(response.value),
    }


def _verdict(control_failure: RpcFailure) -> Optional[bool]:
    return False if control_failure.kind == "bad_input" else None


def _control_verdict(control: Optional[_Outcome]) -> Optional[bool]:
    if control is None:
        return None
    return True if control.reply is not None else control.verdict


def _blamed(failure: RpcFailure, verdict: Optional[bool]) -> bool:
    """As router.proxy.handler's: input control called bad blames nobody."""
    if verdict is False:
        return False
    return failure.kind != "bad_input" or verdict is True
