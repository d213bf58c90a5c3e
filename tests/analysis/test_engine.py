"""The file reader: which records count, in which arm, and what is skipped and counted."""

from __future__ import annotations

import gzip
from datetime import timedelta
from pathlib import Path

import pytest

from analysis.aggregates import Aggregates, MetricSums
from analysis.engine import aggregate_logs
from analysis.logfiles import LogError, find_logs, last_line_truncated, read_decisions
from analysis.traffic_history import BEGINNING, TrafficPeriod
from tests.analysis.logbook import START, exposure, outcome, write_daily

T0 = START + timedelta(hours=9)
HISTORY = (TrafficPeriod(BEGINNING, 50.0),)


def run(log_dir: Path, attributes: tuple[str, ...] = ("city",)) -> Aggregates:
    return aggregate_logs(find_logs(log_dir), "sentiment", attributes, HISTORY, threads=1)


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    day2 = T0 + timedelta(days=1)
    exposures = [
        # u1: first control in Beijing; later logged in treatment from Shanghai (a ramp moved it).
        exposure(T0, "u1", "control", city="beijing"),
        exposure(day2, "u1", "treatment", city="shanghai"),
        # u2 is not enrolled, u3 belongs to another experiment, and one request had no unit.
        exposure(T0, "u2", "control", enrolled=False, city="beijing"),
        exposure(T0, "u3", "treatment", experiment="other", city="beijing"),
        exposure(T0, None, "control", enrolled=False),
        # u4: treatment that failed and was served by control: stays in treatment.
        exposure(T0 + timedelta(minutes=5), "u4", "treatment", fallback=True, city="shanghai"),
        exposure(day2, "u4", "treatment", city="shanghai"),
        # u5: treatment, a hashed-looking unit id: opaque, nothing special.
        exposure(day2, "9f86d081884c7d659a2feaa0c55ad015", "treatment"),
    ]
    outcomes = [
        outcome(T0 - timedelta(minutes=1), "u1", "conversion"),  # before exposure: not counted
        outcome(T0 + timedelta(minutes=1), "u1", "conversion"),
        outcome(day2 + timedelta(minutes=1), "u1", "conversion"),  # a second one: still 1 unit
        outcome(T0 + timedelta(minutes=6), "u4", "revenue", 10.0, experiment="sentiment"),
        outcome(day2 + timedelta(minutes=1), "u4", "revenue", 5.0),
        outcome(day2 + timedelta(minutes=2), "u4", "revenue", 99.0, experiment="other"),
        outcome(day2, "u3", "conversion"),  # unit of another experiment only: unknown here
        outcome(day2 + timedelta(hours=1), "9f86d081884c7d659a2feaa0c55ad015", "revenue", 7.5),
    ]
    directory = tmp_path / "logs"
    write_daily(directory, "exposures", exposures, gzip_days=[day2.date().isoformat()])
    write_daily(directory, "outcomes", outcomes)
    # A writer killed mid-record, and a garbled line in the middle of a file.
    with open(directory / "exposures-2026-11-20.jsonl", "a") as file:
        file.write('{"ts":"2026-11-20T23:59:59.000Z","experiment":"sentiment","unit":"u9","enr')
    text = (directory / "outcomes-2026-11-20.jsonl").read_text()
    (directory / "outcomes-2026-11-20.jsonl").write_text("not json at all\n" + text)
    return directory


def test_units_belong_to_their_first_arm(logs: Path) -> None:
    result = run(logs)
    assert result.arms == {"control": 1, "treatment": 2}
    assert result.quality.switched_units == 1
    assert result.quality.fallback_units == 1
    assert result.quality.not_enrolled == 2
    assert result.quality.exposure_records == 7


def test_outcomes_count_after_first_exposure_for_this_experiment(logs: Path) -> None:
    result = run(logs)
    assert result.metrics[(50.0, "control", "conversion")] == MetricSums(2.0, 4.0, 1)
    assert result.metrics[(50.0, "treatment", "revenue")] == MetricSums(22.5, 15.0**2 + 7.5**2, 2)
    assert (50.0, "treatment", "conversion") not in result.metrics
    assert result.quality.outcomes_before_exposure == 1
    assert result.quality.outcomes_unknown_unit == 1
    assert result.quality.outcomes_used == 5
    assert result.binary_metrics == {"conversion"}


def test_unreadable_lines_are_skipped_and_counted(logs: Path) -> None:
    result = run(logs)
    assert result.quality.unreadable_lines == 2
    assert result.quality.truncated_last_lines == 1
    assert result.quality.exposure_files == 2  # one of them gzipped


def test_attributes_are_taken_at_the_first_exposure(logs: Path) -> None:
    result = run(logs)
    assert result.segment_units[("city", "beijing", 50.0, "control")] == 1
    assert result.segment_units[("city", "shanghai", 50.0, "treatment")] == 1
    assert result.segment_units[("city", "(none)", 50.0, "treatment")] == 1
    assert ("city", "shanghai", 50.0, "control") not in result.segment_units
    assert result.segment_metrics[("city", "shanghai", 50.0, "treatment", "revenue")].total == 15.0


def test_a_run_shorter_than_two_days_is_followed_by_the_hour(logs: Path) -> None:
    result = run(logs)
    assert result.period == timedelta(hours=1)
    rows = result.daily[(50.0, "treatment", "revenue")]
    assert rows[0].day == T0  # the hour of the first exposure
    assert rows[0].units == 1 and rows[-1].units == 2
    assert rows[0].daily == MetricSums(10.0, 100.0, 1)
    assert rows[-1].cumulative == result.metrics[(50.0, "treatment", "revenue")]
    control = result.daily[(50.0, "control", "conversion")]
    assert control[0].cumulative == MetricSums(1.0, 1.0, 1)
    assert control[-1].cumulative == result.metrics[(50.0, "control", "conversion")]


def test_daily_series_end_at_the_totals(logs: Path) -> None:
    # A unit seen two days later makes the run long enough to be followed by the day.
    late = T0 + timedelta(days=2, hours=1)
    write_daily(logs, "exposures", [exposure(late, "u7", "control")])
    result = run(logs)
    assert result.period == timedelta(days=1)
    rows = result.daily[(50.0, "treatment", "revenue")]
    assert [r.day.isoformat() for r in rows] == ["2026-11-20", "2026-11-21", "2026-11-22"]
    assert [r.units for r in rows] == [1, 2, 2]
    assert rows[0].daily == MetricSums(10.0, 100.0, 1)
    assert rows[1].daily == MetricSums(12.5, 25.0 + 56.25, 2)
    assert rows[-1].cumulative == result.metrics[(50.0, "treatment", "revenue")]
    control = result.daily[(50.0, "control", "conversion")]
    assert control[0].cumulative == MetricSums(1.0, 1.0, 1)
    assert control[-1].cumulative == result.metrics[(50.0, "control", "conversion")]


def test_units_are_stratified_by_the_traffic_at_their_first_exposure(logs: Path) -> None:
    history = (
        TrafficPeriod(BEGINNING, 10.0),
        TrafficPeriod(T0 + timedelta(hours=12), 50.0),
    )
    result = aggregate_logs(find_logs(logs), "sentiment", ("city",), history, threads=1)
    assert result.units == {(10.0, "control"): 1, (10.0, "treatment"): 1, (50.0, "treatment"): 1}
    assert result.strata == [10.0, 50.0]
    assert result.arms == {"control": 1, "treatment": 2}
    assert result.metrics[(50.0, "treatment", "revenue")].total == 7.5
    assert result.segment_units[("city", "(none)", 50.0, "treatment")] == 1
    assert result.daily[(10.0, "treatment", "revenue")][-1].units == 1


def test_empty_and_missing_log_directories(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="log directory not found"):
        find_logs(tmp_path / "nope")
    result = run(tmp_path)
    assert result.arms == {} and result.metrics == {} and result.first_exposure is None


def test_exposures_without_outcome_files(tmp_path: Path) -> None:
    write_daily(tmp_path, "exposures", [exposure(T0, "u1", "control")])
    result = run(tmp_path)
    assert result.arms == {"control": 1}
    assert result.metrics == {}


def test_truncation_is_detected_in_plain_and_gzipped_files(tmp_path: Path) -> None:
    whole, cut = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    whole.write_text('{"a": 1}\n')
    with gzip.open(cut, "wt") as file:
        file.write('{"a": 1}\n{"a": ')
    empty = tmp_path / "c.jsonl"
    empty.write_text("")
    assert not last_line_truncated(whole)
    assert last_line_truncated(cut)
    assert not last_line_truncated(empty)


def test_decision_log_tolerates_a_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_text(
        '{"ts":"2026-11-20T00:00:00Z","experiment":"sentiment","traffic":5}\n[1]\n{"ts":'
    )
    result = read_decisions((path,))
    assert [place for place, _ in result.records] == ["decisions.jsonl:1"]
    assert (result.unreadable, result.truncated_last_lines) == (2, 1)
