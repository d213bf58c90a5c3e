"""A bounded load generator for the router, loopback only.

`run_load` sends exactly `requests` POSTs (open loop at `rate` per second, at most
`concurrency` in flight) and records every answer: HTTP status or the transport error, the
request id it sent, the variant and whether it was a fallback. It refuses any host but
127.0.0.1, and stops early at `max_seconds` or when `stop` is set (what was not sent is
counted as not sent, never as failed).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

import aiohttp
from yarl import URL

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Answer:
    index: int
    request_id: str
    unit: str
    status: Optional[int]  # None: no HTTP answer (connection refused, reset, ...)
    error: Optional[str]
    variant: Optional[str]
    version: Optional[str]
    fallback: Optional[bool]
    latency_ms: float
    started: float  # time.monotonic() at send


@dataclass
class LoadResult:
    answers: list[Answer] = field(default_factory=list)
    not_sent: int = 0
    seconds: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.answers)

    def statuses(self) -> Counter[Optional[int]]:
        return Counter(a.status for a in self.answers)

    def ok(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200]

    def failed(self) -> list[Answer]:
        """Every request that did not get a 200: what a client would call a failure."""
        return [a for a in self.answers if a.status != 200]

    def answered(self) -> list[Answer]:
        """Requests that got any HTTP answer (the router handled them)."""
        return [a for a in self.answers if a.status is not None]

    def percentile_ms(self, q: float) -> float:
        return percentile([a.latency_ms for a in self.ok()], q)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def check_loopback(url: str) -> None:
    host = URL(url).host
    if host != LOOPBACK:
        raise ValueError(f"load is only ever sent to {LOOPBACK}, not {host}")


async def run_load(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    requests: int,
    rate: float,
    concurrency: int = 8,
    unit_of: Callable[[int], str] = lambda i: f"unit-{i}",
    id_prefix: str = "load",
    max_seconds: float = 120.0,
    stop: Optional[asyncio.Event] = None,
    on_answer: Optional[Callable[[Answer], None]] = None,
) -> LoadResult:
    """POST `body` to `url` `requests` times at `rate`/s; see the module docstring."""
    check_loopback(url)
    if requests < 0 or rate <= 0 or concurrency < 1:
        raise ValueError("requests >= 0, rate > 0 and concurrency >= 1")
    result = LoadResult()
    slots = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    deadline = started + max_seconds
    tasks: list[asyncio.Task[None]] = []

    async def one(index: int) -> None:
        try:
            answer = await _send(session, url, body, index, unit_of(index), id_prefix)
            result.answers.append(answer)
            if on_answer is not None:
                on_answer(answer)
        finally:
            slots.release()

    for index in range(requests):
        due = started + index / rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        await slots.acquire()
        if time.monotonic() > deadline or (stop is not None and stop.is_set()):
            slots.release()
            result.not_sent = requests - index
            break
        tasks.append(asyncio.ensure_future(one(index)))
    await asyncio.gather(*tasks)
    result.answers.sort(key=lambda a: a.index)
    result.seconds = time.monotonic() - started
    return result


async def _send(
    session: aiohttp.ClientSession, url: str, body: bytes, index: int, unit: str, prefix: str
) -> Answer:
    request_id = f"{prefix}-{index}"
    headers = {"X-User-Id": unit, "X-Request-Id": request_id, "Content-Type": "application/json"}
    sent = time.monotonic()
    try:
        async with session.post(url, data=body, headers=headers) as response:
            raw = await response.read()
            status = response.status
            variant = response.headers.get("X-Variant")
            version = response.headers.get("X-Model-Version")
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        latency = (time.monotonic() - sent) * 1000
        reason = f"{type(exc).__name__}: {exc}"
        return Answer(index, request_id, unit, None, reason, None, None, None, latency, sent)
    latency = (time.monotonic() - sent) * 1000
    fallback: Optional[bool] = None
    error: Optional[str] = None
    try:
        payload = json.loads(raw)
        info = payload.get("experiment") if isinstance(payload, dict) else None
        if isinstance(info, dict):
            fallback = info.get("fallback")
        if status != 200 and isinstance(payload, dict):
            error = str(payload.get("error"))
    except ValueError:
        error = f"not JSON: {raw[:80]!r}"
    return Answer(index, request_id, unit, status, error, variant, version, fallback, latency, sent)
