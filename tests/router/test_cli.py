"""`python -m router check` and `python -m router assign`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from router.__main__ import main
from tests.router.data import load_table
from tests.router.registry.test_hostile_files import HOSTILE, Write
from tests.support import REPO

VECTORS = load_table("assign_two_arm.json")


def test_check_accepts_the_demo_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(REPO / "experiments.yaml")]) == 0
    out = capsys.readouterr().out
    assert "ok (2 backends, 1 experiment" in out
    assert "sentiment: /sentiment/prediction traffic 10%" in out


def test_check_prints_every_problem_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    raw = yaml.safe_load((REPO / "experiments.yaml").read_text())
    raw["experiments"]["sentiment"]["traffic"] = 120
    raw["experiments"]["sentiment"]["slo"]["p99_ms"] = 0
    raw["backends"]["sentiment-v1"]["timeout"] = 3
    path.write_text(yaml.safe_dump(raw))
    assert main(["check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "3 problems" in err
    assert "experiments.sentiment.traffic: must be between 0 and 100" in err
    assert "experiments.sentiment.slo.p99_ms: must be > 0" in err
    assert "backends.sentiment-v1.timeout: unknown key" in err


def test_assign_matches_the_vectors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load((REPO / "experiments.yaml").read_text())
    raw["experiments"]["sentiment"]["salt"] = VECTORS["salt"]
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump(raw))
    for case in VECTORS["cases"][:21]:
        args = ["assign", "--config", str(path), "--experiment", "sentiment"]
        args += ["--unit", case["unit"], "--traffic", str(case["traffic"]), "--json"]
        assert main(args) == 0
        result = json.loads(capsys.readouterr().out)
        assert (result["bucket"], result["variant"]) == (case["bucket"], case["variant"])
        assert result["enrolled"] is True


def test_assign_unknown_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(REPO / "experiments.yaml")
    assert main(["assign", "--config", config, "--experiment", "nope", "--unit", "u"]) == 2
    assert "unknown experiment 'nope' (known: sentiment)" in capsys.readouterr().err


def test_module_entry_point_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "router", "assign", "--config", "experiments.yaml",
         "--experiment", "sentiment", "--unit", "u123"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "bucket 9409" in done.stdout and "variant control" in done.stdout


def run_router(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize(("case", "write", "says"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_check_of_a_file_that_is_no_registry_is_one_line_and_exit_1(
    tmp_path: Path, case: str, write: Write, says: str
) -> None:
    path = tmp_path / "experiments.yaml"
    write(path)
    done = run_router("check", "--config", str(path))
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()  # no traceback, no second line
    assert line.startswith(f"error: {path}: ") and says in line


@pytest.mark.parametrize("case", ["complex key", "FIFO", "symlink to /dev/zero", "empty"])
def test_serving_a_file_that_is_no_registry_is_one_line_and_exit_1(
    tmp_path: Path, case: str
) -> None:
    [(_, write, says)] = [c for c in HOSTILE if c[0] == case]
    path = tmp_path / "experiments.yaml"
    write(path)
    done = run_router("--config", str(path), "--port", "0")
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: {path}: ") and says in line
