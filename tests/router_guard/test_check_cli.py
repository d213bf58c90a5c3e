"""`python -m router check` reports the problems only the guard knows about."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.__main__ import main
from tests.router_guard.inprocess import guarded_registry, write_yaml


def test_check_reports_rollout_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = guarded_registry(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:10")
    raw["experiments"]["sentiment"]["ramp"] = {"steps": [10, 50], "every": "1m"}
    path = tmp_path / "experiments.yaml"
    write_yaml(path, raw)
    assert main(["check", "--config", str(path)]) == 1
    assert "experiments.sentiment.ramp: needs an slo section" in capsys.readouterr().err
    raw["experiments"]["sentiment"]["slo"] = {"p99_ms": 200, "error_rate": 0.01}
    write_yaml(path, raw)
    assert main(["check", "--config", str(path)]) == 0
