"""Start, probe and stop pipeline servers as background processes (used by `up`, tests, demo).

A server is `python -m serving serve` in a session of its own: a supervisor (the session's
group leader) and its Paddle Serving worker and gateway (in a process group of their own, tied
to the supervisor: see `serving.supervisor`). It is stopped by SIGTERM to the supervisor,
which drains the worker for at most its grace period and exits once nothing of its tree is left;
SIGKILL to the whole tree is only the fallback past grace + a margin.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from serving.bundle import BundleMeta, read_bundle
from serving.supervisor import signal_tree

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GRACE_S = 10.0
# Past the grace period: the worker's exit and the supervisor's reaping (serving.supervisor
# allows itself EXIT_MARGIN_S, then kills and reaps); then the caller's SIGKILL to the group.
STOP_MARGIN_S = 10.0


class ServerError(Exception):
    """A pipeline server did not start or did not become ready."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether a server could not listen on `port` on every interface, as Paddle Serving does.

    SO_REUSEADDR as servers set it: a connection of an earlier server still in TIME_WAIT does
    not make the port busy. The IPv6 socket (when there is one) also covers IPv4.
    """
    family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        family, sock = socket.AF_INET, socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind(("", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def probe_request(meta: BundleMeta) -> dict[str, Any]:
    """A valid one-row request of zeros: proves the model is loaded and answering."""
    keys, values = [], []
    for spec in meta.feeds:
        shape = [1] + [d if d >= 0 else 1 for d in spec.shape[1:]]
        zeros: Any = 0
        for size in reversed(shape):
            zeros = [zeros] * size
        keys.append(spec.name)
        values.append(json.dumps(zeros))
    return {"key": keys, "value": values}


def post_json(url: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        result: dict[str, Any] = json.loads(reply.read())
        return result


def is_ready(base_url: str, meta: BundleMeta, timeout: float = 2.0) -> bool:
    try:
        reply = post_json(f"{base_url}/{meta.name}/prediction", probe_request(meta), timeout)
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return reply.get("err_no") == 0


@dataclass
class ServerProcess:
    """A pipeline server running in its own process group."""

    bundle_dir: Path
    meta: BundleMeta
    http_port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    grace_s: float = DEFAULT_GRACE_S
    rpc_port: int = 0  # the gRPC port (PipelineService), for gRPC clients

    @property
    def rpc_address(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.workdir / "server.log", lines)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"pipeline server for {self.bundle_dir} exited "
                    f"with {self.process.returncode}:\n" + self.log_tail()
                )
            if is_ready(self.url, self.meta):
                return
            time.sleep(0.3)
        raise ServerError(
            f"pipeline server for {self.bundle_dir} not ready after {timeout:.0f}s:\n"
            + self.log_tail()
        )

    def stop(self) -> bool:
        """Drain and stop the server (resuming it first if suspended); see `stop_server`."""
        signal_tree(self.pid, signal.SIGCONT)
        clean = stop_server(self.pid, self.grace_s)
        self.process.wait()
        return clean

    # Fault injection (tests, benchmarks): the whole process tree, worker and gateway included.
    def kill(self) -> None:
        signal_tree(self.pid, signal.SIGKILL)
        self.process.wait()

    def suspend(self) -> None:
        signal_tree(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        signal_tree(self.pid, signal.SIGCONT)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def start_server(
    bundle_dir: Path,
    http_port: int,
    workdir: Path,
    *,
    device: str = "cpu",
    concurrency: int = 1,
    batch_size: int = 1,
    rpc_port: Optional[int] = None,
    grace_s: float = DEFAULT_GRACE_S,
    env: Optional[dict[str, str]] = None,
) -> ServerProcess:
    """Start `python -m serving serve` in a new session; returns at once (see `wait_ready`)."""
    meta = read_bundle(bundle_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    rpc_port = rpc_port or free_port()
    command = [
        sys.executable, "-m", "serving", "serve",
        "--model", str(bundle_dir.resolve()),
        "--http-port", str(http_port),
        "--rpc-port", str(rpc_port),
        "--device", device,
        "--concurrency", str(concurrency),
        "--batch-size", str(batch_size),
        "--workdir", str(workdir.resolve()),
        "--grace", str(grace_s),
    ]  # fmt: skip
    with open(workdir / "server.log", "ab") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() takes every child with it
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
        )
    return ServerProcess(bundle_dir, meta, http_port, workdir, process, grace_s, rpc_port)


def stop_server(pid: int, grace_s: float = DEFAULT_GRACE_S) -> bool:
    """SIGTERM the supervisor `pid` only: it drains its worker for at most `grace_s` and exits
    once nothing of its tree is left. Its process group gets SIGKILL if anything of it is still
    there after grace + STOP_MARGIN_S. True when the stop was clean (no SIGKILL needed).

    Not the whole tree: SIGTERM is the supervisor's cue, and the worker and gateway leave
    stopping to it (they ignore SIGTERM, so a SIGTERM to all of them would do no harm either).
    """
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace_s + STOP_MARGIN_S
    while time.monotonic() < deadline:
        if not group_alive(pid):
            return True
        time.sleep(0.1)
    signal_tree(pid, signal.SIGKILL)  # the worker's group too, though it dies with the supervisor
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return False


def stop_process_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL what is left after `timeout`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def group_alive(pgid: int) -> bool:
    """True while any process of group `pgid` is running (zombies do not count)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
