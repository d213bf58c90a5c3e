"""The request path: assign, forward unchanged, fall back, answer, log the exposure, count.

`ProxyHandler.start` takes an HttpRequest and hands its HttpAnswer to a callback, whichever
HTTP server parsed the request: the fast path (router.transport.http_server) for POSTs to
experiment routes, aiohttp (`ProxyHandler.handle`, through `forward`) for the rest and in
in-process tests.

The usual request runs as callbacks, with no Task, future or coroutine: the backend call goes
out from `start` on an idle keep-alive connection, and the answer is written from that
connection's reply callback. Every other case (no idle connection, a failure to retry or fall
back from, a shadow copy) goes on in a Task through `_serve`. Both the backend request and the
answer go out before the bookkeeping around them: on this path, Python work done before the
send or the answer adds to the latency several times over, and the same work after it hardly
(docs/benchmarks.md).

Whatever the answer does not need waits: the metrics, the guard's view of each backend call and
the exposure record are batched and run RECORD_DELAY_S later, off the user's latency (in front of a model that takes
milliseconds, while the router waits for the next answer). `settle()` runs them now; a /metrics
scrape and shutdown do. On this path every Python step counts: code that runs right after an
idle wait runs several times slower than back to back (docs/benchmarks.md).

Per request: find the experiment by path, read the unit id, assign an arm, POST the body as
received to that arm's backend. If the treatment fails and the experiment falls back to control,
the user gets control's answer marked `fallback: true` while the failure still counts against
the treatment (`assigned` and `served` are logged separately). When no arm answers: 502, or 504
if the last failure was a timeout.

Whose fault is a failure: control is the reference for what valid input is. A backend that
answers `err_no` BAD_INPUT_ERR_NO (router.proxy.upstreams) calls the input invalid. When control
says so (assigned, or asked after the treatment), the client gets 400 `bad_input` with control's
message, and no arm's SLO counts the request: the client picks its unit id, so bad input sent
from treatment units must not roll a healthy treatment back. When the treatment calls bad input
what control answers, that is the treatment's failure (fallback to control's answer, observed
against the treatment). With `fallback: none` control is still asked, to judge the input only.

QA: `X-Variant-Override: <arm>` with the admin token (`Authorization: Bearer <token>`) serves
that arm, whatever the assignment and the rollout state say; the exposure is logged with
`override: true` and `enrolled: false`, so the analysis never counts it. Without a valid token
the request is refused (403 `override_forbidden`): silently serving the assigned arm would let
a QA script believe it tested the candidate.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional, Union

from aiohttp import web

from router.auth import AdminAuth
from router.experiment.assign import Arm, Assignment, ExperimentPlan
from router.experiment.units import BadUnit, logged_unit, unit_of
from router.proxy.intake import BODY_ERRORS, parse_json, pipeline_problem, request_id_of
from router.proxy.live_registry import LiveRegistry, Snapshot
from router.proxy.seams import (
    ConfiguredTraffic,
    NullObserver,
    RequestObserver,
    ShadowListener,
    TrafficPolicy,
)
from router.proxy.upstreams import (
    Attempt,
    BackendFailure,
    BackendReply,
    EndpointState,
    Resume,
    Upstreams,
)
from router.records.exposure import exposure_record
from router.records.jsonl import EventLogs
from router.records.metrics import RouterMetrics
from router.responses import JSON, error_answer, method_not_allowed, to_response
from router.transport.backend_client import BackendHttpError, HttpReply, StaleConnection
from router.transport.messages import HttpAnswer, HttpRequest, Respond

log = logging.getLogger(__name__)

MAX_SHADOW_IN_FLIGHT = 64
RECORD_DELAY_S = 0.02
# One encoder: `json.dumps(..., separators=...)` would build a new one per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
OVERRIDE_HEADER = "X-Variant-Override"


# The records made per request are NamedTuples: the cheapest objects to build in CPython.


class _Outcome(NamedTuple):
    served: Optional[Arm]
    reply: Optional[BackendReply]
    fallback: bool
    failures: tuple[BackendFailure, ...]  # in call order: the assigned arm's, then control's
    # Control's verdict on the input: True, it answered it; False, it called it bad input (the
    # answer is a 400); None, it was not asked or failed for its own reasons.
    verdict: Optional[bool]


class _Admission(NamedTuple):
    """What `_admit` decided about a request: everything its backend call and record need."""

    started: float  # time.perf_counter()
    headers: Mapping[str, str]
    snapshot: Snapshot
    experiment: str
    plan: ExperimentPlan
    unit: Optional[str]
    assignment: Assignment
    assigned: Arm  # the arm called first: control for a shadow experiment
    shadow_arm: Optional[Arm]  # the arm sent a copy, in shadow mode
    overridden: bool
    path: str
    body: bytes
    content_type: str


class _Exchange:
    """One request from its admission to its answer; then its record, counted, observed and
    logged RECORD_DELAY_S later. (One plain object per request: on this path every layer of
    tuples, futures and coroutines costs; see the module docstring.)"""

    __slots__ = (
        "admission", "answered_at", "attempt", "latency_s", "outcome", "request_id", "respond",
        "status",
    )  # fmt: skip

    # Made empty and filled once the backend call is out (`fill`): every step before the
    # send adds to the latency, the same steps after it hardly (docs/benchmarks.md).
    admission: _Admission
    respond: Optional[Respond]  # None once answered
    attempt: Optional[Attempt]
    # Set with the answer.
    outcome: _Outcome
    status: int
    latency_s: float
    answered_at: float  # time.time(): an outcome sent right after must not come before it
    request_id: str

    def fill(self, admission: _Admission, respond: Respond) -> None:
        self.admission = admission
        self.respond = respond


class ProxyHandler:
    def __init__(
        self,
        live: LiveRegistry,
        upstreams: Upstreams,
        metrics: RouterMetrics,
        logs: EventLogs,
        auth: Optional[AdminAuth] = None,
    ) -> None:
        self._live = live
        self._upstreams = upstreams
        self._metrics = metrics
        self._logs = logs
        self._auth = auth or AdminAuth(None, "ROUTER_ADMIN_TOKEN")
        self._observer: RequestObserver = NullObserver()
        self._traffic: TrafficPolicy = ConfiguredTraffic(live.config)
        self._shadow_listener: Optional[ShadowListener] = None
        self._shadows: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[None]] = set()  # requests answered from a Task
        self._unrecorded: list[_Exchange] = []
        self._record_timer: Optional[asyncio.TimerHandle] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        metrics.before_scrape(self.settle)

    def bind(
        self,
        observer: RequestObserver,
        traffic: TrafficPolicy,
        shadow_listener: Optional[ShadowListener] = None,
    ) -> None:
        """The hooks in force, fixed when the app starts (router.proxy.seams)."""
        self._observer = observer
        self._traffic = traffic
        self._shadow_listener = shadow_listener

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp route: everything the fast path does not answer itself."""
        if self._live.current.routes.get(request.path) is not None and request.method == "POST":
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                limit = self._live.current.config.router.max_body_bytes
                return to_response(
                    self.refuse(413, "body_too_large", f"request body over {limit} bytes")
                )
            except BODY_ERRORS as exc:  # e.g. a Content-Encoding that does not decode
                return to_response(
                    self.refuse(400, "bad_body", f"request body cannot be read: {exc}")
                )
        else:
            body = b""
        answer = await self.forward(
            HttpRequest(request.method, request.path, request.headers, body)
        )
        return to_response(answer)

    async def forward(self, request: HttpRequest) -> HttpAnswer:
        """`start` for a coroutine."""
        answered: asyncio.Future[HttpAnswer] = self._running_loop().create_future()
        self.start(request, functools.partial(_resolve, answered))
        return await answered

    def start(self, request: HttpRequest, respond: Respond) -> None:
        """Answer `request` by calling `respond` once, later (never from inside this call)
        unless the router answers it itself (an error). The backend call goes out from here
        when an idle connection is free, and its reply is answered from the connection's
        callback; anything else (a wait for a connection, a failure to retry or fall back
        from, a shadow copy) goes on in a Task."""
        try:
            admission = self._admit(request)
            if not isinstance(admission, HttpAnswer):
                self._send(admission, respond)
                return
            answer = admission
        except Exception:  # a bug must not leave the client waiting
            log.exception("answering %s failed", request.path)
            answer = self.refuse(500, "internal_error", "the router failed on this request")
        respond(answer)

    def _admit(self, request: HttpRequest) -> Union[_Admission, HttpAnswer]:
        """The request checked and assigned, or the router's own answer to it."""
        started = time.perf_counter()
        snapshot = self._live.current
        path = request.path
        name = snapshot.routes.get(path)
        if name is None:
            return self.refuse(404, "not_found", f"no experiment or endpoint at {path}")
        if request.method != "POST":
            self._metrics.http_errors.labels("method_not_allowed").inc()
            return method_not_allowed(request.method, ["POST"])
        body = request.body
        try:
            payload = parse_json(body)
        except BODY_ERRORS:
            return self.refuse(400, "bad_body", "request body is not JSON")
        if not isinstance(payload, dict):
            return self.refuse(400, "bad_body", "request body must be a JSON object")
        problem = pipeline_problem(payload)
        if problem is not None:
            return self.refuse(400, "bad_body", problem)

        headers = request.headers
        plan = snapshot.plans[name]
        try:
            unit = unit_of(headers, payload, snapshot.config.router.unit_id)
        except BadUnit as exc:
            return self.refuse(400, "bad_unit", str(exc))
        wanted = headers.get("x-variant-override")
        if wanted is None:
            assignment = plan.assign(unit, self._traffic.effective_traffic(name))
        else:
            overridden = self._override(headers, plan, wanted)
            if isinstance(overridden, HttpAnswer):
                return overridden
            assignment = overridden
        assigned, shadow_arm = assignment.arm, None
        if snapshot.config.experiments[name].mode == "shadow" and wanted is None:
            # Everyone gets control; treatment units also send a copy to the treatment.
            if not assignment.is_control:
                shadow_arm = assigned
            assigned = plan.control
        return _Admission(
            started, headers, snapshot, name, plan, unit, assignment, assigned, shadow_arm,
            wanted is not None, path, body, headers.get("content-type") or JSON,
        )  # fmt: skip

    def _send(self, admission: _Admission, respond: Respond) -> None:
        """Call the assigned arm's backend: at once on an idle connection, else from a Task."""
        exchange = _Exchange()
        started: Union[Attempt, EndpointState, None] = None
        if admission.shadow_arm is None:
            started = self._upstreams.try_call(
                admission.snapshot.backends[admission.assigned.backend],
                admission.path,
                admission.body,
                admission.content_type,
                functools.partial(self._replied, exchange),
            )
        exchange.fill(admission, respond)
        if type(started) is Attempt:
            exchange.attempt = started
        elif type(started) is EndpointState:
            self._go_on_in_task(exchange, Resume(started))
        else:
            self._go_on_in_task(exchange, None)

    def _replied(self, exchange: _Exchange, delivered: Union[HttpReply, BackendHttpError]) -> None:
        """The backend connection's callback for a call `_send` started."""
        attempt = exchange.attempt
        assert attempt is not None
        try:
            reply = attempt.reply(delivered)
        except StaleConnection:  # the idle connection had closed: call again on a new one
            attempt.release()
            self._go_on_in_task(exchange, Resume(attempt.endpoint))
            return
        except BackendFailure as failure:  # retry, fall back or fail, as `_serve` decides
            attempt.release()
            self._go_on_in_task(exchange, Resume(attempt.endpoint, failure))
            return
        try:
            self._answer(exchange, _Outcome(exchange.admission.assigned, reply, False, (), None))
        except Exception:  # here, it would fail the backend connection instead
            self._answer_failed(exchange)
        attempt.release()

    def _go_on_in_task(self, exchange: _Exchange, resume: Optional[Resume]) -> None:
        task = asyncio.ensure_future(self._go_on(exchange, resume))
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _go_on(self, exchange: _Exchange, resume: Optional[Resume]) -> None:
        control_answer: Optional[asyncio.Future[Optional[_Outcome]]] = None
        try:
            if exchange.admission.shadow_arm is not None:
                control_answer = self._shadow(exchange, exchange.admission.shadow_arm)
            outcome = await self._serve(exchange, resume)
            if control_answer is not None:
                control_answer.set_result(outcome)
            self._answer(exchange, outcome)
        except Exception:
            self._answer_failed(exchange)
        finally:
            # The shadow copy waits for control's answer; never leave it waiting.
            if control_answer is not None and not control_answer.done():
                control_answer.set_result(None)

    def _answer_failed(self, exchange: _Exchange) -> None:
        log.exception("answering %s failed", exchange.admission.path)
        respond, exchange.respond = exchange.respond, None
        if respond is not None:
            respond(self.refuse(500, "internal_error", "the router failed on this request"))

    def _answer(self, exchange: _Exchange, outcome: _Outcome) -> None:
        """Answer with `outcome`, and keep the exchange to count and log it later."""
        name, assigned, enrolled = (
            exchange.admission.experiment,
            exchange.admission.assigned.name,
            exchange.admission.assignment.enrolled,
        )
        request_id = request_id_of(exchange.admission.headers)
        reply = outcome.reply
        if reply is not None:
            answer = HttpAnswer(
                200,
                {
                    "Content-Type": JSON,
                    "X-Experiment": name,
                    "X-Variant": assigned,
                    "X-Model-Version": reply.version,
                    "X-Request-Id": request_id,
                },
                _with_experiment(
                    reply,
                    _experiment_json(name, assigned, reply.version, enrolled, outcome.fallback),
                ),
            )
        elif outcome.verdict is False:  # control called the input bad: the client's error
            answer = error_answer(
                400,
                "bad_input",
                outcome.failures[-1].err_msg or str(outcome.failures[-1]),
                {"X-Experiment": name, "X-Variant": assigned, "X-Request-Id": request_id},
                request_id=request_id,
                experiment=_experiment_info(name, assigned, None, enrolled, False),
            )
        else:
            last = outcome.failures[-1]
            status = 504 if last.kind == "timeout" else 502
            answer = error_answer(
                status,
                "backend_timeout" if status == 504 else "backend_unavailable",
                "no variant could answer: " + "; ".join(str(f) for f in outcome.failures),
                {"X-Experiment": name, "X-Variant": assigned, "X-Request-Id": request_id},
                request_id=request_id,
                experiment=_experiment_info(name, assigned, None, enrolled, outcome.fallback),
            )
        latency_s = time.perf_counter() - exchange.admission.started
        respond, exchange.respond = exchange.respond, None
        if respond is not None:
            respond(answer)
        exchange.outcome = outcome
        exchange.status = answer.status
        exchange.request_id = request_id
        exchange.answered_at = time.time()
        exchange.latency_s = latency_s
        self._unrecorded.append(exchange)
        if self._record_timer is None:
            self._record_timer = self._running_loop().call_later(RECORD_DELAY_S, self.settle)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:  # asyncio.get_running_loop() costs a getpid() system call
            self._loop = asyncio.get_running_loop()
        return self._loop

    def settle(self) -> None:
        """Count, observe and log the requests answered so far."""
        if self._record_timer is not None:
            self._record_timer.cancel()
            self._record_timer = None
        pending, self._unrecorded = self._unrecorded, []
        self._upstreams.settle()
        for answered in pending:
            self._observe(answered)
            self._account(answered)
            self._log_exposure(answered)

    def _override(
        self, headers: Mapping[str, str], plan: ExperimentPlan, wanted: str
    ) -> Union[Assignment, HttpAnswer]:
        """The arm `X-Variant-Override` asks for (never enrolled), or the refusal."""
        if not self._auth.allows(headers.get("authorization")):
            return self.refuse(
                403,
                "override_forbidden",
                f"{OVERRIDE_HEADER} needs the admin token (Authorization: Bearer <token>)",
            )
        arms = (plan.control, *plan.others)
        arm = next((a for a in arms if a.name == wanted.strip()), None)
        if arm is None:
            known = ", ".join(a.name for a in arms)
            return self.refuse(
                400, "bad_override", f"{OVERRIDE_HEADER}: no arm {wanted!r} here (arms: {known})"
            )
        return Assignment(arm, enrolled=False, bucket=None, is_control=arm is plan.control)

    async def _serve(self, exchange: _Exchange, resume: Optional[Resume]) -> _Outcome:
        """Call the assigned arm (going on from `resume`); if it fails, control, where the
        experiment falls back to it or only to judge input the arm called bad."""
        snapshot, assigned, control = (
            exchange.admission.snapshot,
            exchange.admission.assigned,
            exchange.admission.plan.control,
        )
        backends, call = snapshot.backends, self._upstreams.call
        path, body, content_type = (
            exchange.admission.path,
            exchange.admission.body,
            exchange.admission.content_type,
        )
        try:
            reply = await call(backends[assigned.backend], path, body, content_type, resume)
            return _Outcome(assigned, reply, False, (), True if assigned is control else None)
        except BackendFailure as failure:
            if assigned is control:
                return _Outcome(None, None, False, (failure,), _verdict(failure))
            first = failure
        falls_back = snapshot.config.experiments[exchange.admission.experiment].fallback
        if falls_back != "control" and first.kind != "bad_input":
            return _Outcome(None, None, False, (first,), None)
        try:
            reply = await call(backends[control.backend], path, body, content_type)
        except BackendFailure as second:
            return _Outcome(None, None, False, (first, second), _verdict(second))
        if falls_back == "control":
            return _Outcome(control, reply, True, (first,), True)
        # `fallback: none`: control only judged the input; its answer is not served.
        return _Outcome(None, None, False, (first,), True)

    def _shadow(
        self, exchange: _Exchange, arm: Arm
    ) -> Optional[asyncio.Future[Optional[_Outcome]]]:
        """Send a copy to `arm` in the background; the returned future takes control's outcome,
        for the shadow listener to compare and to judge a failed copy. None if too many copies
        are in flight."""
        experiment, snapshot = exchange.admission.experiment, exchange.admission.snapshot
        path, body, content_type = (
            exchange.admission.path,
            exchange.admission.body,
            exchange.admission.content_type,
        )
        if len(self._shadows) >= MAX_SHADOW_IN_FLIGHT:
            self._metrics.shadow_skipped.labels(experiment).inc()
            if self._shadow_listener is not None:
                self._shadow_listener.shadow_dropped(experiment, arm.name)
            return None
        control_answer: asyncio.Future[Optional[_Outcome]] = self._running_loop().create_future()

        async def mirror() -> None:
            # A failure is observed against the treatment, unless control's answer to the same
            # input says it is the client's; the user never waits for it.
            shadow: Optional[BackendReply] = None
            try:
                shadow = await self._upstreams.call(
                    snapshot.backends[arm.backend], path, body, content_type
                )
                self._observer.observe(experiment, arm.name, shadow.latency_s, True)
            except BackendFailure as failure:
                if not _blamed(failure, _control_verdict(await control_answer)):
                    return  # nothing to compare, and no failure of the treatment
                self._observer.observe(experiment, arm.name, failure.latency_s, False)
            if self._shadow_listener is not None:
                control = await control_answer
                self._shadow_listener.shadow_answered(
                    experiment,
                    arm.name,
                    control.reply.payload if control and control.reply else None,
                    shadow.payload if shadow else None,
                )

        task = asyncio.ensure_future(mirror())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)
        return control_answer

    async def close(self) -> None:
        """Let requests and shadow copies in flight finish (they are bounded by the backend
        timeout), then count and log everything answered."""
        if self._waiting or self._shadows:
            await asyncio.gather(*self._waiting, *self._shadows, return_exceptions=True)
        self.settle()

    def refuse(
        self, status: int, code: str, message: str, headers: Optional[Mapping[str, str]] = None
    ) -> HttpAnswer:
        """The router's own error answer, counted in `router_http_errors` by code."""
        self._metrics.http_errors.labels(code).inc()
        return error_answer(status, code, message, headers)

    def _observe(self, answered: _Exchange) -> None:
        """Show the guard each backend call of the request: the assigned arm's, then control's
        if it stood in; a failure only where it is the arm's (`_blamed`)."""
        outcome, experiment = answered.outcome, answered.admission.experiment
        control = answered.admission.snapshot.plans[experiment].control
        for arm, failure in zip((answered.admission.assigned, control), outcome.failures):
            if _blamed(failure, outcome.verdict):
                self._observer.observe(experiment, arm.name, failure.latency_s, False)
        if outcome.served is not None and outcome.reply is not None:
            self._observer.observe(experiment, outcome.served.name, outcome.reply.latency_s, True)

    def _account(self, answered: _Exchange) -> None:
        metrics, outcome = self._metrics, answered.outcome
        experiment, variant = answered.admission.experiment, answered.admission.assigned.name
        if outcome.reply is None:
            result = "bad_input" if outcome.verdict is False else "error"
        elif outcome.fallback:
            result = "fallback"
            metrics.fallbacks.add((experiment,))
        else:
            result = "ok"
        metrics.requests.add((experiment, variant, result))
        metrics.request_duration.observe((experiment, variant), answered.latency_s)

    def _log_exposure(self, answered: _Exchange) -> None:
        admission, outcome = answered.admission, answered.outcome
        settings = admission.snapshot.config.router
        headers = admission.headers
        self._logs.exposures.write(
            exposure_record(
                ts=answered.answered_at,
                request_id=answered.request_id,
                experiment=admission.experiment,
                unit=logged_unit(admission.unit, settings.hash_unit_ids),
                enrolled=admission.assignment.enrolled,
                assigned=admission.assigned.name,
                served=outcome.served.name if outcome.served else None,
                model_version=outcome.reply.version if outcome.reply else None,
                status=answered.status,
                latency_s=answered.latency_s,
                fallback=outcome.fallback,
                # `bad_input` first: the request was the client's error, whatever each call said.
                errors=("bad_input", *outcome.failures)
                if outcome.verdict is False
                else outcome.failures,
                overridden=admission.overridden,
                attributes=[
                    (field, headers.get(header.lower()))
                    for field, header in settings.attributes.items()
                ],
                max_attribute_chars=settings.max_attribute_chars,
            )
        )


def _verdict(control_failure: BackendFailure) -> Optional[bool]:
    """Control's verdict on the input, from its failure: False if it called the input bad."""
    return False if control_failure.kind == "bad_input" else None


def _control_verdict(control: Optional[_Outcome]) -> Optional[bool]:
    """Control's verdict on the input of a shadowed request (None: control's call never ended)."""
    if control is None:
        return None
    return True if control.reply is not None else control.verdict


def _blamed(failure: BackendFailure, verdict: Optional[bool]) -> bool:
    """Whether `failure` counts against its arm, given control's verdict on the same input.

    Control is the reference for what valid input is. Input it called bad is the client's
    error: nothing counts, whatever the other arm did with it. An arm that calls bad input
    what control answered has failed; when control could not judge (it failed for its own
    reasons), a bad-input answer blames nobody.
    """
    if verdict is False:
        return False
    return failure.kind != "bad_input" or verdict is True


def _resolve(answered: asyncio.Future[HttpAnswer], answer: HttpAnswer) -> None:
    if not answered.done():  # aiohttp cancels the handler when its client goes
        answered.set_result(answer)


def _experiment_info(
    name: str, group: str, version: Optional[str], enrolled: bool, fallback: bool
) -> dict[str, Any]:
    """The `experiment` field of an answer."""
    return {
        "name": name,
        "group": group,
        "version": version,
        "enrolled": enrolled,
        "fallback": fallback,
    }


@functools.lru_cache(maxsize=4096)
def _experiment_json(
    name: str, group: str, version: Optional[str], enrolled: bool, fallback: bool
) -> bytes:
    """`_experiment_info` encoded: the same few per route, so each is encoded once."""
    return _COMPACT.encode(_experiment_info(name, group, version, enrolled, fallback)).encode()


def _with_experiment(reply: BackendReply, experiment_json: bytes) -> bytes:
    """The backend's JSON with `"experiment": ...` added, its own bytes otherwise untouched."""
    fields = reply.payload
    body = reply.body.rstrip()
    if "experiment" in fields or not body.endswith(b"}"):
        # The router's `experiment` replaces the backend's own; odd bytes are encoded anew.
        fields = {key: value for key, value in fields.items() if key != "experiment"}
        body = _COMPACT.encode(fields).encode()
    separator = b',"experiment":' if fields else b'"experiment":'
    return body[:-1] + separator + experiment_json + b"}"
