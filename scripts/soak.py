"""Soak: the real router in front of two real Paddle Serving servers, for minutes, at a steady rate.

It starts both demo model servers and `python -m router` (50/50 experiment), measures the
router's capacity in a short closed-loop calibration, then sends a steady open-loop load (by
default half that capacity) for `--minutes`, and every minute samples the router's resident
memory (/proc/PID/status VmRSS), its open file descriptors (/proc/PID/fd) and the minute's p99.
At the end it stops the router with SIGTERM and checks that every answered request was logged.
Load goes to 127.0.0.1 only and is bounded by rate x minutes.

usage: scripts/soak.py [--minutes 10] [--rate R] [--calibrate-seconds 20] [--concurrency 32]
                       [--models DIR] [--json FILE] [--keep]

Pass criteria (the exit code): memory growth under 10% from the end of minute 1 to the end,
no file-descriptor growth (at most 4 more, the jitter of pooled connections), p99 stable (the
last three minutes' mean p99 within 1.5x the first three's), no failed request, no lost exposure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from tqdm import tqdm  # noqa: E402

from serving.launcher import ServerProcess, free_port, start_server  # noqa: E402
from tests.reliability.load import Answer, percentile, run_load  # noqa: E402
from tests.reliability.stack import (  # noqa: E402
    BODY,
    ROUTE,
    exposures,
    open_fds,
    registry,
    rss_kib,
    write_registry,
)
from tests.router.router_process import RouterProcess, start_router  # noqa: E402


@dataclass
class Minute:
    minute: int
    requests: int
    failed: int
    rate: float
    p50_ms: float
    p99_ms: float
    rss_mib: float
    fds: int
    load_1m: float  # the machine's load average: the CPUs are shared


def find_models(given: Optional[Path]) -> Path:
    """The demo bundles: --models, else the newest test build, else train them once."""
    if given is not None:
        return given
    builds = sorted(
        (p.parent for p in (REPO / "build" / "test-models").glob("*/sentiment_v2/bundle.json")),
        key=lambda p: p.stat().st_mtime,
    )
    if builds:
        return builds[-1].parent
    target = REPO / "build" / "soak-models"
    if not (target / "sentiment_v2" / "bundle.json").exists():
        from serving.demo_models import build_demo_models

        print(f"soak: training the demo models into {target}", flush=True)
        build_demo_models(target)
    return target


async def calibrate(session: aiohttp.ClientSession, url: str, seconds: float, conc: int) -> float:
    """Requests per second the stack answers with `conc` requests always in flight."""
    await run_load(session, url, BODY, requests=conc * 20, rate=1e6, concurrency=conc)  # warm-up
    result = await run_load(
        session, url, BODY, requests=1_000_000, rate=1e6, concurrency=conc, max_seconds=seconds
    )
    failed = len(result.failed())
    if failed:
        raise SystemExit(f"soak: {failed} requests failed during calibration")
    return result.sent / result.seconds


async def soak(
    router: RouterProcess, minutes: int, rate: float, concurrency: int
) -> tuple[list[Minute], list[Answer]]:
    url = router.url + ROUTE
    rows: list[Minute] = []
    everything: list[Answer] = []
    per_minute = round(rate * 60)
    interval = 0.5 if sys.stderr.isatty() else 30.0  # a log file gets a line every 30 s
    with tqdm(
        total=per_minute * minutes, unit="req", desc="soak", file=sys.stderr, mininterval=interval
    ) as bar:
        async with aiohttp.ClientSession() as session:
            for minute in range(1, minutes + 1):
                result = await run_load(
                    session,
                    url,
                    BODY,
                    requests=per_minute,
                    rate=rate,
                    concurrency=concurrency,
                    unit_of=_units_of_minute(minute),
                    id_prefix=f"soak-{minute}",
                    max_seconds=90,
                    on_answer=lambda _: bar.update(),
                )
                everything += result.answers
                ok = [a.latency_ms for a in result.ok()]
                rows.append(
                    Minute(
                        minute=minute,
                        requests=result.sent,
                        failed=len(result.failed()),
                        rate=result.sent / result.seconds,
                        p50_ms=percentile(ok, 50),
                        p99_ms=percentile(ok, 99),
                        rss_mib=rss_kib(router.pid) / 1024,
                        fds=open_fds(router.pid),
                        load_1m=os.getloadavg()[0],
                    )
                )
                bar.set_postfix(p99_ms=f"{rows[-1].p99_ms:.1f}", rss_mib=f"{rows[-1].rss_mib:.1f}")
    return rows, everything


def _units_of_minute(minute: int) -> Callable[[int], str]:
    return lambda index: f"soak-{minute}-{index}"


def verdict(rows: list[Minute], lost: int) -> dict[str, Any]:
    first, last = rows[0], rows[-1]
    head = statistics.mean(r.p99_ms for r in rows[:3])
    tail = statistics.mean(r.p99_ms for r in rows[-3:])
    checks = {
        "memory_growth_pct": round((last.rss_mib - first.rss_mib) / first.rss_mib * 100, 2),
        "fd_growth": last.fds - first.fds,
        "p99_tail_over_head": round(tail / head, 3),
        "failed_requests": sum(r.failed for r in rows),
        "exposures_lost": lost,
    }
    checks["pass"] = (
        checks["memory_growth_pct"] < 10
        and checks["fd_growth"] <= 4
        and checks["p99_tail_over_head"] <= 1.5
        and checks["failed_requests"] == 0
        and lost == 0
    )
    return checks


def print_table(rows: list[Minute], start_rss: float, start_fds: int) -> None:
    print(f"\nrouter at start of the soak: RSS {start_rss:.1f} MiB, {start_fds} open fds")
    print("| minute | requests | failed | req/s | p50 ms | p99 ms | RSS MiB | open fds | load |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.minute} | {r.requests} | {r.failed} | {r.rate:.1f} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {r.rss_mib:.1f} | {r.fds} | {r.load_1m:.2f} |"
        )


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--rate", type=float, help="requests/s (default: half the capacity)")
    parser.add_argument("--calibrate-seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32, help="most requests in flight")
    parser.add_argument("--models", type=Path, help="folder with sentiment_v1 and sentiment_v2")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    if args.minutes < 1:
        parser.error("--minutes must be at least 1")

    models = find_models(args.models)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    servers: list[ServerProcess] = []
    router: Optional[RouterProcess] = None
    try:
        for name in ("sentiment_v1", "sentiment_v2"):
            server = start_server(models / name, free_port(), work / name)
            servers.append(server)
        for server in servers:
            server.wait_ready()
        config = write_registry(
            work / "experiments.yaml", registry([servers[0].url], [servers[1].url])
        )
        router = start_router(config, work / "router.log")
        print(f"soak: router {router.url} (pid {router.pid}), work dir {work}", flush=True)

        async def calibrated() -> float:
            async with aiohttp.ClientSession() as session:
                return await calibrate(session, router.url + ROUTE, args.calibrate_seconds, 16)

        capacity = asyncio.run(calibrated())
        rate = args.rate or capacity / 2
        print(f"soak: capacity {capacity:.1f} req/s (16 in flight); soaking at {rate:.1f} req/s")
        start_rss, start_fds = rss_kib(router.pid) / 1024, open_fds(router.pid)
        began = time.monotonic()
        rows, answers = asyncio.run(soak(router, args.minutes, rate, args.concurrency))
        elapsed = time.monotonic() - began
        code = router.stop()
        logged = {r["request_id"] for r in exposures(work / "logs")}
        answered = {a.request_id for a in answers if a.status is not None}
        lost = len(answered - logged)
        result = verdict(rows, lost)
        print_table(rows, start_rss, start_fds)
        print(
            f"\nsoak: {len(answers)} requests in {elapsed / 60:.1f} min at {rate:.1f} req/s "
            f"(capacity {capacity:.1f}); router exit {code}; "
            f"{len(answered)} answered, {len(answered & logged)} logged"
        )
        print("soak: " + ", ".join(f"{k} {v}" for k, v in result.items()))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(
                    {
                        "capacity_rps": capacity,
                        "rate_rps": rate,
                        "minutes": args.minutes,
                        "start_rss_mib": start_rss,
                        "start_fds": start_fds,
                        "rows": [asdict(r) for r in rows],
                        "verdict": result,
                    },
                    indent=2,
                )
            )
        return 0 if result["pass"] else 1
    finally:
        if router is not None:
            router.stop()
        for server in servers:
            server.stop()
        if args.keep:
            print(f"soak: logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
