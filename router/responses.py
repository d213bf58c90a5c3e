"""The router's own answers: JSON, and errors as `{"code", "error"}` with a fitting status.

`error_answer` is the one shape of an error the router gives itself, whichever server writes it
(the fast path writes an HttpAnswer as bytes; aiohttp routes turn it into a web.Response with
`to_response`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional

from aiohttp import web

from router.transport.messages import HttpAnswer

JSON = "application/json"


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def json_response(
    data: Any, status: int = 200, headers: Optional[Mapping[str, str]] = None
) -> web.Response:
    return web.Response(
        body=json_bytes(data), status=status, headers={"Content-Type": JSON, **(headers or {})}
    )


def error_answer(
    status: int,
    code: str,
    message: str,
    headers: Optional[Mapping[str, str]] = None,
    **extra: Any,
) -> HttpAnswer:
    """An error: `{"code": code, "error": message, **extra}` with `status`."""
    body = json_bytes({"code": code, "error": message, **extra})
    return HttpAnswer(status, {"Content-Type": JSON, **(headers or {})}, body)


def method_not_allowed(method: str, allowed: list[str]) -> HttpAnswer:
    return error_answer(
        405,
        "method_not_allowed",
        f"{method} is not allowed here; use {', '.join(allowed)}",
        headers={"Allow": ", ".join(allowed)},
    )


def to_response(answer: HttpAnswer) -> web.Response:
    """An answer for an aiohttp route."""
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
