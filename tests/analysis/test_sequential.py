"""Always-valid p-values, and 1,000 simulated A/A experiments with and without daily peeking.

The simulations are vectorized (units and conversions per arm and day, drawn at once); the
same draws go through the report's own functions: `compare_proportions` for the fixed-horizon
p-value at the end, `proportion_diff_variance` and `always_valid_p` for the daily looks.
tests/analysis/test_report_files.py checks that the file reader gives these same numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from analysis.sequential import always_valid_p, log_likelihood_ratio
from analysis.stats import ArmStats, compare_proportions, proportion_diff_variance

EXPERIMENTS, DAYS, UNITS_PER_DAY, BASELINE, MDE, ALPHA = 1_000, 14, 1_000, 0.05, 0.005, 0.05


def simulate(effect: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (units, conversions), shape (experiments, arm, day); arm 1 has `effect` added."""
    rng = np.random.default_rng(seed)
    new_units = rng.poisson(UNITS_PER_DAY, size=(EXPERIMENTS, 2, DAYS))
    rates = np.array([BASELINE, BASELINE + effect])[None, :, None]
    conversions = rng.binomial(new_units, rates)
    return new_units.cumsum(axis=-1), conversions.cumsum(axis=-1)


def daily_always_valid(units: np.ndarray, conversions: np.ndarray) -> np.ndarray:
    diff, variance = proportion_diff_variance(
        conversions[:, 0], units[:, 0], conversions[:, 1], units[:, 1]
    )
    return always_valid_p(diff, variance, MDE**2)


def fixed_horizon_at_end(units: np.ndarray, conversions: np.ndarray) -> np.ndarray:
    """The report's p-value on the final counts, one experiment at a time."""
    return np.array(
        [
            compare_proportions(
                ArmStats.of_proportion(int(units[e, 0, -1]), int(conversions[e, 0, -1])),
                ArmStats.of_proportion(int(units[e, 1, -1]), int(conversions[e, 1, -1])),
                ALPHA,
            ).p_value
            for e in range(len(units))
        ]
    )


@pytest.fixture(scope="module")
def aa() -> tuple[np.ndarray, np.ndarray]:
    return simulate(effect=0.0, seed=2026)


def test_aa_fixed_horizon_false_positive_rate_is_alpha(aa: tuple[np.ndarray, np.ndarray]) -> None:
    rate = float(np.mean(fixed_horizon_at_end(*aa) < ALPHA))
    assert 0.03 <= rate <= 0.07, rate


def test_aa_always_valid_p_under_daily_peeking_stays_below_alpha(
    aa: tuple[np.ndarray, np.ndarray],
) -> None:
    running = daily_always_valid(*aa)
    # Stopping at the first day with p < alpha is the same as "p < alpha on the last day",
    # because the always-valid p-value never rises.
    assert np.all(np.diff(running, axis=-1) <= 0)
    rate = float(np.mean(running[:, -1] < ALPHA))
    assert rate <= 0.05, rate


def test_aa_daily_peeking_at_the_fixed_horizon_p_is_what_goes_wrong(
    aa: tuple[np.ndarray, np.ndarray],
) -> None:
    """Why the always-valid p-value exists: stopping at the first daily fixed-horizon p < alpha
    finds a 'winner' in far more than 5 % of A/A tests."""
    units, conversions = aa
    pooled = conversions.sum(axis=1) / units.sum(axis=1)
    se = np.sqrt(pooled * (1 - pooled) * (1 / units[:, 0] + 1 / units[:, 1]))
    z = (conversions[:, 1] / units[:, 1] - conversions[:, 0] / units[:, 0]) / se
    p_daily = 2 * norm.sf(np.abs(z))
    rate = float(np.mean((p_daily < ALPHA).any(axis=-1)))
    assert rate > 0.10, rate


def test_always_valid_p_finds_a_real_effect_at_some_cost_in_power() -> None:
    units, conversions = simulate(effect=0.01, seed=7)  # +20 % relative
    always_valid = float(np.mean(daily_always_valid(units, conversions)[:, -1] < ALPHA))
    fixed = float(np.mean(fixed_horizon_at_end(units[:200], conversions[:200]) < ALPHA))
    assert always_valid > 0.7, always_valid
    assert fixed > always_valid  # the price of being allowed to look every day


def test_likelihood_ratio_formula() -> None:
    # Lambda = sqrt(V / (V + tau2)) * exp(tau2 * d^2 / (2 V (V + tau2))), written out.
    d, v, tau2 = 0.004, 2e-6, 2.5e-5
    expected = np.sqrt(v / (v + tau2)) * np.exp(tau2 * d * d / (2 * v * (v + tau2)))
    assert float(np.exp(log_likelihood_ratio(np.array(d), np.array(v), tau2))) == pytest.approx(
        expected, rel=1e-12
    )


def test_always_valid_p_is_capped_monotone_and_skips_looks_without_data() -> None:
    diff = np.array([0.0, np.nan, 0.01, 0.0, 0.02])
    variance = np.array([1e-4, np.nan, 1e-5, 1e-5, 0.0])
    p = always_valid_p(diff, variance, 1e-4)
    assert p[0] == 1.0 and p[1] == 1.0  # no evidence yet; a look without data changes nothing
    assert p[2] < 1.0
    assert p[3] == p[2] and p[4] == p[2]  # never rises; zero variance is no look


def test_always_valid_p_needs_a_positive_tau() -> None:
    with pytest.raises(ValueError, match="tau2"):
        always_valid_p(np.array([0.1]), np.array([0.1]), 0.0)
