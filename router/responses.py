"""JSON answers of the router itself: errors are `{"code", "error"}` with a fitting status."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional

from aiohttp import web

JSON = "application/json"


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def json_response(
    data: Any, status: int = 200, headers: Optional[Mapping[str, str]] = None
) -> web.Response:
    return web.Response(
        body=json_bytes(data),
        status=status,
        headers={"Content-Type": JSON, **(headers or {})},
    )


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Optional[Mapping[str, str]] = None,
    **extra: Any,
) -> web.Response:
    return json_response({"code": code, "error": message, **extra}, status, headers)


def error_body(code: str, message: str, **extra: Any) -> bytes:
    """The JSON of an error answer, for servers that write their own responses."""
    return json_bytes({"code": code, "error": message, **extra})


def method_not_allowed(method: str, allowed: list[str]) -> web.Response:
    return error_response(
        405,
        "method_not_allowed",
        f"{method} is not allowed here; use {', '.join(allowed)}",
        headers={"Allow": ", ".join(allowed)},
    )
