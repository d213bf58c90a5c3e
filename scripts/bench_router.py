"""Router benchmark: direct to backend vs through the router vs through nginx `split_clients`.

Same load generator (wrk) for every path, against (a) a fast static backend (nginx `return 200`
with a pipeline reply) and (b) a real Paddle Serving pipeline server on the demo model. The
router runs as in production: `python -m router` (uvloop), exposure log and metrics on. nginx
runs one worker with an access log, so both proxies log every request.

Besides req/s and latency it measures the CPU time each proxy process used during the run, so
"req/s per core" compares the proxies' efficiency, not how the 2 shared cores were divided.
Last, one client alternates requests between the paths in random order (`--probe-rounds`), for
a p50 overhead at 1 client paired request by request against Paddle Serving.

usage: scripts/bench_router.sh [--duration S] [--rounds N] [--static-concurrency 1,32]
                               [--paddle-concurrency 1,16] [--models DIR] [--skip-paddle]
                               [--probe-rounds N] [--baseline DIR]
                               [--isolate] [--json FILE] [--workers-section]
                               [--grpc-section [--grpc-concurrency 1,16]]

`--baseline DIR` runs a second router, from another checkout, beside this one: the same load,
the same rounds and the same alternating client measure both, so a change is judged side by
side in one run (`git worktree add /tmp/base HEAD~1`, then `--baseline /tmp/base`).

`--workers-section` measures, instead, several processes against one on the static backend:
the router alone (`router`), the router in a fleet with `--workers 1` and `--workers 2`
(`router-w1`, `router-w2`; a `redis-server` on a free port holds the fleet's state) and nginx
`split_clients` with `worker_processes 1` and `2` (`nginx`, `nginx-w2`). The CPU of a router
with workers is its supervisor's and every worker's.

`--grpc-section` measures, instead, Paddle Serving's gRPC service (`PipelineService/inference`)
on the demo model: direct to the server's RPC port (`direct`) against through the router's
`router.grpc_port` (`router`), at `--grpc-concurrency` clients, interleaved rounds as above.
wrk cannot speak gRPC: the load comes from Python threads here, one channel (one HTTP/2
connection) and one blocking call at a time per client, each sending one of 1,000 pre-built
requests (the PipelineClient message: `x` as JSON text and a random `user_id`), so the same
Python client's own cost is in both paths. Needs neither wrk nor nginx.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from serving.launcher import free_port, start_server  # noqa: E402

STATIC_REPLY = '{"err_no":0,"err_msg":"","key":["prob"],"value":["[[0.12, 0.88]]"],"tensors":[]}'
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    backend: str
    path: str
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    proxy_cpu_s: Optional[float]
    duration_s: float
    # Median over rounds of (this path's p50 - direct's p50 in the same round): steadier than
    # the difference of two medians when the backend's own latency drifts between rounds.
    p50_overhead_ms: Optional[float] = None

    @property
    def per_core(self) -> Optional[float]:
        """Requests per CPU-second of the proxy process(es): req/s if it had one core to itself."""
        if not self.proxy_cpu_s:
            return None
        return self.requests_per_s * self.duration_s / self.proxy_cpu_s


# --- tools -----------------------------------------------------------------------------------


def ensure_tools(redis: bool = False) -> None:
    """wrk and nginx (and redis-server for the workers section), from Debian when missing."""
    packages = {"wrk": "wrk", "nginx": "nginx-light", "redis-server": "redis-server"}
    wanted = ["wrk", "nginx", *(["redis-server"] if redis else [])]
    missing = [packages[tool] for tool in wanted if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(
            f"bench: missing {', '.join(missing)}; run: sudo apt-get install -y {' '.join(missing)}"
        )
    print(f"bench: installing {', '.join(missing)} from Debian", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # policy-rc.d 101: install without starting the servers the packages ship (redis-server's).
    no_start = Path("/usr/sbin/policy-rc.d")
    created = not no_start.exists()
    if created:
        no_start.write_text("#!/bin/sh\nexit 101\n")
        no_start.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    finally:
        if created:
            no_start.unlink()


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime, all threads
    return total / CLOCK_TICKS


def children(pid: int) -> list[int]:
    return _processes_where(1, pid)  # stat field 4: the parent's pid


def process_group(pgid: int) -> list[int]:
    return _processes_where(2, pgid)  # stat field 5: the process group


def _processes_where(field: int, value: int) -> list[int]:
    """Pids whose /proc/PID/stat has `value` at `field` (counted after the command name)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[field]) == value:
                found.append(int(entry.name))
    return found


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of `pids` onto `cpus` (threads started later inherit it)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that just ended
                os.sched_setaffinity(int(task.name), cpus)


def wait_port(port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


@contextmanager
def process(command: list[str], log: Path, **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """A child process stopped (SIGTERM, then SIGKILL) when the block ends."""
    with open(log, "wb") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


# --- the servers -----------------------------------------------------------------------------


def nginx_config(work: Path, port: int, http_block: str, workers: int = 1) -> Path:
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = work / f"nginx-{port}.conf"
    conf.write_text(
        f"""{user}worker_processes {workers};
daemon off;
pid {work}/nginx-{port}.pid;
error_log {work}/nginx-{port}-error.log warn;
events {{ worker_connections 4096; }}
http {{
  client_body_temp_path {work}/body-{port};
  proxy_temp_path {work}/proxy-{port};
  fastcgi_temp_path {work}/fastcgi-{port};
  uwsgi_temp_path {work}/uwsgi-{port};
  scgi_temp_path {work}/scgi-{port};
  keepalive_requests 1000000;
{http_block}
}}
"""
    )
    return conf


def static_backend_block(port: int) -> str:
    reply = STATIC_REPLY.replace("'", "\\'")
    return f"""  access_log off;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{reply}'; }}
  }}"""


def split_clients_block(
    work: Path, port: int, static: str, paddle: Optional[str], log: str = "nginx-exposures.log"
) -> str:
    upstreams = []
    for name, target in (("static", static), ("paddle", paddle)):
        if target is None:
            continue
        for arm in ("control", "treatment"):
            upstreams.append(f"  upstream {name}_{arm} {{ server {target}; keepalive 64; }}")
    locations = [
        "    location /static/ { proxy_pass http://static_$variant; }",
    ]
    if paddle is not None:
        locations.append("    location /sentiment/ { proxy_pass http://paddle_$variant; }")
    return f"""  log_format exposure '$msec $http_x_user_id $variant $status $request_time $upstream_addr';
  access_log {work}/{log} exposure buffer=64k flush=1s;
  split_clients "${{http_x_user_id}}" $variant {{ 50% control; * treatment; }}
{chr(10).join(upstreams)}
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  server {{
    listen 127.0.0.1:{port};
{chr(10).join(locations)}
  }}"""


def router_registry(
    work: Path,
    static: str,
    paddle: Optional[str],
    name: str = "router",
    redis: Optional[str] = None,
) -> Path:
    """The benchmark's registry for the router `name` (its own log and state folders), in a
    fleet of its own (`router.fleet`, named `name`) on `redis` when given."""
    backends = {
        "static-a": {"endpoints": [f"http://{static}"], "version": "static_a", "timeout_ms": 2000},
        "static-b": {"endpoints": [f"http://{static}"], "version": "static_b", "timeout_ms": 2000},
    }
    experiments = {
        "static": {
            "route": "/static/prediction", "salt": "bench", "control": "static-a",
            "treatment": "static-b", "traffic": 50,
        }
    }  # fmt: skip
    if paddle is not None:
        backends["paddle-a"] = {
            "endpoints": [f"http://{paddle}"],
            "version": "v1",
            "timeout_ms": 5000,
        }
        backends["paddle-b"] = {
            "endpoints": [f"http://{paddle}"],
            "version": "v1b",
            "timeout_ms": 5000,
        }
        experiments["sentiment"] = {
            "route": "/sentiment/prediction", "salt": "bench", "control": "paddle-a",
            "treatment": "paddle-b", "traffic": 50,
        }  # fmt: skip
    registry: dict[str, Any] = {
        "router": {
            "log_dir": str(work / f"{name}-logs"),
            "state_dir": str(work / f"{name}-state"),
            "attributes": {"city": "X-City"},
        },
        "backends": backends,
        "experiments": experiments,
    }
    if redis is not None:
        registry["router"]["fleet"] = {"redis": redis, "name": name}
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(registry, indent=2))  # JSON is YAML
    return path


@contextmanager
def router(
    work: Path, registry: Path, checkout: Path = REPO, name: str = "router", workers: int = 1
) -> Iterator[tuple[int, list[int]]]:
    """`python -m router` of `checkout` (this one, or another commit's for --baseline); with
    `workers` > 1 its processes are the supervisor and its workers."""
    port = free_port()
    command = [sys.executable, "-m", "router", "--config", str(registry), "--port", str(port)]
    if workers > 1:
        command += ["--workers", str(workers)]
    log = work / f"{name}.log"
    with process(command, log, cwd=checkout) as child:
        # The serving line comes once every worker listens.
        deadline = time.monotonic() + 60
        while "router: serving on " not in log.read_text(errors="replace"):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench: {name} did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield port, [child.pid, *children(child.pid)]


@contextmanager
def nginx(work: Path, port: int, http_block: str, workers: int = 1) -> Iterator[list[int]]:
    conf = nginx_config(work, port, http_block, workers)
    with process(["nginx", "-c", str(conf), "-p", str(work)], work / f"nginx-{port}.out") as child:
        wait_port(port)
        yield [child.pid, *children(child.pid)]


def serve_plain_proxy(port: int, upstreams: list[str]) -> None:
    """The floor for any aiohttp proxy: forward and answer, nothing else (no assignment, no
    logging, no metrics). Shows how much of the router's cost is aiohttp itself.

    `upstreams` are `/prefix=host:port` pairs: a request goes to the first prefix it starts with.
    """
    import asyncio

    import aiohttp
    import uvloop
    from aiohttp import web

    table = [tuple(pair.split("=", 1)) for pair in upstreams]

    async def run() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024))
        headers = {"Content-Type": "application/json"}

        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            upstream = next(host for prefix, host in table if request.path.startswith(prefix))
            url = f"http://{upstream}{request.path}"
            async with session.post(url, data=body, headers=headers) as reply:
                raw = await reply.read()
            return web.Response(body=raw, headers=headers)

        app = web.Application()
        app.router.add_route("*", "/{path:.*}", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    uvloop.install()
    asyncio.run(run())


def serve_raw_proxy(port: int, upstreams: list[str]) -> None:
    """The floor for any Python proxy on the router's stack (uvloop, llhttp through httptools):
    each request's bytes go unchanged to the upstream, the reply's bytes come back; no
    routing logic, no JSON, no logging. Shows what Python itself costs per request here.

    One upstream connection per client connection; `upstreams` as for serve_plain_proxy.
    """
    import asyncio

    import httptools
    import uvloop

    table = [
        (prefix.encode(), host.split(":")) for prefix, host in (u.split("=", 1) for u in upstreams)
    ]

    class Upstream(asyncio.Protocol):
        def __init__(self, client: asyncio.Transport) -> None:
            self.client = client
            self.parser = httptools.HttpResponseParser(self)
            self.chunks: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            self.chunks.append(data)
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            self.client.write(b"".join(self.chunks))
            self.chunks = []

    class Client(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.chunks: list[bytes] = []
            self.url = b""
            self.upstream: Optional[asyncio.Transport] = None

        def data_received(self, data: bytes) -> None:
            self.chunks.append(data)
            self.parser.feed_data(data)

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_message_complete(self) -> None:
            request, self.chunks = b"".join(self.chunks), []
            if self.upstream is not None:
                self.upstream.write(request)
            else:  # the first request: connect first
                self.connecting = asyncio.ensure_future(self.connect_and_send(request))

        async def connect_and_send(self, request: bytes) -> None:
            host, port = next(target for prefix, target in table if self.url.startswith(prefix))
            loop = asyncio.get_running_loop()
            client = self.transport
            transport, _ = await loop.create_connection(lambda: Upstream(client), host, int(port))  # type: ignore[arg-type]
            self.upstream = transport
            transport.write(request)

    async def run() -> None:
        await asyncio.get_running_loop().create_server(Client, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.install()
    asyncio.run(run())


@contextmanager
def reference_proxy(
    work: Path, upstreams: dict[str, str], kind: str = "plain"
) -> Iterator[tuple[int, list[int]]]:
    """A reference proxy in a child process: `plain` (aiohttp) or `raw` (serve_raw_proxy)."""
    port = free_port()
    pairs = [f"{prefix}={host}" for prefix, host in upstreams.items()]
    command = [sys.executable, __file__, f"--serve-{kind}-proxy", str(port), *pairs]
    with process(command, work / f"{kind}-proxy.log", cwd=REPO) as child:
        wait_port(port)
        yield port, [child.pid]


# --- load ------------------------------------------------------------------------------------


def wrk_script(work: Path, body: str) -> Path:
    """POST `body` with a random unit id per request (1,000 pre-built requests, cycled)."""
    (work / "body.json").write_text(body)
    script = work / "post.lua"
    script.write_text(
        f"""
local requests = {{}}
local index = 0
init = function(args)
  local file = io.open("{work}/body.json", "r")
  local body = file:read("*a")
  file:close()
  math.randomseed(os.time())
  for i = 1, 1000 do
    local headers = {{["Content-Type"] = "application/json",
                      ["X-User-Id"] = "user-" .. math.random(1, 1000000000)}}
    requests[i] = wrk.format("POST", nil, headers, body)
  end
end
request = function()
  index = index % 1000 + 1
  return requests[index]
end
"""
    )
    return script


# With --isolate, wrk runs on the proxies' CPUs: `taskset -c LIST`.
WRK_PREFIX: list[str] = []


def run_wrk(
    url: str, script: Path, concurrency: int, duration: float
) -> tuple[float, float, float, int]:
    threads = 1 if concurrency < 8 else 2
    output = subprocess.run(
        [
            *WRK_PREFIX,
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{duration:g}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _latency_ms(output, "50%")
    p99 = _latency_ms(output, "99%")
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: .*?(\d+) timeout"):
        match = re.search(pattern, output)
        if match:
            errors += int(match.group(1))
    return rps, p50, p99, errors


def _latency_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no {percentile} latency in wrk output:\n{output}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


# --- the benchmark ---------------------------------------------------------------------------


@dataclass
class Target:
    backend: str  # static | paddle
    # direct | router | baseline (--baseline) | nginx | aiohttp (a bare aiohttp proxy) |
    # python (a bare byte forwarder)
    path: str
    url: str
    pids: list[int]  # proxy processes whose CPU is measured (none for direct)


# One load run: (target, concurrency, seconds) -> (req/s, p50 ms, p99 ms, errors).
LoadRun = Callable[[Target, int, float], tuple[float, float, float, int]]


def measure(
    targets: list[Target],
    concurrency: dict[str, list[int]],
    script: Optional[Path],
    duration: float,
    rounds: int,
    load: Optional[LoadRun] = None,
) -> list[Result]:
    """Every (target, concurrency) `rounds` times, interleaved so that a noisy minute on a
    shared machine hits all paths alike; the median round of each is reported, with its
    p50 overhead over direct paired round by round. The load is wrk with `script` unless
    `load` is given (the gRPC section's Python clients)."""
    from tqdm import tqdm

    def wrk_load(target: Target, conc: int, seconds: float) -> tuple[float, float, float, int]:
        assert script is not None
        return run_wrk(target.url, script, conc, seconds)

    run = load or wrk_load
    runs = [
        (t, c)
        for _ in range(rounds)
        for backend in concurrency
        for c in concurrency[backend]
        for t in targets
        if t.backend == backend
    ]
    measured: dict[tuple[str, str, int], list[Result]] = {}
    progress = tqdm(runs, desc="bench", unit="run", file=sys.stderr)
    for target, conc in progress:
        progress.set_postfix_str(f"{target.backend}/{target.path} c={conc}")
        run(target, conc, 1)  # warm up connections and caches
        before = cpu_seconds(target.pids) if target.pids else None
        rps, p50, p99, errors = run(target, conc, duration)
        used = cpu_seconds(target.pids) - before if before is not None else None
        result = Result(target.backend, target.path, conc, rps, p50, p99, errors, used, duration)
        measured.setdefault((target.backend, target.path, conc), []).append(result)
    medians = []
    for (backend, path, conc), results in measured.items():
        chosen = median_round(results)
        direct = measured.get((backend, "direct", conc))
        if path != "direct" and direct:
            paired = [r.p50_ms - d.p50_ms for r, d in zip(results, direct)]
            chosen.p50_overhead_ms = statistics.median(paired)
        medians.append(chosen)
    return medians


class ProbeResult(NamedTuple):
    """A path's paired overhead over direct: the median and its 95% interval, in ms."""

    p50_ms: float
    low_ms: float
    high_ms: float


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: the order statistics whose ranks bound
    it with `confidence`, from the Binomial(n, 1/2) law of how many values fall below it."""
    from scipy.stats import binom

    ordered = sorted(values)
    below = max(int(binom.ppf((1 - confidence) / 2, len(ordered), 0.5)) - 1, 0)
    return ordered[below], ordered[len(ordered) - 1 - below]


def alternating_probe(targets: list[Target], body: bytes, rounds: int) -> dict[str, ProbeResult]:
    """p50 overhead over direct at 1 client, paired request by request: each round sends one
    request to every path (keep-alive, random order) and takes each path's latency minus
    direct's in that round. Unlike wrk runs minutes apart, a drift of the backend's own latency
    hits every path alike; the paths also sit idle longer between requests, so code that has
    to warm up again is seen (a harsher probe than wrk at 1 client). With the median comes its
    95% interval: whether a path is under a bound is then a claim with its uncertainty."""
    import random
    import socket

    from tqdm import tqdm

    def connect(url: str) -> tuple[socket.socket, bytes]:
        parts = urlsplit(url)
        sock = socket.create_connection((parts.hostname, parts.port or 80))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/json\r\n"
        )
        return sock, head.encode()

    def call(sock: socket.socket, head: bytes, unit: int) -> float:
        request = head + b"X-User-Id: user-%d\r\nContent-Length: %d\r\n\r\n" % (unit, len(body))
        started = time.perf_counter()
        sock.sendall(request + body)
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("bench: the connection closed mid-probe")
            reply += chunk
            head_end = reply.find(b"\r\n\r\n")
            if head_end >= 0:
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", reply[:head_end])
                if length is None:
                    raise RuntimeError("bench: a probe reply without Content-Length")
                if len(reply) >= head_end + 4 + int(length.group(1)):
                    return time.perf_counter() - started

    connections = {t.path: connect(t.url) for t in targets}
    differences: dict[str, list[float]] = {t.path: [] for t in targets if t.path != "direct"}
    paths, rng = list(connections), random.Random(1)
    try:
        for _ in tqdm(range(rounds), desc="probe", unit="round", file=sys.stderr):
            rng.shuffle(paths)
            latency = {path: call(*connections[path], rng.randrange(10**9)) for path in paths}
            for path, found in differences.items():
                found.append(latency[path] - latency["direct"])
            time.sleep(0.0005)
    finally:
        for sock, _ in connections.values():
            sock.close()
    results = {}
    for path, found in differences.items():
        low, high = median_interval(found)
        results[path] = ProbeResult(statistics.median(found) * 1000, low * 1000, high * 1000)
    return results


def median_round(results: list[Result]) -> Result:
    """The round with the median throughput, errors summed over all rounds."""
    ordered = sorted(results, key=lambda r: r.requests_per_s)
    chosen = ordered[len(ordered) // 2]
    return Result(**{**asdict(chosen), "errors": sum(r.errors for r in results)})


def report(results: list[Result]) -> None:
    print()
    header = f"{'backend':8} {'path':9} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'proxy cpu':>9} {'req/s/core':>10}"
    print(header)
    print("-" * len(header))
    for r in results:
        cpu = f"{r.proxy_cpu_s / r.duration_s * 100:8.0f}%" if r.proxy_cpu_s else f"{'-':>9}"
        core = f"{r.per_core:10.0f}" if r.per_core else f"{'-':>10}"
        print(
            f"{r.backend:8} {r.path:9} {r.concurrency:4d} {r.requests_per_s:9.0f} {r.p50_ms:8.2f} "
            f"{r.p99_ms:8.2f} {r.errors:6d} {cpu} {core}"
        )
    index = {(r.backend, r.path, r.concurrency): r for r in results}
    print()
    for backend in ("paddle", "static"):
        for conc in sorted({r.concurrency for r in results if r.backend == backend}):
            direct, routed, split, plain, raw, base = (
                index.get((backend, p, conc))
                for p in ("direct", "router", "nginx", "aiohttp", "python", "baseline")
            )
            if not (direct and routed):
                continue
            line = (
                f"{backend} c={conc}: router/direct throughput {routed.requests_per_s / direct.requests_per_s:.3f}, "
                f"p50 overhead {routed.p50_overhead_ms:+.2f} ms"
            )
            if split is not None:
                line += (
                    f"; nginx/direct throughput {split.requests_per_s / direct.requests_per_s:.3f}"
                    f", p50 overhead {split.p50_overhead_ms:+.2f} ms"
                )
                if routed.per_core and split.per_core:
                    line += f"; router/nginx req/s per core {routed.per_core / split.per_core:.3f}"
            if plain is not None and routed.per_core and plain.per_core:
                line += (
                    f"; router/bare-aiohttp req/s per core {routed.per_core / plain.per_core:.3f}"
                )
            if raw is not None:
                line += f"; bare Python p50 overhead {raw.p50_overhead_ms:+.2f} ms"
            if base is not None:
                line += (
                    f"; baseline/direct throughput {base.requests_per_s / direct.requests_per_s:.3f}"
                    f", p50 overhead {base.p50_overhead_ms:+.2f} ms"
                )
                if routed.per_core and base.per_core:
                    line += (
                        f"; router/baseline req/s per core {routed.per_core / base.per_core:.3f}"
                    )
            print(line)


@contextmanager
def redis_server(work: Path) -> Iterator[tuple[str, list[int]]]:
    """A redis-server on a free loopback port that keeps nothing on disk: its URL and pid."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(work)]  # fmt: skip
    with process(command, work / "redis.log") as child:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0", [child.pid]


WORKER_PATHS = ("router", "router-w1", "router-w2", "nginx", "nginx-w2")


def workers_section(args: argparse.Namespace) -> int:
    """Several processes against one, static backend: WORKER_PATHS side by side, interleaved
    rounds as in the main benchmark."""
    concurrency = {"static": [int(c) for c in args.static_concurrency.split(",")], "paddle": []}
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-router-")))
        static_port = free_port()
        static = f"127.0.0.1:{static_port}"
        stack.enter_context(nginx(work, static_port, static_backend_block(static_port)))
        redis, redis_pids = stack.enter_context(redis_server(work))
        proxies = {
            "router": stack.enter_context(router(work, router_registry(work, static, None))),
        }
        for workers in (1, 2):
            name = f"router-w{workers}"
            registry = router_registry(work, static, None, name, redis)
            proxies[name] = stack.enter_context(router(work, registry, REPO, name, workers))
        for workers, name in ((1, "nginx"), (2, "nginx-w2")):
            port = free_port()
            block = split_clients_block(work, port, static, None, f"{name}-exposures.log")
            proxies[name] = (port, stack.enter_context(nginx(work, port, block, workers)))

        from tests.support import demo_request

        script = wrk_script(work, json.dumps(demo_request(1)))
        route = "/static/prediction"
        targets = [Target("static", "direct", f"http://{static}{route}", [])]
        for path in WORKER_PATHS:
            port, pids = proxies[path]
            targets.append(Target("static", path, f"http://127.0.0.1:{port}{route}", pids))
        redis_before = cpu_seconds(redis_pids)
        results = measure(targets, concurrency, script, args.duration, args.rounds)
        redis_used = cpu_seconds(redis_pids) - redis_before
        time.sleep(0.5)  # the routers flush their exposure logs every 0.2 s
        logged = {
            path: sum(
                len(log.read_text().splitlines())
                for log in (work / f"{path}-logs").glob("exposures-*.jsonl")
            )
            for path in WORKER_PATHS
            if path.startswith("router")
        }
    report(results)
    report_workers(results)
    print(f"\nredis-server CPU over the whole section: {redis_used:.1f} s")
    print("router exposure records written: " + ", ".join(f"{p} {n}" for p, n in logged.items()))
    if args.json:
        rows = [{**asdict(r), "per_core": r.per_core} for r in results]
        args.json.write_text(json.dumps({"runs": rows, "redis_cpu_s": redis_used}, indent=2))
    return 0


def report_workers(results: list[Result]) -> None:
    """Two processes against one: throughput and req/s per core, router and nginx."""
    index = {(r.path, r.concurrency): r for r in results}
    print()
    for conc in sorted({r.concurrency for r in results}):
        parts = []
        for one, two in (("router-w1", "router-w2"), ("nginx", "nginx-w2")):
            single, double = index.get((one, conc)), index.get((two, conc))
            if single is None or double is None:
                continue
            part = f"{two}/{one} throughput {double.requests_per_s / single.requests_per_s:.3f}"
            if single.per_core and double.per_core:
                part += f", req/s per core {double.per_core / single.per_core:.3f}"
            parts.append(part)
        alone, fleet = index.get(("router", conc)), index.get(("router-w1", conc))
        if alone is not None and fleet is not None and alone.per_core and fleet.per_core:
            parts.append(f"router-w1/router req/s per core {fleet.per_core / alone.per_core:.3f}")
        print(f"static c={conc}: " + "; ".join(parts))


# --- the gRPC section --------------------------------------------------------------------------


def grpc_requests(count: int = 1000) -> list[tuple[Any, tuple[tuple[str, str], ...]]]:
    """PipelineClient's message for the demo request (`x` as JSON text), with a random unit id
    in the metadata `x-user-id` (which Paddle Serving ignores, so that both paths get the same
    bytes): built once, cycled by the clients."""
    import random

    from router.transport.pipeline_rpc import PipelineRequest
    from tests.support import demo_request

    request = PipelineRequest(
        key=["x"], value=[demo_request(1)["value"][0]], logid=0, clientip="127.0.0.1"
    )
    rng = random.Random()
    return [
        (request, (("x-user-id", f"user-{rng.randint(1, 1_000_000_000)}"),)) for _ in range(count)
    ]


def run_grpc(
    address: str,
    requests: list[tuple[Any, tuple[tuple[str, str], ...]]],
    concurrency: int,
    duration: float,
) -> tuple[float, float, float, int]:
    """`concurrency` client threads, each with its own channel, one blocking call at a time
    for `duration` seconds: req/s, p50 and p99 in ms, and errors (a gRPC status other than
    OK, or `err_no` != 0)."""
    import threading

    import grpc

    from router.transport.pipeline_rpc import METHOD, PipelineRequest, PipelineResponse

    channels = [grpc.insecure_channel(address) for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    deadline = [0.0]

    def client(index: int) -> None:
        call = channels[index].unary_unary(
            METHOD,
            request_serializer=PipelineRequest.SerializeToString,
            response_deserializer=PipelineResponse.FromString,
        )
        times = latencies[index]
        position = index * (len(requests) // concurrency)
        start.wait()
        while True:
            began = time.perf_counter()
            if began >= deadline[0]:
                return
            try:
                request, metadata = requests[position % len(requests)]
                reply = call(request, timeout=10, metadata=metadata)
                if reply.err_no != 0:
                    errors[index] += 1
            except grpc.RpcError:
                errors[index] += 1
            times.append(time.perf_counter() - began)
            position += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + duration
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for channel in channels:
        channel.close()
    every = sorted(t for times in latencies for t in times)
    if not every:
        raise RuntimeError(f"bench: no gRPC call to {address} completed in {duration:g}s")
    p50 = every[len(every) // 2] * 1000
    p99 = every[min(len(every) - 1, int(len(every) * 0.99))] * 1000
    return len(every) / elapsed, p50, p99, sum(errors)


def grpc_registry(work: Path, http: str, rpc: str, grpc_port: int) -> Path:
    """One experiment whose two arms are the same Paddle Serving server (HTTP and RPC port)."""
    backends = {
        name: {
            "endpoints": [f"http://{http}"], "grpc_endpoints": [rpc],
            "version": version, "timeout_ms": 5000,
        }
        for name, version in (("paddle-a", "v1"), ("paddle-b", "v1b"))
    }  # fmt: skip
    registry = {
        "router": {
            "log_dir": str(work / "router-logs"), "state_dir": str(work / "router-state"),
            "grpc_port": grpc_port,
        },
        "backends": backends,
        "experiments": {
            "sentiment": {
                "route": "/sentiment/prediction", "salt": "bench", "control": "paddle-a",
                "treatment": "paddle-b", "traffic": 50,
            }
        },
    }  # fmt: skip
    path = work / "router-grpc.yaml"
    path.write_text(json.dumps(registry, indent=2))  # JSON is YAML
    return path


def grpc_section(args: argparse.Namespace) -> int:
    """Paddle Serving's gRPC service, direct against through the router, interleaved rounds
    as in the main benchmark, the same Python clients for both."""
    concurrency = {"grpc": [int(c) for c in args.grpc_concurrency.split(",")]}
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-router-")))
        bundle = args.models / "sentiment_v1"
        if not (bundle / "bundle.json").exists():
            from serving.demo_models import build_demo_models

            print(f"bench: training the demo models into {args.models}", flush=True)
            build_demo_models(args.models)
        server = start_server(bundle, free_port(), work / "paddle")
        stack.callback(server.stop)
        server.wait_ready()
        grpc_port = free_port()
        registry = grpc_registry(
            work, f"127.0.0.1:{server.http_port}", server.rpc_address, grpc_port
        )
        _, router_pids = stack.enter_context(router(work, registry))
        wait_port(grpc_port)
        requests = grpc_requests()
        targets = [
            Target("grpc", "direct", server.rpc_address, []),
            Target("grpc", "router", f"127.0.0.1:{grpc_port}", router_pids),
        ]

        def load(target: Target, conc: int, seconds: float) -> tuple[float, float, float, int]:
            return run_grpc(target.url, requests, conc, seconds)

        results = measure(targets, concurrency, None, args.duration, args.rounds, load)
        time.sleep(0.5)  # the router flushes its exposure log every 0.2 s
        logged = sum(
            len(p.read_text().splitlines())
            for p in (work / "router-logs").glob("exposures-*.jsonl")
        )
    report(results)
    report_grpc(results)
    print(f"\nrouter exposure records written during the section: {logged}")
    if args.json:
        rows = [{**asdict(r), "per_core": r.per_core} for r in results]
        args.json.write_text(json.dumps({"runs": rows}, indent=2))
    return 0


def report_grpc(results: list[Result]) -> None:
    """Router against direct, per concurrency: throughput ratio, p50 and p99 overhead."""
    index = {(r.path, r.concurrency): r for r in results}
    print()
    for conc in sorted({r.concurrency for r in results}):
        direct, routed = index.get(("direct", conc)), index.get(("router", conc))
        if direct is None or routed is None:
            continue
        print(
            f"grpc c={conc}: router/direct throughput "
            f"{routed.requests_per_s / direct.requests_per_s:.3f}, "
            f"p50 overhead {routed.p50_overhead_ms:+.2f} ms (paired by round), "
            f"p99 overhead {routed.p99_ms - direct.p99_ms:+.2f} ms"
        )


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per path; the median counts")
    parser.add_argument("--static-concurrency", default="1,32")
    parser.add_argument("--paddle-concurrency", default="1,16")
    parser.add_argument("--models", type=Path, default=REPO / "build" / "bench-models",
                        help="demo bundles (built there if missing)")  # fmt: skip
    parser.add_argument("--skip-paddle", action="store_true", help="static backend only")
    parser.add_argument("--probe-rounds", type=int, default=500,
                        help="alternating-client rounds against Paddle Serving (0: none)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--baseline", type=Path, metavar="DIR",
        help="also run the router of another checkout (e.g. `git worktree add /tmp/base "
        "HEAD~1`) as path `baseline`, measured side by side with this one",
    )  # fmt: skip
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="backends on the last CPU, proxies and wrk on the others (separate hosts, roughly)",
    )
    parser.add_argument(
        "--workers-section", action="store_true",
        help="instead: the router with --workers 1 and 2 (in a fleet on a redis-server the "
        "bench starts) and nginx with 1 and 2 worker processes, static backend only",
    )  # fmt: skip
    parser.add_argument(
        "--grpc-section", action="store_true",
        help="instead: Paddle Serving's gRPC service on the demo model, direct to its RPC port "
        "against through the router's grpc_port, driven by Python gRPC clients (no wrk)",
    )  # fmt: skip
    parser.add_argument("--grpc-concurrency", default="1,16",
                        help="concurrent gRPC clients, for --grpc-section")  # fmt: skip
    parser.add_argument("--serve-plain-proxy", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--serve-raw-proxy", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers_section and (args.baseline or args.isolate):
        parser.error("--workers-section takes neither --baseline nor --isolate")
    if args.grpc_section and (args.baseline or args.isolate or args.workers_section):
        parser.error("--grpc-section takes neither --baseline, --isolate nor --workers-section")
    if args.serve_plain_proxy:
        serve_plain_proxy(int(args.serve_plain_proxy[0]), args.serve_plain_proxy[1:])
        return 0
    if args.serve_raw_proxy:
        serve_raw_proxy(int(args.serve_raw_proxy[0]), args.serve_raw_proxy[1:])
        return 0
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the ExitStack below stops every server it started.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    if args.grpc_section:
        return grpc_section(args)
    ensure_tools(redis=args.workers_section)
    if args.workers_section:
        return workers_section(args)
    concurrency = {
        "static": [int(c) for c in args.static_concurrency.split(",")],
        "paddle": [int(c) for c in args.paddle_concurrency.split(",")],
    }

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-router-")))
        static_port, split_port = free_port(), free_port()
        static = f"127.0.0.1:{static_port}"
        backend_pids = stack.enter_context(
            nginx(work, static_port, static_backend_block(static_port))
        )
        paddle = None
        if not args.skip_paddle:
            bundle = args.models / "sentiment_v1"
            if not (bundle / "bundle.json").exists():
                from serving.demo_models import build_demo_models

                print(f"bench: training the demo models into {args.models}", flush=True)
                build_demo_models(args.models)
            server = start_server(bundle, free_port(), work / "paddle")
            stack.callback(server.stop)
            server.wait_ready()
            paddle = f"127.0.0.1:{server.http_port}"
            backend_pids += process_group(server.pid)
        router_port, router_pids = stack.enter_context(
            router(work, router_registry(work, static, paddle))
        )
        baseline: Optional[tuple[int, list[int]]] = None
        if args.baseline is not None:
            baseline = stack.enter_context(
                router(
                    work, router_registry(work, static, paddle, "baseline"),
                    args.baseline.resolve(), "baseline",
                )
            )  # fmt: skip
        split_pids = stack.enter_context(
            nginx(work, split_port, split_clients_block(work, split_port, static, paddle))
        )

        from tests.support import demo_request

        # The same real pipeline request everywhere (the static backend ignores it).
        script = wrk_script(work, json.dumps(demo_request(1)))
        routes = {"static": "/static/prediction", "paddle": "/sentiment/prediction"}
        backends = {"static": static, "paddle": paddle}
        prefixes = {"/static/": static, "/sentiment/": paddle or static}
        plain_port, plain_pids = stack.enter_context(reference_proxy(work, prefixes))
        raw_port, raw_pids = stack.enter_context(reference_proxy(work, prefixes, "raw"))
        proxies = {
            "router": (router_port, router_pids),
            "nginx": (split_port, split_pids),
            "aiohttp": (plain_port, plain_pids),
            "python": (raw_port, raw_pids),
        }
        if baseline is not None:
            proxies["baseline"] = baseline
        targets = []
        for backend, route in routes.items():
            if backends[backend] is None:
                continue
            targets.append(Target(backend, "direct", f"http://{backends[backend]}{route}", []))
            for path, (port, pids) in proxies.items():
                targets.append(Target(backend, path, f"http://127.0.0.1:{port}{route}", pids))
        if args.isolate:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) < 2:
                sys.exit("bench: --isolate needs at least 2 CPUs")
            back, front = {cpus[-1]}, set(cpus[:-1])
            pin(backend_pids, back)
            pin(router_pids + split_pids + plain_pids + raw_pids + (baseline or (0, []))[1], front)
            WRK_PREFIX[:] = ["taskset", "-c", ",".join(map(str, sorted(front)))]
            print(f"bench: backends on CPU {cpus[-1]}, proxies and wrk on {sorted(front)}")
        results = measure(targets, concurrency, script, args.duration, args.rounds)
        probe: dict[str, ProbeResult] = {}
        if paddle is not None and args.probe_rounds > 0:
            body = json.dumps(demo_request(1)).encode()
            paddle_targets = [t for t in targets if t.backend == "paddle"]
            probe = alternating_probe(paddle_targets, body, args.probe_rounds)
        time.sleep(0.5)  # the router flushes its exposure log every 0.2 s
        logged = sum(
            len(p.read_text().splitlines())
            for p in (work / "router-logs").glob("exposures-*.jsonl")
        )
    report(results)
    if probe:
        print(
            f"\npaddle c=1, alternating client ({args.probe_rounds} rounds, paired per request): "
            + ", ".join(
                f"{path} p50 overhead {r.p50_ms:+.2f} ms (95% CI {r.low_ms:+.2f} to {r.high_ms:+.2f})"
                for path, r in probe.items()
            )
        )
    print(f"\nrouter exposure records written during the benchmark: {logged}")
    if args.json:
        rows = [{**asdict(r), "per_core": r.per_core} for r in results]
        report_json = {
            "runs": rows,
            "alternating_probe_ms": {path: r.p50_ms for path, r in probe.items()},
            "alternating_probe_interval_ms": {
                path: [r.low_ms, r.high_ms] for path, r in probe.items()
            },
        }
        args.json.write_text(json.dumps(report_json, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted; every server it started is stopped", file=sys.stderr)
        sys.exit(130)
