"""Security: who may act, where the router listens, what it logs, what it never does with input."""

from __future__ import annotations

import hashlib
import re
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from yarl import URL

from tests.conftest import Backend
from tests.reliability.conftest import Launch, Table
from tests.reliability.load import run_load
from tests.reliability.stack import (
    BODY,
    ROUTE,
    SALT,
    listening_on,
    read_jsonl,
    registry,
)
from tests.reliability.summary import Row
from tests.router.harness import unit_in
from tests.support import settled

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

TOKEN_ENV = "RELIABILITY_ADMIN_TOKEN"


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def backends(paddle_backends: dict[str, Backend]) -> tuple[list[str], list[str]]:
    return [paddle_backends["sentiment-v1"].url], [paddle_backends["sentiment-v2"].url]


async def test_admin_actions_and_the_override_header_need_the_token(
    paddle_backends: dict[str, Backend], launch: Launch, session: aiohttp.ClientSession,
    table: Table,
) -> None:  # fmt: skip
    token = secrets.token_urlsafe(24)
    slo = {"p99_ms": 1000, "error_rate": 0.5}
    raw = registry(
        *backends(paddle_backends),
        patch={
            "router": {"admin_token_env": TOKEN_ENV},
            "experiments": {"sentiment": {"slo": slo}},
        },
    )
    stack = launch(raw, env={TOKEN_ENV: token})
    action = f"{stack.url}/admin/experiments/sentiment/rollback"
    refused = {
        "no header": {},
        "empty bearer": {"Authorization": "Bearer "},
        "wrong token": {"Authorization": f"Bearer {token}x"},
        "token prefix": {"Authorization": f"Bearer {token[:-1]}"},
        "basic scheme": {"Authorization": f"Basic {token}"},
        "token without scheme": {"Authorization": token},
        "token in query": {},
    }
    sent, wrong = 0, []
    for name, headers in refused.items():
        target = action + (f"?token={token}" if name == "token in query" else "")
        async with session.post(target, headers=headers, json={"reason": "test"}) as response:
            sent += 1
            body = await response.json(content_type=None)
            if (
                response.status not in (401, 403)
                or not isinstance(body, dict)
                or "code" not in body
            ):
                wrong.append((name, response.status, body))
    state = await stack.state(session)
    still_running = state["experiments"]["sentiment"].get("status") == "running"

    # X-Variant-Override moves a control unit to the treatment only with the token.
    unit = unit_in("control", salt=SALT, traffic=50)
    override_wrong = []
    for headers in ({}, {"Authorization": "Bearer nope"}):
        async with session.post(
            stack.url + ROUTE,
            data=BODY,
            headers={"X-User-Id": unit, "X-Variant-Override": "treatment", **headers},
        ) as response:
            sent += 1
            if response.status == 200 and response.headers.get("X-Variant") != "control":
                override_wrong.append(dict(headers))
            elif response.status not in (200, 401, 403):
                override_wrong.append({"status": str(response.status)})
    async with session.post(
        stack.url + ROUTE,
        data=BODY,
        headers={
            "X-User-Id": unit,
            "X-Variant-Override": "treatment",
            "Authorization": f"Bearer {token}",
        },
    ) as response:
        sent += 1
        overridden = response.headers.get("X-Variant")
    async with session.post(
        action, headers={"Authorization": f"Bearer {token}"}, json={"reason": "drill"}
    ) as response:
        sent += 1
        accepted = response.status
    state = await stack.state(session)
    table.add(
        Row("security", "admin token and override header",
            "admin action with no, empty, wrong, truncated, Basic, scheme-less and query-string "
            "tokens; X-Variant-Override without and with a wrong token; then the right token",
            sent, len(wrong) + len(override_wrong), 0,
            "every attempt without the token refused with 401/403 and changed nothing")
    )  # fmt: skip
    assert wrong == [] and still_running
    assert override_wrong == []
    assert overridden == "treatment"
    assert accepted == 200 and state["experiments"]["sentiment"]["status"] == "rolled_back"


async def test_no_token_configured_refuses_every_admin_call(
    paddle_backends: dict[str, Backend], launch: Launch, session: aiohttp.ClientSession
) -> None:
    raw = registry(*backends(paddle_backends), patch={"router": {"admin_token_env": TOKEN_ENV}})
    stack = launch(raw, env={TOKEN_ENV: ""})
    for header in ("Bearer ", "Bearer x", "Bearer None"):
        async with session.post(
            f"{stack.url}/admin/experiments/sentiment/pause", headers={"Authorization": header}
        ) as response:
            assert response.status in (401, 403)


async def test_the_router_binds_loopback_unless_configured(
    paddle_backends: dict[str, Backend], launch: Launch, table: Table
) -> None:
    raw = registry(*backends(paddle_backends))
    assert "host" not in raw["router"]
    stack = launch(raw)
    port = int(stack.url.rsplit(":", 1)[1])
    router_binds = listening_on(port)
    # The fact docs/reliability.md warns about: Paddle Serving's gateway takes every interface.
    gateway_binds = listening_on(int(paddle_backends["sentiment-v1"].url.rsplit(":", 1)[1]))
    table.add(
        Row("security", "listen address",
            "the router started without --host/router.host; listening sockets read from "
            "/proc/net/tcp", 0, 0, 0,
            f"router {sorted(router_binds)}; Paddle Serving gateway {sorted(gateway_binds)}")
    )  # fmt: skip
    assert stack.url.startswith("http://127.0.0.1:")
    assert router_binds == {"127.0.0.1"}
    assert gateway_binds & {"0.0.0.0", "::"}


async def test_unit_ids_can_be_logged_hashed(
    paddle_backends: dict[str, Backend], launch: Launch, session: aiohttp.ClientSession,
    table: Table,
) -> None:  # fmt: skip
    secret = f"secret-{secrets.token_hex(6)}"
    raw = registry(*backends(paddle_backends), patch={"router": {"hash_unit_ids": True}})
    stack = launch(raw)
    result = await run_load(
        session, stack.url + ROUTE, BODY, requests=40, rate=40,
        unit_of=lambda i: f"{secret}-{i % 10}", id_prefix="hashed",
    )  # fmt: skip
    events = [{"unit_id": f"{secret}-{i}", "metric": "conversion"} for i in range(10)]
    async with session.post(f"{stack.url}/events", json=events) as response:
        assert response.status == 202

    def outcomes_logged() -> list[dict[str, Any]]:
        return read_jsonl(list(stack.log_dir.glob("outcomes-*.jsonl")))

    await settled(lambda: len(stack.exposures()) >= 40 and len(outcomes_logged()) >= 10)
    folder = stack.config.parent
    everything = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
    exposures = stack.exposures()
    outcomes = outcomes_logged()
    hashed = {hashlib.sha256(f"{secret}-{i}".encode()).hexdigest()[:32] for i in range(10)}
    table.add(
        Row("security", "hashed unit ids",
            "hash_unit_ids: true; 40 requests and 10 events from 10 units; every file the "
            "router wrote searched for the raw ids", result.sent + 1, len(result.failed()),
            40 - len(exposures) + 10 - len(outcomes))
    )  # fmt: skip
    assert secret.encode() not in everything
    assert len(exposures) == 40 and len(outcomes) == 10
    # pseudonyms, the same on both sides: the analysis still joins them
    assert {r["unit"] for r in exposures} == {r["unit"] for r in outcomes} == hashed


INJECTIONS = [
    "../../../../{marker}",
    "/{marker}",
    "$(touch {marker})",
    "`touch {marker}`",
    "__import__('os').system('touch {marker}')",
    "{{{{7*7}}}}",
    "${{7*7}}",
    "%(x)s%n%s",
    "{{0.__class__}}",
    "!!python/object/apply:os.system ['touch {marker}']",
]


async def test_request_content_is_never_evaluated_or_used_as_a_path(
    paddle_backends: dict[str, Backend], launch: Launch, session: aiohttp.ClientSession,
    table: Table,
) -> None:  # fmt: skip
    stack = launch(registry(*backends(paddle_backends)))
    marker = Path(tempfile.gettempdir()) / f"reliability-pwned-{secrets.token_hex(4)}"
    values = [v.format(marker=marker) for v in INJECTIONS]
    sent, failed = 0, 0
    for index, value in enumerate(values):
        for headers in ({"X-User-Id": value}, {"X-City": value}):
            async with session.post(
                stack.url + ROUTE, data=BODY, headers={"X-Request-Id": f"inj-{index}", **headers}
            ) as response:
                sent += 1
                failed += response.status != 200
        for path in (f"/{value}", f"/events/{value}"):
            url = URL(stack.url).with_path(path)  # sent percent-encoded, decoded by the router
            async with session.get(url) as response:
                sent += 1
                failed += response.status != 404
        event = {"unit_id": value, "metric": "m", "experiment": "sentiment"}
        async with session.post(f"{stack.url}/events", json=event) as response:
            sent += 1
            failed += response.status != 202

    def units_logged(kind: str) -> set[str]:
        return {r["unit"] for r in read_jsonl(list(stack.log_dir.glob(f"{kind}-*.jsonl")))}

    await settled(
        lambda: set(values) <= units_logged("exposures") and set(values) <= units_logged("outcomes")
    )
    records = stack.exposures()
    logged_units = {r["unit"] for r in records}
    logged_cities = {r["city"] for r in records}
    outcomes = {r["unit"] for r in read_jsonl(list(stack.log_dir.glob("outcomes-*.jsonl")))}
    names = sorted(p.name for p in stack.log_dir.iterdir())
    expected = re.compile(r"^(exposures|outcomes)-\d{4}-\d{2}-\d{2}\.jsonl$|^decisions\.jsonl$")
    table.add(
        Row("security", "nothing evaluated or used as a path",
            f"{len(values)} path traversal, shell, Python, template, format-string and YAML tag "
            "payloads as unit id, attribute, URL path and outcome event", sent, failed, 0,
            "each logged verbatim as data; no file created outside the log file names")
    )  # fmt: skip
    assert failed == 0
    assert not marker.exists()
    assert all(expected.match(name) for name in names), names
    assert set(values) <= logged_units and set(values) <= logged_cities and set(values) <= outcomes
