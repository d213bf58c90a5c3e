"""Starting and stopping pipeline servers leaves nothing behind; up/down/status on a registry.

(The drain on SIGTERM itself: test_supervision.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from serving.bundle import PARAMS_FILE
from serving.launcher import free_port, group_alive, start_server
from serving.supervisor import descendants

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
    family = [server.pid, *descendants(server.pid)]
    assert len(family) >= 3, "supervisor, worker, and the worker's HTTP gateway process"
    assert server.stop(), "drained and gone within the grace period"
    assert _wait_gone(family) == []
    assert not group_alive(server.pid)
    # Paddle Serving's files went to the server's work dir, not the caller's cwd.
    assert (tmp_path / "work" / "PipelineServingLogs").is_dir()


def test_sigterm_to_serve_alone_stops_its_children(demo_models: Path, tmp_path: Path) -> None:
    server = start_server(demo_models / "sentiment_v1", free_port(), tmp_path / "work")
    server.wait_ready()
    family = [server.pid, *descendants(server.pid)]
    os.kill(server.pid, signal.SIGTERM)  # only the main process, as a supervisor would
    server.process.wait(timeout=15)
    assert _wait_gone(family) == []


def _serving(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args],
        cwd=cwd, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip


def _pids(status: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """server key -> pid, from the table `status` prints (running servers only)."""
    rows = [line.split() for line in status.stdout.splitlines()[1:]]
    return {row[0]: int(row[1]) for row in rows if row[1].isdigit()}


def test_up_status_down(demo_models: Path, tmp_path: Path) -> None:
    """With no --run-dir, status and down find what up started from any working directory."""
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
    common = ["--config", str(config)]

    up = _serving("up", *common)
    assert up.returncode == 0, up.stderr
    assert up.stdout.count("ready at") == 2
    assert "already running" in _serving("up", *common).stdout  # idempotent
    assert len(list((tmp_path / "run" / "serving").glob("*.json"))) == 2  # beside the registry

    status = _serving("status", *common, cwd=Path("/"))
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count(" yes") == 2
    pids = list(_pids(status).values())
    assert len(pids) == 2

    down = _serving("down", *common, cwd=Path("/"))
    assert down.returncode == 0, down.stderr
    assert down.stdout.count(": stopped (pid") == 2, down.stdout
    assert _wait_gone(pids) == []
    after = _serving("status", *common, cwd=Path("/"))
    assert after.returncode == 1
    assert after.stdout.count(" no") == 2
    again = _serving("down", *common, cwd=Path("/"))
    assert again.returncode == 0
    assert "nothing to stop" in again.stdout, again.stdout


def test_up_that_fails_stops_what_it_started(demo_models: Path, tmp_path: Path) -> None:
    """A server that cannot start makes `up` stop the ones it started, not those running before."""
    broken = tmp_path / "broken"
    shutil.copytree(demo_models / "sentiment_v2", broken)
    (broken / PARAMS_FILE).write_bytes(b"\0" * 100)  # a bundle, but no model Paddle can load
    ports = {"before": free_port(), "fine": free_port(), "broken": free_port()}
    models = {"before": demo_models / "sentiment_v1", "fine": demo_models / "sentiment_v2",
              "broken": broken}  # fmt: skip
    registry = {
        "backends": {
            name: {"endpoints": [f"http://127.0.0.1:{ports[name]}"], "version": name,
                   "model": str(models[name])}
            for name in ports
        }
    }  # fmt: skip
    config = tmp_path / "experiments.yaml"
    config.write_text(yaml.safe_dump(registry))
    common = ["--config", str(config)]
    assert _serving("up", *common, "--backend", "before").returncode == 0
    try:
        before = _pids(_serving("status", *common))
        result = _serving("up", *common)
        assert result.returncode != 0
        message = result.stderr.strip().splitlines()
        assert message[0].startswith(f"error: broken-{ports['broken']}: "), result.stderr
        summary = f"up failed at broken-{ports['broken']}; stopped again the servers this call had"
        assert message[-1].startswith(summary), result.stderr
        assert f"fine-{ports['fine']}" in message[-1] and "before-" not in message[-1]
        status = _serving("status", *common)
        assert _pids(status) == before, status.stdout  # only what ran before runs now
        assert not (tmp_path / "run" / "serving" / f"fine-{ports['fine']}.json").exists()
        with socket.socket() as probe:  # the port of the server stopped again is free
            probe.bind(("127.0.0.1", ports["fine"]))
    finally:
        _serving("down", *common)
    assert _wait_gone(list(before.values())) == []


def test_up_starts_nothing_when_a_later_backend_cannot_start(
    demo_models: Path, tmp_path: Path
) -> None:
    """A busy port on the second backend: the first is not left running (it never starts)."""
    first = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        registry = {"backends": {
            "first": {"endpoints": [f"http://127.0.0.1:{first}"], "version": "v1",
                      "model": str(demo_models / "sentiment_v1")},
            "second": {"endpoints": [f"http://127.0.0.1:{port}"], "version": "v2",
                       "model": str(demo_models / "sentiment_v2")},
        }}  # fmt: skip
        config = tmp_path / "experiments.yaml"
        config.write_text(yaml.safe_dump(registry))
        result = _serving("up", "--config", str(config))
        status = _serving("status", "--config", str(config))
    try:
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"error: second-{port}: port {port} is already in use: stop what listens there, "
            f"or give backend second another endpoint in {config}"
        ]
        assert _pids(status) == {}, status.stdout  # the first is not running
    finally:
        _serving("down", "--config", str(config))


def test_up_refuses_a_port_in_use_and_a_missing_bundle(demo_models: Path, tmp_path: Path) -> None:
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
    assert result.stderr.strip().splitlines() == [
        f"error: b-{port}: port {port} is already in use: stop what listens there, "
        f"or give backend b another endpoint in {config}"
    ]

    registry = {"backends": {"b": {"endpoints": [f"http://127.0.0.1:{free_port()}"], "version": "v1",
                                   "model": str(tmp_path / "nowhere")}}}  # fmt: skip
    config.write_text(yaml.safe_dump(registry))
    result = _serving("up", "--config", str(config), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "backend b:" in result.stderr and "not a directory" in result.stderr
