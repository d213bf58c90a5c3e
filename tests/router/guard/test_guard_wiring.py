"""The guard wired into the app, in process: start records, checks acting on the request path,
reloads through the guard, saved state, shadow comparison, the last round at shutdown."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

import router.proxy.handler
from router.guard.runtime import GuardRuntime, GuardSetup
from router.records.jsonl import JsonlWriter, single_file
from router.registry.loading import parse_config
from tests.router.fakes import Fakes, url_of
from tests.router.guard.inprocess import (
    AUTH,
    FAST_SLO,
    drive,
    guarded_registry,
    read_jsonl,
    slow,
    start_guarded,
)
from tests.router.harness import metric, unit_in
from tests.support import eventually

pytestmark = pytest.mark.asyncio


def urls(fakes: Fakes) -> tuple[str, str]:
    return url_of(fakes["v1"][1]), url_of(fakes["v2"][1])


async def test_start_writes_one_config_record_and_saves_the_state(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    raw = guarded_registry(
        tmp_path, *urls(fakes), {"experiments": {"sentiment": {"slo": FAST_SLO}}}
    )
    guarded = await start_guarded(aiohttp_client, tmp_path, raw)
    await eventually(lambda: (guarded.state_dir / "sentiment.json").exists())
    await eventually(lambda: guarded.decisions())
    first = guarded.decisions()[0]
    assert (first["action"], first["actor"], first["status"]) == ("none", "config", "running")
    assert first["reason"].startswith("router started")
    assert guarded.saved_state()["status"] == "running"
    state = await guarded.state()
    assert state["traffic"] == 50 and state["status"] == "running"
    assert state["last_decision"]["actor"] in ("config", "slo")
    assert state["slo"]["thresholds"] == {"min_samples": 3, "p99_ms": 100.0, "error_rate": 0.2}


async def test_a_slow_treatment_is_rolled_back_and_its_units_get_control(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    raw = guarded_registry(
        tmp_path, *urls(fakes), {"experiments": {"sentiment": {"slo": FAST_SLO}}}
    )
    guarded = await start_guarded(aiohttp_client, tmp_path, raw)
    treated = [unit_in("treatment", start=i * 1000) for i in range(4)]
    await drive(guarded, treated, 0.6)
    slow(fakes["v2"][0], 0.15)  # p99 150 ms > 100 ms

    async def rolled_back() -> bool:
        replies = await asyncio.gather(*(guarded.predict(unit) for unit in treated))
        assert all(reply.status == 200 for reply in replies)
        return bool((await guarded.state())["status"] == "rolled_back")

    await eventually(rolled_back)

    def rollbacks() -> list[dict[str, Any]]:
        return [d for d in guarded.decisions() if d["action"] == "rollback"]

    await eventually(rollbacks)
    [record] = rollbacks()
    assert record["actor"] == "slo" and record["check"] == "fail"
    assert record["traffic"] == 0 and record["previous_traffic"] == 50
    assert record["measured"]["p99_ms"] > 100 and record["thresholds"]["p99_ms"] == 100
    await eventually(lambda: guarded.saved_state()["status"] == "rolled_back")
    for unit in treated:
        body = await (await guarded.predict(unit)).json()
        assert body["experiment"]["group"] == "control"
        assert body["experiment"]["fallback"] is False and body["experiment"]["enrolled"] is True
    assert metric(guarded.app, "router_experiment_status", experiment="sentiment") == 2
    assert metric(guarded.app, "router_traffic_percent", experiment="sentiment") == 0
    assert (
        metric(
            guarded.app,
            "router_decisions_total",
            experiment="sentiment",
            action="rollback",
            actor="slo",
        )
        == 1
    )


async def test_reloads_go_through_the_guard(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    raw = guarded_registry(tmp_path, *urls(fakes))
    guarded = await start_guarded(aiohttp_client, tmp_path, raw)
    guarded.edit({"experiments": {"sentiment": {"traffic": 60}}})
    await eventually(lambda: [d for d in guarded.decisions() if d["actor"] == "config"][1:])
    edit = guarded.decisions()[-1]
    # The guard's record (with the status), not the reloader's own.
    assert (edit["action"], edit["traffic"], edit["previous_traffic"]) == ("advance", 60, 50)
    assert edit["status"] == "running" and "edited" in edit["reason"]
    await eventually(lambda: guarded.saved_state()["configured_traffic"] == 60)

    # While rolled back an edit is kept for the resume; the traffic in force stays 0.
    assert (await guarded.admin("rollback", headers=AUTH)).status == 200
    guarded.edit({"experiments": {"sentiment": {"traffic": 70}}})
    await eventually(lambda: guarded.decisions()[-1].get("configured_traffic") == 70)
    assert guarded.decisions()[-1]["traffic"] == 0
    assert (await guarded.state())["traffic"] == 0
    assert (await guarded.state())["configured_traffic"] == 70
    resumed = await (await guarded.admin("resume", headers=AUTH)).json()
    assert resumed["experiment"]["traffic"] == 70

    # A new revision starts afresh.
    assert (await guarded.admin("rollback", headers=AUTH)).status == 200
    guarded.edit({"experiments": {"sentiment": {"revision": 2}}})
    await eventually(lambda: guarded.decisions()[-1].get("revision") == 2)
    assert guarded.decisions()[-1]["action"] == "resume"
    assert (await guarded.state())["status"] == "running"
    await eventually(lambda: guarded.saved_state()["revision"] == 2)


def answering(value: str) -> web.Application:
    """A pipeline fake whose every answer is `value` as the first fetch value."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"err_no": 0, "err_msg": "", "key": ["prob"], "value": [value]})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handle)
    return app


async def test_shadow_answers_are_compared_and_counted(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    other = TestServer(answering("[[0.8, 0.2]]"), host="127.0.0.1")
    await other.start_server()
    try:
        slo = {**FAST_SLO, "window": "10s", "min_samples": 1000}  # checked, never acting
        patch = {
            "backends": {"v3": {"endpoints": [url_of(other)], "version": "other_v3"}},
            "experiments": {"sentiment": {"mode": "shadow", "traffic": 100, "slo": slo}},
        }
        raw = guarded_registry(tmp_path, *urls(fakes), patch)
        guarded = await start_guarded(aiohttp_client, tmp_path, raw)
        units = [f"shadow-{i}" for i in range(6)]
        for unit in units:
            reply = await guarded.predict(unit)
            body = await reply.json()
            assert "value" in body, (reply.status, body)  # the router's own answer, if not
            assert body["value"][1] == "v1" and body["experiment"]["group"] == "control"
        app = guarded.app

        def agreed() -> bool:
            return metric(app, "router_shadow_agreement_total", agree="true") == len(units)

        await eventually(agreed)
        assert metric(app, "router_shadow_requests_total", outcome="ok") == len(units)

        # The candidate disagrees: a treatment answering the other class.
        guarded.edit({"experiments": {"sentiment": {"treatment": "v3"}}})
        await eventually(lambda: metric(app, "router_config_reloads_total", result="ok") >= 1)
        for unit in units[:2]:
            assert (await guarded.predict(unit)).status == 200
        await eventually(lambda: metric(app, "router_shadow_agreement_total", agree="false") == 2)

        async def measured() -> bool:
            variants = (await guarded.state())["slo"]["variants"]
            return bool(variants["treatment"]["measured"].get("compared") == len(units) + 2)

        await eventually(measured)
        treatment = (await guarded.state())["slo"]["variants"]["treatment"]["measured"]
        assert treatment["agreement_rate"] == len(units) / (len(units) + 2)

        # A failing copy is an error, never the user's problem.
        guarded.edit({"experiments": {"sentiment": {"treatment": "v2"}}})
        await eventually(lambda: metric(app, "router_config_reloads_total", result="ok") >= 2)
        fakes["v2"][0].mode = "err_no"
        assert (await guarded.predict(units[0])).status == 200
        await eventually(lambda: metric(app, "router_shadow_requests_total", outcome="error") == 1)
    finally:
        await other.close()


async def test_copies_dropped_when_saturated_are_counted(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router.proxy.handler, "MAX_SHADOW_IN_FLIGHT", 1)
    patch = {"experiments": {"sentiment": {"mode": "shadow", "traffic": 100}}}
    guarded = await start_guarded(
        aiohttp_client, tmp_path, guarded_registry(tmp_path, *urls(fakes), patch)
    )
    slow(fakes["v2"][0], 0.25)  # the one copy in flight holds its place
    replies = await asyncio.gather(*(guarded.predict(f"u{i}") for i in range(4)))
    assert all(reply.status == 200 for reply in replies)
    app = guarded.app
    assert metric(app, "router_shadow_requests_total", outcome="dropped") == 3
    assert metric(app, "router_shadow_skipped_total", experiment="sentiment") == 3
    await eventually(lambda: metric(app, "router_shadow_requests_total", outcome="ok") == 1)


async def test_stop_runs_a_last_round(tmp_path: Path) -> None:
    raw = guarded_registry(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9")
    config = parse_config(raw)
    setup = await GuardSetup.load(config)
    decisions = JsonlWriter(single_file(tmp_path / "decisions.jsonl"), flush_interval=60)
    decisions.start()
    runtime = GuardRuntime(setup, decisions, CollectorRegistry())
    runtime.start()
    # Changed behind the task's back, just before the stop: only the last round can save it.
    runtime.guard.pause("sentiment")
    await runtime.stop()
    await asyncio.get_running_loop().run_in_executor(None, decisions.close)
    saved = json.loads((tmp_path / "state" / "sentiment.json").read_text())
    assert saved["state"]["status"] == "paused"
    [start] = read_jsonl(tmp_path / "decisions.jsonl")
    assert (start["actor"], start["action"]) == ("config", "none")
