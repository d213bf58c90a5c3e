"""Benchmark one Paddle Serving pipeline server on the demo model.

Throughput and p50/p99 latency at client concurrency 1 and 16, with and without Paddle
Serving's auto-batching, all measured in one run with the same load generator (wrk).

    .venv/bin/python scripts/bench_serving.py [--duration 10] [--models build/bench-models]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from serving.launcher import free_port, post_json, start_server  # noqa: E402
from serving.synthetic import make_reviews  # noqa: E402

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
"""


@dataclass(frozen=True)
class ServerSetup:
    label: str
    concurrency: int  # predictor threads
    batch_size: int  # > 1: auto-batching


SETUPS = [
    ServerSetup("1 predictor, no batching", concurrency=1, batch_size=1),
    ServerSetup("1 predictor, auto-batching 8", concurrency=1, batch_size=8),
    ServerSetup("2 predictors, no batching", concurrency=2, batch_size=1),
    # Not measured: 2 predictors with auto-batching. Paddle Serving 0.9.0's pipeline stops
    # answering under 16 concurrent clients in that setup (seen here; wrk then hangs).
]
CLIENT_CONCURRENCY = [1, 16]


def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    print("wrk not found: installing it from Debian (apt-get install -y wrk)", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    return shutil.which("wrk") or "wrk"


def parse_duration_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(wrk: str, url: str, script: Path, connections: int, duration: int) -> dict[str, float]:
    result = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=duration + 30,
    )  # fmt: skip
    out = result.stdout
    stats = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": parse_duration_ms(re.search(r"50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": parse_duration_ms(re.search(r"99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
    }
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    stats["errors"] = float(errors.group(1)) if errors else 0.0
    stats["errors"] += sum(float(n) for n in socket_errors.groups()) if socket_errors else 0.0
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "build" / "bench-models")
    args = parser.parse_args()

    wrk = ensure_wrk()
    bundle = args.models / "sentiment_v2"
    if not (bundle / "bundle.json").exists():
        print(f"training the demo models into {args.models} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "serving", "demo-models", "--out", str(args.models)],
                       cwd=REPO_ROOT, check=True)  # fmt: skip

    body = {"key": ["x"], "value": [json.dumps(make_reviews(1, seed=3).tokens.tolist())]}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "post.lua"
        script.write_text(WRK_SCRIPT.format(body=json.dumps(body)))
        progress = tqdm(total=len(SETUPS) * len(CLIENT_CONCURRENCY), desc="bench", unit="run")
        for setup in SETUPS:
            port = free_port()
            server = start_server(bundle, port, Path(scratch) / f"s{port}",
                                  concurrency=setup.concurrency, batch_size=setup.batch_size)  # fmt: skip
            try:
                server.wait_ready()
                url = f"{server.url}/sentiment/prediction"
                assert post_json(url, body)["err_no"] == 0
                run_wrk(wrk, url, script, 4, 2)  # warm-up
                for clients in CLIENT_CONCURRENCY:
                    rows.append(
                        (setup.label, clients, run_wrk(wrk, url, script, clients, args.duration))
                    )
                    progress.update()
            finally:
                server.stop()
        progress.close()

    print(
        f"\nPaddle Serving pipeline server, demo sentiment_v2 (LSTM, 128 ids), {args.duration}s per row"
    )
    print(f"{'server':<32} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>8}")
    for label, clients, stats in rows:
        print(f"{label:<32} {clients:>7} {stats['rps']:>9.1f} {stats['p50_ms']:>8.2f} "
              f"{stats['p99_ms']:>8.2f} {stats['errors']:>8.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
