"""The request path in process, against fake backends that fail on demand."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import pytest
from aiohttp.test_utils import TestClient

from router.app import EVENT_LOGS, OBSERVER, SHADOW_LISTENER
from router.records.exposure import EXPOSURE_FIELDS
from tests.router.fakes import Fakes, closed_port_url, url_of
from tests.router.harness import (
    DEMO_BODY,
    FastPathTestServer,
    build_app,
    exposures,
    metric,
    registry,
    unit_in,
)
from tests.support import eventually

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=["aiohttp", "fastpath"])
def aiohttp_client(request: pytest.FixtureRequest, aiohttp_client: Any) -> Any:
    """Every test here runs twice: through aiohttp's server, and through the router's fast path
    (router.transport.http_server) as `python -m router` serves."""
    if request.param == "aiohttp":
        return aiohttp_client

    async def through_fast_path(app: Any, **kwargs: Any) -> Any:
        return await aiohttp_client(FastPathTestServer(app), **kwargs)

    return through_fast_path


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []

    def observe(self, experiment: str, variant: str, latency_s: float, ok: bool) -> None:
        assert latency_s >= 0
        self.calls.append((experiment, variant, ok))


async def router_for(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes, patch: Optional[dict[str, Any]] = None
) -> TestClient:
    raw = registry(tmp_path / "logs", [url_of(fakes["v1"][1])], [url_of(fakes["v2"][1])], patch)
    app = build_app(raw)
    app[OBSERVER] = Recorder()
    client: TestClient = await aiohttp_client(app)
    return client


async def post(client: TestClient, unit: Optional[str], body: Any = None, **headers: str) -> Any:
    if unit is not None:
        headers["X-User-Id"] = unit
    data = body if isinstance(body, bytes) else json.dumps(body or DEMO_BODY).encode()
    return await client.post("/sentiment/prediction", data=data, headers=headers)


async def test_body_goes_through_unchanged_and_reply_gains_experiment(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    client = await router_for(aiohttp_client, tmp_path, fakes)
    # odd spacing, key order and unicode must all survive byte for byte
    body = b'{ "value":["[[1,2]]"] ,"key":["x"], "note":"\xe4\xb8\xad" }'
    unit = unit_in("treatment")
    response = await post(client, unit, body, **{"Content-Type": "text/plain"})
    assert response.status == 200
    reply = await response.json()
    assert reply["value"][1:] == ["v2", hashlib.sha256(body).hexdigest()]
    assert reply["experiment"] == {
        "name": "sentiment", "group": "treatment", "version": "new_v2",
        "enrolled": True, "fallback": False,
    }  # fmt: skip
    assert response.headers["X-Experiment"] == "sentiment"
    assert response.headers["X-Variant"] == "treatment"
    assert response.headers["X-Model-Version"] == "new_v2"
    received = fakes["v2"][0].received[-1]
    assert (received.path, received.body) == ("/sentiment/prediction", body)
    assert received.headers["Content-Type"] == "text/plain"


async def test_backend_path_override(aiohttp_client: Any, tmp_path: Path, fakes: Fakes) -> None:
    patch = {"backends": {"v1": {"path": "/legacy/prediction"}}}
    client = await router_for(aiohttp_client, tmp_path, fakes, patch)
    assert (await post(client, unit_in("control"))).status == 200
    assert fakes["v1"][0].received[-1].path == "/legacy/prediction"


async def test_unit_from_json_field_and_no_unit(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    client = await router_for(aiohttp_client, tmp_path, fakes)
    unit = unit_in("treatment")
    reply = await (await post(client, None, {**DEMO_BODY, "user_id": unit})).json()
    assert (reply["experiment"]["group"], reply["experiment"]["enrolled"]) == ("treatment", True)
    reply = await (await post(client, None)).json()
    assert reply["experiment"]["group"] == "control"
    assert reply["experiment"]["enrolled"] is False
    assert reply["value"][1] == "v1"


async def test_same_unit_same_variant(aiohttp_client: Any, tmp_path: Path, fakes: Fakes) -> None:
    client = await router_for(aiohttp_client, tmp_path, fakes)
    for index in range(40):
        unit = f"u-{index}"
        variants = {(await post(client, unit)).headers["X-Variant"] for _ in range(3)}
        assert len(variants) == 1


FAULTS = ["err_no", "not_json", "http_500", "json_array", "slow", "refused"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_treatment_failure_falls_back_to_control(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes, fault: str
) -> None:
    patch: dict[str, Any] = {}
    if fault == "refused":
        patch = {"backends": {"v2": {"endpoints": [closed_port_url()]}}}
    else:
        fakes["v2"][0].mode = fault  # type: ignore[assignment]
        fakes["v2"][0].delay_s = 1.0
    client = await router_for(aiohttp_client, tmp_path, fakes, patch)
    unit = unit_in("treatment")
    response = await post(client, unit, **{"X-City": "beijing"})
    assert response.status == 200
    reply = await response.json()
    assert reply["value"][1] == "v1"
    assert reply["experiment"]["group"] == "treatment"
    assert reply["experiment"]["fallback"] is True
    assert reply["experiment"]["version"] == "legacy_v1"
    assert response.headers["X-Variant"] == "treatment"
    assert response.headers["X-Model-Version"] == "legacy_v1"

    app = client.app
    assert app is not None
    [record] = exposures(app)
    assert record["assigned"] == "treatment" and record["served"] == "control"
    assert record["fallback"] is True and record["status"] == 200
    assert record["error"] and record["error"].startswith("v2: ")
    assert record["city"] == "beijing"
    assert metric(app, "router_fallbacks_total", experiment="sentiment") == 1
    assert (
        metric(
            app,
            "router_requests_total",
            experiment="sentiment",
            variant="treatment",
            outcome="fallback",
        )
        == 1
    )
    outcome = "timeout" if fault == "slow" else "error"
    assert metric(app, "router_backend_requests_total", backend="v2", outcome=outcome) == 1
    observer = app[OBSERVER]
    assert isinstance(observer, Recorder)
    assert observer.calls == [("sentiment", "treatment", False), ("sentiment", "control", True)]


@pytest.mark.parametrize("fault", [f for f in FAULTS if f != "refused"])
async def test_failure_on_a_kept_alive_connection_falls_back_too(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes, fault: str
) -> None:
    """The second call goes out at once on the idle connection the first left (no Task); its
    failure still ends in control's answer."""
    client = await router_for(aiohttp_client, tmp_path, fakes)
    unit = unit_in("treatment")
    first = await (await post(client, unit)).json()
    assert first["experiment"]["fallback"] is False and first["value"][1] == "v2"
    fakes["v2"][0].mode = fault  # type: ignore[assignment]
    fakes["v2"][0].delay_s = 1.0
    response = await post(client, unit)
    assert response.status == 200
    reply = await response.json()
    assert reply["value"][1] == "v1" and reply["experiment"]["fallback"] is True
    app = client.app
    assert app is not None
    assert [r["served"] for r in exposures(app)] == ["treatment", "control"]


async def test_no_fallback_when_disabled(aiohttp_client: Any, tmp_path: Path, fakes: Fakes) -> None:
    fakes["v2"][0].mode = "err_no"
    patch = {"experiments": {"sentiment": {"fallback": "none"}}}
    client = await router_for(aiohttp_client, tmp_path, fakes, patch)
    response = await post(client, unit_in("treatment"))
    assert response.status == 502
    body = await response.json()
    assert body["code"] == "backend_unavailable"
    assert "err_no 10000" in body["error"]
    assert fakes["v1"][0].received == []


async def test_control_failure_is_502_and_timeout_504(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    client = await router_for(aiohttp_client, tmp_path, fakes)
    control_unit = unit_in("control")
    fakes["v1"][0].mode = "http_500"
    response = await post(client, control_unit)
    assert (response.status, (await response.json())["code"]) == (502, "backend_unavailable")
    fakes["v1"][0].mode, fakes["v1"][0].delay_s = "slow", 1.0
    response = await post(client, control_unit)
    assert (response.status, (await response.json())["code"]) == (504, "backend_timeout")
    # control never falls back to the treatment: that would mix the arms
    assert fakes["v2"][0].received == []
    app = client.app
    assert app is not None
    records = exposures(app)
    assert [r["status"] for r in records] == [502, 504]
    assert all(r["served"] is None and r["model_version"] is None for r in records)
    assert (
        metric(
            app, "router_requests_total", experiment="sentiment", variant="control", outcome="error"
        )
        == 2
    )


async def test_both_failing_is_502(aiohttp_client: Any, tmp_path: Path, fakes: Fakes) -> None:
    fakes["v1"][0].mode = "not_json"
    fakes["v2"][0].mode = "err_no"
    client = await router_for(aiohttp_client, tmp_path, fakes)
    response = await post(client, unit_in("treatment"))
    assert response.status == 502
    body = await response.json()
    assert body["experiment"]["group"] == "treatment"
    assert "v2: " in body["error"] and "v1: " in body["error"]


async def test_round_robin_ejection_and_probe_back(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    good, flaky = fakes["v2"][0], fakes["v2b"][0]
    patch = {
        "backends": {
            "v2": {
                "endpoints": [url_of(fakes["v2"][1]), url_of(fakes["v2b"][1])],
                "eject_after": 2,
                "probe_interval": "200ms",
            }
        }
    }
    client = await router_for(aiohttp_client, tmp_path, fakes, patch)
    app = client.app
    assert app is not None
    unit = unit_in("treatment")
    for _ in range(4):
        assert (await post(client, unit)).status == 200
    assert (len(good.received), len(flaky.received)) == (2, 2)  # round robin

    flaky.mode = "http_500"
    for _ in range(6):
        reply = await (await post(client, unit)).json()
        assert reply["experiment"]["fallback"] in (False, True)
    # round robin sent it requests 6 and 8; the second failure ejected it
    assert len(flaky.received) == 4
    flaky_url = url_of(fakes["v2b"][1])
    assert metric(app, "router_endpoint_up", backend="v2", endpoint=flaky_url) == 0
    calls_while_ejected = len(flaky.received)
    for _ in range(4):
        reply = await (await post(client, unit)).json()
        assert reply["experiment"]["fallback"] is False and reply["value"][1] == "v2"

    flaky.mode = "ok"
    # the prober replays the last good request every 200 ms
    await eventually(lambda: metric(app, "router_endpoint_up", backend="v2", endpoint=flaky_url))
    assert len(flaky.received) > calls_while_ejected
    before = len(flaky.received)
    for _ in range(4):
        await post(client, unit)
    assert len(flaky.received) == before + 2


async def test_router_errors_are_json(aiohttp_client: Any, tmp_path: Path, fakes: Fakes) -> None:
    patch = {"router": {"max_body_bytes": 1024}}
    client = await router_for(aiohttp_client, tmp_path, fakes, patch)
    cases = [
        (await client.post("/nowhere", data=b"{}"), 404, "not_found"),
        (await client.get("/sentiment/prediction"), 405, "method_not_allowed"),
        (await client.post("/metrics"), 405, "method_not_allowed"),
        (await post(client, "u", b"not json"), 400, "bad_body"),
        (await post(client, "u", b"[1, 2]"), 400, "bad_body"),
        (await post(client, "u", b'{"key": "' + b"x" * 2000 + b'"}'), 413, "body_too_large"),
    ]
    for response, status, code in cases:
        assert response.status == status
        assert response.headers["Content-Type"] == "application/json"
        body = await response.json()
        assert body["code"] == code and body["error"]
    assert cases[1][0].headers["Allow"] == "POST"
    assert fakes["v1"][0].received == [] and fakes["v2"][0].received == []


async def test_exposure_record_fields(aiohttp_client: Any, tmp_path: Path, fakes: Fakes) -> None:
    client = await router_for(aiohttp_client, tmp_path, fakes)
    await post(client, "alice", **{"X-City": "shanghai", "X-Request-Id": "req-1"})
    await post(client, None)
    app = client.app
    assert app is not None
    first, anonymous = exposures(app)
    assert set(first) == EXPOSURE_FIELDS | {"city"}
    assert first["request_id"] == "req-1"
    assert first["unit"] == "alice" and first["enrolled"] is True
    assert first["city"] == "shanghai" and anonymous["city"] is None
    assert first["ts"].endswith("Z") and first["latency_ms"] > 0
    assert anonymous["unit"] is None and anonymous["enrolled"] is False
    assert anonymous["assigned"] == "control"


async def test_attributes_are_cut_at_the_configured_length(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    client = await router_for(
        aiohttp_client, tmp_path, fakes, {"router": {"max_attribute_chars": 5}}
    )
    await post(client, "alice", **{"X-City": "amsterdam"})
    app = client.app
    assert app is not None
    [record] = exposures(app)
    assert (record["city"], record["truncated"]) == ("amste", ["city"])


async def test_hashed_unit_ids(aiohttp_client: Any, tmp_path: Path, fakes: Fakes) -> None:
    client = await router_for(aiohttp_client, tmp_path, fakes, {"router": {"hash_unit_ids": True}})
    await post(client, "alice")
    app = client.app
    assert app is not None
    [record] = exposures(app)
    assert record["unit"] == hashlib.sha256(b"alice").hexdigest()[:32]


async def test_shadow_mode_serves_control_and_mirrors_treatment_units(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    client = await router_for(
        aiohttp_client, tmp_path, fakes, {"experiments": {"sentiment": {"mode": "shadow"}}}
    )
    treatment_unit, control_unit = unit_in("treatment"), unit_in("control")
    for unit in (treatment_unit, control_unit):
        reply = await (await post(client, unit)).json()
        assert reply["value"][1] == "v1"
        assert reply["experiment"]["group"] == "control"
    await eventually(lambda: fakes["v2"][0].received)
    assert len(fakes["v2"][0].received) == 1  # only the treatment unit's copy
    app = client.app
    assert app is not None
    observer = app[OBSERVER]
    assert isinstance(observer, Recorder)
    assert ("sentiment", "treatment", True) in observer.calls


async def test_shadow_listener_gets_both_answers(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    compared: list[tuple[str, str, Any, Any]] = []

    class Listener:
        def shadow_answered(self, experiment: str, variant: str, control: Any, shadow: Any) -> None:
            compared.append((experiment, variant, control, shadow))

        def shadow_dropped(self, experiment: str, variant: str) -> None:
            raise AssertionError("no copy is dropped here")

    raw = registry(
        tmp_path / "logs",
        [url_of(fakes["v1"][1])],
        [url_of(fakes["v2"][1])],
        {"experiments": {"sentiment": {"mode": "shadow"}}},
    )
    app = build_app(raw)
    app[SHADOW_LISTENER] = Listener()
    client: TestClient = await aiohttp_client(app)
    await post(client, unit_in("treatment"))
    fakes["v2"][0].mode = "err_no"
    await post(client, unit_in("treatment", start=10_000))
    await eventually(lambda: len(compared) == 2)
    (name, variant, control, shadow), (_, _, control_2, failed) = compared
    assert (name, variant) == ("sentiment", "treatment")
    assert control["value"][1] == "v1" and shadow["value"][1] == "v2"
    assert control_2["value"][1] == "v1" and failed is None


async def test_multi_arm_routes_by_variant(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    patch = {
        "experiments": {
            "sentiment": {
                "control": None, "treatment": None, "traffic": None,
                "variants": [
                    {"name": "base", "backend": "v1", "weight": 50},
                    {"name": "wide", "backend": "v2", "weight": 25},
                    {"name": "deep", "backend": "v2", "weight": 25},
                ],
            }
        }
    }  # fmt: skip
    client = await router_for(aiohttp_client, tmp_path, fakes, patch)
    seen = {}
    for index in range(60):
        response = await post(client, f"m-{index}")
        seen[response.headers["X-Variant"]] = (await response.json())["value"][1]
    assert seen == {"base": "v1", "wide": "v2", "deep": "v2"}


async def test_status_endpoints(aiohttp_client: Any, tmp_path: Path, fakes: Fakes) -> None:
    patch = {"backends": {"v1": {"endpoints": [closed_port_url()], "eject_after": 1}}}
    client = await router_for(aiohttp_client, tmp_path, fakes, patch)
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    await post(client, unit_in("control"))  # control refuses: its only endpoint is ejected
    response = await client.get("/readyz")
    assert response.status == 503
    assert "v1" in (await response.json())["error"]

    state = await (await client.get("/experiments")).json()
    sentiment = state["experiments"]["sentiment"]
    assert (sentiment["traffic"], sentiment["route"]) == (50, "/sentiment/prediction")
    assert [arm["name"] for arm in sentiment["arms"]] == ["control", "treatment"]
    assert state["backends"]["v1"]["endpoints"][0]["up"] is False
    assert state["config"]["last_reload"]["ok"] is True

    text = await (await client.get("/metrics")).text()
    for name in (
        "router_requests_total", "router_request_duration_seconds_bucket",
        "router_backend_requests_total", "router_backend_duration_seconds_bucket",
        "router_endpoint_up", "router_config_last_reload_success",
        "router_traffic_percent",
    ):  # fmt: skip
        assert f"\n{name}{{" in text or f"\n{name} " in text, name
    app = client.app
    assert app is not None
    assert metric(app, "router_traffic_percent", experiment="sentiment") == 50


async def test_a_failing_log_disk_never_fails_requests(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the log directory should be")
    raw = registry(blocker / "logs", [url_of(fakes["v1"][1])], [url_of(fakes["v2"][1])])
    app = build_app(raw)
    client: TestClient = await aiohttp_client(app)
    for index in range(5):
        assert (await post(client, f"u{index}")).status == 200
    assert (await client.post("/events", json={"unit_id": "u", "metric": "m"})).status == 202
    exposures(app)  # flushes: the writes fail and are counted
    await eventually(lambda: metric(app, "router_events_dropped_total", log="exposures") >= 5)
    assert metric(app, "router_events_dropped_total", log="exposures") == 5
    app[EVENT_LOGS].outcomes.flush()
    assert metric(app, "router_events_dropped_total", log="outcomes") == 1
