"""`python -m serving up|down|status`: the registry's local backends as background servers.

A backend is local when it has a `model:` and an endpoint on this machine (127.0.0.1,
localhost, 0.0.0.0 or this host's name); each such endpoint gets one pipeline server on its
port. Pid files and logs live under `<run-dir>/serving/`.
"""

from __future__ import annotations

import json
import socket
import string
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from router.registry.loading import ConfigError, load_config
from serving.bundle import BundleError, read_bundle
from serving.launcher import (
    REPO_ROOT,
    ServerError,
    group_alive,
    is_ready,
    start_server,
    stop_process_group,
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
        for endpoint in backend.endpoints:
            parts = urlsplit(endpoint)
            if parts.hostname in LOCAL_HOSTS and parts.port:
                servers.append(LocalServer(name, model, chosen_device, parts.port))
    return servers


def _pid_file(run_dir: Path, server: LocalServer) -> Path:
    return run_dir / "serving" / f"{server.key}.json"


def _read_pid(run_dir: Path, server: LocalServer) -> Optional[int]:
    try:
        pid = int(json.loads(_pid_file(run_dir, server).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if group_alive(pid) else None


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def up(servers: Sequence[LocalServer], run_dir: Path, timeout: float = 120.0) -> int:
    started = []
    for server in servers:
        if _read_pid(run_dir, server) is not None:
            print(f"{server.key}: already running")
            continue
        if _port_taken(server.port):
            raise ServerError(
                f"{server.key}: port {server.port} is already in use by another process"
            )
        try:
            read_bundle(server.model)
        except BundleError as exc:
            raise BundleError(f"backend {server.backend}: {exc}") from exc
        process = start_server(
            server.model, server.port, run_dir / "serving" / server.key, device=server.device
        )
        record = {
            "pid": process.pid,
            "backend": server.backend,
            "url": server.url,
            "model": str(server.model),
            "device": server.device,
            "started_at": time.time(),
        }
        _pid_file(run_dir, server).write_text(json.dumps(record) + "\n")
        started.append((server, process))
    for server, process in started:
        try:
            process.wait_ready(timeout)
        except ServerError:
            down([s for s, _ in started], run_dir)
            raise
        print(f"{server.key}: ready at {server.url} (pid {process.pid}, {server.device})")
    return 0


def down(servers: Sequence[LocalServer], run_dir: Path) -> int:
    for server in servers:
        pid = _read_pid(run_dir, server)
        if pid is not None:
            stop_process_group(pid)
            print(f"{server.key}: stopped (pid {pid})")
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


def write_systemd_units(servers: Sequence[LocalServer], out_dir: Path, run_dir: Path) -> list[Path]:
    """Render deploy/systemd/paddle-serving.service.in once per server into `out_dir`."""
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
                device=server.device,
                workdir=run_dir / "serving" / server.key,
            )
        )
        written.append(unit)
    return written


def run_command(
    command: str,
    config: Path,
    run_dir: Path,
    only: Optional[Sequence[str]] = None,
    device: Optional[str] = None,
) -> int:
    servers = local_servers(config, only, device)
    if not servers:
        print(f"{config}: no backend with a local model and endpoint on this machine")
        return 0
    (run_dir / "serving").mkdir(parents=True, exist_ok=True)
    actions: dict[str, Any] = {"up": up, "down": down, "status": status}
    code: int = actions[command](servers, run_dir.resolve())
    return code
