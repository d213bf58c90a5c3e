"""A rule of the registry holds the same everywhere: `python -m router check`, the router's
start and a hot reload (here: a ramp needs an slo section)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from router.__main__ import main
from tests.router.guard.inprocess import guarded_registry, write_yaml
from tests.support import REPO

PROBLEM = "experiments.sentiment.slo: required with a ramp"


def test_check_and_start_refuse_a_ramp_without_an_slo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = guarded_registry(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:10")
    raw["experiments"]["sentiment"]["ramp"] = {"steps": [10, 50], "every": "1m"}
    path = tmp_path / "experiments.yaml"
    write_yaml(path, raw)
    assert main(["check", "--config", str(path)]) == 1
    assert PROBLEM in capsys.readouterr().err
    started = subprocess.run(
        [sys.executable, "-m", "router", "--config", str(path), "--port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 1 and PROBLEM in started.stderr
    raw["experiments"]["sentiment"]["slo"] = {"p99_ms": 200, "error_rate": 0.01}
    write_yaml(path, raw)
    assert main(["check", "--config", str(path)]) == 0
