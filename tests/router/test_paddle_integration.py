"""The real router (`python -m router`) in front of real Paddle Serving pipeline servers."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import aiohttp
import pytest
import requests  # type: ignore[import-untyped]  # Paddle Serving's examples use it
import yaml

from tests.conftest import Backend, BackendFactory
from tests.router.data import merge_patch
from tests.router.router_process import RouterProcess, start_router
from tests.support import demo_request, eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

StartRouter = Callable[..., RouterProcess]


@dataclass
class Answer:
    status: int
    variant: Optional[str]
    version: Optional[str]
    fallback: Optional[bool]


def write_registry(
    path: Path, control: str, treatment: str, patch: Optional[dict[str, Any]] = None
) -> None:
    raw = {
        "router": {"log_dir": "logs"},
        "backends": {
            "sentiment-v1": {"endpoints": [control], "version": "legacy_v1", "timeout_ms": 2000},
            "sentiment-v2": {
                "endpoints": [treatment], "version": "paddle_new_v2", "timeout_ms": 2000,
                "probe_interval": "200ms",
            },
        },
        "experiments": {
            "sentiment": {
                "route": "/sentiment/prediction", "salt": "integration-2026", "control": "sentiment-v1",
                "treatment": "sentiment-v2", "traffic": 10,
            }
        },
    }  # fmt: skip
    path.write_text(yaml.safe_dump(merge_patch(raw, patch or {})))


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartRouter]:
    started: list[RouterProcess] = []

    def go(config: Path, *extra: str) -> RouterProcess:
        router = start_router(config, tmp_path / f"router-{len(started)}.log", *extra)
        started.append(router)
        return router

    yield go
    for router in started:
        router.stop()


async def ask(
    session: aiohttp.ClientSession, url: str, units: list[str], body: bytes, concurrency: int = 16
) -> dict[str, Answer]:
    """POST `body` once per unit through the router; the answer of each."""
    answers: dict[str, Answer] = {}
    queue = list(reversed(units))

    async def worker() -> None:
        while queue:
            unit = queue.pop()
            async with session.post(
                f"{url}/sentiment/prediction", data=body, headers={"X-User-Id": unit}
            ) as response:
                reply = await response.json()
                experiment = reply.get("experiment") or {}
                answers[unit] = Answer(
                    response.status,
                    response.headers.get("X-Variant"),
                    response.headers.get("X-Model-Version"),
                    experiment.get("fallback"),
                )

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


async def experiments(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/experiments") as response:
        state: dict[str, Any] = await response.json()
        return state


async def traffic_of(session: aiohttp.ClientSession, url: str) -> float:
    state = await experiments(session, url)
    return float(state["experiments"]["sentiment"]["traffic"])


BODY = json.dumps(demo_request(1)).encode()


@pytest.mark.timeout(900)  # 26,000 real model calls; a loaded 2-core machine needs minutes
async def test_split_consistency_and_monotone_ramp(
    paddle_backends: dict[str, Backend], start: StartRouter, tmp_path: Path
) -> None:
    config = tmp_path / "experiments.yaml"
    v1, v2 = paddle_backends["sentiment-v1"].url, paddle_backends["sentiment-v2"].url
    write_registry(config, v1, v2)
    router = start(config)
    rng = random.Random(2026)
    units = [f"{rng.getrandbits(64):016x}" for _ in range(20_000)]
    async with aiohttp.ClientSession() as session:
        first = await ask(session, router.url, units, BODY)
        assert {a.status for a in first.values()} == {200}
        assert not any(a.fallback for a in first.values())
        # each arm is answered by its own real model server
        assert {(a.variant, a.version) for a in first.values()} == {
            ("control", "legacy_v1"),
            ("treatment", "paddle_new_v2"),
        }
        treatment = [u for u in units if first[u].variant == "treatment"]
        control = [u for u in units if first[u].variant == "control"]
        share = len(treatment) / len(units) * 100
        assert abs(share - 10) < 1, share

        # the same unit gets the same variant on every request
        sample = rng.sample(units, 500)
        for _ in range(2):
            again = await ask(session, router.url, sample, BODY)
            assert all(again[u].variant == first[u].variant for u in sample)

        # raising traffic 10 -> 50 in the file keeps every treatment unit in treatment
        write_registry(config, v1, v2, {"experiments": {"sentiment": {"traffic": 50}}})

        async def at_fifty() -> bool:
            return await traffic_of(session, router.url) == 50

        assert await eventually(at_fifty) < 1.5  # the watcher's promise: within a second
        after = await ask(session, router.url, treatment, BODY)
        assert all(a.variant == "treatment" and a.status == 200 for a in after.values())
        # and moves 40 of every 90 control units over (binomial sd 1.6 points on 1000)
        moved = await ask(session, router.url, control[:1000], BODY)
        moved_share = sum(a.variant == "treatment" for a in moved.values()) / len(moved) * 100
        assert abs(moved_share - 40 / 90 * 100) < 5, moved_share
    assert router.stop() == 0


async def test_invalid_edit_leaves_the_router_serving(
    paddle_backends: dict[str, Backend], start: StartRouter, tmp_path: Path
) -> None:
    config = tmp_path / "experiments.yaml"
    v1, v2 = paddle_backends["sentiment-v1"].url, paddle_backends["sentiment-v2"].url
    write_registry(config, v1, v2)
    router = start(config)
    async with aiohttp.ClientSession() as session:
        config.write_text(config.read_text().replace("traffic: 10", "traffic: 250"))

        async def refused() -> bool:
            state = await experiments(session, router.url)
            return state["config"]["last_reload"]["ok"] is False

        await eventually(refused)
        state = await experiments(session, router.url)
        assert (
            "experiments.sentiment.traffic: must be between 0 and 100"
            in state["config"]["last_reload"]["error"]
        )
        assert state["experiments"]["sentiment"]["traffic"] == 10
        answers = await ask(session, router.url, [f"u{i}" for i in range(200)], BODY)
        assert {a.status for a in answers.values()} == {200}
        async with session.get(f"{router.url}/metrics") as response:
            metrics = await response.text()
        assert "router_config_last_reload_success 0.0" in metrics
        assert 'router_config_reloads_total{result="error"} 1.0' in metrics
    assert "refused, the previous one keeps serving" in router.output()


async def test_sighup_reloads_without_a_file_watch(
    paddle_backends: dict[str, Backend], start: StartRouter, tmp_path: Path
) -> None:
    config = tmp_path / "experiments.yaml"
    v1, v2 = paddle_backends["sentiment-v1"].url, paddle_backends["sentiment-v2"].url
    write_registry(config, v1, v2)
    router = start(config, "--no-watch")
    async with aiohttp.ClientSession() as session:
        write_registry(config, v1, v2, {"experiments": {"sentiment": {"traffic": 30}}})
        await asyncio.sleep(1.0)  # four times the watcher's poll interval: it would have seen it
        assert (await experiments(session, router.url))["experiments"]["sentiment"]["traffic"] == 10
        router.signal(signal.SIGHUP)

        async def at_thirty() -> bool:
            return await traffic_of(session, router.url) == 30

        await eventually(at_thirty)


async def test_unmodified_paddle_serving_http_client_request(
    paddle_backends: dict[str, Backend], start: StartRouter, tmp_path: Path
) -> None:
    config = tmp_path / "experiments.yaml"
    v1, v2 = paddle_backends["sentiment-v1"].url, paddle_backends["sentiment-v2"].url
    write_registry(config, v1, v2, {"experiments": {"sentiment": {"traffic": 0}}})
    router = start(config)
    data = demo_request(3, seed=5)

    # Paddle Serving's pipeline HTTP client, as in its examples (pipeline_http_client.py):
    # a plain POST of the JSON text, no content type, no unit id.
    def call(base: str) -> dict[str, Any]:
        reply: dict[str, Any] = requests.post(
            url=f"{base}/sentiment/prediction", data=json.dumps(data), timeout=10
        ).json()
        return reply

    direct, routed = await asyncio.get_running_loop().run_in_executor(
        None, lambda: (call(v1), call(router.url))
    )
    assert routed["err_no"] == 0
    experiment = routed.pop("experiment")
    assert routed == direct  # the backend's answer, untouched
    assert experiment == {
        "name": "sentiment", "group": "control", "version": "legacy_v1",
        "enrolled": False, "fallback": False,
    }  # fmt: skip
    assert len(json.loads(routed["value"][0])) == 3


async def test_killing_the_treatment_server_falls_back_to_control(
    demo_models: Path,
    paddle_backends: dict[str, Backend],
    paddle_backend_factory: BackendFactory,
    start: StartRouter,
    tmp_path: Path,
) -> None:
    treatment = paddle_backend_factory(demo_models / "sentiment_v2")
    config = tmp_path / "experiments.yaml"
    write_registry(
        config, paddle_backends["sentiment-v1"].url, treatment.url,
        {"experiments": {"sentiment": {"traffic": 100}}},
    )  # fmt: skip
    router = start(config)
    answers: list[tuple[float, float, Answer]] = []  # sent, answered, answer
    killed_at: list[float] = []

    def enough_after_the_kill() -> bool:
        return bool(killed_at) and sum(sent > killed_at[0] for sent, _, _ in answers) >= 40

    async with aiohttp.ClientSession() as session:

        async def load(worker: int) -> None:
            index = 0
            deadline = time.monotonic() + 60
            while not enough_after_the_kill() and time.monotonic() < deadline:
                index += 1
                sent = time.monotonic()
                result = await ask(session, router.url, [f"w{worker}-{index}"], BODY, concurrency=1)
                answers.append((sent, time.monotonic(), next(iter(result.values()))))

        async def kill_midway() -> None:
            await eventually(lambda: len(answers) >= 40, timeout=60)
            treatment.kill()
            killed_at.append(time.monotonic())

        await asyncio.gather(*(load(w) for w in range(4)), kill_midway())
        state = await experiments(session, router.url)
        async with session.get(f"{router.url}/metrics") as response:
            metrics = await response.text()

    assert {a.status for _, _, a in answers} == {200}, "no request may fail"
    killed = killed_at[0]
    before = [a for _, answered, a in answers if answered < killed]
    after = [a for sent, _, a in answers if sent > killed]
    assert len(before) > 10 and len(after) > 10
    assert all(a.variant == "treatment" for _, _, a in answers)
    assert all(a.version == "paddle_new_v2" and not a.fallback for a in before)
    assert all(a.fallback and a.version == "legacy_v1" for a in after)
    assert state["backends"]["sentiment-v2"]["endpoints"][0]["up"] is False
    assert 'router_fallbacks_total{experiment="sentiment"}' in metrics

    assert router.stop() == 0
    records = [
        json.loads(line)
        for path in (tmp_path / "logs").glob("exposures-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    fallbacks = [r for r in records if r["fallback"]]
    assert len(records) == len(answers)
    assert len(fallbacks) == sum(1 for _, _, a in answers if a.fallback)
    assert all(
        r["assigned"] == "treatment" and r["served"] == "control" and r["error"] for r in fallbacks
    )


async def test_sigterm_flushes_every_exposure(
    paddle_backends: dict[str, Backend], start: StartRouter, tmp_path: Path
) -> None:
    config = tmp_path / "experiments.yaml"
    write_registry(config, paddle_backends["sentiment-v1"].url, paddle_backends["sentiment-v2"].url)
    router = start(config)
    async with aiohttp.ClientSession() as session:
        answers = await ask(session, router.url, [f"s{i}" for i in range(300)], BODY)
    assert {a.status for a in answers.values()} == {200}
    assert router.stop() == 0
    lines = [
        line
        for path in (tmp_path / "logs").glob("exposures-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert len(lines) == 300
    assert "stop signal received" in router.output()
