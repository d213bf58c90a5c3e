"""The operator API, `POST /admin/experiments/{name}/{action}`, and who may use it.

- The admin token is the value of the environment variable named by `router.admin_token_env`,
  read once at startup. Without one, admin is disabled: every call is a 403 `admin_disabled`
  (nobody can be authorized, and the answer says how to enable it).
- Every call needs `Authorization: Bearer <token>` (router.auth): none or a wrong one is a 401
  `unauthorized` with `WWW-Authenticate: Bearer`. The same check authorizes the QA header
  `X-Variant-Override` on the request path (router.proxy.handler).
- `action` is pause, resume, rollback or promote; the optional body is `{"reason": "..."}`,
  added to the decision's reason. The action is taken, its decision record written and flushed,
  and the state saved before the answer: 200 `{"decision", "experiment", "saved"}`. An unknown
  experiment or action is a 404 `not_found`, an action the state does not allow a 409
  `refused`, a bad body a 400 `bad_body`.
"""

from __future__ import annotations

from typing import Optional, Protocol

from aiohttp import web

from router.auth import AdminAuth
from router.guard.engine import UnknownExperiment
from router.guard.rollout import OPERATOR_ACTIONS, ActionRefused, OperatorAction
from router.guard.runtime import ActionResult
from router.proxy.intake import BODY_ERRORS, parse_json
from router.records.metrics import RouterMetrics
from router.responses import error_answer, json_response, method_not_allowed, to_response

ROUTE = "/admin/experiments/{name}/{action}"
ACTIONS: dict[str, OperatorAction] = {action: action for action in OPERATOR_ACTIONS}
MAX_REASON_CHARS = 1000


class Operator(Protocol):
    async def act(
        self, experiment: str, action: OperatorAction, note: Optional[str]
    ) -> ActionResult: ...


class AdminEndpoint:
    def __init__(self, auth: AdminAuth, operator: Operator, metrics: RouterMetrics) -> None:
        self._auth = auth
        self._operator = operator
        self._metrics = metrics

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            self._metrics.http_errors.labels("method_not_allowed").inc()
            return to_response(method_not_allowed(request.method, ["POST"]))
        if not self._auth.enabled:
            return self._refuse(
                403,
                "admin_disabled",
                f"the admin API is disabled: no admin token is configured (set the environment "
                f"variable {self._auth.variable} for the router, named by router.admin_token_env)",
            )
        if not self._auth.allows(request.headers.get("Authorization")):
            return self._refuse(
                401,
                "unauthorized",
                "admin actions need the header Authorization: Bearer <admin token>",
                headers={"WWW-Authenticate": 'Bearer realm="router admin"'},
            )
        name, asked = request.match_info["name"], request.match_info["action"]
        action = ACTIONS.get(asked)
        if action is None:
            return self._refuse(
                404, "not_found", f"no admin action {asked!r} (actions: {', '.join(ACTIONS)})"
            )
        try:
            note = await _reason(request)
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(413, "body_too_large", "request body too large")
        except ValueError as exc:
            return self._refuse(400, "bad_body", str(exc))
        try:
            result = await self._operator.act(name, action, note)
        except UnknownExperiment as exc:
            return self._refuse(404, "not_found", str(exc.args[0]) if exc.args else str(exc))
        except ActionRefused as exc:
            return self._refuse(409, "refused", str(exc))
        return json_response(
            {
                "decision": result.decision.to_record(),
                "experiment": result.experiment,
                "saved": result.saved,
            }
        )

    def _refuse(
        self, status: int, code: str, message: str, headers: Optional[dict[str, str]] = None
    ) -> web.Response:
        self._metrics.http_errors.labels(code).inc()
        return to_response(error_answer(status, code, message, headers))


async def _reason(request: web.Request) -> Optional[str]:
    """The operator's `reason` from an optional JSON body; ValueError says what is wrong."""
    try:
        body = await request.read()
    except BODY_ERRORS as exc:
        raise ValueError(f"request body cannot be read: {exc}") from None
    if not body.strip():
        return None
    try:
        data = parse_json(body)
    except BODY_ERRORS:
        raise ValueError("request body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError('request body must be a JSON object: {"reason": "..."}')
    unknown = sorted(set(data) - {"reason"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field (only reason is accepted)")
    reason = data.get("reason")
    if reason is None:
        return None
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"reason: must be a string of at most {MAX_REASON_CHARS} characters")
    return reason.strip() or None
