"""`python -m analysis report` end to end: log files in, numbers checked against the raw units."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportions_ztest

from analysis.cli import main
from analysis.sequential import always_valid_p
from analysis.stats import ArmStats, compare_proportions, proportion_diff_variance
from tests.analysis import rootsearch
from tests.analysis.logbook import (
    START,
    exposure,
    outcome,
    registry,
    simulate,
    write_daily,
    write_decisions,
    write_registry,
)

TOLERANCE = 1e-6
Z95 = float(scipy_stats.norm.ppf(0.975))


def report_json(capsys: pytest.CaptureFixture[str], config: Path, *extra: str) -> dict[str, Any]:
    assert main(["report", "--config", str(config), "--json", "--threads", "1", *extra]) == 0
    loaded: dict[str, Any] = json.loads(capsys.readouterr().out)
    return loaded


def metric(report: dict[str, Any], name: str, arm: str = "treatment") -> dict[str, Any]:
    return next(m for m in report["metrics"] if m["metric"] == name and m["arm"] == arm)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("simulated")
    sim = simulate(6_000, p_control=0.10, p_treatment=0.125, days=8, seed=1)
    write_daily(root / "logs", "exposures", sim.exposures, gzip_days=["2026-11-22"])
    write_daily(root / "logs", "outcomes", sim.outcomes, gzip_days=["2026-11-23"])
    config = write_registry(root / "experiments.yaml", registry(Path("logs")))
    return config, sim


def test_report_matches_statsmodels_and_scipy_on_the_raw_units(
    simulated: tuple[Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    config, sim = simulated
    report = report_json(capsys, config)
    control, treatment = (sim.arm_values(sim.converted, arm) for arm in (0, 1))
    assert report["run"]["units"] == {"control": len(control), "treatment": len(treatment)}

    conversion = metric(report, "conversion")
    counts, nobs = [int(treatment.sum()), int(control.sum())], [len(treatment), len(control)]
    _, p = proportions_ztest(counts, nobs)
    low, high = rootsearch.interval(counts[0], nobs[0], counts[1], nobs[1], Z95, "diff")
    assert conversion["role"] == "primary"
    assert conversion["p_value"] == pytest.approx(p, abs=TOLERANCE)
    assert conversion["diff_ci"] == pytest.approx([low, high], abs=TOLERANCE)
    assert conversion["diff"] == pytest.approx(treatment.mean() - control.mean(), abs=TOLERANCE)

    revenue = metric(report, "revenue")
    spend_c, spend_t = (sim.arm_values(sim.revenue, arm) for arm in (0, 1))
    welch = scipy_stats.ttest_ind(spend_t, spend_c, equal_var=False)
    assert revenue["role"] == "secondary"
    assert revenue["control"]["mean"] == pytest.approx(spend_c.mean(), abs=TOLERANCE)
    assert revenue["p_value"] == pytest.approx(welch.pvalue, abs=TOLERANCE)
    assert revenue["p_adjusted"] == pytest.approx(welch.pvalue, abs=TOLERANCE)  # a family of one

    assert not report["srm"]["flagged"]
    assert report["data_quality"]["outcomes_before_exposure"] > 0
    daily = next(t for t in report["daily"] if t["metric"] == "conversion")
    assert daily["days"][-1]["cumulative"]["p_value"] == pytest.approx(p, abs=TOLERANCE)
    assert daily["days"][-1]["always_valid_p"] == conversion["always_valid_p"]
    # 8 days >= min_days 7, but ~3,000 units per arm < the planned 14,751: keep running
    # unless the always-valid p-value already says so.
    verdict = report["verdict"][0]
    assert verdict["basis"] == "always-valid"
    expected = "treatment_wins" if conversion["always_valid_p"] < 0.05 else "keep_running"
    assert verdict["code"] == expected


def test_out_writes_markdown_html_json_and_plots(
    simulated: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = simulated
    out = tmp_path / "report"
    assert main(["report", "--config", str(config), "--out", str(out), "--threads", "1"]) == 0
    terminal = capsys.readouterr().out
    assert "VERDICT:" in terminal and "Sample ratio" in terminal
    markdown = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "VERDICT:" in markdown and "![conversion daily and cumulative lift]" in markdown
    assert "<table>" in html and 'src="trend-conversion-treatment.png"' in html
    assert json.loads((out / "report.json").read_text())["experiment"] == "sentiment"
    for name in ("trend-conversion-treatment.png", "trend-revenue-treatment.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_aa_through_the_files_equals_the_vectorized_computation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file reader feeds the statistics exactly what test_sequential's vectorized A/A
    simulations feed them: same fixed-horizon and always-valid p-values, experiment by
    experiment, with four A/A experiments sharing the same log files."""
    rng = np.random.default_rng(99)
    days, units, mde = 6, 1_500, 0.02
    base = registry(Path("logs"))
    template = base["experiments"].pop("sentiment")
    template["analysis"]["primary"]["mde"] = mde
    exposures, outcomes, expected = [], [], {}
    for k in range(4):
        name = f"aa{k}"
        base["experiments"][name] = {**copy.deepcopy(template), "route": f"/{name}/prediction"}
        arm = rng.random(units) < 0.5
        day = rng.integers(0, days, units)
        converted = rng.random(units) < 0.08
        for u in range(units):
            first = START + timedelta(days=int(day[u]), seconds=int(rng.integers(0, 80_000)))
            unit = f"{name}-{u}"
            exposures.append(exposure(first, unit, "treatment" if arm[u] else "control",
                                      experiment=name))  # fmt: skip
            if converted[u]:
                outcomes.append(outcome(first + timedelta(minutes=10), unit, "conversion"))
        n = np.array([[((arm == a) & (day <= d)).sum() for d in range(days)] for a in (0, 1)])
        x = np.array(
            [[((arm == a) & (day <= d) & converted).sum() for d in range(days)] for a in (0, 1)]
        )
        fixed = compare_proportions(
            ArmStats.of_proportion(int(n[0, -1]), int(x[0, -1])),
            ArmStats.of_proportion(int(n[1, -1]), int(x[1, -1])),
            0.05,
        ).p_value
        diff, variance = proportion_diff_variance(x[0], n[0], x[1], n[1])
        expected[name] = (fixed, float(always_valid_p(diff, variance, mde**2)[-1]))
    write_daily(tmp_path / "logs", "exposures", exposures)
    write_daily(tmp_path / "logs", "outcomes", outcomes)
    config = write_registry(tmp_path / "experiments.yaml", base)
    for name, (fixed, valid) in expected.items():
        report = report_json(capsys, config, "--experiment", name)
        primary = metric(report, "conversion")
        assert primary["p_value"] == pytest.approx(fixed, abs=1e-12)
        assert primary["always_valid_p"] == pytest.approx(valid, abs=1e-12)


def ramp_logs(
    directory: Path, phases: list[tuple[float, int, float, float]], drop_treatment: float = 0.0
) -> None:
    """Deterministic units per ramp phase: (traffic, units, control rate, treatment rate).

    Phase i runs on day i; decisions.jsonl records each traffic change. `drop_treatment`
    loses that share of the treatment units' exposures (a logging bug in one arm).
    """
    exposures, outcomes, decisions = [], [], []
    for phase, (traffic, units, rate_c, rate_t) in enumerate(phases):
        day_start = START + timedelta(days=phase)
        decisions.append({"ts": day_start.isoformat().replace("+00:00", "Z"),
                          "experiment": "sentiment", "check": "pass", "action": "advance",
                          "actor": "ramp", "traffic": traffic})  # fmt: skip
        treated = round(units * traffic / 100)
        for arm, count, rate in (
            ("control", units - treated, rate_c),
            ("treatment", treated, rate_t),
        ):
            kept = count - round(count * drop_treatment) if arm == "treatment" else count
            converting = round(count * rate)
            for u in range(kept):
                unit = f"p{phase}-{arm}-{u}"
                moment = day_start + timedelta(seconds=u % 80_000)
                exposures.append(exposure(moment, unit, arm, city="beijing"))
                if u < converting:
                    outcomes.append(outcome(moment + timedelta(minutes=1), unit, "conversion"))
    write_daily(directory, "exposures", exposures)
    write_daily(directory, "outcomes", outcomes)
    write_decisions(directory, decisions)


def test_a_ramp_is_no_mismatch_and_is_compared_within_its_phases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Treatment is +10 % within each ramp phase, but it got most of its units when conversion
    was low: pooled, it would look 40 % worse (Simpson's paradox through the ramp)."""
    ramp_logs(tmp_path / "logs", [(10, 10_000, 0.20, 0.22), (50, 10_000, 0.05, 0.055)])
    config = write_registry(tmp_path / "experiments.yaml", registry(Path("logs")))
    report = report_json(capsys, config)
    assert report["srm"]["expected"] == pytest.approx({"control": 14_000, "treatment": 6_000})
    assert not report["srm"]["flagged"]

    conversion = metric(report, "conversion")
    assert conversion["stratified"]
    assert conversion["lift"] == pytest.approx(0.10)
    # Weighted by n_c n_t / n: 9,000 * 1,000 / 10,000 = 900 and 5,000 * 5,000 / 10,000 = 2,500.
    assert conversion["diff"] == pytest.approx((900 * 0.02 + 2_500 * 0.005) / 3_400)
    assert conversion["control"]["mean"] == pytest.approx((900 * 0.2 + 2_500 * 0.05) / 3_400)
    phases = [s for s in report["segments"] if s["attribute"] == "traffic at first exposure"
              and s["metric"] == "conversion"]  # fmt: skip
    assert [s["value"] for s in phases] == ["10%", "50%"]
    assert all(s["lift"] == pytest.approx(0.1) for s in phases)
    # Pooled: (220 + 275) / 6,000 against (1,800 + 250) / 14,000, that is -43.66 %.
    pooled = [w for w in report["warnings"] if w.startswith("conversion: pooled over the ramp")]
    assert len(pooled) == 1 and "would read -43.66%" in pooled[0]
    assert not any("SIMPSON" in w for w in report["warnings"])
    daily = next(t for t in report["daily"] if t["metric"] == "conversion")
    assert daily["days"][-1]["cumulative"]["lift"] == pytest.approx(0.10)


def test_a_mismatch_withholds_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ramp_logs(
        tmp_path / "logs", [(50, 20_000, 0.05, 0.08), (50, 20_000, 0.05, 0.08)], drop_treatment=0.05
    )
    config = write_registry(tmp_path / "experiments.yaml", registry(Path("logs")))
    report = report_json(capsys, config)
    assert report["srm"]["flagged"]
    assert report["verdict"][0]["code"] == "withheld_srm"
    assert metric(report, "conversion")["p_value"] < 1e-6  # a "win" that must not be read
    assert any(w.startswith("SAMPLE RATIO MISMATCH") for w in report["warnings"])


def test_multi_arm_and_shadow_experiments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = registry(Path("logs"))
    body = raw["experiments"]["sentiment"]
    # A shadow experiment has two arms (everyone gets control) and its own route.
    shadowed = {**copy.deepcopy(body), "mode": "shadow", "route": "/shadowed/prediction"}
    del body["traffic"], body["control"], body["treatment"]
    body["variants"] = [
        {"name": "legacy", "backend": "sentiment-v1", "weight": 50},
        {"name": "new", "backend": "sentiment-v2", "weight": 25},
        {"name": "newer", "backend": "sentiment-v2", "weight": 25},
    ]
    raw["experiments"]["shadowed"] = shadowed
    exposures, outcomes = [], []
    for u in range(400):
        arm = ("legacy", "legacy", "new", "newer")[u % 4]
        moment = START + timedelta(minutes=u)
        exposures.append(exposure(moment, f"m{u}", arm))
        exposures.append(exposure(moment, f"s{u}", "control", experiment="shadowed"))
        if u % 5 == 0 or (arm == "newer" and u % 2 == 0):
            outcomes.append(outcome(moment + timedelta(seconds=5), f"m{u}", "conversion"))
    write_daily(tmp_path / "logs", "exposures", exposures)
    write_daily(tmp_path / "logs", "outcomes", outcomes)
    config = write_registry(tmp_path / "experiments.yaml", raw)

    report = report_json(capsys, config, "--experiment", "sentiment")
    assert report["arms"] == {"control": "legacy", "treatments": ["new", "newer"]}
    assert [v["arm"] for v in report["verdict"]] == ["new", "newer"]
    assert not report["srm"]["flagged"]
    newer = metric(report, "conversion", "newer")
    assert newer["p_adjusted"] >= newer["p_value"]  # Holm across the two treatment arms

    shadow = report_json(capsys, config, "--experiment", "shadowed")
    assert {v["code"] for v in shadow["verdict"]} == {"not_applicable"}


def test_bad_input_exits_2_with_the_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_registry(tmp_path / "experiments.yaml", registry(Path("missing-logs")))
    assert main(["report", "--config", str(config)]) == 2
    assert "missing-logs: log directory not found" in capsys.readouterr().err
    assert main(["report", "--config", str(config), "--experiment", "nope"]) == 2
    assert "experiments.nope: not defined" in capsys.readouterr().err
    (tmp_path / "missing-logs").mkdir()
    write_decisions(tmp_path / "missing-logs", [{"ts": "soon", "experiment": "sentiment",
                                                 "traffic": 5}])  # fmt: skip
    assert main(["report", "--config", str(config)]) == 2
    assert "decisions.jsonl:1.ts: not an ISO 8601 time" in capsys.readouterr().err


def test_logs_option_overrides_the_registry_log_dir(
    simulated: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, sim = simulated
    elsewhere = write_registry(tmp_path / "experiments.yaml", registry(Path("no-such-dir")))
    report = report_json(capsys, elsewhere, "--logs", str(config.parent / "logs"))
    assert sum(report["run"]["units"].values()) == len(sim.arm)
