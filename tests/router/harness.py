"""Building routers for in-process tests: registries, apps, their logs and metrics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Optional

from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from router.app import EVENT_LOGS, LIVE, METRICS, PROXY, create_app, fast_path_site
from router.registry.loading import parse_config
from router.registry.schema import RouterConfig
from tests.router.data import merge_patch

DEMO_BODY = {"key": ["x"], "value": ["[[1, 2, 3]]"]}


def registry(
    log_dir: Path,
    control: list[str],
    treatment: list[str],
    patch: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """A two-arm registry on the given endpoints; `patch` is a JSON merge patch over it."""
    base = {
        "router": {"log_dir": str(log_dir), "attributes": {"city": "X-City"}},
        "backends": {
            "v1": {"endpoints": control, "version": "legacy_v1", "timeout_ms": 300},
            "v2": {"endpoints": treatment, "version": "new_v2", "timeout_ms": 300},
        },
        "experiments": {
            "sentiment": {
                "route": "/sentiment/prediction",
                "salt": "test-salt",
                "control": "v1",
                "treatment": "v2",
                "traffic": 50,
            }
        },
    }
    return merge_patch(base, patch or {})  # type: ignore[no-any-return]


def build_app(raw: dict[str, Any], config_path: Optional[Path] = None) -> web.Application:
    config: RouterConfig = parse_config(raw)
    return create_app(config, config_path, flush_interval=0.02)


def unit_in(arm: str, salt: str = "test-salt", traffic: float = 50, start: int = 0) -> str:
    """A unit id that the two-arm rule puts into `arm` at `traffic`."""
    from router.experiment.assign import bucket

    for index in range(start, start + 100_000):
        unit = f"user-{index}"
        in_treatment = bucket(salt, unit) < round(traffic * 100)
        if in_treatment == (arm == "treatment"):
            return unit
    raise AssertionError("no such unit")


def exposures(app: web.Application) -> list[dict[str, Any]]:
    app[PROXY].settle()
    logs = app[EVENT_LOGS]
    logs.exposures.flush()
    return _read_jsonl(sorted(Path(logs_dir(app)).glob("exposures-*.jsonl")))


def outcomes(app: web.Application) -> list[dict[str, Any]]:
    logs = app[EVENT_LOGS]
    logs.outcomes.flush()
    return _read_jsonl(sorted(Path(logs_dir(app)).glob("outcomes-*.jsonl")))


def decisions(app: web.Application) -> list[dict[str, Any]]:
    logs = app[EVENT_LOGS]
    logs.decisions.flush()
    return _read_jsonl([Path(logs_dir(app)) / "decisions.jsonl"])


def logs_dir(app: web.Application) -> Path:

    return app[LIVE].config().router.log_dir


def _read_jsonl(paths: list[Path]) -> list[dict[str, Any]]:
    records = []
    for path in paths:
        if path.exists():
            records += [json.loads(line) for line in path.read_text().splitlines()]
    return records


def metric(app: web.Application, name: str, **labels: str) -> float:
    """The value of one sample in the app's /metrics exposition (0 if absent)."""
    from prometheus_client import generate_latest

    text = generate_latest(app[METRICS].registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


class FastPathTestServer(TestServer):
    """aiohttp's TestServer, listening with the router's FastPathSite like `python -m router`."""

    async def start_server(
        self, loop: Optional[asyncio.AbstractEventLoop] = None, **kwargs: Any
    ) -> None:
        if self.runner:
            return
        self.runner = await self._make_runner(**kwargs)
        await self.runner.setup()
        site = fast_path_site(self.runner, self.host, 0, shutdown_timeout=2)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")
