"""Paddle Serving's own gRPC client (`PipelineClient`) through the real router, unchanged, in
front of real Paddle Serving pipeline servers called on their RPC ports."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
import yaml

from router.experiment.assign import compile_plans
from router.registry.loading import load_config
from serving.launcher import free_port
from tests.conftest import Backend, BackendFactory
from tests.pipeline_client import pipeline_client_class
from tests.router.router_process import RouterProcess, start_router
from tests.support import REPO, demo_request, eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

TOKENS = json.loads(demo_request(1)["value"][0])  # one real review: [[id, id, ...]]
FETCH = None


def registry(
    path: Path,
    v1: Backend,
    v2: Backend,
    traffic: float = 50,
    patch: Optional[dict[str, Any]] = None,
) -> int:
    """Write the registry; the router's gRPC port."""
    grpc_port = free_port()
    raw: dict[str, Any] = {
        "router": {"log_dir": "logs", "grpc_port": grpc_port},
        "backends": {
            "sentiment-v1": {
                "endpoints": [v1.url], "grpc_endpoints": [v1.rpc_address],
                "version": "legacy_v1", "timeout_ms": 3000,
            },
            "sentiment-v2": {
                "endpoints": [v2.url], "grpc_endpoints": [v2.rpc_address],
                "version": "paddle_new_v2", "timeout_ms": 3000, "probe_interval": "200ms",
            },
        },
        "experiments": {
            "sentiment": {
                "route": "/sentiment/prediction", "salt": "grpc-2026", "control": "sentiment-v1",
                "treatment": "sentiment-v2", "traffic": traffic,
            }
        },
    }  # fmt: skip
    for section, values in (patch or {}).items():
        raw[section].update(values)
    path.write_text(yaml.safe_dump(raw))
    return grpc_port


def client(address: str) -> Any:
    """Exactly as Paddle Serving's examples do (a PipelineClient)."""
    pipeline = pipeline_client_class()()
    pipeline.connect([address])
    return pipeline


def answer(pipeline: Any, feed: dict[str, Any], **options: Any) -> tuple[int, str]:
    response = pipeline.predict(feed_dict=feed, fetch=FETCH, **options)
    return response.err_no, json.dumps(dict(zip(response.key, response.value)))


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[Path], RouterProcess]]:
    started: list[RouterProcess] = []

    def go(config: Path) -> RouterProcess:
        router = start_router(config, tmp_path / f"router-{len(started)}.log")
        started.append(router)
        return router

    yield go
    for router in started:
        router.stop()


def exposures(log_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(log_dir.glob("exposures-*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line]
    return records


def direct(backend: Backend) -> str:
    err_no, value = answer(client(backend.rpc_address), {"x": json.dumps(TOKENS)})
    assert err_no == 0
    return value


@pytest.mark.timeout(600)
async def test_pipeline_client_through_the_router(
    paddle_backends: dict[str, Backend], start: Callable[[Path], RouterProcess], tmp_path: Path
) -> None:
    v1, v2 = paddle_backends["sentiment-v1"], paddle_backends["sentiment-v2"]
    config = tmp_path / "experiments.yaml"
    grpc_port = registry(config, v1, v2)
    start(config)
    expected = {"control": direct(v1), "treatment": direct(v2)}
    assert expected["control"] != expected["treatment"]  # the arms can be told apart

    plan = compile_plans(load_config(config).experiments)["sentiment"]
    units = [f"unit-{i}" for i in range(200)]
    arms = {u: plan.assign(u, 50).arm.name for u in units}
    assert set(arms.values()) == {"control", "treatment"}
    # the in-process assignment is the one `python -m router assign` prints
    for unit in units[:5]:
        printed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "router", "assign", "--config", str(config),
             "--experiment", "sentiment", "--unit", unit, "--json"],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert json.loads(printed.stdout)["variant"] == arms[unit]

    address = f"127.0.0.1:{grpc_port}"
    tokens = np.array(TOKENS, dtype=np.int64)
    feeds: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"x": json.dumps(TOKENS)}, {}),  # JSON text
        ({"x": tokens}, {}),  # PipelineClient's default: repr(ndarray)
        ({"x": tokens}, {"pack_tensor_format": True}),  # the tensor format
    ]

    def ask(job: tuple[str, int]) -> tuple[int, str]:
        unit, kind = job
        feed, options = feeds[kind]
        return answer(client(address), {**feed, "user_id": unit}, **options)

    jobs = [(unit, index % 3) for index, unit in enumerate(units)]
    with ThreadPoolExecutor(8) as pool:
        answers = dict(zip(jobs, pool.map(ask, jobs)))
    for (unit, _), (err_no, value) in answers.items():
        assert err_no == 0
        assert value == expected[arms[unit]], unit

    # no unit id: control, not enrolled
    err_no, value = answer(client(address), {"x": tokens})
    assert (err_no, value) == (0, expected["control"])

    log_dir = tmp_path / "logs"

    def logged() -> bool:
        return len(exposures(log_dir)) == len(units) + 1

    await eventually(logged, timeout=10)
    records = exposures(log_dir)
    assert all(r["protocol"] == "grpc" for r in records)
    by_unit = {r["unit"]: r for r in records}
    assert len(by_unit) == len(units) + 1
    for unit in units:
        assert by_unit[unit]["assigned"] == arms[unit] == by_unit[unit]["served"]
        assert by_unit[unit]["enrolled"] is True and by_unit[unit]["status"] == 200
    assert by_unit[None]["enrolled"] is False and by_unit[None]["assigned"] == "control"


@pytest.mark.timeout(300)
async def test_bad_input_and_a_killed_treatment(
    demo_models: Path,
    paddle_backends: dict[str, Backend],
    paddle_backend_factory: BackendFactory,
    start: Callable[[Path], RouterProcess],
    tmp_path: Path,
) -> None:
    v1 = paddle_backends["sentiment-v1"]
    v2 = paddle_backend_factory(demo_models / "sentiment_v2")  # this test kills it
    config = tmp_path / "experiments.yaml"
    grpc_port = registry(config, v1, v2, traffic=100)
    start(config)
    address = f"127.0.0.1:{grpc_port}"
    control = direct(v1)

    # bad input: control says 51 too; the client gets err_no 51 and control's message
    response = client(address).predict(feed_dict={"nope": "[[1]]", "user_id": "u1"}, fetch=None)
    assert response.err_no == 51 and "unknown feed" in response.err_msg

    v2.kill()
    for index in range(6):  # past eject_after: the treatment's endpoint leaves the rotation
        err_no, value = answer(client(address), {"x": json.dumps(TOKENS), "user_id": f"k{index}"})
        assert (err_no, value) == (0, control)

    log_dir = tmp_path / "logs"

    def logged() -> bool:
        return len(exposures(log_dir)) == 7

    await eventually(logged, timeout=10)
    records = exposures(log_dir)
    assert records[0]["status"] == 400 and records[0]["error"].startswith("bad_input")
    assert all(r["assigned"] == "treatment" for r in records)
    assert all(r["served"] == "control" and r["fallback"] for r in records[1:])
