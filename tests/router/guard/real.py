"""The real router process (`python -m router`) with its guard, in front of Paddle Serving, and
a steady load to drive it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import aiohttp

from router.experiment.assign import bucket
from tests.router.data import merge_patch
from tests.router.guard.inprocess import read_jsonl, write_yaml
from tests.router.router_process import RouterProcess, start_router
from tests.support import demo_request, eventually

TOKEN_ENV = "GUARD_IT_ADMIN_TOKEN"
TOKEN = "integration-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTE = "/sentiment/prediction"
SALT = "guard-it-2026"
BODY = json.dumps(demo_request(1)).encode()


def paddle_registry(
    folder: Path, control: str, treatment: str, experiment: dict[str, Any]
) -> dict[str, Any]:
    """The demo experiment (traffic 50, fallback control) on these endpoints, patched."""
    raw = {
        "router": {
            "log_dir": str(folder / "logs"), "state_dir": str(folder / "state"),
            "admin_token_env": TOKEN_ENV,
        },
        "backends": {
            "sentiment-v1": {"endpoints": [control], "version": "legacy_v1", "timeout_ms": 2000},
            "sentiment-v2": {
                "endpoints": [treatment], "version": "paddle_new_v2", "timeout_ms": 2000,
            },
        },
        "experiments": {
            "sentiment": {
                "route": ROUTE, "salt": SALT, "control": "sentiment-v1",
                "treatment": "sentiment-v2", "traffic": 50, "fallback": "control",
            }
        },
    }  # fmt: skip
    merged: dict[str, Any] = merge_patch(raw, {"experiments": {"sentiment": experiment}})
    return merged


def units_in(arm: str, count: int, traffic: float = 50, prefix: str = "unit") -> list[str]:
    """`count` unit ids that the two-arm rule puts into `arm` at `traffic`."""
    limit = round(traffic * 100)
    found = (f"{prefix}-{i}" for i in itertools.count())
    chosen = (u for u in found if (bucket(SALT, u) < limit) == (arm == "treatment"))
    return list(itertools.islice(chosen, count))


def epoch(iso: str) -> float:
    moment = dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.replace(tzinfo=dt.timezone.utc).timestamp()


@dataclass
class Router:
    """A running router process, its registry file, logs and state."""

    folder: Path
    raw: dict[str, Any]
    process: Optional[RouterProcess] = None
    starts: int = 0

    @property
    def config(self) -> Path:
        return self.folder / "experiments.yaml"

    @property
    def url(self) -> str:
        assert self.process is not None
        return self.process.url

    def start(self) -> Router:
        write_yaml(self.config, self.raw)
        self.starts += 1
        log_file = self.folder / f"router-{self.starts}.log"
        self.process = start_router(self.config, log_file, "--log-level", "INFO")
        return self

    def stop(self) -> int:
        """SIGTERM and wait; the exit code (0 for a graceful stop)."""
        assert self.process is not None
        return self.process.stop()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.process.poll() is None

    def edit(self, experiment: dict[str, Any]) -> None:
        self.raw = merge_patch(self.raw, {"experiments": {"sentiment": experiment}})
        write_yaml(self.config, self.raw)

    def decisions(self) -> list[dict[str, Any]]:
        return read_jsonl(self.folder / "logs" / "decisions.jsonl")

    def saved_state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.folder / "state" / "sentiment.json").read_text())
        state: dict[str, Any] = data["state"]
        return state

    async def state(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(self.url + "/experiments") as reply:
            assert reply.status == 200
            body: dict[str, Any] = await reply.json()
        experiment: dict[str, Any] = body["experiments"]["sentiment"]
        return experiment

    async def metrics(self, session: aiohttp.ClientSession) -> str:
        async with session.get(self.url + "/metrics") as reply:
            return await reply.text()

    async def admin(
        self, session: aiohttp.ClientSession, action: str, headers: Optional[dict[str, str]] = None
    ) -> tuple[int, dict[str, Any]]:
        url = f"{self.url}/admin/experiments/sentiment/{action}"
        async with session.post(url, headers=AUTH if headers is None else headers) as reply:
            body: dict[str, Any] = await reply.json()
            return reply.status, body

    async def predict(
        self,
        session: aiohttp.ClientSession,
        unit: str,
        body: bytes = BODY,
        headers: Optional[dict[str, str]] = None,
    ) -> Answer:
        return await call(session, self.url + ROUTE, unit, body, headers or {})

    async def variants(self, session: aiohttp.ClientSession, units: list[str]) -> list[str]:
        answers = [await self.predict(session, unit) for unit in units]
        assert all(a.status == 200 and a.fallback is False for a in answers), answers
        return [str(a.variant) for a in answers]

    async def wait_for(
        self,
        session: aiohttp.ClientSession,
        check: Callable[[dict[str, Any]], bool],
        timeout: float,
    ) -> float:
        """time.time() when `check(GET /experiments entry)` first held (a check that raises is
        "not yet")."""

        async def holds() -> bool:
            return check(await self.state(session))

        await eventually(holds, timeout)
        return time.time()


@dataclass(frozen=True)
class Answer:
    unit: str
    started: float  # time.time() at send
    status: Optional[int]  # None: no HTTP answer at all
    variant: Optional[str]
    version: Optional[str]
    enrolled: Optional[bool]
    fallback: Optional[bool]
    payload: Optional[dict[str, Any]] = None


async def call(
    session: aiohttp.ClientSession, url: str, unit: str, body: bytes, headers: dict[str, str]
) -> Answer:
    started = time.time()
    try:
        async with session.post(url, data=body, headers={"X-User-Id": unit, **headers}) as reply:
            payload = await reply.json(content_type=None)
            info = payload.get("experiment", {}) if isinstance(payload, dict) else {}
            return Answer(
                unit, started, reply.status, reply.headers.get("X-Variant"),
                info.get("version"), info.get("enrolled"), info.get("fallback"), payload,
            )  # fmt: skip
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return Answer(unit, started, None, None, None, None, None)


@dataclass
class Load:
    """Open-loop load at `rate` requests per second with fresh unit ids, until `stop()`."""

    session: aiohttp.ClientSession
    url: str
    rate: float
    prefix: str = "load"
    answers: list[Answer] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: Optional[asyncio.Task[None]] = None

    def start(self) -> Load:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> list[Answer]:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.answers

    async def _run(self) -> None:
        pending: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        for index in itertools.count():
            if self._stop.is_set():
                break
            task = asyncio.ensure_future(self._one(f"{self.prefix}-{index}"))
            pending.add(task)
            task.add_done_callback(pending.discard)
            delay = started + (index + 1) / self.rate - time.monotonic()
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        await asyncio.gather(*pending)

    async def _one(self, unit: str) -> None:
        self.answers.append(await call(self.session, self.url, unit, BODY, {}))

    async def answered(self, count: int, sent_after: float, timeout: float = 60) -> None:
        """Until `count` requests sent after `sent_after` (time.time()) have their answer."""
        await eventually(
            lambda: sum(a.started > sent_after for a in self.answers) >= count, timeout
        )


def failures(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.status != 200]


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
