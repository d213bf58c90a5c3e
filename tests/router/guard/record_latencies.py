"""Record real request latencies of a Paddle Serving pipeline server for the p99 accuracy test.

Not a test: run it by hand to refresh tests/data/slo_latencies_recorded.json.

    .venv/bin/python -m tests.router.guard.record_latencies \
        --model build/test-models/<key>/sentiment_v1 [--requests 6000] [--concurrency 4]

It starts one CPU pipeline server on the bundle, sends real reviews from several client threads
and keeps each request's wall time in milliseconds (client side, as the router measures it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from serving.launcher import free_port, post_json, start_server
from tests.support import DATA, demo_request

OUT = DATA / "slo_latencies_recorded.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    bodies = [demo_request(1, seed=i) for i in range(64)]
    latencies: list[float] = []
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as workdir:
        server = start_server(args.model, free_port(), Path(workdir))
        try:
            server.wait_ready()
            url = f"{server.url}/{server.meta.name}/prediction"
            per_thread = args.requests // args.concurrency

            def client(offset: int) -> None:
                mine = []
                for i in range(per_thread):
                    started = time.perf_counter()
                    post_json(url, bodies[(offset + i) % len(bodies)])
                    mine.append((time.perf_counter() - started) * 1000)
                with lock:
                    latencies.extend(mine)

            threads = [threading.Thread(target=client, args=(k,)) for k in range(args.concurrency)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            server.stop()
    OUT.write_text(
        json.dumps(
            {
                "source": (
                    f"tests/router/guard/record_latencies.py: {len(latencies)} requests to one "
                    f"Paddle Serving 0.9.0 CPU pipeline server ({args.model.name}), "
                    f"{args.concurrency} client threads, 2-core shared machine"
                ),
                "unit": "ms",
                "latencies_ms": [round(x, 3) for x in latencies],
            }
        )
        + "\n"
    )
    print(f"wrote {len(latencies)} latencies to {OUT}")


if __name__ == "__main__":
    main()
