"""The report builder on hand-made aggregates (no files): roles, verdicts, the plan's checks."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest

from analysis.aggregates import Aggregates, DayRow, MetricSums
from analysis.registry import parse_registry
from analysis.report import build_report
from analysis.results import Report
from tests.analysis.logbook import registry

START = datetime(2026, 11, 20, tzinfo=timezone.utc)


def worked_example_aggregates(days: float = 14.0, stratum: float = 50.0) -> Aggregates:
    """The worked example: 520 of 10,000 control units converted, 580 of 10,000 treated."""
    sums = {"control": MetricSums(520.0, 520.0, 520), "treatment": MetricSums(580.0, 580.0, 580)}
    # Every unit enrolled and converted on the first day; the run then lasted `days` days.
    first = date(2026, 11, 20)

    def rows(s: MetricSums) -> list[DayRow]:
        return [
            DayRow(first + timedelta(days=k), 10_000, s if k == 0 else MetricSums(), s)
            for k in range(max(1, math.ceil(days)))
        ]

    return Aggregates(
        units={(stratum, "control"): 10_000, (stratum, "treatment"): 10_000},
        metrics={(stratum, arm, "conversion"): s for arm, s in sums.items()},
        segment_units={},
        segment_metrics={},
        daily={(stratum, arm, "conversion"): rows(s) for arm, s in sums.items()},
        binary_metrics=frozenset({"conversion"}),
        first_exposure=START,
        last_exposure=START + timedelta(days=days),
    )


def report_for(aggregates: Aggregates, mde: Optional[float] = 0.01, **plan: Any) -> Report:
    analysis = {
        "registered_at": "2026-11-19",
        "primary": {"metric": "conversion", "type": "proportion", "direction": "increase",
                    **({"mde": mde} if mde else {})},
        "alpha": 0.05, "power": 0.8, "min_days": 7, **plan,
    }  # fmt: skip
    spec = parse_registry(registry(Path("/logs"), analysis=analysis))
    return build_report(spec.experiment("sentiment"), aggregates)


def test_the_worked_example_has_no_winner() -> None:
    # mde 0.01: the planned 8,437 units per arm are reached, and 14 days >= 7: the run is
    # complete, so the fixed-horizon p-value decides.
    report = report_for(worked_example_aggregates())
    primary = report.metrics[0]
    assert primary.comparison.p_value == pytest.approx(0.0627, abs=0.0005)
    assert report.plan.planned_units == 8437  # statistics.NormalDist gives the same
    (verdict,) = report.verdicts
    assert verdict.code == "no_significant_difference"
    assert verdict.line.startswith("VERDICT: NO WINNER")


def test_the_worked_example_with_its_own_mde_is_not_done_yet() -> None:
    # mde 0.005 needs ~32,000 units per arm: too few to read the fixed-horizon p-value.
    report = report_for(worked_example_aggregates(), mde=0.005)
    (verdict,) = report.verdicts
    assert verdict.code == "keep_running"
    assert "10,000 of 32," in verdict.line
    assert any("fewer than the planned" in w for w in report.warnings)


def test_a_short_run_warns_and_an_undated_late_plan_is_suspicious() -> None:
    report = report_for(worked_example_aggregates(days=3.0), registered_at="2026-11-25")
    assert any("shorter than the registered min_days 7" in w for w in report.warnings)
    assert any("after the first exposure" in w for w in report.warnings)
    assert report.verdicts[0].code == "keep_running"


def test_without_an_mde_there_is_no_early_stop() -> None:
    report = report_for(worked_example_aggregates(days=3.0), mde=None)
    assert report.metrics[0].always_valid_p is None
    assert report.plan.planned_units is None
    assert any("no usable mde" in w for w in report.warnings)
    assert report.verdicts[0].code == "keep_running"


def test_unregistered_metrics_are_exploratory_and_missing_registered_ones_are_named() -> None:
    aggregates = worked_example_aggregates()
    extra = {(50.0, arm, "click"): MetricSums(30.0, 90.0, 20) for arm in ("control", "treatment")}
    aggregates = Aggregates(**{**aggregates.__dict__, "metrics": {**aggregates.metrics, **extra}})
    report = report_for(aggregates, secondary=[{"metric": "revenue", "type": "mean"}])
    roles = {(m.metric, m.role) for m in report.metrics}
    assert roles == {("conversion", "primary"), ("revenue", "secondary"), ("click", "exploratory")}
    assert any("secondary metric 'revenue' has no outcome records" in w for w in report.warnings)
    click = next(m for m in report.metrics if m.metric == "click")
    assert click.kind == "mean"  # values other than 0/1 were seen


def test_the_report_serializes_to_plain_json() -> None:
    import json

    data = report_for(worked_example_aggregates()).to_dict()
    text = json.dumps(data)  # NaN would be invalid JSON: it must have become null
    assert "NaN" not in text
    assert data["verdict"][0]["code"] == "no_significant_difference"
    assert data["metrics"][0]["p_value"] == pytest.approx(0.0627, abs=0.0005)
