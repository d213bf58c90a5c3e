from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from router.app import create_app
from router.registry.loading import parse_config
from tests.router.harness import build_app, logs_dir, metric, outcomes, registry

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
    # Two and three days ago (inside the default window of 7 days), at fixed times of day.
    two_days_ago, three_days_ago = (
        (datetime.now(timezone.utc) - timedelta(days=days)).date() for days in (2, 3)
    )
    batch = [
        {"unit_id": "bob", "metric": "revenue", "value": 12.5,
         "ts": f"{two_days_ago}T08:00:00+08:00", "experiment": "sentiment",
         "event_id": "order-981"},
        {"unit_id": 42, "metric": "complaint", "value": 0, "ts": f"{three_days_ago}T01:02:03"},
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
        "ts": f"{two_days_ago}T00:00:00.000Z", "unit": "bob", "metric": "revenue",
        "value": 12.5, "experiment": "sentiment", "event_id": "order-981",
    }  # fmt: skip
    assert "event_id" not in records["alice"]
    assert records["42"]["ts"] == f"{three_days_ago}T01:02:03.000Z"
    # each record lands in the file of its own day
    names = sorted(p.name for p in (tmp_path / "logs").glob("outcomes-*.jsonl"))
    assert f"outcomes-{two_days_ago}.jsonl" in names
    assert f"outcomes-{three_days_ago}.jsonl" in names
    # every record counted as written
    assert metric(app, "router_events_written_total", log="outcomes") == 3
    assert metric(app, "router_events_dropped_total", log="outcomes") == 0


BAD = [
    (b"not json", "body: not JSON"),
    (b"[]", "body: empty list"),
    (b'{"metric": "conversion"}', "event.unit_id: required"),
    (b'{"unit_id": "a", "metric": "conversion", "colour": 1}', "event.colour: unknown key"),
    (b'{"unit_id": "a", "metric": "has space"}', "event.metric: "),
    (b'{"unit_id": "a", "metric": "m", "value": "lots"}', "event.value: "),
    (b'{"unit_id": "a", "metric": "m", "value": true}', "event.value: must be a finite number"),
    (b'{"unit_id": "a", "metric": "m", "ts": "yesterday"}', "event.ts: "),
    (b'{"unit_id": "a", "metric": "m", "ts": "0001-01-01T00:00:00+01:00"}', "event.ts: out of"),
    (b'{"unit_id": "a", "metric": "m", "ts": "9999-12-31T23:00:00Z"}', "event.ts: 9999-12-31"),
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


async def test_a_replica_logs_events_in_its_own_files_and_names_itself(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    raw = registry(tmp_path / "logs", ["http://127.0.0.1:9"], ["http://127.0.0.1:9"])
    app = create_app(parse_config(raw), flush_interval=0.02, replica="10.0.0.7:8080-w1")
    client: TestClient = await aiohttp_client(app)
    event = {"unit_id": "alice", "metric": "conversion", "event_id": "order-1"}
    response = await client.post("/events", json=event)
    assert response.status == 202
    # The client cannot name a replica: that field is the router's.
    response = await client.post("/events", json={**event, "replica": "elsewhere"})
    assert (response.status, (await response.json())["code"]) == (400, "bad_event")
    [record] = outcomes(app)  # outcomes-*.jsonl: every replica's files
    assert record["replica"] == "10.0.0.7:8080-w1" and record["event_id"] == "order-1"
    today = datetime.now(timezone.utc).date()
    names = [p.name for p in logs_dir(app).glob("outcomes-*")]
    assert names in (
        [f"outcomes-{day}.10.0.0.7_8080-w1.jsonl"] for day in (today, today - timedelta(days=1))
    )


async def test_events_only_accept_post(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    response = await client.get("/events")
    assert response.status == 405
    assert (await response.json())["code"] == "method_not_allowed"


# --- the window of accepted timestamps (its ends: test_events_window.py) ---------------------


def events_at(*moments: datetime) -> bytes:
    return json.dumps(
        [{"unit_id": "u", "metric": "m", "ts": m.isoformat()} for m in moments]
    ).encode()


async def test_two_thousand_past_days_are_refused_and_make_no_file(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    now = datetime.now(timezone.utc)
    # Half a day off whole days: a boundary never falls between the test's clock and the router's.
    days = [now - timedelta(days=day, hours=12) for day in range(2000)]
    response = await client.post("/events", data=events_at(*days))
    assert response.status == 400
    reply = await response.json()
    assert reply["code"] == "bad_event"
    # events[0..6] are 0.5 to 6.5 days old: inside; from events[7] (7.5 days) on: refused
    assert reply["error"].startswith("events[7].ts: ")
    assert "is more than 7d old (router.events_max_age): accepted from " in reply["error"]
    assert reply["error"].endswith("; and 1,973 more")  # 1,993 refused, 20 named
    app = client.app
    assert app is not None
    assert outcomes(app) == []
    assert list(logs_dir(app).glob("outcomes-*")) == []

    inside = [
        now - timedelta(days=6, hours=23),
        now - timedelta(days=1),
        now + timedelta(minutes=4),
    ]
    response = await client.post("/events", data=events_at(*inside))
    assert (response.status, await response.json()) == (202, {"accepted": 3})
    assert len(outcomes(app)) == 3


async def test_the_window_is_the_registry_s(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await client_for(aiohttp_client, tmp_path, events_max_age="1d", events_max_ahead="1h")
    now = datetime.now(timezone.utc)
    for moment, status in [
        (now - timedelta(hours=23), 202),
        (now - timedelta(hours=25), 400),
        (now + timedelta(minutes=50), 202),
        (now + timedelta(minutes=70), 400),
    ]:
        response = await client.post("/events", data=events_at(moment))
        assert response.status == status, moment
        if status == 400:
            assert "accepted from" in (await response.json())["error"]
