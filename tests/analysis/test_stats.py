"""The comparisons, checked against statsmodels and scipy run on the raw per-unit data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from analysis.stats import ArmStats, compare_means, compare_proportions, compare_strata, holm
from tests.analysis.tables import table

TOLERANCE = 1e-6


def generated_proportion_cases(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    cases = []
    for _ in range(count):
        n_c, n_t = rng.integers(200, 20_000, size=2)
        p = rng.uniform(0.01, 0.4)
        cases.append((rng.random(n_c) < p, rng.random(n_t) < p * rng.uniform(0.8, 1.25)))
    return cases


def generated_mean_cases(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(12)
    cases = []
    for _ in range(count):
        n_c, n_t = rng.integers(30, 5_000, size=2)
        # Revenue-like: most units spend nothing, a few spend a skewed amount.
        control = rng.gamma(2.0, 20.0, n_c) * (rng.random(n_c) < 0.3)
        treatment = rng.gamma(2.0, 22.0, n_t) * (rng.random(n_t) < rng.uniform(0.25, 0.35))
        cases.append((control, treatment))
    return cases


@pytest.mark.parametrize("case", range(30))
def test_proportions_agree_with_statsmodels_on_raw_units(case: int) -> None:
    control, treatment = generated_proportion_cases(30)[case]
    result = compare_proportions(
        ArmStats.of_values(control.astype(float)), ArmStats.of_values(treatment.astype(float)), 0.05
    )
    counts = [int(treatment.sum()), int(control.sum())]
    nobs = [len(treatment), len(control)]
    z, p = proportions_ztest(counts, nobs)
    diff_ci = confint_proportions_2indep(
        counts[0], nobs[0], counts[1], nobs[1], method="score", compare="diff", correction=False
    )
    ratio_ci = confint_proportions_2indep(
        counts[0], nobs[0], counts[1], nobs[1], method="score", compare="ratio", correction=False
    )
    assert result.statistic == pytest.approx(z, abs=TOLERANCE)
    assert result.p_value == pytest.approx(p, abs=TOLERANCE)
    assert result.diff == pytest.approx(treatment.mean() - control.mean(), abs=TOLERANCE)
    assert result.diff_ci == pytest.approx(diff_ci, abs=TOLERANCE)
    assert result.lift_ci == pytest.approx((ratio_ci[0] - 1, ratio_ci[1] - 1), abs=TOLERANCE)
    assert result.lift == pytest.approx(treatment.mean() / control.mean() - 1, abs=TOLERANCE)


@pytest.mark.parametrize("case", range(30))
def test_means_agree_with_scipy_and_statsmodels_on_raw_units(case: int) -> None:
    control, treatment = generated_mean_cases(30)[case]
    result = compare_means(ArmStats.of_values(control), ArmStats.of_values(treatment), 0.05)
    welch = scipy_stats.ttest_ind(treatment, control, equal_var=False)
    interval = CompareMeans(DescrStatsW(treatment), DescrStatsW(control)).tconfint_diff(
        alpha=0.05, usevar="unequal"
    )
    assert result.statistic == pytest.approx(welch.statistic, abs=TOLERANCE)
    assert result.p_value == pytest.approx(welch.pvalue, abs=TOLERANCE)
    assert result.diff_ci == pytest.approx(interval, abs=TOLERANCE)
    # Delta method for the ratio of means, written out from the raw data.
    m_c, m_t = control.mean(), treatment.mean()
    se2_c, se2_t = control.var(ddof=1) / len(control), treatment.var(ddof=1) / len(treatment)
    se = math.sqrt(se2_t / m_c**2 + m_t**2 * se2_c / m_c**4)
    z = scipy_stats.norm.ppf(0.975)
    lift = m_t / m_c - 1
    assert result.lift == pytest.approx(lift, abs=TOLERANCE)
    assert result.lift_ci == pytest.approx((lift - z * se, lift + z * se), abs=TOLERANCE)


def test_sums_of_squares_from_large_values_keep_the_variance() -> None:
    """Per-unit sums reach the engine as (n, sum, sum of squares): no cancellation at scale."""
    rng = np.random.default_rng(3)
    values = 1_000 + rng.normal(0, 1, 100_000)
    assert ArmStats.of_values(values).variance == pytest.approx(values.var(ddof=1), rel=1e-6)


@pytest.mark.parametrize(
    "case", table("analysis_proportions.json")["cases"], ids=lambda c: c["name"]
)
def test_fixed_proportion_cases(case: dict[str, Any]) -> None:
    (x_c, n_c), (x_t, n_t) = case["control"], case["treatment"]
    result = compare_proportions(
        ArmStats.of_proportion(n_c, x_c), ArmStats.of_proportion(n_t, x_t), 0.05
    )
    assert result.statistic == pytest.approx(case["z"], abs=1e-4)
    assert result.p_value == pytest.approx(case["p_value"], abs=case["tolerance"])
    assert result.significant is case["significant"]
    # The score interval is the inverted pooled test: it excludes 0 exactly when p < alpha.
    assert (result.diff_ci[0] > 0 or result.diff_ci[1] < 0) is case["significant"]


def test_intervals_and_test_agree_at_the_boundary() -> None:
    control = ArmStats.of_proportion(10_000, 520)
    for treatment_events in range(570, 600):
        result = compare_proportions(
            control, ArmStats.of_proportion(10_000, treatment_events), 0.05
        )
        assert (result.diff_ci[0] > 0) is result.significant
        assert (result.lift_ci[0] > 0) is result.significant


def test_degenerate_arms_give_nan_not_errors() -> None:
    nothing = compare_proportions(
        ArmStats.of_proportion(100, 0), ArmStats.of_proportion(90, 0), 0.05
    )
    assert math.isnan(nothing.p_value) and nothing.diff == 0
    empty = compare_proportions(ArmStats.of_proportion(0, 0), ArmStats.of_proportion(90, 5), 0.05)
    assert math.isnan(empty.p_value) and math.isnan(empty.diff)
    constant = compare_means(ArmStats.of_values([2.0] * 5), ArmStats.of_values([2.0] * 7), 0.05)
    assert math.isnan(constant.p_value) and constant.diff == 0
    single = compare_means(ArmStats.of_values([1.0]), ArmStats.of_values([2.0, 3.0]), 0.05)
    assert math.isnan(single.p_value)


@pytest.mark.parametrize("case", table("analysis_holm.json")["cases"], ids=str)
def test_holm(case: dict[str, Any]) -> None:
    p = [math.nan if v is None else v for v in case["p"]]
    adjusted = holm(p)
    for got, want in zip(adjusted, case["adjusted"]):
        if want is None:
            assert math.isnan(got)
        else:
            assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize(
    "counts",
    [
        (0, 10, 3, 10),
        (3, 10, 0, 10),
        (10, 10, 5, 10),
        (5, 10, 10, 10),
        (1, 300, 0, 5),
        (0, 100, 1, 100),
    ],
)
def test_arms_without_events_or_with_only_events_still_get_intervals(
    counts: tuple[int, int, int, int],
) -> None:
    """statsmodels' score solver fails at these boundaries (a small day): Newcombe's interval
    takes over for the difference, and the lift is reported without an interval."""
    x_c, n_c, x_t, n_t = counts
    result = compare_proportions(
        ArmStats.of_proportion(n_c, x_c), ArmStats.of_proportion(n_t, x_t), 0.05
    )
    low, high = result.diff_ci
    assert low <= result.diff <= high
    expected = confint_proportions_2indep(x_t, n_t, x_c, n_c, method="newcomb", compare="diff")
    assert result.diff_ci == pytest.approx(expected, abs=TOLERANCE)
    assert all(math.isnan(v) for v in result.lift_ci)


def test_one_stratum_is_the_plain_comparison() -> None:
    control, treatment = ArmStats.of_proportion(10_000, 520), ArmStats.of_proportion(10_000, 580)
    stratified = compare_strata("proportion", [(control, treatment)], 0.05)
    plain = compare_proportions(control, treatment, 0.05)
    assert (stratified.p_value, stratified.diff_ci, stratified.lift_ci) == (
        plain.p_value, plain.diff_ci, plain.lift_ci,
    )  # fmt: skip
    assert not stratified.strata


@pytest.mark.parametrize("kind", ["proportion", "mean"])
def test_strata_are_combined_by_their_unit_shares(kind: str) -> None:
    """Post-stratification written out on raw units: weights N_s / N, variances w^2 var."""
    rng = np.random.default_rng(21)
    strata: list[tuple[np.ndarray, np.ndarray]] = []
    for n_c, n_t, base in ((9_000, 1_000, 0.2), (5_000, 5_000, 0.05)):
        pair: tuple[np.ndarray, np.ndarray]
        if kind == "proportion":
            pair = (rng.random(n_c) < base, rng.random(n_t) < base * 1.1)
        else:
            pair = (rng.gamma(2.0, base * 50, n_c), rng.gamma(2.0, base * 55, n_t))
        strata.append((pair[0].astype(float), pair[1].astype(float)))
    result = compare_strata(
        kind, [(ArmStats.of_values(c), ArmStats.of_values(t)) for c, t in strata], 0.05
    )
    weights = np.array([len(c) + len(t) for c, t in strata]) / sum(
        len(c) + len(t) for c, t in strata
    )

    def variance_of_mean(x: np.ndarray) -> float:
        return float(
            x.mean() * (1 - x.mean()) / len(x) if kind == "proportion" else x.var(ddof=1) / len(x)
        )

    m_c = sum(w * c.mean() for w, (c, _) in zip(weights, strata))
    m_t = sum(w * t.mean() for w, (_, t) in zip(weights, strata))
    v = sum(
        w * w * (variance_of_mean(c) + variance_of_mean(t)) for w, (c, t) in zip(weights, strata)
    )
    z = (m_t - m_c) / math.sqrt(v)
    assert result.diff == pytest.approx(m_t - m_c, abs=1e-12)
    assert result.statistic == pytest.approx(z, abs=1e-9)
    assert result.p_value == pytest.approx(2 * scipy_stats.norm.sf(abs(z)), abs=1e-12)
    half = scipy_stats.norm.ppf(0.975) * math.sqrt(v)
    assert result.diff_ci == pytest.approx((m_t - m_c - half, m_t - m_c + half), abs=1e-12)
    assert result.control.n == sum(len(c) for c, _ in strata)


def test_a_stratum_without_one_arm_is_left_out() -> None:
    """Units enrolled while rolled back (all control) have nothing to be compared with."""
    live = (ArmStats.of_proportion(5_000, 250), ArmStats.of_proportion(5_000, 300))
    rolled_back = (ArmStats.of_proportion(7_000, 700), ArmStats.of_proportion(0, 0))
    result = compare_strata("proportion", [live, rolled_back], 0.05)
    assert result.p_value == compare_proportions(*live, 0.05).p_value
    assert result.control.n == 5_000


def test_small_samples_where_the_score_solver_fails_still_get_a_sound_interval() -> None:
    """statsmodels' score root search fails or warns on many small samples (a small segment);
    every case must still give an interval around its estimate, and never a warning."""
    for n_c, n_t in ((10, 10), (16, 55), (30, 24)):
        for x_c in range(0, n_c + 1, 2):
            for x_t in range(0, n_t + 1, 3):
                result = compare_proportions(
                    ArmStats.of_proportion(n_c, x_c), ArmStats.of_proportion(n_t, x_t), 0.05
                )
                if math.isnan(result.p_value):
                    continue
                low, high = result.diff_ci
                assert low <= result.diff <= high, (x_c, n_c, x_t, n_t)
                low, high = result.lift_ci
                assert math.isnan(low) or low <= result.lift <= high, (x_c, n_c, x_t, n_t)
