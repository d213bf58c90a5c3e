"""Honest verdicts on messy logs: clock skew at a rollback, re-reads after the planned end, a
mean metric's interval, lost and repeated records, bad values, and what the reader sees."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis.cli import main
from tests.analysis import rootsearch
from tests.analysis.logbook import (
    START,
    exposure,
    iso,
    outcome,
    registry,
    write_daily,
    write_decisions,
    write_registry,
)
from tests.analysis.test_report_files import Z95, metric, report_json


def plan(**change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "registered_at": "2026-11-19",
        "primary": {"metric": "conversion", "type": "proportion", "direction": "increase",
                    "mde": 0.02, "baseline": 0.10},
        "secondary": [{"metric": "revenue", "type": "mean"}],
        "alpha": 0.05, "power": 0.8, "min_days": 7,
    }  # fmt: skip
    body.update(change)
    return body


@pytest.mark.parametrize("skewed", [True, False])
def test_one_unit_first_exposed_after_a_rollback_does_not_flip_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], skewed: bool
) -> None:
    """A true +12.5 % lift; the treatment is rolled back to 0 % on day 3, and one treatment
    unit's first exposure is logged 30 ms after the rollback (the exposure's clock runs ahead
    of the decision's). It must stay one unit: no early 'LOSES', no revenue metric of n/a.
    Without that unit, the control units enrolled while rolled back have nothing to be
    compared with, and the Run line says so instead of showing other counts than the verdict."""
    rng = np.random.default_rng(4)
    exposures, outcomes = [], []
    rollback = START + timedelta(days=3)
    for u in range(8_000):
        live = u < 4_000
        arm = ("treatment" if u % 2 else "control") if live else "control"
        moment = START + timedelta(seconds=int(u * 3 * 86_400 / 4_000) if live else 0)
        if not live:
            moment = rollback + timedelta(seconds=1 + (u - 4_000) * 30)
        unit = f"u{u}"
        exposures.append(exposure(moment, unit, arm))
        rate = 0.1125 if arm == "treatment" else 0.10
        if rng.random() < rate:
            outcomes.append(outcome(moment + timedelta(minutes=2), unit, "conversion"))
            outcomes.append(outcome(moment + timedelta(minutes=3), unit, "revenue", 20.0))
    if skewed:
        exposures.append(exposure(rollback + timedelta(milliseconds=30), "late", "treatment"))
    write_daily(tmp_path / "logs", "exposures", exposures)
    write_daily(tmp_path / "logs", "outcomes", outcomes)
    write_decisions(tmp_path / "logs", [
        {"ts": iso(rollback), "experiment": "sentiment", "action": "rollback", "actor": "slo",
         "previous_traffic": 50},
    ])  # fmt: skip
    config = write_registry(tmp_path / "experiments.yaml", registry(Path("logs"), analysis=plan()))
    report = report_json(capsys, config)
    verdict = report["verdict"][0]
    assert verdict["code"] != "treatment_loses", verdict["line"]
    conversion = metric(report, "conversion")
    assert conversion["lift"] > 0
    revenue = metric(report, "revenue")
    assert revenue["p_value"] is not None and revenue["lift_ci"][0] is not None
    # The terminal's Run line says why the comparison holds fewer control units than the run.
    assert main(["report", "--config", str(config), "--threads", "1"]) == 0
    terminal = capsys.readouterr().out
    compared = report["run"]["compared_units"]
    if compared == report["run"]["units"]:
        assert skewed and "compared:" not in terminal
    else:
        assert not skewed
        assert f"compared: control {compared['control']:,}" in terminal
        assert "4,000 control unit(s) were enrolled while the traffic gave another arm" in terminal


def aa_then_divergence(directory: Path, days: int) -> None:
    """Identical arms for five days (the same conversions, unit by unit), then a treatment
    that converts twice as often: read on all the data it would 'win'."""
    exposures, outcomes = [], []
    for day in range(days):
        for u in range(1_000):
            moment = START + timedelta(days=day, seconds=1 + u * 80)
            for arm in ("control", "treatment"):
                unit = f"{arm}-{day}-{u}"
                exposures.append(exposure(moment, unit, arm))
                converts = u % 10 == 0 or (day >= 5 and arm == "treatment" and u % 10 == 1)
                if converts:
                    outcomes.append(outcome(moment + timedelta(minutes=1), unit, "conversion"))
    write_daily(directory, "exposures", exposures)
    write_daily(directory, "outcomes", outcomes)


def test_rereading_after_the_planned_end_repeats_its_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plan (4 days, 3,841 units per arm) is met at the end of the fifth day (the first
    exposure came a second after midnight). A report on day 6 and one on day 12 both read the
    data to that point, once: NO WINNER, with the same p-value."""
    readings = []
    for days in (6, 12):
        logs = tmp_path / f"day{days}"
        aa_then_divergence(logs, days)
        body = registry(logs, analysis=plan(min_days=4, secondary=[]))
        config = write_registry(tmp_path / f"experiments-{days}.yaml", body)
        readings.append(report_json(capsys, config))
    early, late = readings
    for report in readings:
        verdict = report["verdict"][0]
        assert verdict["code"] == "no_significant_difference", verdict["line"]
        assert "data to 2026-11-25 00:00 UTC" in verdict["line"]
        assert report["plan"]["planned_end"] == "2026-11-25T00:00:00+00:00"
    assert early["verdict"][0]["p_value"] == late["verdict"][0]["p_value"] == pytest.approx(1.0)
    # All the data to day 12 would have 'won': the previous rule read this every day.
    days = next(t for t in late["daily"] if t["metric"] == "conversion")["days"]
    assert days[-1]["cumulative"]["p_value"] < 1e-6
    assert metric(late, "conversion")["data_through"] == "2026-11-25T00:00:00+00:00"


def test_a_mean_metric_win_is_printed_with_an_interval_that_agrees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Skewed revenue (seed 55): Welch's p = 0.025, and the delta-method interval of the lift
    went from -0.27 % to +290 %. The verdict's interval (Fieller's, at Welch's critical value)
    must exclude 0 like the test does."""
    rng = np.random.default_rng(55)
    control = np.round(rng.gamma(0.3, 60.0, 400) * (rng.random(400) < 0.3), 2)
    treatment = np.round(rng.gamma(0.3, 80.0, 120) * (rng.random(120) < 0.3), 2)
    exposures, outcomes = [], []
    for arm, values in (("control", control), ("treatment", treatment)):
        for u, value in enumerate(values):
            unit = f"{arm}-{u}"
            moment = START + timedelta(seconds=u)
            exposures.append(exposure(moment, unit, arm))
            if value > 0:
                outcomes.append(outcome(moment + timedelta(minutes=1), unit, "revenue", value))
    write_daily(tmp_path / "logs", "exposures", exposures)
    write_daily(tmp_path / "logs", "outcomes", outcomes)
    analysis = plan(
        primary={"metric": "revenue", "type": "mean", "direction": "increase", "mde": 50},
        secondary=[],
        min_days=0,
    )
    body = registry(Path("logs"), analysis=analysis, traffic=23.08)  # 120 of 520 units
    config = write_registry(tmp_path / "experiments.yaml", body)
    report = report_json(capsys, config)
    verdict = report["verdict"][0]
    assert verdict["code"] == "treatment_wins", verdict["line"]
    revenue = metric(report, "revenue")
    assert revenue["p_value"] == pytest.approx(0.0247, abs=1e-4)
    assert revenue["lift_ci"][0] > 0
    low = revenue["lift_ci"][0] * 100
    assert f"(CI +{low:.2f}% to" in verdict["line"]


def lossy_logs(directory: Path) -> None:
    """Eight days, 300 units a day per arm, 30 % conversion; outcomes of day 3 gzipped."""
    exposures, outcomes = [], []
    for day in range(8):
        for u in range(600):
            arm = "treatment" if u % 2 else "control"
            unit = f"d{day}-{u}"
            moment = START + timedelta(days=day, seconds=u * 140)
            exposures.append(exposure(moment, unit, arm))
            if u % 10 < 3:
                outcomes.append(outcome(moment + timedelta(minutes=1), unit, "conversion"))
    write_daily(directory, "exposures", exposures)
    write_daily(directory, "outcomes", outcomes, gzip_days=["2026-11-23"])


def test_a_gzipped_log_cut_short_is_measured_and_withholds_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    lossy_logs(logs)
    path = logs / "outcomes-2026-11-23.jsonl.gz"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 6 // 10])  # a copy that stopped at 60 %
    config = write_registry(tmp_path / "experiments.yaml", registry(Path("logs"), analysis=plan()))
    report = report_json(capsys, config)
    assert report["verdict"][0]["code"] == "withheld_data_loss"
    cut = report["data_quality"]["cut_files"]
    assert [c["name"] for c in cut] == ["outcomes-2026-11-23.jsonl.gz"]
    warning = next(w for w in report["warnings"] if w.startswith("outcomes-2026-11-23"))
    assert "cut short" in warning and "missing" in warning
    # The rest of that day held about 40 % of its 180 outcomes, about 5 % of all 1,440.
    estimate = float(warning.split("about ")[1].split(" ")[0].replace(",", ""))
    assert 50 <= estimate <= 95
    assert any(w.startswith("DATA LOSS") for w in report["warnings"])


def test_a_whole_gzipped_log_is_no_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "logs"
    lossy_logs(logs)
    config = write_registry(tmp_path / "experiments.yaml", registry(Path("logs"), analysis=plan()))
    report = report_json(capsys, config)
    assert report["data_quality"]["cut_files"] == []
    assert report["verdict"][0]["code"] != "withheld_data_loss"


def test_repeats_are_counted_once_and_bad_values_are_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = START + timedelta(hours=1)
    exposures = [exposure(t0, "a", "control"), exposure(t0, "b", "treatment"),
                 exposure(t0, "c", "treatment"), exposure(t0, "d", "control")]  # fmt: skip
    later = t0 + timedelta(minutes=1)
    records = [
        # A client retry: the same event_id twice (the second received later): once.
        {**outcome(later, "a", "revenue", 10.0), "event_id": "evt-1"},
        {**outcome(later + timedelta(seconds=5), "a", "revenue", 10.0), "event_id": "evt-1"},
        # A log shipper's second delivery of a record without event_id: once.
        outcome(later, "b", "revenue", 7.0),
        outcome(later, "b", "revenue", 7.0),
        # Two real purchases with their own ids: both.
        {**outcome(later, "c", "revenue", 3.0), "event_id": "evt-2"},
        {**outcome(later, "c", "revenue", 3.0), "event_id": "evt-3"},
        # No value: one occurrence (the contract's default).
        {"ts": iso(later), "unit": "d", "metric": "conversion"},
    ]
    lines = [json.dumps(r) for r in records]
    bad = ['"abc"', "null", "NaN", "Infinity", "-Infinity", "true", "1e400"]
    lines += [f'{{"ts": "{iso(later)}", "unit": "a", "metric": "revenue", "value": {v}}}'
              for v in bad]  # fmt: skip
    (tmp_path / "logs").mkdir()
    write_daily(tmp_path / "logs", "exposures", exposures)
    (tmp_path / "logs" / "outcomes-2026-11-20.jsonl").write_text("\n".join(lines) + "\n")
    config = write_registry(tmp_path / "experiments.yaml", registry(Path("logs"), analysis=plan()))
    report = report_json(capsys, config)
    quality = report["data_quality"]
    assert quality["duplicate_outcomes"] == 2
    assert quality["bad_values"] == len(bad)
    revenue = metric(report, "revenue")
    assert revenue["control"]["total"] == 10.0  # not 20, and no "abc" counted as 1
    assert revenue["treatment"]["total"] == 13.0
    assert revenue["diff"] is not None  # NaN and Infinity no longer void the metric
    assert metric(report, "conversion")["control"]["total"] == 1.0
    assert any("not a finite number" in w for w in report["warnings"])
    assert any("counted once" in n for n in report["notes"])


def test_intervals_stay_possible_and_missing_ones_say_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A city where the treatment never converted: its lift interval starts at -100 %, not
    below; a city too small for one says why, under the table."""
    exposures, outcomes = [], []
    for u in range(2_400):
        arm = "treatment" if u % 2 else "control"
        city = "beijing" if u < 2_000 else ("lhasa" if u < 2_396 else "sansha")
        moment = START + timedelta(seconds=u * 200)
        exposures.append(exposure(moment, f"u{u}", arm, city=city))
        converts = u % 20 < 3 and not (city == "lhasa" and arm == "treatment")
        if converts and city != "sansha":
            outcomes.append(outcome(moment + timedelta(minutes=1), f"u{u}", "conversion"))
    write_daily(tmp_path / "logs", "exposures", exposures)
    write_daily(tmp_path / "logs", "outcomes", outcomes)
    config = write_registry(tmp_path / "experiments.yaml", registry(Path("logs"), analysis=plan()))
    report = report_json(capsys, config)
    cities = {s["value"]: s for s in report["segments"] if s["attribute"] == "city"
              and s["metric"] == "conversion"}  # fmt: skip
    assert cities["lhasa"]["lift"] == -1.0 and cities["lhasa"]["lift_ci"][0] == -1.0
    assert cities["sansha"]["lift_ci"] == [None, None]
    assert cities["sansha"]["no_interval_because"] is None  # no lift at all: 0 of 0
    total = metric(report, "conversion")
    c, t = total["control"], total["treatment"]
    expected = rootsearch.interval(round(t["total"]), t["units"], round(c["total"]), c["units"],
                                   Z95, "diff")  # fmt: skip
    assert total["diff_ci"] == pytest.approx(expected, abs=1e-7)
    out = tmp_path / "out"
    assert main(["report", "--config", str(config), "--out", str(out), "--threads", "1"]) == 0
    capsys.readouterr()
    assert "no interval:" in (out / "report.md").read_text() or all(
        s["no_interval_because"] is None for s in report["segments"]
    )


def test_units_moved_by_a_ramp_are_a_note_not_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exposures = []
    step = START + timedelta(days=1)
    for u in range(1_000):
        unit = f"u{u}"
        first = START + timedelta(seconds=60 * u)
        arm = "treatment" if u % 10 == 0 else "control"
        exposures.append(exposure(first, unit, arm))
        if u % 10 in (1, 2, 3, 4):  # the step to 50 % moves some control units over
            exposures.append(exposure(step + timedelta(seconds=60 * u), unit, "treatment"))
    write_daily(tmp_path / "logs", "exposures", exposures)
    write_decisions(tmp_path / "logs", [
        {"ts": iso(START), "experiment": "sentiment", "action": "advance", "traffic": 10},
        {"ts": iso(step), "experiment": "sentiment", "action": "advance", "traffic": 50},
    ])  # fmt: skip
    config = write_registry(tmp_path / "experiments.yaml", registry(Path("logs"), analysis=plan()))
    report = report_json(capsys, config)
    assert report["data_quality"]["switched_units"] == 400
    assert report["data_quality"]["unexplained_switches"] == 0
    assert not any("more than one arm" in w for w in report["warnings"])
    assert any("400 unit(s) were later logged in another arm" in n for n in report["notes"])


def test_a_short_run_is_followed_and_plotted_by_the_hour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from analysis.engine import aggregate_logs
    from analysis.logfiles import find_logs
    from analysis.plots import trend_figure
    from analysis.registry import load_registry
    from analysis.report import build_report
    from analysis.traffic_history import BEGINNING, TrafficPeriod

    exposures, outcomes = [], []
    for u in range(1_200):
        arm = "treatment" if u % 2 else "control"
        moment = START + timedelta(seconds=u * 15)  # five hours
        exposures.append(exposure(moment, f"u{u}", arm))
        if u % 7 == 0:
            outcomes.append(outcome(moment + timedelta(minutes=1), f"u{u}", "conversion"))
    write_daily(tmp_path / "logs", "exposures", exposures)
    write_daily(tmp_path / "logs", "outcomes", outcomes)
    config = write_registry(tmp_path / "experiments.yaml", registry(Path("logs"), analysis=plan()))
    report = report_json(capsys, config)
    daily = next(t for t in report["daily"] if t["metric"] == "conversion")
    assert daily["period"] == "hour" and len(daily["days"]) == 6  # the last outcome at 05:00

    spec = load_registry(config).experiment(None)
    aggregates = aggregate_logs(
        find_logs(tmp_path / "logs"), "sentiment", (), [TrafficPeriod(BEGINNING, 50.0)], threads=1
    )
    built = build_report(spec, aggregates, as_of=datetime.now(timezone.utc))
    trend = next(t for t in built.trends if t.metric == "conversion")
    figure = trend_figure(trend, "control", "hour")
    top, bottom = figure.axes
    assert top.get_ylim()[0] == 0  # from zero: small differences do not look large
    assert "01:00" in " ".join(t.get_text() for t in bottom.get_xticklabels())
    # One point: the cumulative line shows as a marker and its band as a bar.
    single = type(trend)(trend.metric, trend.role, trend.kind, trend.arm, trend.points[:1])
    one = trend_figure(single, "control", "hour").axes[1]
    line = next(x for x in one.get_lines() if x.get_label() == "cumulative lift")
    assert line.get_marker() == "s"
    assert math.isfinite(float(np.asarray(line.get_ydata())[0]))


def test_the_verdict_waits_for_the_end_of_the_period_in_which_the_plan_is_met(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from analysis.engine import aggregate_logs
    from analysis.logfiles import find_logs
    from analysis.registry import load_registry
    from analysis.report import build_report
    from analysis.traffic_history import BEGINNING, TrafficPeriod

    logs = tmp_path / "logs"
    aa_then_divergence(logs, 6)
    config = write_registry(
        tmp_path / "experiments.yaml", registry(logs, analysis=plan(min_days=4, secondary=[]))
    )
    spec = load_registry(config).experiment(None)
    aggregates = aggregate_logs(
        find_logs(logs), "sentiment", (), [TrafficPeriod(BEGINNING, 50.0)], threads=1
    )
    during = build_report(spec, aggregates, as_of=START + timedelta(days=4, hours=12))
    assert during.verdicts[0].code == "keep_running"
    after = build_report(spec, aggregates, as_of=START + timedelta(days=5, minutes=1))
    assert after.verdicts[0].code == "no_significant_difference"
