"""Checks on what a client sends before anything of it reaches a backend or a log.

- `pipeline_problem(payload)`: the Paddle Serving pipeline envelope (`key`, `value`, `tensors`,
  `logid`, `name`, `method`, `clientip`). A body the HTTP gateway would refuse with its own
  HTTP 400 (a number where it wants a string, ...) or that its RPC layer fails on (`key` and
  `value` of different lengths) is the client's fault: the router answers 400 `bad_body` itself,
  instead of a 502 that counts against a variant's error rate. Other fields pass untouched (the
  gateway ignores them; `user_id` may be the unit), and the feed contents are the model's
  business.
- `request_id_of(headers)`: the client's `X-Request-Id` when it is a sane token, else a new one.
  It is echoed in a response header and logged, so it is never taken verbatim when odd.
- `parse_json(body)`: strict JSON: `NaN` and `Infinity`, which Python accepts and the Go
  gateway refuses, raise ValueError like any other bad JSON (`strict=False` takes them, for
  backend replies). orjson parses first, at a fraction of the standard library's cost; the
  standard library decides what orjson refuses (a lone surrogate, UTF-16) or may have read
  differently (it reads an integer past 64 bits as a float), so the top-level fields the router
  reads are the same.
- `BODY_ERRORS`: what reading or parsing a body may raise besides "too large".
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from typing import Any, Optional

import orjson
from aiohttp.web_protocol import RequestPayloadError

INT64 = (-(1 << 63), (1 << 63) - 1)
_STRING_FIELDS = ("name", "method", "clientip")
_OPTIONAL_FIELDS = frozenset(("tensors", "logid", *_STRING_FIELDS))
_STR = frozenset((str,))
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_INT_TEXT = re.compile(r"^-?\d{1,19}$")

# A body with a broken Content-Encoding (RequestPayloadError) or JSON nested deeper than the
# parser's recursion limit (RecursionError) is a bad body, not a server error; a client gone
# before its body arrived (ConnectionResetError) gets the same answer, which nobody reads.
BODY_ERRORS = (ValueError, RecursionError, RequestPayloadError, ConnectionResetError)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder: `json.loads(..., parse_constant=...)` would build a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def parse_json(body: bytes, *, strict: bool = True) -> Any:
    """`json.loads`, without the non-standard constants NaN, Infinity and -Infinity if strict."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        # The router reads an object's top-level fields only (a unit id, logid, err_no). A float
        # among them may be an integer orjson rounded: the standard library reads it again, and
        # anything but an object, which the router refuses anyway.
        if isinstance(parsed, dict) and float not in set(map(type, parsed.values())):
            return parsed
    if not strict:
        return json.loads(body)
    # An object starting `{"` is UTF-8 (RFC 8259); anything else may be UTF-16 or -32.
    encoding = "utf-8" if body[:2] == b'{"' else json.detect_encoding(body)
    return _DECODER.decode(body.decode(encoding, "surrogatepass"))


def pipeline_problem(payload: Mapping[str, Any]) -> Optional[str]:
    """Why `payload` is not a pipeline request the backend could take, or None."""
    key, value = payload.get("key"), payload.get("value")
    # The usual request, checked in a few C-level steps: it runs on every request.
    if (
        type(key) is list
        and type(value) is list
        and len(key) == len(value)
        and set(map(type, key)).issubset(_STR)
        and set(map(type, value)).issubset(_STR)
        and _OPTIONAL_FIELDS.isdisjoint(payload)
    ):
        return None
    for field, items in (("key", key), ("value", value)):
        if items is not None and not _strings(items):
            return f"{field}: must be a list of strings"
    if isinstance(key, list) and isinstance(value, list) and len(key) != len(value):
        return f"key and value: {len(key)} names but {len(value)} values"
    tensors = payload.get("tensors")
    if tensors is not None and not (
        isinstance(tensors, list) and all(isinstance(t, dict) for t in tensors)
    ):
        return "tensors: must be a list of objects"
    for field in _STRING_FIELDS:
        if payload.get(field) is not None and not isinstance(payload[field], str):
            return f"{field}: must be a string"
    logid = payload.get("logid")
    if logid is not None and not _int64(logid):
        return "logid: must be a 64-bit integer"
    return None


def request_id_of(headers: Mapping[str, str]) -> str:
    """The request's `X-Request-Id` if it is 1-128 of `A-Za-z0-9._:-`, else 24 random hex.
    (`headers`: lower-case names, or case-insensitive like aiohttp's.)"""
    given = headers.get("x-request-id")
    if given and _REQUEST_ID.match(given):
        return given
    # An id, not a secret: the PRNG (seeded from the OS) costs no system call per request.
    return f"{random.getrandbits(96):024x}"


def _strings(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(item, str) for item in items)


def _int64(value: Any) -> bool:
    if isinstance(value, str) and _INT_TEXT.match(value):
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and INT64[0] <= value <= INT64[1]
