"""An independent score interval for two proportions, by brute force, to check the product's.

The constrained maximum-likelihood rates come from a bounded numerical maximisation of the
log-likelihood (no closed form, no polynomial), and each bound from plain bisection on the
score statistic. Slow, simple, and sharing nothing with analysis/score_interval.py.
"""

from __future__ import annotations

import math
from typing import Callable

from scipy.optimize import minimize_scalar


def _log_likelihood(x: int, n: int, q: float) -> float:
    q = min(max(q, 1e-300), 1 - 1e-16)
    return x * math.log(q) + (n - x) * math.log1p(-q)


def _maximise(objective: Callable[[float], float], lo: float, hi: float) -> float:
    found = minimize_scalar(
        lambda q: -objective(q), bounds=(lo, hi), method="bounded", options={"xatol": 1e-14}
    )
    return float(found.x)


def statistic(x_t: int, n_t: int, x_c: int, n_c: int, value: float, compare: str) -> float:
    if compare == "diff":
        lo, hi = max(0.0, -value), min(1.0, 1.0 - value)
        q_c = _maximise(
            lambda q: _log_likelihood(x_t, n_t, q + value) + _log_likelihood(x_c, n_c, q), lo, hi
        )
        q_t, scale = q_c + value, 1.0
        gap = x_t / n_t - x_c / n_c - value
    else:
        q_c = _maximise(
            lambda q: _log_likelihood(x_t, n_t, value * q) + _log_likelihood(x_c, n_c, q),
            0.0,
            min(1.0, 1.0 / value),
        )
        q_t, scale = value * q_c, value
        gap = x_t / n_t - value * x_c / n_c
    variance = q_t * (1 - q_t) / n_t + scale * scale * q_c * (1 - q_c) / n_c
    return gap / math.sqrt(variance)


def bisect(rejects: Callable[[float], bool], accepted: float, rejected: float) -> float:
    for _ in range(200):
        middle = (accepted + rejected) / 2
        if rejects(middle):
            rejected = middle
        else:
            accepted = middle
    return (accepted + rejected) / 2


def interval(x_t: int, n_t: int, x_c: int, n_c: int, z: float, compare: str) -> tuple[float, float]:
    def rejects(value: float) -> bool:
        return abs(statistic(x_t, n_t, x_c, n_c, value, compare)) > z

    if compare == "diff":
        estimate = x_t / n_t - x_c / n_c
        edge = 1 - 1e-9
        return bisect(rejects, estimate, -edge), bisect(rejects, estimate, edge)
    estimate = (x_t / n_t) / (x_c / n_c)
    low = math.exp(bisect(lambda v: rejects(math.exp(v)), math.log(estimate), -30.0))
    high = math.exp(bisect(lambda v: rejects(math.exp(v)), math.log(estimate), 30.0))
    return low, high
