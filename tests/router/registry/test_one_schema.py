"""One registry schema: the router, the analysis and `python -m serving` read the same file
the same way, so a file valid for one is valid for all, and a problem reads the same in each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis.registry import RegistryError, load_registry
from router.__main__ import main as router_main
from serving import fleet
from tests.support import REPO


def demo_registry_with_a_baseline(folder: Path) -> Path:
    raw: dict[str, Any] = yaml.safe_load((REPO / "experiments.yaml").read_text())
    raw["router"]["log_dir"] = "logs/"
    raw["backends"]["sentiment-v1"]["model"] = "models/sentiment_v1"
    raw["experiments"]["sentiment"]["analysis"]["primary"]["baseline"] = 0.05  # documented
    path = folder / "experiments.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_registry_with_a_baseline_loads_in_router_analysis_and_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = demo_registry_with_a_baseline(tmp_path)
    assert router_main(["check", "--config", str(path)]) == 0, capsys.readouterr().err
    registry = load_registry(path)
    plan = registry.experiment("sentiment").plan
    assert plan is not None and plan.primary.baseline == 0.05
    assert registry.log_dir == tmp_path / "logs"  # relative to the file, as for the router
    [server] = [s for s in fleet.local_servers(path) if s.backend == "sentiment-v1"]
    assert server.model == tmp_path / "models" / "sentiment_v1"


def test_a_problem_is_refused_by_all_three_in_the_same_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = demo_registry_with_a_baseline(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["experiments"]["sentiment"]["analysis"]["primary"]["baseline"] = -1
    path.write_text(yaml.safe_dump(raw))
    problem = "experiments.sentiment.analysis.primary.baseline: must be > 0"
    assert router_main(["check", "--config", str(path)]) == 1
    assert problem in capsys.readouterr().err
    with pytest.raises(RegistryError, match=problem):
        load_registry(path)
    with pytest.raises(ValueError, match=problem):
        fleet.local_servers(path)
