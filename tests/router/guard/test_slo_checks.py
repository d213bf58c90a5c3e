"""The SLO check verdict, from the data table tests/data/slo_checks.json."""

from __future__ import annotations

from typing import Any

import pytest

from router.guard.slo import CheckResult, SloThresholds, WindowStats, evaluate, worst
from tests.router.guard.tables import case_id, load_cases, stats_from, thresholds_from

CASES = load_cases("slo_checks.json")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_check_verdict(case: dict[str, Any]) -> None:
    treatment = stats_from(case["treatment"])
    assert treatment is not None
    result = evaluate(thresholds_from(case["thresholds"]), treatment, stats_from(case["control"]))

    assert result.check == case["check"], result.reasons
    for expected in case.get("reasons", []):
        assert any(expected in reason for reason in result.reasons), (expected, result.reasons)
    for key, value in case.get("measured", {}).items():
        assert result.measured[key] == pytest.approx(value), key
    # Thresholds are reported as configured, for the decision record.
    assert result.thresholds == {k: v for k, v in case["thresholds"].items() if v is not None}


def test_the_table_covers_every_verdict() -> None:
    assert {case["check"] for case in CASES} == {"pass", "fail", "inconclusive"}


class _Slo:
    """A config object with the attributes of router.registry.schema.SloConfig (duck-typed)."""

    min_samples = 50
    p99_ms = 250.0
    error_rate = 0.02
    p99_ratio_max = None
    error_rate_delta_max = 0.01


def test_thresholds_from_a_duck_typed_config() -> None:
    thresholds = SloThresholds.from_config(_Slo())
    assert thresholds == SloThresholds(50, 250.0, 0.02, None, 0.01)
    assert thresholds.as_record() == {
        "min_samples": 50,
        "p99_ms": 250.0,
        "error_rate": 0.02,
        "error_rate_delta_max": 0.01,
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("min_samples", -1, "slo.min_samples: must be >= 0"),
        ("p99_ms", -5.0, "slo.p99_ms: must be >= 0"),
        ("error_rate", float("nan"), "slo.error_rate: must be >= 0"),
    ],
)
def test_bad_thresholds_name_the_field(field: str, value: float, message: str) -> None:
    arguments: dict[str, Any] = {"min_samples": 10, field: value}
    with pytest.raises(ValueError, match=message):
        SloThresholds(**arguments)


def test_worst_picks_the_most_severe_arm_first_listed_on_ties() -> None:
    def result(check: str) -> CheckResult:
        return CheckResult(check, {}, {}, ())  # type: ignore[arg-type]

    assert worst({"a": result("pass"), "b": result("fail"), "c": result("inconclusive")})[0] == "b"
    assert worst({"a": result("pass"), "b": result("inconclusive")})[0] == "b"
    assert worst({"a": result("fail"), "b": result("fail")})[0] == "a"
    with pytest.raises(ValueError, match="at least one"):
        worst({})


def test_measured_values_are_rounded_for_the_record() -> None:
    stats = WindowStats(count=3, errors=1, error_rate=1 / 3, p99_ms=12.3456789)
    assert stats.as_measured() == {
        "samples": 3,
        "errors": 1,
        "error_rate": 0.333333,
        "p99_ms": 12.346,
    }
