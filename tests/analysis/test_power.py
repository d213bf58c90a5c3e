"""Sample size: the standard two-proportion formula, statsmodels' power tools, and the `samplesize` command."""

from __future__ import annotations

import json
from typing import Any

import pytest

from analysis.cli import main
from analysis.power import (
    Effect,
    days_needed,
    statsmodels_units_per_arm,
    units_per_arm_mean,
    units_per_arm_proportion,
)
from tests.analysis.tables import table

CASES = table("analysis_samplesize.json")


@pytest.mark.parametrize("case", CASES["cases"], ids=str)
def test_standard_formula(case: dict[str, Any]) -> None:
    effect = Effect.of(case["baseline"], case["mde"], case["relative"])
    n = units_per_arm_proportion(effect, case["alpha"], case["power"])
    assert n == case["per_arm"]
    assert days_needed(n, case["daily_units"]) == case["days"]
    # statsmodels (Cohen's h, an arcsine transform) answers the same question a little
    # differently; the two must agree to within a percent.
    assert statsmodels_units_per_arm(effect, case["alpha"], case["power"]) == pytest.approx(
        n, rel=0.01
    )


@pytest.mark.parametrize("case", CASES["invalid"], ids=str)
def test_invalid_inputs_are_refused_by_name(case: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=case["error"]):
        units_per_arm_proportion(Effect.of(case["baseline"], case["mde"], case["relative"]))


def test_mean_sample_size_matches_statsmodels_for_a_standardized_effect() -> None:
    from statsmodels.stats.power import NormalIndPower

    expected = NormalIndPower().solve_power(effect_size=0.1, alpha=0.05, power=0.8, ratio=1.0)
    assert units_per_arm_mean(sd=10.0, delta=1.0) == pytest.approx(expected, abs=1)


def test_samplesize_command_prints_the_standard_number(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["samplesize", "--baseline", "0.05", "--mde", "0.005"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("31,234 units per arm (62,468 in total)")
    assert "statsmodels" in out


def test_samplesize_json_with_days(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["samplesize", "--baseline", "0.05", "--mde", "0.1", "--relative"]
    assert main([*args, "--daily-units", "5000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["units_per_arm"] == 31234
    assert result["days"] == 13
    assert result["target"] == pytest.approx(0.055)


def test_samplesize_bad_input_exits_2_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["samplesize", "--baseline", "0.05", "--mde", "0"]) == 2
    assert "samplesize: mde: must be positive" in capsys.readouterr().err
