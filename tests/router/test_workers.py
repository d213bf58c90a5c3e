"""`python -m router --workers N`: N real router processes on one port, under a supervisor.

Which process holds a socket is read from /proc: the listening sockets on the router's port
(/proc/net/tcp) and the process whose file descriptors hold them. So "both workers answer" is
seen per connection, on the server's side, without anything added to the answers.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import pytest
import yaml

from tests.redis_server import RedisServer
from tests.router.fakes import Fakes, url_of
from tests.router.guard.inprocess import guarded_registry
from tests.router.guard.test_restart import run_once
from tests.router.harness import DEMO_BODY, registry
from tests.router.router_process import REPO_ROOT, RouterProcess, start_router
from tests.support import eventually

REPLICA = "edge"


def fleet_registry(tmp_path: Path, fakes: Fakes, redis: RedisServer, **router: Any) -> Path:
    """Two arms on the fakes `v1` and `v2`, a fleet on `redis`; the registry file."""
    (_, control), (_, treatment) = fakes["v1"], fakes["v2"]
    fleet = {"fleet": {"redis": redis.url, "replica": REPLICA}, **router}
    raw = registry(tmp_path / "logs", [url_of(control)], [url_of(treatment)], {"router": fleet})
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# --- processes and sockets, from /proc -------------------------------------------------------


def children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has exited: its sockets are closed)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def tcp_sockets(port: int, state: str, remote_port: Optional[int] = None) -> set[int]:
    """Inodes of the TCP sockets (IPv4 and IPv6) on local `port` in `state` (0A: listening,
    01: established), and with `remote_port` when given."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if int(local.rsplit(":", 1)[1], 16) != port or fields[3] != state:
                    continue
                if remote_port is None or int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    inodes.add(int(fields[9]))
    return inodes


def holders(inodes: set[int], pids: set[int]) -> dict[int, int]:
    """inode -> the pid among `pids` that holds that socket."""
    found = {}
    for pid in pids:
        with os.scandir(f"/proc/{pid}/fd") as fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:  # closed meanwhile
                    continue
                if target.startswith("socket:["):
                    inode = int(target[len("socket:[") : -1])
                    if inode in inodes:
                        found[inode] = pid
    return found


def listening_workers(router: RouterProcess) -> set[int]:
    """The supervisor's children that each hold a listening socket on the router's port; empty
    unless every child does and the port has no other listener."""
    workers = children(router.pid)
    port = urlsplit(router.url).port
    assert port is not None
    listening = tcp_sockets(port, "0A")
    held = holders(listening, workers)
    if set(held) != listening or set(held.values()) != workers:
        return set()
    return workers


def ask_each(
    router: RouterProcess,
    connections: int,
    method: str = "POST",
    path: str = "/sentiment/prediction",
) -> list[tuple[int, int, bytes]]:
    """`connections` requests, each on a new connection: for each the worker that accepted it
    (found from the server's end of the connection once the request line is sent, before the
    rest: an answer with `Connection: close` would close it), the status and the body."""
    parts = urlsplit(router.url)
    assert parts.hostname is not None and parts.port is not None
    answers = []
    for index in range(connections):
        body = json.dumps(DEMO_BODY).encode() if method == "POST" else b""
        head = (
            f"Host: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"X-User-Id: user-{index}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(f"{method} {path} HTTP/1.1\r\n".encode())
            owner = accepted_by(router, sock.getsockname()[1])
            sock.sendall(head.encode() + body)
            response = http.client.HTTPResponse(sock)
            response.begin()
            answers.append((owner, response.status, response.read()))
            response.close()
    return answers


def accepted_by(router: RouterProcess, client_port: int, timeout: float = 10.0) -> int:
    """The worker holding the server's end of the connection from `client_port` (a socket in
    the accept queue has no holder yet: wait until one accepts it)."""
    port = urlsplit(router.url).port
    assert port is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inodes = tcp_sockets(port, "01", remote_port=client_port)
        held = set(holders(inodes, children(router.pid)).values())
        if held:
            [owner] = held
            return owner
        time.sleep(0.01)
    raise AssertionError(f"no worker accepted the connection from port {client_port}")


def answered_by(router: RouterProcess, connections: int) -> list[int]:
    """`connections` requests to the experiment, each on a new connection, all answered 200:
    the worker that answered each."""
    answers = ask_each(router, connections)
    assert [status for _, status, _ in answers] == [200] * connections
    return [owner for owner, _, _ in answers]


def listeners_besides(router: RouterProcess, worker: int) -> bool:
    """Whether every socket listening on the router's port is held by a worker but `worker`."""
    port = urlsplit(router.url).port
    assert port is not None
    listening = tcp_sockets(port, "0A")
    return set(holders(listening, children(router.pid) - {worker})) == listening


def replicas_logged(log_dir: Path) -> set[str]:
    """The `replica` of every exposure record written so far (none before records carry it)."""
    records = []
    for path in log_dir.glob("exposures-*.jsonl"):
        records += [json.loads(line) for line in path.read_text().splitlines()]
    return {record["replica"] for record in records if "replica" in record}


@pytest.fixture
def cleanup() -> Iterator[set[int]]:
    """Worker pids seen by a test: after it, none may be left (SIGKILLed if one is, and the
    test fails)."""
    seen: set[int] = set()
    yield seen
    left = {pid for pid in seen if alive(pid)}
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers left running: {left}"


async def in_thread(function: Any, *args: Any) -> Any:
    """Blocking client calls off the loop, where the fake backends answer."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_two_workers_listen_on_one_port_and_both_answer(
    tmp_path: Path, redis_server: RedisServer, fakes: Fakes, cleanup: set[int]
) -> None:
    config = fleet_registry(tmp_path, fakes, redis_server)
    router = start_router(config, tmp_path / "router.log", "--workers", "2", timeout=60)
    try:
        # The serving line comes once every worker listens.
        workers = listening_workers(router)
        cleanup.update(workers)
        assert len(workers) == 2, children(router.pid)
        owners = await in_thread(answered_by, router, 24)
        assert set(owners) == workers  # all on one worker: 2 in 2^24
        if replicas_logged(tmp_path / "logs"):  # once exposure records name their replica
            expected = {f"{REPLICA}-w0", f"{REPLICA}-w1"}
            await eventually(lambda: replicas_logged(tmp_path / "logs") == expected)
        assert await in_thread(router.stop) == 0
    finally:
        router.stop()
    assert not any(alive(pid) for pid in workers)
    assert router.output().count("Traceback") == 0


@pytest.mark.asyncio
async def test_a_killed_worker_is_started_again_and_the_service_answers_meanwhile(
    tmp_path: Path, redis_server: RedisServer, fakes: Fakes, cleanup: set[int]
) -> None:
    config = fleet_registry(tmp_path, fakes, redis_server)
    router = start_router(config, tmp_path / "router.log", "--workers", "2", timeout=60)
    try:
        workers = listening_workers(router)
        cleanup.update(workers)
        killed, survivor = sorted(workers)
        os.kill(killed, signal.SIGKILL)
        # Its listening socket goes when its last thread has exited (the process may show as
        # a zombie before): then every listening socket on the port is another worker's.
        await eventually(lambda: listeners_besides(router, killed))
        owners = await in_thread(answered_by, router, 12)  # no connection refused or reset
        assert killed not in owners

        await eventually(lambda: len(listening_workers(router)) == 2, timeout=60)
        again = listening_workers(router)
        cleanup.update(again)
        assert survivor in again and killed not in again
        log_line = f"(pid {killed}) was killed by SIGKILL; starting it again in 0.5 s"
        assert log_line in router.output()
        owners = await in_thread(answered_by, router, 24)
        assert set(owners) == again  # the new worker answers too
        assert await in_thread(router.stop) == 0
    finally:
        router.stop()
    assert not any(alive(pid) for pid in cleanup)


@pytest.mark.asyncio
async def test_sigterm_drains_every_worker_and_leaves_nothing(
    tmp_path: Path, redis_server: RedisServer, fakes: Fakes, cleanup: set[int]
) -> None:
    """Requests in flight on both workers are answered after SIGTERM to the supervisor, which
    exits 0 once every worker has."""
    import aiohttp

    for name in ("v1", "v2"):
        fake, _ = fakes[name]
        fake.mode, fake.delay_s = "slow", 1.0
    config = fleet_registry(tmp_path, fakes, redis_server)
    raw = yaml.safe_load(config.read_text())
    raw["backends"]["v1"]["timeout_ms"] = raw["backends"]["v2"]["timeout_ms"] = 5000
    config.write_text(yaml.safe_dump(raw))
    router = start_router(config, tmp_path / "router.log", "--workers", "2", timeout=60)
    try:
        workers = listening_workers(router)
        cleanup.update(workers)
        connector = aiohttp.TCPConnector(force_close=True)  # a connection per request
        async with aiohttp.ClientSession(connector=connector) as session:

            async def ask(index: int) -> aiohttp.ClientResponse:
                url = f"{router.url}/sentiment/prediction"
                headers = {"X-User-Id": f"user-{index}"}
                return await session.post(url, json=DEMO_BODY, headers=headers)

            def received() -> int:
                return sum(len(fakes[name][0].received) for name in ("v1", "v2"))

            in_flight = [asyncio.ensure_future(ask(index)) for index in range(8)]
            await eventually(lambda: received() == 8)
            router.signal(signal.SIGTERM)
            for response in await asyncio.gather(*in_flight):
                assert response.status == 200
                response.release()
        assert await in_thread(router.wait, 30) == 0
    finally:
        router.stop()
    assert not any(alive(pid) for pid in workers)
    assert router.output().count("stop signal received") == 2  # each worker drained


@pytest.mark.asyncio
async def test_sighup_to_the_supervisor_reloads_every_worker(
    tmp_path: Path, redis_server: RedisServer, fakes: Fakes, cleanup: set[int]
) -> None:
    config = fleet_registry(tmp_path, fakes, redis_server)
    router = start_router(
        config, tmp_path / "router.log", "--workers", "2", "--no-watch", timeout=60
    )
    try:
        workers = listening_workers(router)
        cleanup.update(workers)
        raw = yaml.safe_load(config.read_text())
        raw["experiments"]["sentiment"]["traffic"] = 20
        config.write_text(yaml.safe_dump(raw))
        router.signal(signal.SIGHUP)

        def traffic_by_worker() -> dict[int, set[float]]:
            found: dict[int, set[float]] = {}
            for owner, status, body in ask_each(router, 16, "GET", "/experiments"):
                assert status == 200
                experiment = json.loads(body)["experiments"]["sentiment"]
                found.setdefault(owner, set()).add(experiment["configured_traffic"])
            return found

        async def reloaded() -> bool:
            found: dict[int, set[float]] = await in_thread(traffic_by_worker)
            return found == {pid: {20.0} for pid in workers}

        await eventually(reloaded)
        assert router.process.poll() is None  # the supervisor handles SIGHUP: it is not ended
        assert await in_thread(router.stop) == 0
    finally:
        router.stop()


def run_router(*args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """`python -m router ARGS` to its end: the result and the supervisor's pid."""
    process = subprocess.Popen(
        [sys.executable, "-m", "router", *args], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), process.pid


def workers_of(supervisor: int) -> set[int]:
    """Processes started as workers of `supervisor` (by their command line), wherever they are."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--supervisor-pid" in command and str(supervisor).encode() in command:
                found.add(int(entry.name))
    return found


def test_the_workers_option_is_checked_and_the_internal_ones_are_hidden(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from router.__main__ import build_parser

    usage = build_parser().format_help()
    assert "--workers N" in usage
    assert "--worker-index" not in usage and "--supervisor-pid" not in usage
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--workers", "0"])
    assert exited.value.code == 2
    assert "argument --workers: must be at least 1, not 0" in capsys.readouterr().err


def test_workers_need_a_fleet(tmp_path: Path) -> None:
    config = tmp_path / "experiments.yaml"
    config.write_text(
        yaml.safe_dump(registry(tmp_path / "logs", ["http://127.0.0.1:9"], ["http://127.0.0.1:9"]))
    )
    done, _ = run_router("--config", str(config), "--port", "0", "--workers", "2")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: --workers 2 needs router.fleet (a Redis the workers share); see docs/router.md"
    ]
    assert not (tmp_path / "logs").exists()


def test_a_busy_port_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "experiments.yaml"
    raw = registry(tmp_path / "logs", ["http://127.0.0.1:9"], ["http://127.0.0.1:9"])
    raw["router"]["fleet"] = {"redis": "redis://127.0.0.1:9/0"}
    config.write_text(yaml.safe_dump(raw))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done, pid = run_router("--config", str(config), "--port", str(port), "--workers", "2")
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: port {port} on 127.0.0.1 is already in use")
    assert "--port" in line
    assert not workers_of(pid)
    assert not (tmp_path / "logs").exists()


@pytest.mark.asyncio
async def test_workers_that_refuse_to_start_are_one_line_and_stop_them_all(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Every worker refuses the registry (its revision went down against the saved state): the
    supervisor says it once, as the single router does, and exits 1 with no worker left."""
    fleet = {"router": {"fleet": {"redis": redis_server.url}}}
    saved = guarded_registry(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9", fleet)
    saved["experiments"]["sentiment"]["revision"] = 3
    from router.registry.loading import parse_config

    await run_once(parse_config(saved), tmp_path)
    saved["experiments"]["sentiment"]["revision"] = 2
    config = tmp_path / "experiments.yaml"
    config.write_text(yaml.safe_dump(saved))
    args = ("--config", str(config), "--port", "0", "--workers", "2")
    done, pid = await in_thread(run_router, *args)
    assert done.returncode == 1
    assert done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: experiments.sentiment.revision: went down from 3 (the rollout state in "
        f"{tmp_path / 'state' / 'sentiment.json'}); restore revision 3"
    ]
    assert "Traceback" not in done.stderr
    assert not workers_of(pid)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_supervisor_gives_up_when_no_worker_can_start_again(
    tmp_path: Path, redis_server: RedisServer, fakes: Fakes, cleanup: set[int]
) -> None:
    """The registry breaks while both workers die: each start fails on it, with a line and a
    longer delay each time, and after GIVE_UP_AFTER failed starts with no worker listening the
    supervisor stops, exit 1, saying why."""
    from router.server import GIVE_UP_AFTER

    config = fleet_registry(tmp_path, fakes, redis_server)
    router = start_router(config, tmp_path / "router.log", "--workers", "2", timeout=60)
    try:
        workers = listening_workers(router)
        cleanup.update(workers)
        config.write_text("experiments: {x: {route: nope}}\n")
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        assert await in_thread(router.wait, 120) == 1
    finally:
        router.stop()
    output = router.output()
    assert f"failed to start {GIVE_UP_AFTER} times in a row and no worker listens" in output
    assert f"failed to start: {config}: 2 problems; starting it again in 1 s" in output
    assert output.count("error: experiments.x.salt") == 0  # problems are indented lines
    assert "  experiments.x.route: must be an absolute URL path" in output
