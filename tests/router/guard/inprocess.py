"""The router with its SLO guard, in process, in front of fake pipelines (aiohttp test servers)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from router.app import create_app
from router.guard.runtime import GuardSetup
from router.registry.loading import load_config
from tests.router.data import merge_patch
from tests.router.fakes import FakePipeline
from tests.router.harness import DEMO_BODY, registry

TOKEN_ENV = "GUARD_TEST_ADMIN_TOKEN"
TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTE = "/sentiment/prediction"
# Checks every 0.1 s over 0.5 s; two failed checks act. Limits a fake easily passes or fails.
FAST_SLO = {
    "interval": "100ms", "window": "500ms", "min_samples": 3, "failed_checks": 2,
    "p99_ms": 100, "error_rate": 0.2,
}  # fmt: skip


def guarded_registry(
    folder: Path, control: str, treatment: str, patch: Optional[dict[str, Any]] = None
) -> dict[str, Any]:
    """A two-arm registry (traffic 50) with logs, state and an admin token variable in `folder`."""
    base = registry(folder / "logs", [control], [treatment])
    base = merge_patch(
        base, {"router": {"state_dir": str(folder / "state"), "admin_token_env": TOKEN_ENV}}
    )
    merged: dict[str, Any] = merge_patch(base, patch or {})
    return merged


@dataclass
class Guarded:
    """One in-process router with a guard; `path` is its registry file (hot reload is on)."""

    client: TestClient
    path: Path
    raw: dict[str, Any]

    @property
    def app(self) -> web.Application:
        app = self.client.app
        assert isinstance(app, web.Application)
        return app

    @property
    def log_dir(self) -> Path:
        return Path(self.raw["router"]["log_dir"])

    @property
    def state_dir(self) -> Path:
        return Path(self.raw["router"]["state_dir"])

    def edit(self, patch: dict[str, Any]) -> None:
        self.raw = merge_patch(self.raw, patch)
        write_yaml(self.path, self.raw)

    async def state(self, name: str = "sentiment") -> dict[str, Any]:
        reply = await self.client.get("/experiments")
        assert reply.status == 200
        body: dict[str, Any] = await reply.json()
        experiment: dict[str, Any] = body["experiments"][name]
        return experiment

    async def predict(self, unit: str, **headers: str) -> Any:
        return await self.client.post(ROUTE, json=DEMO_BODY, headers={"X-User-Id": unit, **headers})

    async def admin(self, action: str, name: str = "sentiment", **kwargs: Any) -> Any:
        return await self.client.post(f"/admin/experiments/{name}/{action}", **kwargs)

    def decisions(self) -> list[dict[str, Any]]:
        """decisions.jsonl as on disk now (no flush: what a crash would leave)."""
        return read_jsonl(self.log_dir / "decisions.jsonl")

    def saved_state(self, name: str = "sentiment") -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / f"{name}.json").read_text())
        state: dict[str, Any] = data["state"]
        return state


async def start_guarded(
    aiohttp_client: Any, folder: Path, raw: dict[str, Any], token: Optional[str] = TOKEN
) -> Guarded:
    path = folder / "experiments.yaml"
    write_yaml(path, raw)
    config = load_config(path)
    setup = await GuardSetup.load(config)
    environ = {TOKEN_ENV: token} if token is not None else {}
    app = create_app(config, path, flush_interval=0.02, guard=setup, environ=environ)
    client: TestClient = await aiohttp_client(app)
    return Guarded(client, path, raw)


def write_yaml(path: Path, raw: dict[str, Any]) -> None:
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(yaml.safe_dump(raw, sort_keys=False))
    scratch.replace(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def drive(guarded: Guarded, units: list[str], seconds: float, rate: float = 100) -> int:
    """Requests at about `rate` per second over `units` for `seconds`; all must be 200."""
    sent, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        reply = await guarded.predict(units[sent % len(units)])
        assert reply.status == 200, await reply.text()
        sent += 1
        await asyncio.sleep(1 / rate)
    return sent


def slow(fake: FakePipeline, delay_s: float) -> None:
    fake.mode, fake.delay_s = "slow", delay_s
