from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.registry.loading import ConfigError, load_config, parse_config
from tests.router.data import load_table, merge_patch
from tests.support import REPO

CASES = load_table("router_config_cases.json")


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["name"] for c in CASES["cases"]])
def test_registry_validation(case: dict[str, Any]) -> None:
    raw = merge_patch(CASES["base"], case["patch"])
    if not case["problems"]:
        parse_config(raw)
        return
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert sorted(caught.value.problems) == sorted(case["problems"])


def test_error_message_lists_every_problem_with_its_place() -> None:
    raw = merge_patch(
        CASES["base"],
        {"experiments": {"sentiment": {"traffic": 101, "slo": {"p99_ms": -5}}}},
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, source="experiments.yaml")
    assert str(caught.value).splitlines() == [
        "experiments.yaml: 2 problems",
        "  experiments.sentiment.traffic: must be between 0 and 100",
        "  experiments.sentiment.slo.p99_ms: must be > 0",
    ]


def test_durations_are_exposed_as_seconds() -> None:
    config = parse_config(
        merge_patch(CASES["base"], {"experiments": {"sentiment": {"ramp": {"every": "1h"}}}})
    )
    experiment = config.experiments["sentiment"]
    assert experiment.ramp is not None and experiment.slo is not None
    assert experiment.ramp.every_s == 3600.0
    assert (experiment.slo.interval_s, experiment.slo.window_s) == (30.0, 60.0)
    assert config.backends["v1"].probe_interval_s == 1.0


def test_config_is_frozen() -> None:
    config = parse_config(CASES["base"])
    with pytest.raises(ValueError):
        config.experiments["sentiment"].traffic = 50


def test_load_config_reports_yaml_errors_with_line(tmp_path: Path) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_text("router:\n  port: [8080\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("line 3, column 1: invalid YAML")


def test_load_config_refuses_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_text("experiments:\n  a: {}\n  a: {}\n")
    with pytest.raises(ConfigError, match="duplicate key 'a' \\(line 3\\)"):
        load_config(path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_relative_dirs_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_text("router: {log_dir: logs/, state_dir: /var/state}\n")
    config = load_config(path)
    assert config.router.log_dir == tmp_path / "logs"
    assert config.router.state_dir == Path("/var/state")


def test_the_demo_registry_is_valid() -> None:
    config = load_config(REPO / "experiments.yaml")
    sentiment = config.experiments["sentiment"]
    assert (sentiment.control, sentiment.treatment, sentiment.traffic) == (
        "sentiment-v1",
        "sentiment-v2",
        10,
    )
    assert config.router.unit_id.header == "X-User-Id"
