"""Two-arm comparisons from per-arm sufficient statistics (pure: numbers in, numbers out).

The engine reduces the logs to, per arm, the number of units `n`, the sum of the per-unit
values and the sum of their squares; everything here works from those three numbers, so a
report over ten million exposures and a unit test over ten units go through the same code.

- proportion: the pooled two-proportion z-test (statsmodels `proportions_ztest`, the article's
  test), with score intervals for the difference and the ratio (statsmodels
  `confint_proportions_2indep`, `method="score"`, no correction). At a difference of zero the
  score statistic is the pooled z, so the interval excludes zero exactly when p < alpha.
- mean: Welch's t-test (scipy `ttest_ind_from_stats`) with the Welch-Satterthwaite interval
  for the difference, and a delta-method interval for the relative lift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

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
    def of_values(cls, values: Sequence[float]) -> ArmStats:
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
    """Treatment against control on one metric. `lift` is relative (0.1 = +10 %)."""

    kind: str
    control: ArmStats
    treatment: ArmStats
    alpha: float
    diff: float
    diff_ci: tuple[float, float]
    lift: float
    lift_ci: tuple[float, float]
    statistic: float
    p_value: float
    # Variance of `diff`'s estimate (unpooled), the input of the always-valid p-value.
    diff_variance: float

    @property
    def significant(self) -> bool:
        return bool(self.p_value < self.alpha)


def compare(kind: str, control: ArmStats, treatment: ArmStats, alpha: float) -> Comparison:
    if kind == "proportion":
        return compare_proportions(control, treatment, alpha)
    if kind == "mean":
        return compare_means(control, treatment, alpha)
    raise ValueError(f"metric type must be 'proportion' or 'mean', got {kind!r}")


def compare_proportions(control: ArmStats, treatment: ArmStats, alpha: float) -> Comparison:
    n_c, n_t = control.n, treatment.n
    x_c, x_t = round(control.total), round(treatment.total)
    p_c, p_t = control.mean, treatment.mean
    diff = p_t - p_c
    variance = (p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c) if n_c and n_t else NAN
    statistic = p_value = NAN
    diff_ci = lift_ci = (NAN, NAN)
    # Every test below divides by a pooled variance that is zero when no unit (or every unit)
    # of both arms had the event: there is nothing to test then.
    if n_c and n_t and 0 < x_c + x_t < n_c + n_t:
        statistic, p_value = (float(v) for v in proportions_ztest([x_t, x_c], [n_t, n_c]))
        diff_ci = _pair(
            confint_proportions_2indep(
                x_t, n_t, x_c, n_c, method="score", compare="diff", alpha=alpha, correction=False
            )
        )
        if x_c > 0:
            low, high = confint_proportions_2indep(
                x_t, n_t, x_c, n_c, method="score", compare="ratio", alpha=alpha, correction=False
            )
            lift_ci = (float(low) - 1, float(high) - 1)
    lift = diff / p_c if p_c else NAN
    return Comparison(
        "proportion", control, treatment, alpha, diff, diff_ci, lift, lift_ci,
        statistic, p_value, variance,
    )  # fmt: skip


def compare_means(control: ArmStats, treatment: ArmStats, alpha: float) -> Comparison:
    m_c, m_t = control.mean, treatment.mean
    v_c, v_t = control.variance, treatment.variance
    diff = m_t - m_c
    se2_c = v_c / control.n if control.n else NAN
    se2_t = v_t / treatment.n if treatment.n else NAN
    variance = se2_c + se2_t
    statistic = p_value = NAN
    diff_ci = lift_ci = (NAN, NAN)
    if variance > 0:  # False for NaN too: fewer than two units in an arm
        result = scipy_stats.ttest_ind_from_stats(
            m_t, math.sqrt(v_t), treatment.n, m_c, math.sqrt(v_c), control.n, equal_var=False
        )
        statistic, p_value = float(result.statistic), float(result.pvalue)
        dof = variance**2 / (se2_t**2 / (treatment.n - 1) + se2_c**2 / (control.n - 1))
        half = float(scipy_stats.t.ppf(1 - alpha / 2, dof)) * math.sqrt(variance)
        diff_ci = (diff - half, diff + half)
    lift = diff / m_c if m_c else NAN
    if m_c and variance > 0:
        # Delta method for m_t / m_c - 1.
        se_lift = math.sqrt(se2_t / m_c**2 + m_t**2 * se2_c / m_c**4)
        half = float(scipy_stats.norm.ppf(1 - alpha / 2)) * se_lift
        lift_ci = (lift - half, lift + half)
    return Comparison(
        "mean", control, treatment, alpha, diff, diff_ci, lift, lift_ci,
        statistic, p_value, variance,
    )  # fmt: skip


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
