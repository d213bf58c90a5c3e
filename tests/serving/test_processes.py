"""Starting and stopping pipeline servers leaves nothing behind; up/down/status on a registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from serving.launcher import free_port, group_alive, start_server
from serving.pipeline_service import _descendants

REPO_ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def test_stop_takes_the_whole_process_group(demo_models: Path, tmp_path: Path) -> None:
    server = start_server(demo_models / "sentiment_v1", free_port(), tmp_path / "work")
    server.wait_ready()
    family = [server.pid, *_descendants(server.pid)]
    assert len(family) >= 2, "Paddle Serving runs its HTTP gateway in a child process"
    server.stop()
    assert _wait_gone(family) == []
    assert not group_alive(server.pid)
    # Paddle Serving's files went to the server's work dir, not the caller's cwd.
    assert (tmp_path / "work" / "PipelineServingLogs").is_dir()


def test_sigterm_to_serve_alone_stops_its_children(demo_models: Path, tmp_path: Path) -> None:
    server = start_server(demo_models / "sentiment_v1", free_port(), tmp_path / "work")
    server.wait_ready()
    family = [server.pid, *_descendants(server.pid)]
    os.kill(server.pid, signal.SIGTERM)  # only the main process, as a supervisor would
    server.process.wait(timeout=15)
    assert _wait_gone(family) == []


def _serving(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_up_status_down(demo_models: Path, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    registry = {
        "backends": {
            "sentiment-v1": {"endpoints": [f"http://127.0.0.1:{ports[0]}"], "version": "v1",
                             "model": str(demo_models / "sentiment_v1")},
            "sentiment-v2": {"endpoints": [f"http://127.0.0.1:{ports[1]}",
                                           "http://gpu-node-2.example:8080"], "version": "v2",
                             "model": str(demo_models / "sentiment_v2")},
            "remote-only": {"endpoints": ["http://gpu-node-2.example:8081"], "version": "v3"},
        }
    }  # fmt: skip
    config = tmp_path / "experiments.yaml"
    config.write_text(yaml.safe_dump(registry))
    common = ["--config", str(config), "--run-dir", str(tmp_path / "run")]

    up = _serving("up", *common)
    assert up.returncode == 0, up.stderr
    assert up.stdout.count("ready at") == 2
    assert "already running" in _serving("up", *common).stdout  # idempotent

    status = _serving("status", *common)
    assert status.returncode == 0
    assert status.stdout.count(" yes") == 2
    pids = [int(line.split()[1]) for line in status.stdout.splitlines()[1:]]

    assert _serving("down", *common).returncode == 0
    assert _wait_gone(pids) == []
    after = _serving("status", *common)
    assert after.returncode == 1
    assert after.stdout.count(" no") == 2


def test_up_refuses_a_port_in_use_and_a_missing_bundle(demo_models: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        registry = {"backends": {"b": {"endpoints": [f"http://127.0.0.1:{port}"], "version": "v1",
                                       "model": str(demo_models / "sentiment_v1")}}}  # fmt: skip
        config = tmp_path / "busy.yaml"
        config.write_text(yaml.safe_dump(registry))
        result = _serving("up", "--config", str(config), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert f"port {port} is already in use" in result.stderr

    registry = {"backends": {"b": {"endpoints": [f"http://127.0.0.1:{free_port()}"], "version": "v1",
                                   "model": str(tmp_path / "nowhere")}}}  # fmt: skip
    config.write_text(yaml.safe_dump(registry))
    result = _serving("up", "--config", str(config), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "backend b:" in result.stderr and "not a directory" in result.stderr
