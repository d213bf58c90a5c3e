"""scripts/deploy.sh up, status, down on CPU, with systemd units written on the way.

Run from / with the registry given by its absolute path: the run dir is found beside the
registry, not in the caller's working directory."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from serving.launcher import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _deploy(*args: str, cwd: Path = Path("/")) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO_ROOT / "scripts/deploy.sh"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_deploy_up_status_down(demo_models: Path, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "experiments.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backends": {
                    "sentiment-v2": {
                        "endpoints": [f"http://127.0.0.1:{port}"],
                        "version": "paddle_new_v2",
                        "model": str(demo_models / "sentiment_v2"),
                        "device": "cpu",
                    }
                }
            }
        )
    )
    common = ["--config", str(config)]
    up = _deploy("up", *common, "--grace", "7s", "--systemd", "units", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"ready at http://127.0.0.1:{port}" in up.stdout
        unit = (tmp_path / "units" / f"paddle-serving-sentiment-v2-{port}.service").read_text()
        assert f"--http-port {port} --device cpu" in unit
        assert "--grace 7s" in unit and "KillMode=mixed" in unit and "TimeoutStopSec=17s" in unit
        assert (tmp_path / "run" / "serving" / f"sentiment-v2-{port}" / "server.log").exists()

        status = _deploy("status", *common)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"http://127.0.0.1:{port}" in status.stdout and " yes" in status.stdout
    finally:
        down = _deploy("down", *common)
    assert down.returncode == 0, down.stderr
    assert f"sentiment-v2-{port}: stopped (pid" in down.stdout, down.stdout
    after = _deploy("status", *common)
    assert after.returncode == 1
    assert " no" in after.stdout
    again = _deploy("down", *common)
    assert again.returncode == 0 and "nothing to stop" in again.stdout, again.stdout


def test_deploy_rejects_bad_arguments(tmp_path: Path) -> None:
    assert _deploy("sideways").returncode == 2
    assert "--config needs a value" in _deploy("status", "--config").stderr
    missing = _deploy("status", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "registry not found" in missing.stderr
    assert "usage: scripts/deploy.sh" in _deploy("--help").stdout


def test_help_names_files_that_exist() -> None:
    shown = _deploy("--help").stdout
    named = re.findall(r"(?:deploy|docs)/[\w./@-]+[\w]", shown)
    assert "deploy/systemd/paddle-serving.service.in" in named
    for path in named:
        assert (REPO_ROOT / path).exists(), f"deploy.sh --help names {path}, which is missing"
