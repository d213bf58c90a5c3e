"""scripts/deploy.sh up, status, down on CPU, with systemd units written on the way."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from serving.launcher import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["scripts/deploy.sh", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
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
    common = ["--config", str(config), "--run-dir", str(tmp_path / "run")]
    up = _deploy("up", *common, "--systemd", str(tmp_path / "units"))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"ready at http://127.0.0.1:{port}" in up.stdout
        unit = (tmp_path / "units" / f"paddle-serving-sentiment-v2-{port}.service").read_text()
        assert f"--http-port {port} --device cpu" in unit
        assert (tmp_path / "run" / "serving" / f"sentiment-v2-{port}" / "server.log").exists()

        status = _deploy("status", *common)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"http://127.0.0.1:{port}" in status.stdout and " yes" in status.stdout
    finally:
        down = _deploy("down", *common)
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    after = _deploy("status", *common)
    assert after.returncode == 1
    assert " no" in after.stdout


def test_deploy_rejects_bad_arguments(tmp_path: Path) -> None:
    assert _deploy("sideways").returncode == 2
    missing = _deploy("status", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "registry not found" in missing.stderr
    assert "usage: scripts/deploy.sh" in _deploy("--help").stdout
