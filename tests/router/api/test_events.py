from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.router.harness import build_app, outcomes, registry

pytestmark = pytest.mark.asyncio


async def client_for(aiohttp_client: Any, tmp_path: Path, **router: Any) -> TestClient:
    raw = registry(
        tmp_path / "logs", ["http://127.0.0.1:9"], ["http://127.0.0.1:9"], {"router": router}
    )
    client: TestClient = await aiohttp_client(build_app(raw))
    return client


async def test_single_and_list_events_are_logged(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    response = await client.post("/events", json={"unit_id": "alice", "metric": "conversion"})
    assert (response.status, await response.json()) == (202, {"accepted": 1})
    batch = [
        {"unit_id": "bob", "metric": "revenue", "value": 12.5, "ts": "2026-11-20T08:00:00+08:00",
         "experiment": "sentiment", "event_id": "order-981"},
        {"unit_id": 42, "metric": "complaint", "value": 0, "ts": "2026-11-21T01:02:03"},
    ]  # fmt: skip
    response = await client.post("/events", json=batch)
    assert (response.status, await response.json()) == (202, {"accepted": 2})
    app = client.app
    assert app is not None
    records = {record["unit"]: record for record in outcomes(app)}
    assert sorted(records) == ["42", "alice", "bob"]
    assert records["alice"]["value"] == 1.0 and records["alice"]["experiment"] is None
    assert records["alice"]["ts"].endswith("Z")
    assert records["bob"] == {
        "ts": "2026-11-20T00:00:00.000Z", "unit": "bob", "metric": "revenue",
        "value": 12.5, "experiment": "sentiment", "event_id": "order-981",
    }  # fmt: skip
    assert "event_id" not in records["alice"]
    assert records["42"]["ts"] == "2026-11-21T01:02:03.000Z"
    # each record lands in the file of its own day
    names = sorted(p.name for p in (tmp_path / "logs").glob("outcomes-*.jsonl"))
    assert "outcomes-2026-11-20.jsonl" in names and "outcomes-2026-11-21.jsonl" in names


BAD = [
    (b"not json", "body: not JSON"),
    (b"[]", "body: empty list"),
    (b'{"metric": "conversion"}', "event.unit_id: required"),
    (b'{"unit_id": "a", "metric": "conversion", "colour": 1}', "event.colour: unknown key"),
    (b'{"unit_id": "a", "metric": "has space"}', "event.metric: "),
    (b'{"unit_id": "a", "metric": "m", "value": "lots"}', "event.value: "),
    (b'{"unit_id": "a", "metric": "m", "value": true}', "event.value: must be a finite number"),
    (b'{"unit_id": "a", "metric": "m", "ts": "yesterday"}', "event.ts: "),
    (b'{"unit_id": "a", "metric": "m", "event_id": "has space"}', "event.event_id: "),
    (b'{"unit_id": "a", "metric": "m", "event_id": "' + b"x" * 129 + b'"}', "event.event_id: "),
    (b'[{"unit_id": "a", "metric": "m"}, 7]', "events[1]: must be a JSON object"),
]


@pytest.mark.parametrize(("body", "message"), BAD, ids=[b.decode()[:30] for b, _ in BAD])
async def test_bad_events_are_refused_whole(
    aiohttp_client: Any, tmp_path: Path, body: bytes, message: str
) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    response = await client.post("/events", data=body)
    assert response.status == 400
    reply = await response.json()
    assert reply["code"] == "bad_event"
    assert message in reply["error"]
    app = client.app
    assert app is not None
    assert outcomes(app) == []


async def test_events_with_hashed_units(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await client_for(aiohttp_client, tmp_path, hash_unit_ids=True)
    await client.post("/events", data=json.dumps({"unit_id": "alice", "metric": "m"}))
    app = client.app
    assert app is not None
    [record] = outcomes(app)
    assert record["unit"] == hashlib.sha256(b"alice").hexdigest()[:32]


async def test_events_only_accept_post(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    response = await client.get("/events")
    assert response.status == 405
    assert (await response.json())["code"] == "method_not_allowed"
