"""deploy/docker/entrypoint.sh, the image's entry point, run from a checkout: a serving node it
starts answers, its readiness probe says so (a real prediction), and SIGTERM stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from serving.launcher import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO_ROOT / "deploy" / "docker" / "entrypoint.sh"
ENV = {**os.environ, "PADDLE_AB_HOME": str(REPO_ROOT)}


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd="/"
    )


def test_help_and_bad_commands() -> None:
    shown = _run("--help")
    assert shown.returncode == 0 and "router [ARGS...]" in shown.stdout
    assert _run().returncode == 2
    unknown = _run("sideways")
    assert unknown.returncode == 2 and "unknown command: sideways" in unknown.stderr


def test_wait_bundle(tmp_path: Path) -> None:
    missing = _run("wait-bundle", str(tmp_path), "1")
    assert missing.returncode == 1 and "no bundle at" in missing.stderr
    (tmp_path / "bundle.json").write_text("{}")
    assert _run("wait-bundle", str(tmp_path), "1").returncode == 0


def test_router_command_reads_the_registry_it_is_given(tmp_path: Path) -> None:
    config = tmp_path / "experiments.yaml"
    config.write_text("backends: {}\nexperiments: {}\n")
    result = subprocess.run(
        [str(ENTRYPOINT), "router", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, "PADDLE_AB_CONFIG": str(tmp_path / "nope.yaml")},
        cwd="/",
    )
    assert result.returncode != 0
    assert "nope.yaml" in result.stdout + result.stderr


def test_serving_answers_and_probe_says_ready(demo_models: Path, tmp_path: Path) -> None:
    port = free_port()
    model = demo_models / "sentiment_v1"
    assert _run("probe", "--model", str(model), "--http-port", str(port)).returncode == 1
    workdir = tmp_path / "serving"
    server = subprocess.Popen(
        [
            str(ENTRYPOINT),
            "serving",
            "--model",
            str(model),
            "--http-port",
            str(port),
            "--grace",
            "2s",
        ],
        env={**ENV, "SERVING_WORKDIR": str(workdir)},
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            probe = _run("probe", "--model", str(model), "--http-port", str(port))
            if probe.returncode == 0:
                break
            assert server.poll() is None, "the server exited"
            assert time.monotonic() < deadline, probe.stderr
            time.sleep(1)
        # Paddle Serving's own files went to the working directory, none beside the code.
        assert (workdir / "PipelineServingLogs").is_dir()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(timeout=60) == 0
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
