"""Whose fault is an error: bad input is the client's, as control judges it (in process).

The backends are small fakes of a one-feed model: a request whose feed name is not the model's
is answered with the documented bad-input `err_no`, as the serving op does
(serving.pipeline_service; tests/serving/test_pipeline_server.py checks the real server).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from router.app import OBSERVER, PROXY, SHADOW_LISTENER, UPSTREAMS
from router.proxy.upstreams import BAD_INPUT_ERR_NO
from tests.router.harness import FastPathTestServer, build_app, exposures, metric, registry, unit_in
from tests.support import eventually

pytestmark = pytest.mark.asyncio

GOOD = {"key": ["x"], "value": ["[[1, 2, 3]]"]}  # the feed both models take, unless told
BAD = {"key": ["y"], "value": ["[[1]]"]}  # a feed no model here takes


@pytest.fixture(params=["aiohttp", "fastpath"])
def aiohttp_client(request: pytest.FixtureRequest, aiohttp_client: Any) -> Any:
    """Through aiohttp's server and through the router's fast path (the usual request runs
    from the backend connection's callback there)."""
    if request.param == "aiohttp":
        return aiohttp_client

    async def through_fast_path(app: Any, **kwargs: Any) -> Any:
        return await aiohttp_client(FastPathTestServer(app), **kwargs)

    return through_fast_path


@dataclass
class Model:
    """A pipeline server for a model with one feed, `feed`; any other feed is bad input.
    `broken`: every call is an HTTP 500."""

    name: str
    feed: str = "x"
    broken: bool = False
    received: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received += 1
        if self.broken:
            return web.Response(status=500, text="internal error")
        if body.get("key") != [self.feed]:
            message = f"unknown feed(s) {body.get('key')}; {self.name} takes ['{self.feed}']"
            reply: dict[str, Any] = {"err_no": BAD_INPUT_ERR_NO, "err_msg": message}
        else:
            reply = {"err_no": 0, "err_msg": "", "key": ["prob"], "value": ["[[0.1, 0.9]]"]}
        return web.Response(text=json.dumps(reply), content_type="application/json")


@dataclass
class Models:
    control: Model
    treatment: Model
    urls: tuple[str, str]


@pytest_asyncio.fixture
async def models() -> AsyncIterator[Models]:
    started = []
    for model in (Model("v1"), Model("v2")):
        app = web.Application()
        app.router.add_route("POST", "/{path:.*}", model.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        started.append((model, server))
    (control, one), (treatment, two) = started
    yield Models(
        control, treatment, (f"http://127.0.0.1:{one.port}", f"http://127.0.0.1:{two.port}")
    )
    for _, server in started:
        await server.close()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def observe(self, experiment: str, variant: str, latency_s: float, ok: bool) -> None:
        self.calls.append((variant, ok))


class Listener:
    def __init__(self) -> None:
        self.answered: list[tuple[Any, Any]] = []

    def shadow_answered(self, experiment: str, variant: str, control: Any, shadow: Any) -> None:
        self.answered.append((control, shadow))

    def shadow_dropped(self, experiment: str, variant: str) -> None:
        raise AssertionError("no copy is dropped here")


async def start(
    aiohttp_client: Any, tmp_path: Path, models: Models, patch: Optional[dict[str, Any]] = None
) -> tuple[TestClient, web.Application]:
    # eject_after 1: were bad input a transport failure, one call would eject the endpoint.
    patch = {"backends": {"v1": {"eject_after": 1}, "v2": {"eject_after": 1}}, **(patch or {})}
    raw = registry(tmp_path / "logs", [models.urls[0]], [models.urls[1]], patch)
    app = build_app(raw)
    app[OBSERVER] = Recorder()
    app[SHADOW_LISTENER] = Listener()
    client: TestClient = await aiohttp_client(app)
    return client, app


async def post(client: TestClient, unit: str, body: dict[str, Any]) -> Any:
    return await client.post(
        "/sentiment/prediction", data=json.dumps(body).encode(), headers={"X-User-Id": unit}
    )


def observed(app: web.Application) -> list[tuple[str, bool]]:
    app[PROXY].settle()
    observer = app[OBSERVER]
    assert isinstance(observer, Recorder)
    return observer.calls


def requests(app: web.Application, outcome: str, variant: str = "treatment") -> float:
    return metric(
        app, "router_requests_total", experiment="sentiment", variant=variant, outcome=outcome
    )


@pytest.mark.parametrize("arm", ["treatment", "control"])
async def test_input_control_rejects_is_a_400_that_counts_against_no_arm(
    aiohttp_client: Any, tmp_path: Path, models: Models, arm: str
) -> None:
    client, app = await start(aiohttp_client, tmp_path, models)
    unit = unit_in(arm)
    for _ in range(5):
        response = await post(client, unit, BAD)
        assert response.status == 400
        body = await response.json()
        assert body["code"] == "bad_input"
        assert body["error"] == "unknown feed(s) ['y']; v1 takes ['x']"  # control's message
        assert body["experiment"]["group"] == arm and body["experiment"]["fallback"] is False
        assert response.headers["X-Variant"] == arm
        assert body["request_id"] == response.headers["X-Request-Id"]
    assert models.control.received == 5
    assert models.treatment.received == (5 if arm == "treatment" else 0)

    assert observed(app) == []  # the guard sees nothing: no arm failed
    records = exposures(app)
    assert [r["status"] for r in records] == [400] * 5
    assert all(r["error"].startswith("bad_input; ") and r["served"] is None for r in records)
    assert requests(app, "bad_input", arm) == 5 and requests(app, "error", arm) == 0
    assert metric(app, "router_backend_requests_total", backend="v1", outcome="bad_input") == 5
    assert metric(app, "router_backend_requests_total", backend="v1", outcome="error") == 0
    # Bad input proves an endpoint alive: nothing is ejected (eject_after is 1 here).
    assert all(e.up for b in app[UPSTREAMS].current.values() for e in b.endpoints)
    # ...and good input is served as before.
    assert (await post(client, unit, GOOD)).status == 200


async def test_input_only_the_treatment_rejects_is_the_treatments_failure(
    aiohttp_client: Any, tmp_path: Path, models: Models
) -> None:
    models.treatment.feed = "tokens"  # the treatment takes another feed than control
    client, app = await start(aiohttp_client, tmp_path, models)
    response = await post(client, unit_in("treatment"), GOOD)
    assert response.status == 200
    reply = await response.json()
    assert reply["experiment"]["fallback"] is True and reply["experiment"]["version"] == "legacy_v1"
    assert observed(app) == [("treatment", False), ("control", True)]
    [record] = exposures(app)
    assert record["status"] == 200 and record["error"].startswith("v2: err_no 51: ")
    assert requests(app, "fallback") == 1


async def test_with_fallback_none_control_still_judges_the_input(
    aiohttp_client: Any, tmp_path: Path, models: Models
) -> None:
    models.treatment.feed = "tokens"
    patch = {"experiments": {"sentiment": {"fallback": "none"}}}
    client, app = await start(aiohttp_client, tmp_path, models, patch)
    unit = unit_in("treatment")
    # Both reject it: the client's error.
    response = await post(client, unit, BAD)
    assert (response.status, (await response.json())["code"]) == (400, "bad_input")
    assert observed(app) == []
    # Only the treatment rejects it: the treatment's failure, and control's answer is not served.
    response = await post(client, unit, GOOD)
    assert (response.status, (await response.json())["code"]) == (502, "backend_unavailable")
    assert observed(app) == [("treatment", False)]
    assert models.control.received == 2


async def test_whatever_the_treatment_did_with_input_control_rejects_counts_for_nothing(
    aiohttp_client: Any, tmp_path: Path, models: Models
) -> None:
    models.treatment.broken = True
    client, app = await start(aiohttp_client, tmp_path, models)
    response = await post(client, unit_in("treatment"), BAD)
    assert (response.status, (await response.json())["code"]) == (400, "bad_input")
    assert observed(app) == []


async def test_bad_input_blames_nobody_when_control_cannot_judge(
    aiohttp_client: Any, tmp_path: Path, models: Models
) -> None:
    models.control.broken = True
    client, app = await start(aiohttp_client, tmp_path, models)
    response = await post(client, unit_in("treatment"), BAD)
    assert (response.status, (await response.json())["code"]) == (502, "backend_unavailable")
    assert observed(app) == [("control", False)]  # control's own failure only


async def test_shadow_copy_of_bad_input_is_no_failure_of_the_treatment(
    aiohttp_client: Any, tmp_path: Path, models: Models
) -> None:
    client, app = await start(
        aiohttp_client, tmp_path, models, {"experiments": {"sentiment": {"mode": "shadow"}}}
    )
    listener = app[SHADOW_LISTENER]
    assert isinstance(listener, Listener)
    unit = unit_in("treatment")
    response = await post(client, unit, BAD)
    assert (response.status, (await response.json())["code"]) == (400, "bad_input")
    await eventually(lambda: models.treatment.received == 1 and not app[PROXY]._shadows)
    assert observed(app) == [] and listener.answered == []

    # Input only the treatment rejects: its copy failed, against the treatment.
    models.treatment.feed = "tokens"
    response = await post(client, unit, GOOD)
    assert response.status == 200
    await eventually(lambda: models.treatment.received == 2 and not app[PROXY]._shadows)
    assert sorted(observed(app)) == [("control", True), ("treatment", False)]
    [(control, shadow)] = listener.answered
    assert control["err_no"] == 0 and shadow is None
