"""Two-arm comparisons from per-arm sufficient statistics (pure: numbers in, numbers out).

The engine reduces the logs to, per arm, the number of units `n`, the sum of the per-unit
values and the sum of their squares; everything here works from those three numbers, so a
report over ten million exposures and a unit test over ten units go through the same code.

- proportion: the pooled two-proportion z-test (statsmodels `proportions_ztest`, the article's
  test), with score intervals for the difference and the ratio (statsmodels
  `confint_proportions_2indep`, `method="score"`, no correction). At a difference of zero the
  score statistic is the pooled z, so the interval excludes zero exactly when p < alpha.
  statsmodels' score solver fails when an arm has no events or only events, and on many small
  samples (a small day or segment): there the difference gets Newcombe's interval and the lift
  none (no ratio interval behaves there; the adjusted log one can exclude its own estimate).
- mean: Welch's t-test (scipy `ttest_ind_from_stats`) with the Welch-Satterthwaite interval
  for the difference, and a delta-method interval for the relative lift.
- several strata (ramp phases: units enrolled under different traffic splits): the arms are
  compared within each stratum and the differences combined with the strata's unit shares
  as weights (post-stratification); a normal test on the combined difference and its variance.
  Pooling across a ramp would compare a treatment arm of mostly late units with a control arm
  of mostly early ones.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Union

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

NAN = float("nan")


@dataclass(frozen=True)
class ArmStats:
    """Per-unit values of one arm, reduced: units, sum of values, sum of squared values."""

    n: int
    total: float
    total_sq: float

    @classmethod
    def of_proportion(cls, n: int, with_event: int) -> ArmStats:
        return cls(n, float(with_event), float(with_event))

    @classmethod
    def of_values(cls, values: Union[Sequence[float], np.ndarray]) -> ArmStats:
        array = np.asarray(values, dtype=float)
        return cls(len(array), float(array.sum()), float((array * array).sum()))

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else NAN

    @property
    def variance(self) -> float:
        """Sample variance (ddof=1) from the sums, guarded against tiny negative round-off."""
        if self.n < 2:
            return NAN
        return max(self.total_sq - self.total * self.total / self.n, 0.0) / (self.n - 1)

    def __add__(self, other: ArmStats) -> ArmStats:
        return ArmStats(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq)


@dataclass(frozen=True)
class Comparison:
    """Treatment against control on one metric. `lift` is relative (0.1 = +10 %).

    The intervals are computed when first read: the score intervals cost milliseconds each
    (a root search), and simulations that need only the p-value should not pay for them.
    """

    kind: str
    control: ArmStats
    treatment: ArmStats
    alpha: float
    control_mean: float
    treatment_mean: float
    # Variances of the two means' estimates; their sum is the (unpooled) variance of `diff`.
    control_mean_variance: float
    treatment_mean_variance: float
    statistic: float
    p_value: float
    # Per-stratum (control, treatment) when the comparison is stratified; empty otherwise.
    strata: tuple[tuple[ArmStats, ArmStats], ...] = ()

    @property
    def diff(self) -> float:
        return self.treatment_mean - self.control_mean

    @property
    def lift(self) -> float:
        return self.diff / self.control_mean if self.control_mean else NAN

    @property
    def diff_variance(self) -> float:
        """The input of the always-valid p-value."""
        return self.control_mean_variance + self.treatment_mean_variance

    @property
    def significant(self) -> bool:
        return bool(self.p_value < self.alpha)

    @property
    def diff_ci(self) -> tuple[float, float]:
        return self._intervals[0]

    @property
    def lift_ci(self) -> tuple[float, float]:
        return self._intervals[1]

    @cached_property
    def _intervals(self) -> tuple[tuple[float, float], tuple[float, float]]:
        if self.strata:
            return _normal_intervals(self)
        if self.kind == "proportion":
            return _proportion_intervals(self)
        return _mean_intervals(self)


def compare(kind: str, control: ArmStats, treatment: ArmStats, alpha: float) -> Comparison:
    if kind == "proportion":
        return compare_proportions(control, treatment, alpha)
    if kind == "mean":
        return compare_means(control, treatment, alpha)
    raise ValueError(f"metric type must be 'proportion' or 'mean', got {kind!r}")


def proportion_diff_variance(
    x_c: np.ndarray, n_c: np.ndarray, x_t: np.ndarray, n_t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Difference of rates and its unpooled variance, elementwise (NaN where an arm is empty)."""
    n_c, n_t = np.asarray(n_c, dtype=float), np.asarray(n_t, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_c, p_t = np.asarray(x_c) / n_c, np.asarray(x_t) / n_t
        variance = p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c
    return p_t - p_c, variance


def compare_proportions(control: ArmStats, treatment: ArmStats, alpha: float) -> Comparison:
    n_c, n_t = control.n, treatment.n
    x_c, x_t = _counts(control, treatment)
    statistic = p_value = NAN
    if _testable(control, treatment):
        statistic, p_value = (float(v) for v in proportions_ztest([x_t, x_c], [n_t, n_c]))
    return Comparison(
        "proportion", control, treatment, alpha, control.mean, treatment.mean,
        _mean_variance("proportion", control), _mean_variance("proportion", treatment),
        statistic, p_value,
    )  # fmt: skip


def _mean_variance(kind: str, arm: ArmStats) -> float:
    """Variance of the arm's mean: p(1-p)/n for a rate (as the unpooled z uses), s^2/n else."""
    if not arm.n:
        return NAN
    if kind == "proportion":
        return arm.mean * (1 - arm.mean) / arm.n
    return arm.variance / arm.n


def _counts(control: ArmStats, treatment: ArmStats) -> tuple[int, int]:
    return round(control.total), round(treatment.total)


def _testable(control: ArmStats, treatment: ArmStats) -> bool:
    # The pooled variance is zero when no unit (or every unit) of both arms had the event:
    # there is nothing to test then.
    x_c, x_t = _counts(control, treatment)
    return bool(control.n and treatment.n and 0 < x_c + x_t < control.n + treatment.n)


def _proportion_intervals(c: Comparison) -> tuple[tuple[float, float], tuple[float, float]]:
    if not _testable(c.control, c.treatment):
        return (NAN, NAN), (NAN, NAN)
    n_c, n_t = c.control.n, c.treatment.n
    x_c, x_t = _counts(c.control, c.treatment)
    interior = 0 < x_c < n_c and 0 < x_t < n_t
    diff_ci = _score_interval(x_t, n_t, x_c, n_c, c.alpha, "diff", c.diff) if interior else None
    if diff_ci is None:
        diff_ci = _newcombe_interval(x_t, n_t, x_c, n_c, c.alpha)
        return diff_ci, (NAN, NAN)
    ratio_ci = _score_interval(
        x_t, n_t, x_c, n_c, c.alpha, "ratio", c.treatment_mean / c.control_mean
    )
    if ratio_ci is None:
        return diff_ci, (NAN, NAN)
    return diff_ci, (ratio_ci[0] - 1, ratio_ci[1] - 1)


def _score_interval(
    x_t: int, n_t: int, x_c: int, n_c: int, alpha: float, compare: str, estimate: float
) -> Optional[tuple[float, float]]:
    """statsmodels' score interval, or None where its root search fails (small samples):
    an exception, a numerical warning, or an interval that misses its own estimate."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            low, high = _pair(
                confint_proportions_2indep(
                    x_t, n_t, x_c, n_c, compare=compare, alpha=alpha, method="score",
                    correction=False,
                )
            )  # fmt: skip
        except (ValueError, ZeroDivisionError, FloatingPointError, RuntimeWarning):
            return None
    if not (math.isfinite(low) and math.isfinite(high) and low <= estimate <= high):
        return None
    return low, high


def _newcombe_interval(x_t: int, n_t: int, x_c: int, n_c: int, alpha: float) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _pair(
            confint_proportions_2indep(x_t, n_t, x_c, n_c, compare="diff", alpha=alpha,
                                       method="newcomb")
        )  # fmt: skip


def compare_means(control: ArmStats, treatment: ArmStats, alpha: float) -> Comparison:
    m_c, m_t = control.mean, treatment.mean
    v_c, v_t = control.variance, treatment.variance
    se2_c, se2_t = _mean_variance("mean", control), _mean_variance("mean", treatment)
    statistic = p_value = NAN
    if se2_c + se2_t > 0:  # False for NaN too: fewer than two units in an arm
        result = scipy_stats.ttest_ind_from_stats(
            m_t, math.sqrt(v_t), treatment.n, m_c, math.sqrt(v_c), control.n, equal_var=False
        )
        statistic, p_value = float(result.statistic), float(result.pvalue)
    return Comparison("mean", control, treatment, alpha, m_c, m_t, se2_c, se2_t, statistic, p_value)


def compare_strata(
    kind: str, strata: Sequence[tuple[ArmStats, ArmStats]], alpha: float
) -> Comparison:
    """Control and treatment compared within strata, combined by the strata's unit shares.

    A stratum missing an arm (a rollback sent everyone to control) cannot compare anything
    and is left out. With one stratum left this is `compare`, exactly.
    """
    usable = [(c, t) for c, t in strata if c.n and t.n]
    if len(usable) <= 1:
        if usable:
            return compare(kind, *usable[0], alpha)
        control = sum((c for c, _ in strata), ArmStats(0, 0.0, 0.0))
        treatment = sum((t for _, t in strata), ArmStats(0, 0.0, 0.0))
        return compare(kind, control, treatment, alpha)
    total = sum(c.n + t.n for c, t in usable)
    weights = [(c.n + t.n) / total for c, t in usable]
    m_c = sum(w * c.mean for w, (c, _) in zip(weights, usable))
    m_t = sum(w * t.mean for w, (_, t) in zip(weights, usable))
    v_c = sum(w * w * _mean_variance(kind, c) for w, (c, _) in zip(weights, usable))
    v_t = sum(w * w * _mean_variance(kind, t) for w, (_, t) in zip(weights, usable))
    statistic = p_value = NAN
    if v_c + v_t > 0:
        statistic = (m_t - m_c) / math.sqrt(v_c + v_t)
        p_value = float(2 * scipy_stats.norm.sf(abs(statistic)))
    return Comparison(
        kind,
        sum((c for c, _ in usable), ArmStats(0, 0.0, 0.0)),
        sum((t for _, t in usable), ArmStats(0, 0.0, 0.0)),
        alpha, m_c, m_t, v_c, v_t, statistic, p_value, tuple(usable),
    )  # fmt: skip


def _normal_intervals(c: Comparison) -> tuple[tuple[float, float], tuple[float, float]]:
    """Normal intervals from the combined estimate; delta method for the lift."""
    if not c.diff_variance > 0:
        return (NAN, NAN), (NAN, NAN)
    z = float(scipy_stats.norm.ppf(1 - c.alpha / 2))
    half = z * math.sqrt(c.diff_variance)
    diff_ci = (c.diff - half, c.diff + half)
    m_c, m_t = c.control_mean, c.treatment_mean
    if not m_c:
        return diff_ci, (NAN, NAN)
    se = math.sqrt(c.treatment_mean_variance / m_c**2 + m_t**2 * c.control_mean_variance / m_c**4)
    return diff_ci, (c.lift - z * se, c.lift + z * se)


def _mean_intervals(c: Comparison) -> tuple[tuple[float, float], tuple[float, float]]:
    """Welch-Satterthwaite interval for the difference; delta method for m_t / m_c - 1."""
    if not c.diff_variance > 0:
        return (NAN, NAN), (NAN, NAN)
    se2_c, se2_t = c.control_mean_variance, c.treatment_mean_variance
    dof = c.diff_variance**2 / (se2_t**2 / (c.treatment.n - 1) + se2_c**2 / (c.control.n - 1))
    half = float(scipy_stats.t.ppf(1 - c.alpha / 2, dof)) * math.sqrt(c.diff_variance)
    diff_ci = (c.diff - half, c.diff + half)
    m_c, m_t = c.control_mean, c.treatment_mean
    if not m_c:
        return diff_ci, (NAN, NAN)
    se_lift = math.sqrt(se2_t / m_c**2 + m_t**2 * se2_c / m_c**4)
    half = float(scipy_stats.norm.ppf(1 - c.alpha / 2)) * se_lift
    return diff_ci, (c.lift - half, c.lift + half)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels `multipletests`); NaN stays NaN and is not counted."""
    adjusted = [NAN] * len(p_values)
    present = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    if present:
        _, corrected, _, _ = multipletests([p_values[i] for i in present], method="holm")
        for index, value in zip(present, corrected):
            adjusted[index] = float(value)
    return adjusted


def _pair(values: Sequence[float]) -> tuple[float, float]:
    low, high = values
    return float(low), float(high)


def is_finite(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value)
