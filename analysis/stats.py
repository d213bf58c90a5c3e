"""Two-arm comparisons from per-arm sufficient statistics (pure: numbers in, numbers out).

The engine reduces the logs to, per arm, the number of units `n`, the sum of the per-unit
values and the sum of their squares; everything here works from those three numbers, so a
report over ten million exposures and a unit test over ten units go through the same code.

Every interval agrees with the test printed beside it: it leaves out "no difference" exactly
when that test's p < alpha.

- proportion: the pooled two-proportion z-test (statsmodels `proportions_ztest`, the standard
  test), with score intervals for the difference and the ratio (`analysis.score_interval`),
  which invert that same test.
- mean: Welch's t-test (scipy `ttest_ind_from_stats`) with the Welch-Satterthwaite interval
  for the difference, and Fieller's interval for the ratio at Welch's critical value.
- several strata (ramp phases: units enrolled under different traffic splits): the arms are
  compared within each stratum and the differences combined with weights n_c n_t / (n_c + n_t)
  (Cochran-Mantel-Haenszel), a normal test on the combined difference, a normal interval for
  it and Fieller's for the ratio. Pooling across a ramp would compare a treatment arm of mostly
  late units with a control arm of mostly early ones; weighting by each stratum's unit share
  instead would give a stratum with one unit in an arm a large weight and a variance of zero.

Lift intervals come from ratio intervals, so they never go below -100 % for a metric that
cannot be negative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Optional, Union

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportions_ztest

from analysis.score_interval import diff_interval, ratio_interval

NAN = float("nan")

# Why an interval is missing, for the reader (the report prints these beside an "n/a").
NO_VARIATION = "no variation to measure (an arm too small, or every unit alike)"
NO_CONTROL_LEVEL = "the control value is zero or too uncertain for a ratio"


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
    # Whether the metric's values are never negative: then neither is a ratio of its means.
    nonnegative: bool = True
    # The critical value the test uses (z, or Welch's t), which the ratio interval reuses.
    critical: float = NAN

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

    @property
    def missing_interval(self) -> Optional[str]:
        """Why the lift has no interval, when it has none (and a lift to show)."""
        if math.isnan(self.lift) or not math.isnan(self.lift_ci[0]):
            return None
        if math.isnan(self.diff_ci[0]):
            return NO_VARIATION
        return NO_CONTROL_LEVEL

    @cached_property
    def _intervals(self) -> tuple[tuple[float, float], tuple[float, float]]:
        if math.isnan(self.p_value):
            return (NAN, NAN), (NAN, NAN)
        if self.kind == "proportion" and not self.strata:
            return _proportion_intervals(self)
        return _normal_intervals(self)


def compare(
    kind: str, control: ArmStats, treatment: ArmStats, alpha: float, nonnegative: bool = True
) -> Comparison:
    if kind == "proportion":
        return compare_proportions(control, treatment, alpha)
    if kind == "mean":
        return compare_means(control, treatment, alpha, nonnegative)
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
    x_c, x_t = _counts(control, treatment)
    statistic = p_value = NAN
    if _testable(control, treatment):
        statistic, p_value = (
            float(v) for v in proportions_ztest([x_t, x_c], [treatment.n, control.n])
        )
    return Comparison(
        "proportion", control, treatment, alpha, control.mean, treatment.mean,
        _mean_variance("proportion", control), _mean_variance("proportion", treatment),
        statistic, p_value, critical=_z(alpha),
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
    n_c, n_t = c.control.n, c.treatment.n
    x_c, x_t = _counts(c.control, c.treatment)
    diff_ci = diff_interval(x_t, n_t, x_c, n_c, c.critical)
    low, high = ratio_interval(x_t, n_t, x_c, n_c, c.critical)
    return diff_ci, (low - 1, high - 1)


def compare_means(
    control: ArmStats, treatment: ArmStats, alpha: float, nonnegative: bool = True
) -> Comparison:
    m_c, m_t = control.mean, treatment.mean
    v_c, v_t = control.variance, treatment.variance
    se2_c, se2_t = _mean_variance("mean", control), _mean_variance("mean", treatment)
    statistic = p_value = critical = NAN
    if se2_c + se2_t > 0:  # False for NaN too: fewer than two units in an arm
        result = scipy_stats.ttest_ind_from_stats(
            m_t, math.sqrt(v_t), treatment.n, m_c, math.sqrt(v_c), control.n, equal_var=False
        )
        statistic, p_value = float(result.statistic), float(result.pvalue)
        dof = (se2_c + se2_t) ** 2 / (se2_t**2 / (treatment.n - 1) + se2_c**2 / (control.n - 1))
        critical = float(scipy_stats.t.ppf(1 - alpha / 2, dof))
    return Comparison(
        "mean", control, treatment, alpha, m_c, m_t, se2_c, se2_t, statistic, p_value,
        nonnegative=nonnegative, critical=critical,
    )  # fmt: skip


def compare_strata(
    kind: str,
    strata: Sequence[tuple[ArmStats, ArmStats]],
    alpha: float,
    nonnegative: bool = True,
) -> Comparison:
    """Control and treatment compared within strata, combined with weights n_c n_t / (n_c + n_t).

    Those weights are what each stratum can tell about the difference: a stratum with one
    unit in an arm counts for about one unit, however many the other arm holds. A stratum
    missing an arm (a rollback sent everyone to control) has weight 0 and is left out. With
    one stratum left this is `compare`, exactly.
    """
    usable = [(c, t) for c, t in strata if c.n and t.n]
    if len(usable) <= 1:
        if usable:
            return compare(kind, *usable[0], alpha, nonnegative)
        control = sum((c for c, _ in strata), ArmStats(0, 0.0, 0.0))
        treatment = sum((t for _, t in strata), ArmStats(0, 0.0, 0.0))
        return compare(kind, control, treatment, alpha, nonnegative)
    raw = [c.n * t.n / (c.n + t.n) for c, t in usable]
    weights = [w / sum(raw) for w in raw]
    m_c = sum(w * c.mean for w, (c, _) in zip(weights, usable))
    m_t = sum(w * t.mean for w, (_, t) in zip(weights, usable))
    v_c = v_t = 0.0
    for w, (c, t) in zip(weights, usable):
        pooled = _unit_variance(kind, c + t)
        v_c += w * w * _arm_unit_variance(kind, c, pooled) / c.n
        v_t += w * w * _arm_unit_variance(kind, t, pooled) / t.n
    statistic = p_value = NAN
    if v_c + v_t > 0:
        statistic = (m_t - m_c) / math.sqrt(v_c + v_t)
        p_value = float(2 * scipy_stats.norm.sf(abs(statistic)))
    return Comparison(
        kind,
        sum((c for c, _ in usable), ArmStats(0, 0.0, 0.0)),
        sum((t for _, t in usable), ArmStats(0, 0.0, 0.0)),
        alpha, m_c, m_t, v_c, v_t, statistic, p_value, tuple(usable), nonnegative, _z(alpha),
    )  # fmt: skip


def _unit_variance(kind: str, arm: ArmStats) -> float:
    if kind == "proportion":
        return arm.mean * (1 - arm.mean) if arm.n else NAN
    return arm.variance


def _arm_unit_variance(kind: str, arm: ArmStats, pooled: float) -> float:
    """One unit cannot show how units vary: it borrows its stratum's pooled variance."""
    return pooled if arm.n < 2 else _unit_variance(kind, arm)


def _normal_intervals(c: Comparison) -> tuple[tuple[float, float], tuple[float, float]]:
    """The difference +- critical * se, and Fieller's interval for the ratio of means."""
    if not c.diff_variance > 0:
        return (NAN, NAN), (NAN, NAN)
    half = c.critical * math.sqrt(c.diff_variance)
    diff_ci = (c.diff - half, c.diff + half)
    ratio = fieller_interval(
        c.treatment_mean, c.treatment_mean_variance, c.control_mean, c.control_mean_variance,
        c.critical,
    )  # fmt: skip
    if ratio is None:
        return diff_ci, (NAN, NAN)
    low, high = ratio
    if c.nonnegative:
        low = max(low, 0.0)
    return diff_ci, (low - 1, high - 1)


def at_level(c: Comparison, alpha: float) -> Comparison:
    """The same comparison tested, and its intervals drawn, at another level."""
    critical = _z(alpha)
    if c.kind == "mean" and not c.strata and c.diff_variance > 0:
        se2_c, se2_t = c.control_mean_variance, c.treatment_mean_variance
        dof = c.diff_variance**2 / (se2_t**2 / (c.treatment.n - 1) + se2_c**2 / (c.control.n - 1))
        critical = float(scipy_stats.t.ppf(1 - alpha / 2, dof))
    return replace(c, alpha=alpha, critical=critical)


def fieller_interval(
    m_t: float, v_t: float, m_c: float, v_c: float, critical: float
) -> Optional[tuple[float, float]]:
    """Every ratio r that the test of m_t - r m_c = 0 does not reject at `critical`.

    (m_t - r m_c)^2 <= critical^2 (v_t + r^2 v_c) is a quadratic in r; at r = 1 it is the test
    of the difference, so the interval leaves out 1 exactly when that test rejects. It is a
    bounded interval only when the control mean itself is clearly away from zero; None else.
    """
    c2 = critical * critical
    a = m_c * m_c - c2 * v_c
    if not a > 0:
        return None
    b = m_t * m_c
    root = math.sqrt(max(b * b - a * (m_t * m_t - c2 * v_t), 0.0))
    return (b - root) / a, (b + root) / a


def _z(alpha: float) -> float:
    return float(scipy_stats.norm.ppf(1 - alpha / 2))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels `multipletests`); NaN stays NaN and is not counted."""
    adjusted = [NAN] * len(p_values)
    present = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    if present:
        _, corrected, _, _ = multipletests([p_values[i] for i in present], method="holm")
        for index, value in zip(present, corrected):
            adjusted[index] = float(value)
    return adjusted


def is_finite(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value)
