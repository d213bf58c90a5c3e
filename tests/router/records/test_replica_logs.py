"""Two replicas of a fleet (router.fleet) sharing one log directory: each writes its own files,
every record names it, and the analysis reads them as one experiment."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from analysis.cli import main as analysis_main
from router.app import EVENT_LOGS, PROXY, create_app
from router.records.decisions import decision_record
from router.registry.loading import parse_config
from tests.router.fakes import Fakes, url_of
from tests.router.harness import DEMO_BODY, registry, unit_in

pytestmark = pytest.mark.asyncio


async def replica(aiohttp_client: Any, log_dir: Path, fakes: Fakes, replica_id: str) -> TestClient:
    raw = registry(log_dir, [url_of(fakes["v1"][1])], [url_of(fakes["v2"][1])])
    app = create_app(parse_config(raw), flush_interval=0.02, replica=replica_id)
    client: TestClient = await aiohttp_client(app)
    return client


async def ask(client: TestClient, unit: str, request_id: str) -> None:
    headers = {"X-User-Id": unit, "X-Request-Id": request_id}
    response = await client.post("/sentiment/prediction", json=DEMO_BODY, headers=headers)
    assert response.status == 200


def flush(*clients: TestClient) -> None:
    for client in clients:
        app = client.app
        assert app is not None
        app[PROXY].settle()
        logs = app[EVENT_LOGS]
        for writer in (logs.exposures, logs.outcomes, logs.decisions):
            writer.flush()


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_two_replicas_share_a_log_directory(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    log_dir = tmp_path / "logs"
    a = await replica(aiohttp_client, log_dir, fakes, "node-a:8080")
    b = await replica(aiohttp_client, log_dir, fakes, "node-b:8080-w1")
    control, treatment = unit_in("control"), unit_in("treatment")
    await ask(a, control, "req-1")
    await ask(b, treatment, "req-1")  # the same client request id on another replica
    await ask(b, control, "req-2")
    # Each unit converts; the event reaches the replica that did not answer its first request.
    for client, unit in ((b, control), (a, treatment)):
        response = await client.post("/events", json={"unit_id": unit, "metric": "conversion"})
        assert response.status == 202
    app_a = a.app
    assert app_a is not None
    app_a[EVENT_LOGS].decisions.write(
        decision_record(
            ts=time.time(), experiment="sentiment", check=None, action="none", actor="config",
            traffic=50.0, previous_traffic=None, configured_traffic=50.0, revision=1,
            reason="a test decision",
        )
    )  # fmt: skip
    flush(a, b)

    names = sorted(p.name for p in log_dir.iterdir())
    assert [n.split(".", 1)[1] for n in names if n.startswith("exposures-")] == [
        "node-a_8080.jsonl",
        "node-b_8080-w1.jsonl",
    ]
    assert "decisions.node-a_8080.jsonl" in names and "decisions.jsonl" not in names
    by_replica: dict[str, list[str]] = {}
    for path in log_dir.iterdir():
        for record in records(path):
            assert list(record)[-1] == "replica"  # the last field
            kind = path.name.split(".")[0].split("-")[0]
            by_replica.setdefault(record["replica"], []).append(kind)
    assert {replica: sorted(kinds) for replica, kinds in by_replica.items()} == {
        "node-a:8080": ["decisions", "exposures", "outcomes"],
        "node-b:8080-w1": ["exposures", "exposures", "outcomes"],
    }

    config = tmp_path / "experiments.yaml"
    config.write_text(json.dumps(registry(log_dir, ["http://127.0.0.1:9"], ["http://127.0.0.1:9"])))
    assert analysis_main(["report", "--config", str(config), "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run"]["units"] == {"control": 1, "treatment": 1}
    quality = report["data_quality"]
    assert (quality["exposure_records"], quality["outcomes_used"]) == (3, 2)
    assert [(r["replica"], r["exposures"], r["outcomes"], r["decisions"])
            for r in quality["replicas"]] == [
        ("node-a:8080", 1, 1, 1), ("node-b:8080-w1", 2, 1, 0),
    ]  # fmt: skip
    conversion = next(m for m in report["metrics"] if m["metric"] == "conversion")
    assert (conversion["control"]["mean"], conversion["treatment"]["mean"]) == (1.0, 1.0)
