"""`python -m serving up|down|status`: the registry's local backends as background servers.

A backend is local when it has a `model:` and an endpoint on this machine (127.0.0.1,
localhost, 0.0.0.0 or this host's name); each such endpoint gets one pipeline server on its
port. Pid files and logs live under `<run-dir>/serving/`; the run dir is `run/` beside the
registry file unless `--run-dir` says otherwise, so every command finds the same one from any
working directory.

`up` checks every port and bundle before it starts anything; a server that then fails to start
or to become ready makes it stop again the servers this call started (not those that were
already running) and fail, naming both. `down` drains each server (SIGTERM to its supervisor)
and says so when there was nothing to stop.
"""

from __future__ import annotations

import json
import socket
import string
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from router.registry.loading import ConfigError, load_config
from serving.bundle import BundleError, read_bundle
from serving.launcher import (
    DEFAULT_GRACE_S,
    REPO_ROOT,
    STOP_MARGIN_S,
    ServerError,
    ServerProcess,
    group_alive,
    is_ready,
    port_in_use,
    start_server,
    stop_server,
)
from serving.pipeline_service import parse_device

LOCAL_HOSTS = {"127.0.0.1", "localhost", "0.0.0.0", "::1", socket.gethostname()}


@dataclass(frozen=True)
class LocalServer:
    """One endpoint of one backend that this machine serves."""

    backend: str
    model: Path
    device: str
    port: int
    # The backend's `grpc_endpoints` entry for this server (same order as `endpoints`); None:
    # a free port, picked at each start.
    rpc_port: Optional[int] = None

    @property
    def key(self) -> str:
        return f"{self.backend}-{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def local_servers(
    config_path: Path, only: Optional[Sequence[str]] = None, device: Optional[str] = None
) -> list[LocalServer]:
    """The registry's backends with a `model:` and a local endpoint (`only`: these names)."""
    try:
        backends = load_config(config_path).backends  # the registry as the router reads it
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    unknown = sorted(set(only or ()) - set(backends))
    if unknown:
        raise ValueError(f"--backend {', '.join(unknown)}: not in {config_path}")
    servers = []
    for name, backend in backends.items():
        if (only and name not in only) or not backend.model:
            continue
        model = Path(backend.model)
        if not model.is_absolute():
            model = config_path.resolve().parent / model
        chosen_device = device or backend.device
        parse_device(chosen_device)
        rpc_ports = [int(t.rpartition(":")[2]) for t in backend.grpc_endpoints or ()]
        for index, endpoint in enumerate(backend.endpoints):
            parts = urlsplit(endpoint)
            if parts.hostname in LOCAL_HOSTS and parts.port:
                rpc_port = rpc_ports[index] if rpc_ports else None
                servers.append(LocalServer(name, model, chosen_device, parts.port, rpc_port))
    return servers


def default_run_dir(config_path: Path) -> Path:
    """`run/` beside the registry file: the same from any working directory."""
    return config_path.resolve().parent / "run"


def _pid_file(run_dir: Path, server: LocalServer) -> Path:
    return run_dir / "serving" / f"{server.key}.json"


def _read_record(run_dir: Path, server: LocalServer) -> dict[str, Any]:
    try:
        record = json.loads(_pid_file(run_dir, server).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _serves(pid: int, server: LocalServer) -> bool:
    """Whether `pid` is a running `serving serve` on this server's port (not a reused pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return "serve" in argv and "--http-port" in argv and str(server.port) in argv


def _read_pid(run_dir: Path, server: LocalServer) -> Optional[int]:
    """The pid of this server's supervisor, if its pid file names one that is still running."""
    try:
        pid = int(_read_record(run_dir, server)["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    return pid if group_alive(pid) and _serves(pid, server) else None


def _check_startable(server: LocalServer, config_path: Path) -> None:
    """Raise ServerError (one line, with the fix) if `server` cannot start here as it is."""
    if port_in_use(server.port):
        raise ServerError(
            f"{server.key}: port {server.port} is already in use: stop what listens there, or "
            f"give backend {server.backend} another endpoint in {config_path}"
        )
    if server.rpc_port is not None and port_in_use(server.rpc_port):
        raise ServerError(
            f"{server.key}: RPC port {server.rpc_port} is already in use: stop what listens "
            f"there, or give backend {server.backend} other grpc_endpoints in {config_path}"
        )
    try:
        read_bundle(server.model)
    except BundleError as exc:
        raise ServerError(f"{server.key}: backend {server.backend}: {exc}") from exc


def _start(server: LocalServer, run_dir: Path, grace_s: float) -> ServerProcess:
    process = start_server(
        server.model,
        server.port,
        run_dir / "serving" / server.key,
        device=server.device,
        rpc_port=server.rpc_port,
        grace_s=grace_s,
    )
    record = {
        "pid": process.pid,
        "backend": server.backend,
        "url": server.url,
        "model": str(server.model),
        "device": server.device,
        "grace_s": grace_s,
        "started_at": time.time(),
    }
    _pid_file(run_dir, server).write_text(json.dumps(record) + "\n")
    return process


def up(
    servers: Sequence[LocalServer],
    run_dir: Path,
    config_path: Path,
    grace_s: float = DEFAULT_GRACE_S,
    timeout: float = 120.0,
) -> int:
    """Start each server not running yet and wait until it answers; all of them, or none.

    Ports and bundles are checked before anything starts. If a server then fails, the ones
    this call started are stopped again (those running before are left as they are) and the
    ServerError names the failed server and the stopped ones.
    """
    to_start = []
    for server in servers:
        pid = _read_pid(run_dir, server)
        if pid is not None:
            print(f"{server.key}: already running (pid {pid})")
        else:
            to_start.append(server)
    for server in to_start:
        _check_startable(server, config_path)  # nothing started yet: nothing to undo
    started: list[tuple[LocalServer, ServerProcess]] = []
    current = None
    try:
        for current in to_start:
            started.append((current, _start(current, run_dir, grace_s)))
        for current, process in started:
            process.wait_ready(timeout)
            print(f"{current.key}: ready at {current.url} (pid {process.pid}, {current.device})")
    except (ServerError, BundleError, OSError, KeyboardInterrupt) as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        failed = current.key if current is not None else "up"
        stopped = _undo(started, run_dir)
        raise ServerError(f"{failed}: {reason}\n{_undo_summary(failed, stopped)}") from exc
    return 0


def _undo(started: Sequence[tuple[LocalServer, ServerProcess]], run_dir: Path) -> list[str]:
    """Stop the servers one `up` started (draining them, all at once); their keys."""
    with ThreadPoolExecutor(max_workers=max(1, len(started))) as pool:
        list(pool.map(lambda item: item[1].stop(), started))
    for server, _ in started:
        _pid_file(run_dir, server).unlink(missing_ok=True)
    return [server.key for server, _ in started]


def _undo_summary(failed: str, stopped: Sequence[str]) -> str:
    """One line: what failed, what was stopped again; those running before were not touched."""
    undone = ", ".join(stopped) if stopped else "nothing had started yet"
    return (
        f"up failed at {failed}; stopped again the servers this call had started: {undone} "
        "(servers already running before were left running)"
    )


def down(servers: Sequence[LocalServer], run_dir: Path) -> int:
    """Drain and stop every running server (all at once); say so when none was running."""
    running = []
    for server in servers:
        pid = _read_pid(run_dir, server)
        if pid is None:
            print(f"{server.key}: not running")
            _pid_file(run_dir, server).unlink(missing_ok=True)
        else:
            grace_s = float(_read_record(run_dir, server).get("grace_s", DEFAULT_GRACE_S))
            running.append((server, pid, grace_s))
    if not running:
        print(f"nothing to stop: no server of this registry is running (run dir {run_dir})")
        return 0
    with ThreadPoolExecutor(max_workers=len(running)) as pool:
        clean = list(pool.map(lambda item: stop_server(item[1], item[2]), running))
    for (server, pid, grace_s), drained in zip(running, clean):
        how = "" if drained else f", killed after {grace_s + STOP_MARGIN_S:g} s"
        print(f"{server.key}: stopped (pid {pid}{how})")
        _pid_file(run_dir, server).unlink(missing_ok=True)
    return 0


def status(servers: Sequence[LocalServer], run_dir: Path) -> int:
    """Print one line per server; exit status 0 only when every one is ready."""
    all_ready = True
    print(f"{'server':<28} {'pid':>8}  {'endpoint':<28} ready")
    for server in servers:
        pid = _read_pid(run_dir, server)
        ready = is_ready(server.url, read_bundle(server.model)) if server.model.is_dir() else False
        all_ready &= ready
        print(f"{server.key:<28} {pid or '-':>8}  {server.url:<28} {'yes' if ready else 'no'}")
    return 0 if all_ready else 1


def write_systemd_units(
    servers: Sequence[LocalServer],
    out_dir: Path,
    run_dir: Path,
    grace_s: float = DEFAULT_GRACE_S,
) -> list[Path]:
    """Render deploy/systemd/paddle-serving.service.in once per server into `out_dir`.

    systemd waits TimeoutStopSec for the supervisor's drain before it kills the unit's cgroup,
    so the unit allows the grace period plus the same margin as `down`.
    """
    template = string.Template((REPO_ROOT / "deploy/systemd/paddle-serving.service.in").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for server in servers:
        unit = out_dir / f"paddle-serving-{server.key}.service"
        unit.write_text(
            template.substitute(
                key=server.key,
                repo=REPO_ROOT,
                python=sys.executable,
                model=server.model,
                port=server.port,
                rpc_port=server.rpc_port or "",
                rpc_option="" if server.rpc_port is None else f" --rpc-port {server.rpc_port}",
                device=server.device,
                workdir=run_dir / "serving" / server.key,
                grace=f"{grace_s:g}s",
                stop_timeout=f"{grace_s + STOP_MARGIN_S:g}s",
            )
        )
        written.append(unit)
    return written


def run_command(
    command: str,
    config: Path,
    run_dir: Optional[Path] = None,
    only: Optional[Sequence[str]] = None,
    device: Optional[str] = None,
    grace_s: float = DEFAULT_GRACE_S,
) -> int:
    servers = local_servers(config, only, device)
    if not servers:
        print(f"{config}: no backend with a local model and endpoint on this machine")
        return 0
    run_dir = (run_dir or default_run_dir(config)).resolve()
    if command == "up":
        (run_dir / "serving").mkdir(parents=True, exist_ok=True)
        return up(servers, run_dir, config, grace_s)
    if command == "down":
        return down(servers, run_dir)
    return status(servers, run_dir)
