"""Hot reload in process: file edits take effect within a second; bad edits change nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_asyncio
import yaml
from aiohttp.test_utils import TestClient

import router.proxy.reload
from router.app import ON_RELOAD, create_app
from router.registry.loading import load_config
from router.registry.schema import RouterConfig
from tests.router.data import merge_patch
from tests.router.fakes import FakePipeline, start_fake, url_of
from tests.router.harness import DEMO_BODY, decisions, metric, registry, unit_in
from tests.support import eventually

pytestmark = pytest.mark.asyncio


class Setup:
    def __init__(self, path: Path, raw: dict[str, Any], client: TestClient, fake: FakePipeline):
        self.path, self.raw, self.client, self.fake = path, raw, client, fake

    def write(self, patch: dict[str, Any]) -> None:
        self.raw = merge_patch(self.raw, patch)
        self.path.write_text(yaml.safe_dump(self.raw))

    async def state(self) -> dict[str, Any]:
        reply: dict[str, Any] = await (await self.client.get("/experiments")).json()
        return reply

    async def wait_for(self, check: Any, timeout: float = 5.0) -> float:
        """Seconds until `check(state)` held; fails after `timeout`."""
        started = time.monotonic()

        async def holds() -> bool:
            return bool(check(await self.state()))

        await eventually(holds, timeout, interval=0.02)
        return time.monotonic() - started


HOOK_CALLS: list[tuple[float, float]] = []


def custom_hook(old: RouterConfig, new: RouterConfig) -> list[dict[str, Any]]:
    before, after = old.experiments["sentiment"], new.experiments["sentiment"]
    HOOK_CALLS.append((before.configured_traffic(), after.configured_traffic()))
    return [{"experiment": "sentiment", "actor": "guard", "action": "none"}]


@pytest_asyncio.fixture
async def setup(
    aiohttp_client: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Setup]:
    fake, server = await start_fake("both")
    raw = registry(tmp_path / "logs", [url_of(server)], [url_of(server)])
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump(raw))
    app = create_app(load_config(path), path, flush_interval=0.02)
    # parametrize("setup", [hook], indirect=True) installs a reload hook
    app[ON_RELOAD] = getattr(request, "param", None)
    client = await aiohttp_client(app)
    yield Setup(path, raw, client, fake)
    await server.close()


def traffic_is(value: float) -> Any:
    return lambda state: state["experiments"]["sentiment"]["traffic"] == value


def reload_failed(state: dict[str, Any]) -> bool:
    return state["config"]["last_reload"]["ok"] is False


async def test_edit_takes_effect_within_a_second(setup: Setup) -> None:
    setup.write({"experiments": {"sentiment": {"traffic": 60}}})
    assert await setup.wait_for(traffic_is(60)) < 1.0
    app = setup.client.app
    assert app is not None
    assert metric(app, "router_config_reloads_total", result="ok") == 1
    assert metric(app, "router_traffic_percent", experiment="sentiment") == 60
    [decision] = decisions(app)
    assert {k: decision[k] for k in ("experiment", "actor", "action", "traffic", "previous_traffic")} == {
        "experiment": "sentiment", "actor": "config", "action": "advance", "traffic": 60,
        "previous_traffic": 50,
    }  # fmt: skip
    setup.write({"experiments": {"sentiment": {"traffic": 5}}})
    await setup.wait_for(traffic_is(5))
    assert decisions(app)[-1]["action"] == "none"


@pytest.mark.parametrize("setup", [custom_hook], indirect=True)
async def test_a_reload_hook_replaces_the_config_decisions(setup: Setup) -> None:
    HOOK_CALLS.clear()
    setup.write({"experiments": {"sentiment": {"traffic": 70}}})
    await setup.wait_for(traffic_is(70))
    assert HOOK_CALLS == [(50, 70)]
    app = setup.client.app
    assert app is not None
    assert decisions(app) == [{"experiment": "sentiment", "actor": "guard", "action": "none"}]


async def test_invalid_edit_keeps_the_old_registry_serving(setup: Setup) -> None:
    setup.path.write_text(setup.path.read_text() + "\n  nonsense: [unclosed\n")
    await setup.wait_for(reload_failed)
    state = await setup.state()
    assert "invalid YAML" in state["config"]["last_reload"]["error"]
    assert state["experiments"]["sentiment"]["traffic"] == 50
    app = setup.client.app
    assert app is not None
    assert metric(app, "router_config_last_reload_success") == 0
    assert metric(app, "router_config_reloads_total", result="error") == 1
    response = await setup.client.post("/sentiment/prediction", json=DEMO_BODY)
    assert response.status == 200

    setup.write({"experiments": {"sentiment": {"traffic": 150}}})  # valid YAML, bad value
    await setup.wait_for(
        lambda s: (
            "traffic: must be between 0 and 100" in (s["config"]["last_reload"]["error"] or "")
        )
    )
    setup.write({"experiments": {"sentiment": {"traffic": 20}}})
    await setup.wait_for(traffic_is(20))
    assert metric(app, "router_config_last_reload_success") == 1


async def test_a_ramp_without_an_slo_is_refused_as_in_check(setup: Setup) -> None:
    setup.write({"experiments": {"sentiment": {"ramp": {"steps": [60, 100], "every": "1m"}}}})
    await setup.wait_for(reload_failed)
    error = (await setup.state())["config"]["last_reload"]["error"]
    assert "experiments.sentiment.slo: required with a ramp" in error
    assert (await setup.state())["experiments"]["sentiment"]["traffic"] == 50


async def test_salt_change_needs_a_new_revision(setup: Setup) -> None:
    setup.write({"experiments": {"sentiment": {"salt": "other"}}})
    await setup.wait_for(reload_failed)
    error = (await setup.state())["config"]["last_reload"]["error"]
    assert "experiments.sentiment.salt: changed while running; bump revision (now 1)" in error
    setup.write({"experiments": {"sentiment": {"revision": 2}}})
    await setup.wait_for(lambda s: s["experiments"]["sentiment"]["revision"] == 2)


async def test_arm_weights_change_needs_a_new_revision(setup: Setup) -> None:
    variants = {
        "control": None, "treatment": None, "traffic": None, "revision": 2,
        "variants": [{"name": "a", "backend": "v1", "weight": 50}, {"name": "b", "backend": "v2", "weight": 50}],
    }  # fmt: skip
    setup.write({"experiments": {"sentiment": variants}})
    await setup.wait_for(lambda s: s["experiments"]["sentiment"]["revision"] == 2)
    setup.raw["experiments"]["sentiment"]["variants"][1]["weight"] = 40
    setup.raw["experiments"]["sentiment"]["variants"][0]["weight"] = 60
    setup.write({})
    await setup.wait_for(reload_failed)
    error = (await setup.state())["config"]["last_reload"]["error"]
    assert "experiments.sentiment.variants: changed while running" in error


async def test_settings_that_need_a_restart_are_refused(setup: Setup) -> None:
    setup.write({"router": {"port": 9999}})
    await setup.wait_for(reload_failed)
    error = (await setup.state())["config"]["last_reload"]["error"]
    assert "router.port: cannot change without a restart" in error


async def test_new_routes_and_backends_appear(setup: Setup) -> None:
    _, server = await start_fake("other")
    try:
        setup.write(
            {
                "backends": {"v3": {"endpoints": [url_of(server)], "version": "v3"}},
                "experiments": {
                    "ranker": {
                        "route": "/ranker/prediction",
                        "salt": "r",
                        "control": "v3",
                        "treatment": "v2",
                        "traffic": 0,
                    }
                },
            }
        )
        await setup.wait_for(lambda s: "ranker" in s["experiments"])
        response = await setup.client.post("/ranker/prediction", json=DEMO_BODY)
        assert response.status == 200
        assert (await response.json())["value"][1] == "other"
    finally:
        await server.close()


async def test_in_flight_requests_finish_on_their_registry(setup: Setup) -> None:
    setup.fake.mode, setup.fake.delay_s = "slow", 1.0
    setup.raw["backends"]["v1"]["timeout_ms"] = 2000
    setup.raw["backends"]["v2"]["timeout_ms"] = 2000
    setup.write({})
    app = setup.client.app
    assert app is not None
    await eventually(lambda: metric(app, "router_config_reloads_total", result="ok") == 1, 5)
    headers = {"X-User-Id": unit_in("treatment")}
    setup.fake.received.clear()
    in_flight = asyncio.ensure_future(
        setup.client.post("/sentiment/prediction", json=DEMO_BODY, headers=headers)
    )
    await eventually(lambda: setup.fake.received, 5)  # the backend holds it for 1 s
    # the experiment disappears while its request is in flight
    setup.write({"experiments": {"sentiment": None}})
    await setup.wait_for(lambda s: s["experiments"] == {})
    response = await in_flight
    assert response.status == 200
    assert (await response.json())["experiment"]["group"] == "treatment"
    assert (await setup.client.post("/sentiment/prediction", json=DEMO_BODY)).status == 404


# --- the watch survives anything -------------------------------------------------------------


def replace_with(path: Path, make: Callable[[Path], object]) -> None:
    """Put what `make` creates in place of the registry in one rename, as editors save."""
    scratch = path.with_name(path.name + ".new")
    make(scratch)
    os.replace(scratch, path)


HOSTILE: dict[str, Callable[[Path], object]] = {
    "complex key": lambda p: p.write_text("? [a, b] : c\n"),
    "100k nested [": lambda p: p.write_text("[" * 100_000 + "\n"),
    "FIFO": os.mkfifo,
    "symlink to /dev/zero": lambda p: p.symlink_to("/dev/zero"),
    "2 MiB": lambda p: p.write_bytes(b"#" * (2 << 20)),
    "invalid UTF-8": lambda p: p.write_bytes(b"router: {host: \xff}\n"),
    "empty": lambda p: p.write_text(""),
}


async def test_files_the_watch_cannot_use_are_shown_and_the_next_edit_applies(
    setup: Setup,
) -> None:
    app = setup.client.app
    assert app is not None
    for index, (case, make) in enumerate(HOSTILE.items()):
        replace_with(setup.path, make)
        await setup.wait_for(reload_failed)
        last = (await setup.state())["config"]["last_reload"]
        assert last["error"].startswith(f"{setup.path}: ") and "\n" not in last["error"], case
        assert last["not_in_force_since"] is not None
        assert metric(app, "router_config_last_reload_success") == 0
        assert metric(app, "router_config_reloads_total", result="error") == index + 1
        response = await setup.client.post("/sentiment/prediction", json=DEMO_BODY)
        assert response.status == 200
        # The next valid edit, by the watch alone (no SIGHUP).
        traffic = 10 + index
        valid = yaml.safe_dump(
            merge_patch(setup.raw, {"experiments": {"sentiment": {"traffic": traffic}}})
        )
        replace_with(setup.path, lambda scratch: scratch.write_text(valid))  # noqa: B023
        await setup.wait_for(traffic_is(traffic))
        assert (await setup.state())["config"]["last_reload"]["not_in_force_since"] is None
        assert metric(app, "router_config_last_reload_success") == 1


async def test_the_file_is_not_in_force_since_the_first_of_the_failed_reloads(
    setup: Setup,
) -> None:
    replace_with(setup.path, HOSTILE["complex key"])
    await setup.wait_for(reload_failed)
    first = (await setup.state())["config"]["last_reload"]
    assert first["not_in_force_since"] == first["at"]
    replace_with(setup.path, HOSTILE["empty"])
    await setup.wait_for(lambda s: "empty" in s["config"]["last_reload"]["error"])
    second = (await setup.state())["config"]["last_reload"]
    assert second["at"] >= first["at"]
    assert second["not_in_force_since"] == first["at"]


async def test_a_reload_that_raises_is_logged_counted_shown_and_the_watch_goes_on(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug on the reload path (here the loader raising what it never should) does not end
    the watch: logged with its traceback, counted, shown; the next edit applies."""
    calls = 0

    def flaky(path: Path) -> RouterConfig:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TypeError("unhashable type: 'list'")
        return load_config(path)

    monkeypatch.setattr(router.proxy.reload, "load_config", flaky)
    app = setup.client.app
    assert app is not None
    with caplog.at_level(logging.ERROR, logger="router.proxy.reload"):
        setup.write({"experiments": {"sentiment": {"traffic": 60}}})
        await setup.wait_for(reload_failed)
    error = (await setup.state())["config"]["last_reload"]["error"]
    assert error == f"{setup.path}: reload failed: TypeError: unhashable type: 'list'"
    assert metric(app, "router_config_last_reload_success") == 0
    assert metric(app, "router_config_reloads_total", result="error") == 1
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert logged.exc_info is not None and logged.exc_info[0] is TypeError
    setup.write({"experiments": {"sentiment": {"traffic": 70}}})
    await setup.wait_for(traffic_is(70))
    assert metric(app, "router_config_last_reload_success") == 1


def failing_hook(old: RouterConfig, new: RouterConfig) -> list[dict[str, Any]]:
    raise RuntimeError("hook broke")


@pytest.mark.parametrize("setup", [failing_hook], indirect=True)
async def test_a_failing_reload_hook_is_shown_and_the_registry_is_in_force(setup: Setup) -> None:
    setup.write({"experiments": {"sentiment": {"traffic": 70}}})
    await setup.wait_for(traffic_is(70))
    last = (await setup.state())["config"]["last_reload"]
    assert last["ok"] is False and "in force, but the reload hook failed" in last["error"]
    assert last["not_in_force_since"] is None  # it is in force
    app = setup.client.app
    assert app is not None
    assert metric(app, "router_config_last_reload_success") == 0
