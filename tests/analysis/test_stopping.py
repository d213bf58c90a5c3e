"""Which look decides (stopping.py) and the planned end's level after early looks (spending.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy.stats import norm

from analysis.sequential import always_valid_p
from analysis.spending import alpha_at_end, crossing_bound
from analysis.stopping import COMPLETE, EARLY, RUNNING, Look, stopping_point

START = datetime(2026, 11, 20, tzinfo=timezone.utc)


def looks(ready_from: int, crossing: int = 99, days: int = 10) -> list[Look]:
    return [
        Look(START + timedelta(days=d + 1), d >= ready_from, 0.01 if d >= crossing else 0.5)
        for d in range(days)
    ]


@pytest.mark.parametrize(
    ("ready_from", "crossing", "min_days", "as_of_days", "stage", "index"),
    [
        (2, 99, 4, None, COMPLETE, 3),  # days decide: the end of day 4 is 4 days in
        (6, 99, 4, None, COMPLETE, 6),  # units decide
        (6, 2, 4, None, EARLY, 2),  # the always-valid p-value crossed first
        (2, 3, 4, None, COMPLETE, 3),  # crossing on the planned end's look: the end decides
        (2, 99, 4, 3.5, RUNNING, None),  # the planned end's period is not over yet
        (2, 99, 4, 4.0, COMPLETE, 3),
        (2, 3, 4, 3.5, EARLY, 3),  # an open period may still stop the run early
        (20, 99, 4, None, RUNNING, None),
    ],
)
def test_the_deciding_look(
    ready_from: int,
    crossing: int,
    min_days: int,
    as_of_days: float,
    stage: str,
    index: int,
) -> None:
    as_of = None if as_of_days is None else START + timedelta(days=as_of_days)
    stop = stopping_point(looks(ready_from, crossing), START, min_days, 0.05, as_of)
    assert (stop.stage, stop.index) == (stage, index)


def test_a_later_read_finds_the_same_planned_end() -> None:
    """Prefix-consistent: more days of data never move the planned end."""
    all_looks = looks(3)
    ends = {stopping_point(all_looks[:n], START, 4, 0.05).index for n in range(4, 11)}
    assert ends == {3}


def test_without_early_looks_the_planned_end_keeps_alpha() -> None:
    assert alpha_at_end([], 1e-5, 1e-4, 0.05) == 0.05


def test_the_planned_end_level_keeps_early_stops_and_the_end_together_at_alpha() -> None:
    """Checked by simulating the looks' z statistics (a random walk in information) and the
    always-valid p-value on them: early crossings plus |Z| beyond the level at the end."""
    tau2, alpha = 0.02**2, 0.05
    variances = np.array([2 * 0.09 / (1_000 * k) for k in range(1, 7)])
    level = alpha_at_end(list(variances[:-1]), float(variances[-1]), tau2, alpha)
    assert 0.045 < level < alpha
    rng = np.random.default_rng(1)
    runs = 400_000
    z = rng.normal(size=(runs, 6)).cumsum(axis=1) / np.sqrt(np.arange(1, 7))
    diff = z * np.sqrt(variances)
    valid = always_valid_p(diff, np.broadcast_to(variances, diff.shape), tau2)
    early = (valid[:, :-1] < alpha).any(axis=1)
    end = np.abs(z[:, -1]) > norm.ppf(1 - level / 2)
    assert float(np.mean(early | end)) == pytest.approx(alpha, abs=0.0015)
    plain = np.abs(z[:, -1]) > norm.ppf(1 - alpha / 2)
    assert float(np.mean(early | plain)) > alpha + 0.001  # what testing the end at alpha gives


def test_the_crossing_bound_is_where_the_always_valid_p_value_crosses() -> None:
    variance, tau2 = 2e-5, 4e-4
    bound = crossing_bound(variance, tau2, 0.05)
    just = np.array([bound * 0.999999, bound * 1.000001]) * np.sqrt(variance)
    p = [float(always_valid_p(np.array([d]), np.array([variance]), tau2)[0]) for d in just]
    assert p[0] >= 0.05 > p[1]
