"""Hostile input against every endpoint of the real router, in front of real Paddle Serving.

Every case is sent as raw bytes on its own connection and must get the documented answer: a
JSON `{"code", "error"}` with the right status (or, for what the HTTP parser itself rejects, its
plain 400), no call to a backend unless the request is valid, an exposure record exactly for
the requests a backend answered, and a router that keeps serving afterwards.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import aiohttp
import pytest
import pytest_asyncio

from tests.conftest import Backend
from tests.reliability.conftest import Table
from tests.reliability.load import run_load
from tests.reliability.rawhttp import RawReply, request_bytes, send_raw
from tests.reliability.stack import (
    BODY,
    ROUTE,
    exposures,
    metric_value,
    read_jsonl,
    registry,
    write_registry,
)
from tests.reliability.summary import Row
from tests.router.router_process import RouterProcess, start_router
from tests.support import settled

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

R = ROUTE.encode()
MAX_BODY = 1 << 20  # router.max_body_bytes, the default
# What aiohttp may log while refusing a request before or after the router's handler: its
# parser's errors and a body that does not decode. Any other exception is a router bug.
ALLOWED_EXCEPTIONS = re.compile(
    r"^aiohttp\.http_exceptions\.\w+$|^aiohttp\.web_protocol\.RequestPayloadError$"
)
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Message|LineTooLong))(?::|$)")
GOOD = json.loads(BODY)
TOKEN_ENV = "RELIABILITY_HOSTILE_TOKEN"


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes  # the request, as sent
    status: int
    code: Optional[str] = None  # the JSON error code; None: a 2xx, or the parser's plain 400
    backend: int = 0  # backend calls it must cause
    logged: bool = False  # whether it must leave an exposure record
    json_reply: bool = True  # False: the HTTP parser answers before any router code runs


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)
    replies: dict[str, RawReply] = field(default_factory=dict)


def post(
    body: bytes,
    *headers: tuple[bytes, bytes],
    target: bytes = R,
    content_type: Optional[bytes] = b"application/json",
    method: bytes = b"POST",
) -> bytes:
    named = [(b"Content-Type", content_type)] if content_type is not None else []
    return request_bytes(method, target, [*named, *headers], body)


def with_body(**fields: Any) -> bytes:
    return json.dumps({**GOOD, **fields}).encode()


def user(unit: bytes) -> tuple[bytes, bytes]:
    return (b"X-User-Id", unit)


@pytest.fixture(scope="module")
def hostile_router(
    paddle_backends: dict[str, Backend], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RouterProcess, Path]]:
    folder = tmp_path_factory.mktemp("hostile")
    raw = registry(
        [paddle_backends["sentiment-v1"].url],
        [paddle_backends["sentiment-v2"].url],
    )
    raw["router"]["admin_token_env"] = TOKEN_ENV
    config = write_registry(folder / "experiments.yaml", raw)
    os.environ[TOKEN_ENV] = secrets.token_urlsafe(16)
    try:
        router = start_router(config, folder / "router.log")
    finally:
        del os.environ[TOKEN_ENV]
    yield router, folder / "logs"
    assert router.stop() == 0
    log = router.output()
    # Nothing in the router broke: no worker thread died, no handler raised.
    assert "Exception in thread" not in log
    raised = {m.group(1) for m in map(EXCEPTION_LINE.match, log.splitlines()) if m}
    assert all(ALLOWED_EXCEPTIONS.match(name) for name in raised), raised


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def backend_calls(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("router_backend_requests_total{")
    )


async def run_cases(
    session: aiohttp.ClientSession, router: RouterProcess, log_dir: Path, cases: list[Case]
) -> Outcome:
    """Send each case with its own `X-Request-Id: <name>`; check status, body, backend calls."""
    outcome = Outcome()
    for case in cases:
        before = await backend_calls(session, router.url)
        data = case.data
        if b"X-Request-Id" not in data:
            data = data.replace(b"\r\n", b"\r\nX-Request-Id: " + case.name.encode() + b"\r\n", 1)
        reply = await send_raw(router.url, data)
        outcome.replies[case.name] = reply
        calls = await backend_calls(session, router.url) - before
        body = reply.json()
        problems = []
        if reply.status != case.status:
            problems.append(f"status {reply.status}, want {case.status}: {reply.body[:200]!r}")
        if case.json_reply and not isinstance(body, dict):
            problems.append(f"not a JSON object: {reply.body[:100]!r}")
        if case.code is not None and (not isinstance(body, dict) or body.get("code") != case.code):
            problems.append(f"code {body.get('code') if isinstance(body, dict) else None!r}")
        if case.code is not None and isinstance(body, dict) and not body.get("error"):
            problems.append("no error message")
        if calls != case.backend:
            problems.append(f"{calls:g} backend calls, want {case.backend}")
        if problems:
            outcome.failures.append(f"{case.name}: " + "; ".join(problems))
    # Exactly the valid requests left an exposure record (the writer flushes every 0.2 s).
    wanted = {c.name for c in cases if c.logged}
    names = {c.name for c in cases}
    await settled(lambda: {r["request_id"] for r in exposures(log_dir)} >= wanted)
    # Records are written in the order of the answers: one for a refused request would have come
    # with those of the valid ones around it; a last short wait catches one written after them.
    await asyncio.sleep(0.3)
    logged = {r["request_id"] for r in exposures(log_dir)} & names
    for name in sorted(wanted - logged):
        outcome.failures.append(f"{name}: answered but no exposure record")
    for name in sorted(logged - wanted):
        outcome.failures.append(f"{name}: refused but logged as an exposure")
    return outcome


def lost_count(outcome: Outcome) -> int:
    return sum("no exposure record" in f for f in outcome.failures)


async def check_and_record(
    table: Table,
    session: aiohttp.ClientSession,
    hostile: tuple[RouterProcess, Path],
    case_name: str,
    tried: str,
    cases: list[Case],
) -> Outcome:
    router, log_dir = hostile
    outcome = await run_cases(session, router, log_dir, cases)
    failed = {f.split(":", 1)[0] for f in outcome.failures if "no exposure" not in f}
    table.add(Row("hostile input", case_name, tried, len(cases), len(failed), lost_count(outcome)))
    assert outcome.failures == []
    return outcome


# --- bodies --------------------------------------------------------------------------------

BAD_BODIES = [
    ("not-json", b"not json"),
    ("empty", b""),
    ("truncated", BODY[:-5]),
    ("array", b"[1, 2]"),
    ("string", b'"text"'),
    ("null", b"null"),
    ("number", b"12"),
    ("invalid-utf8", b'{"key": ["\xff\xfe"], "value": ["[[1]]"]}'),
    ("deep-nesting", b'{"a": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"),
    ("nan-constant", b'{"key": ["x"], "value": ["[[1]]"], "extra": NaN}'),
    ("infinity-constant", b'{"key": ["x"], "value": ["[[1]]"], "logid": Infinity}'),
    ("key-not-list", with_body(key="x")),
    ("key-numbers", with_body(key=[1])),
    ("value-nested-list", with_body(value=[[1, 2]])),
    ("value-null-item", with_body(value=[None])),
    ("key-value-lengths", with_body(key=["x", "y"])),
    ("tensors-numbers", with_body(tensors=[1])),
    ("logid-float", with_body(logid=1.5)),
    ("logid-over-int64", with_body(logid=2**70)),
    ("name-number", with_body(name=5)),
    ("clientip-object", with_body(clientip={"ip": "1.2.3.4"})),
]


async def test_malformed_bodies_are_400_and_never_reach_a_backend(
    hostile_router: tuple[RouterProcess, Path], session: aiohttp.ClientSession, table: Table
) -> None:
    cases = [Case(name, post(body), 400, "bad_body") for name, body in BAD_BODIES]
    await check_and_record(
        table, session, hostile_router, "malformed bodies",
        "not JSON, empty, truncated, arrays/scalars, invalid UTF-8, 30k-deep nesting, "
        "NaN/Infinity, pipeline fields of the wrong type, key/value of different lengths",
        cases,
    )  # fmt: skip


async def test_sizes_and_encodings(
    hostile_router: tuple[RouterProcess, Path], session: aiohttp.ClientSession, table: Table
) -> None:
    big = b'{"key": ["x"], "value": ["' + b"1" * (MAX_BODY + 10) + b'"]}'
    bomb = gzip.compress(b" " * (20 * 1024 * 1024))  # 20 MiB of spaces in ~20 KiB
    chunked = (
        b"POST " + R + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n" % 8192 + b"[" * 8192 + b"\r\n" for _ in range(130))
        + b"0\r\n\r\n"
    )
    cases = [
        Case("over-limit", post(big), 413, "body_too_large"),
        Case("gzip-bomb", post(bomb, (b"Content-Encoding", b"gzip")), 413, "body_too_large"),
        Case("chunked-over-limit", chunked, 413, "body_too_large"),
        Case("bad-gzip", post(b"not gzip", (b"Content-Encoding", b"gzip")), 400, "bad_body"),
        Case("bad-deflate", post(b"\x00\x01", (b"Content-Encoding", b"deflate")), 400,
             json_reply=False),
        Case("unknown-encoding", post(BODY, (b"Content-Encoding", b"br")), 400,
             json_reply=False),
        Case(
            "events-over-limit",
            post(b"[" + b'{"unit_id":"u","metric":"m"},' * 40_000 + b"{}]", target=b"/events"),
            413,
            "body_too_large",
        ),
        Case("gzip-valid", post(gzip.compress(BODY), (b"Content-Encoding", b"gzip")), 200,
             backend=1, logged=True),
    ]  # fmt: skip
    await check_and_record(
        table, session, hostile_router, "sizes and encodings",
        "over max_body_bytes (plain, chunked, /events), a 20 MiB gzip bomb, broken gzip/deflate, "
        "an unsupported encoding, a valid gzip body", cases,
    )  # fmt: skip


async def test_content_types_do_not_matter_the_body_does(
    hostile_router: tuple[RouterProcess, Path], session: aiohttp.ClientSession, table: Table
) -> None:
    # Paddle Serving's own HTTP client sends no content type, and its gateway ignores it: the
    # router takes any content type with a valid body and forwards it as sent.
    served = [
        b"text/plain", b"application/x-www-form-urlencoded", b"application/xml",
        b"application/json; charset=latin-1", b"%%%/;;", None,
    ]  # fmt: skip
    cases = [
        Case(f"content-type-{i}", post(BODY, content_type=ct), 200, backend=1, logged=True)
        for i, ct in enumerate(served)
    ]
    form = b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--b--\r\n"
    cases += [
        Case("multipart", post(form, content_type=b"multipart/form-data; boundary=b"), 400,
             "bad_body"),
        Case("form-body", post(b"key=x&value=1", content_type=b"application/x-www-form-urlencoded"),
             400, "bad_body"),
    ]  # fmt: skip
    await check_and_record(
        table, session, hostile_router, "content types",
        "valid body under 6 wrong or missing content types (served), multipart and form bodies "
        "(400)", cases,
    )  # fmt: skip


# --- unit ids ------------------------------------------------------------------------------


async def test_unit_ids(
    hostile_router: tuple[RouterProcess, Path], session: aiohttp.ClientSession, table: Table
) -> None:
    _router, log_dir = hostile_router
    unicode_unit = "用户-ü-☃-🙂"
    cases = [
        Case("unit-missing", post(BODY), 200, backend=1, logged=True),
        Case("unit-empty", post(BODY, user(b"")), 200, backend=1, logged=True),
        Case("unit-256", post(BODY, user(b"u" * 256)), 200, backend=1, logged=True),
        Case("unit-unicode", post(BODY, user(unicode_unit.encode())), 200, backend=1,
             logged=True),
        Case("unit-json-int", post(with_body(user_id=12345)), 200, backend=1, logged=True),
        Case("unit-json-list", post(with_body(user_id=["a"])), 200, backend=1, logged=True),
        Case("unit-257", post(BODY, user(b"u" * 257)), 400, "bad_unit"),
        Case("unit-8k", post(BODY, user(b"u" * 8000)), 400, "bad_unit"),
        Case("unit-not-utf8", post(BODY, user(b"\xff\xfe\x80abc")), 400, "bad_unit"),
        Case("unit-tab", post(BODY, user(b"a\tb")), 400, "bad_unit"),
        Case("unit-json-surrogate", post(b'{"key": [], "value": [], "user_id": "\\ud800"}'),
             400, "bad_unit"),
        Case("unit-json-nul", post(with_body(user_id="a\u0000b")), 400, "bad_unit"),
        Case("unit-json-huge-int", post(with_body(user_id=10**300)), 400, "bad_unit"),
        Case("unit-header-over-8k", post(BODY, user(b"u" * 9000)), 431, "header_too_large"),
    ]  # fmt: skip
    await check_and_record(
        table, session, hostile_router, "unit ids",
        "missing, empty, 256/257/8000/9000 characters, Unicode, not UTF-8, tab, NUL, lone "
        "surrogate, huge integer, a list", cases,
    )  # fmt: skip
    records = {r["request_id"]: r for r in exposures(log_dir)}
    assert records["unit-missing"]["unit"] is None and not records["unit-missing"]["enrolled"]
    assert records["unit-empty"]["unit"] is None and not records["unit-empty"]["enrolled"]
    assert records["unit-unicode"]["unit"] == unicode_unit
    assert records["unit-json-int"]["unit"] == "12345"
    assert records["unit-json-list"]["unit"] is None


# --- headers -------------------------------------------------------------------------------


async def test_header_injection_attempts(
    hostile_router: tuple[RouterProcess, Path], session: aiohttp.ClientSession, table: Table
) -> None:
    _router, log_dir = hostile_router
    quoted = b'","injected":"1'
    cases = [
        Case("city-crlf-split", post(BODY, (b"X-City", b"a\r\nX-Injected: 1")), 200, backend=1,
             logged=True),
        Case("city-json-quote", post(BODY, (b"X-City", quoted)), 200, backend=1, logged=True),
        Case("city-not-utf8", post(BODY, (b"X-City", b"\xff\xfe caf\xe9")), 200, backend=1,
             logged=True),
        Case("city-bare-cr", post(BODY, (b"X-City", b"a\rb")), 400, json_reply=False),
        Case("city-nul", post(BODY, (b"X-City", b"a\x00b")), 400, json_reply=False),
        Case("city-obs-fold", post(BODY, (b"X-City", b"a\r\n b")), 400, json_reply=False),
        Case("request-id-path", post(BODY, (b"X-Request-Id", b"../../etc/passwd")), 200,
             backend=1),
        Case("request-id-long", post(BODY, (b"X-Request-Id", b"r" * 1000)), 200, backend=1),
        Case("request-id-space", post(BODY, (b"X-Request-Id", b"a b; rm -rf /")), 200, backend=1),
        Case("auth-not-utf8-admin", post(b"{}", (b"Authorization", b"Bearer \xff\xfe"),
             target=b"/admin/experiments/sentiment/pause"), 401, "unauthorized"),
        Case("auth-not-utf8-override", post(BODY, (b"Authorization", b"Bearer \xdd\xad"),
             (b"X-Variant-Override", b"treatment")), 403, "override_forbidden"),
        Case("override-no-token", post(BODY, (b"X-Variant-Override", b"treatment")), 403,
             "override_forbidden"),
        Case("override-not-utf8", post(BODY, (b"X-Variant-Override", b"\xff"),
             (b"Authorization", b"Bearer x")), 403, "override_forbidden"),
        Case("forwarded-host", post(BODY, (b"X-Forwarded-Host", b"evil.example")), 200, backend=1,
             logged=True),
    ]  # fmt: skip
    outcome = await check_and_record(
        table, session, hostile_router, "header injection",
        "CR/LF, bare CR, NUL, obs-fold and non-UTF-8 bytes in a logged attribute, JSON quotes in "
        "it, path/long/shell-like X-Request-Id, non-UTF-8 Authorization and X-Variant-Override",
        cases,
    )  # fmt: skip
    records = {r["request_id"]: r for r in exposures(log_dir)}
    keys = set(records["city-crlf-split"])
    assert records["city-crlf-split"]["city"] == "a"  # the next line is another header
    assert "injected" not in keys and "X-Injected" not in keys
    assert records["city-json-quote"]["city"] == quoted.decode()
    assert set(records["city-json-quote"]) == keys
    assert records["city-not-utf8"]["city"].startswith("\udcff\udcfe")  # kept, escaped in JSON
    for name in ("request-id-path", "request-id-long", "request-id-space"):
        echoed = outcome.replies[name].headers["x-request-id"]
        assert len(echoed) == 24 and all(c in "0123456789abcdef" for c in echoed), echoed
        assert echoed in records


# --- routes and methods --------------------------------------------------------------------


async def test_unknown_routes_and_methods(
    hostile_router: tuple[RouterProcess, Path], session: aiohttp.ClientSession, table: Table
) -> None:
    def bare(method: bytes, target: bytes) -> bytes:
        return request_bytes(method, target, [])

    cases = [
        Case("get-unknown", bare(b"GET", b"/nowhere"), 404, "not_found"),
        Case("post-unknown", post(BODY, target=b"/nowhere"), 404, "not_found"),
        Case("trailing-slash", post(BODY, target=R + b"/"), 404, "not_found"),
        Case("double-slash", post(BODY, target=b"/" + R), 404, "not_found"),
        Case("dot-dot", bare(b"GET", b"/../../etc/passwd"), 404, "not_found"),
        Case("admin-unknown", post(b"{}", target=b"/admin/nothing"), 404, "not_found"),
        Case("get-route", bare(b"GET", R), 405, "method_not_allowed"),
        Case("put-route", post(BODY, method=b"PUT"), 405, "method_not_allowed"),
        Case("purge-route", bare(b"PURGE", R), 405, "method_not_allowed"),
        Case("delete-events", bare(b"DELETE", b"/events"), 405, "method_not_allowed"),
        Case("trace-events", bare(b"TRACE", b"/events"), 405, "method_not_allowed"),
        Case("post-experiments", post(b"{}", target=b"/experiments"), 405, "method_not_allowed"),
        Case("patch-metrics", bare(b"PATCH", b"/metrics"), 405, "method_not_allowed"),
        Case("post-healthz", post(b"{}", target=b"/healthz"), 405, "method_not_allowed"),
        Case("options-readyz", bare(b"OPTIONS", b"/readyz"), 405, "method_not_allowed"),
        Case("post-openapi", post(b"{}", target=b"/openapi.yaml"), 405, "method_not_allowed"),
        Case("query-string", post(BODY, target=R + b"?debug=1&x=../../"), 200, backend=1,
             logged=True),
        Case("absolute-form", post(BODY, target=b"http://evil.example" + R), 200, backend=1,
             logged=True),
        Case("unknown-method", bare(b"FOO", R), 400, json_reply=False),
        Case("garbage-line", b"GARBAGE\r\n\r\n", 400, json_reply=False),
        Case("http-2.0-line", b"GET /x HTTP/2.0\r\nHost: x\r\n\r\n", 505,
             "http_version_not_supported"),
        Case("space-in-target", b"GET /a b HTTP/1.1\r\n\r\n", 400, json_reply=False),
    ]  # fmt: skip
    outcome = await check_and_record(
        table, session, hostile_router, "routes and methods",
        "unknown paths, trailing/double slash, dot segments, PUT/PURGE/DELETE/TRACE/PATCH/OPTIONS "
        "on every endpoint, a query string, an absolute-form target, unknown methods, garbage",
        cases,
    )  # fmt: skip
    assert outcome.replies["get-route"].headers["allow"] == "POST"


# --- /events -------------------------------------------------------------------------------

# Inside the window of accepted timestamps (router.events_max_age, 7 days by default).
TWO_DAYS_AGO_AT_8_IN_UTC8 = (datetime.now(timezone.utc) - timedelta(days=2)).strftime(
    "%Y-%m-%dT08:00:00+08:00"
)
BAD_EVENTS: list[tuple[str, bytes]] = [
    ("event-not-json", b"{nope"),
    ("event-empty-list", b"[]"),
    ("event-number", b"[7]"),
    ("event-no-unit", b'{"metric": "m"}'),
    ("event-unknown-key", b'{"unit_id": "u", "metric": "m", "colour": 1}'),
    ("event-metric-space", b'{"unit_id": "u", "metric": "a b"}'),
    ("event-metric-path", b'{"unit_id": "u", "metric": "../../etc/passwd"}'),
    ("event-value-text", b'{"unit_id": "u", "metric": "m", "value": "lots"}'),
    ("event-value-bool", b'{"unit_id": "u", "metric": "m", "value": true}'),
    ("event-value-nan", b'{"unit_id": "u", "metric": "m", "value": NaN}'),
    ("event-value-inf", b'{"unit_id": "u", "metric": "m", "value": 1e999}'),
    ("event-ts-text", b'{"unit_id": "u", "metric": "m", "ts": "yesterday"}'),
    ("event-ts-future", b'{"unit_id": "u", "metric": "m", "ts": "9999-01-01T00:00:00Z"}'),
    ("event-unit-long", json.dumps({"unit_id": "u" * 257, "metric": "m"}).encode()),
    ("event-unit-control", b'{"unit_id": "a\\u0007b", "metric": "m"}'),
    ("event-unit-surrogate", b'{"unit_id": "\\udc80", "metric": "m"}'),
    ("event-experiment-path", b'{"unit_id": "u", "metric": "m", "experiment": "../../x"}'),
    ("event-too-many", json.dumps([{"unit_id": "u", "metric": "m"}] * 10_001).encode()),
    ("event-deep", b"[" * 30_000 + b"]" * 30_000),
    ("event-half-bad", b'[{"unit_id": "u", "metric": "m"}, {"unit_id": "", "metric": "m"}]'),
]


async def test_bad_events(
    hostile_router: tuple[RouterProcess, Path], session: aiohttp.ClientSession, table: Table
) -> None:
    router, log_dir = hostile_router
    cases = [Case(n, post(b, target=b"/events"), 400, "bad_event") for n, b in BAD_EVENTS]
    cases += [
        Case("event-bad-gzip", post(b"xx", (b"Content-Encoding", b"gzip"), target=b"/events"),
             400, "bad_event"),
        Case("event-get", request_bytes(b"GET", b"/events", []), 405, "method_not_allowed"),
    ]  # fmt: skip
    good = [
        {"unit_id": "hostile-good-1", "metric": "conversion"},
        {"unit_id": 42, "metric": "revenue", "value": 9.5, "ts": TWO_DAYS_AGO_AT_8_IN_UTC8},
        {"unit_id": "用户", "metric": "m:1", "experiment": "sentiment"},
    ]
    cases.append(Case("event-good", post(json.dumps(good).encode(), target=b"/events"), 202))
    before = read_jsonl(list(log_dir.glob("outcomes-*.jsonl")))
    outcome = await run_cases(session, router, log_dir, cases)
    accepted = outcome.replies["event-good"].json()
    await settled(
        lambda: len(read_jsonl(list(log_dir.glob("outcomes-*.jsonl")))) >= len(before) + 3
    )
    after = read_jsonl(list(log_dir.glob("outcomes-*.jsonl")))
    new = after[len(before) :]
    lost = 3 - len(new)
    failed = {f.split(":", 1)[0] for f in outcome.failures}
    table.add(
        Row(
            "hostile input", "/events payloads",
            "not JSON, empty list, non-objects, missing/unknown keys, bad metric names, text/bool/"
            "NaN/infinite values, bad and far-future ts, long/control/surrogate unit ids, "
            "path-like experiment, 10,001 events, deep nesting, half-bad batch, bad gzip, GET",
            len(cases), len(failed), max(lost, 0),
        )
    )  # fmt: skip
    assert outcome.failures == []
    assert accepted == {"accepted": 3}
    assert sorted(r["unit"] for r in new) == sorted(["hostile-good-1", "42", "用户"])


# --- slow clients and a router that keeps serving -------------------------------------------


async def test_slow_clients_do_not_block_and_the_router_keeps_serving(
    hostile_router: tuple[RouterProcess, Path], session: aiohttp.ClientSession, table: Table
) -> None:
    router, log_dir = hostile_router
    host, port = router.url.split("//")[1].split(":")
    stalled = []
    for i in range(20):  # half a request each: headers without their end, a body cut short
        _reader, writer = await asyncio.open_connection(host, int(port))
        if i % 2:
            writer.write(b"POST " + R + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: slow")
        else:
            writer.write(post(BODY)[:-20])
        await writer.drain()
        stalled.append(writer)
    try:
        result = await run_load(
            session, router.url + ROUTE, BODY, requests=60, rate=30, concurrency=4,
            id_prefix="after-hostile", max_seconds=30,
        )  # fmt: skip
    finally:
        for writer in stalled:
            writer.close()
    answered = {a.request_id for a in result.answered()}
    await settled(lambda: answered <= {r["request_id"] for r in exposures(log_dir)})
    logged = {r["request_id"] for r in exposures(log_dir)}
    lost = len({a.request_id for a in result.answered()} - logged)
    async with session.get(f"{router.url}/healthz") as response:
        healthy = response.status
    async with session.get(f"{router.url}/metrics") as response:
        dropped = metric_value(
            await response.text(), "router_events_dropped_total", log="exposures"
        )
    table.add(
        Row(
            "hostile input", "slow clients",
            "20 connections left half-sent (headers or body cut short) while 60 valid requests "
            "run", result.sent, len(result.failed()), lost,
        )
    )  # fmt: skip
    assert [a for a in result.failed()] == []
    assert lost == 0 and dropped == 0 and healthy == 200
    assert router.process.poll() is None
