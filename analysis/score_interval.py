"""Score intervals for two proportions: the difference and the ratio (pure).

The interval is every value the score test does not reject: for a hypothesised difference d
(or ratio r), the rates are re-estimated by maximum likelihood under that constraint and the
statistic is

    T(d) = (p_t - p_c - d) / sqrt(q_t (1 - q_t) / n_t + q_c (1 - q_c) / n_c)    (q: constrained)
    T(r) = (p_t - r p_c) / sqrt(q_t (1 - q_t) / n_t + r^2 q_c (1 - q_c) / n_c)

At d = 0 (r = 1) the constrained rates are the pooled rate, so T is the pooled z statistic: the
interval leaves out 0 (1) exactly when the pooled z-test rejects. No small-sample correction
(that would break this agreement).

Why not statsmodels' `confint_proportions_2indep(method="score")`: its constrained estimate for
the difference uses a count where a sample size belongs (statsmodels bug #10269), which moves
the bounds by up to about 1e-3 at a few hundred units per arm; and its root search fails on
arms with no events or only events. Here the constrained estimate is the root of the score
equation written out as a polynomial, and the bounds come from a bracketed root search.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.optimize import brentq

NAN = float("nan")
_EDGE = 1e-12  # how close to an impossible value (a rate of 0 or 1) the search may go
_LOG_FAR = 40.0  # a ratio e^40 away from the estimate: as good as unbounded


def constrained_rates_diff(x_t: int, n_t: int, x_c: int, n_c: int, d: float) -> tuple[float, float]:
    """Maximum-likelihood (q_t, q_c) subject to q_t - q_c = d.

    The log-likelihood is concave in q_c on its feasible range, so its maximum is the one root
    of the score equation inside the range, or the edge the score points to when none is.
    Clearing the denominators of the score equation leaves a cubic in q_c.
    """
    lo, hi = max(0.0, -d), min(1.0, 1.0 - d)
    # Each term of the score equation times q_c (1 - q_c) (q_c + d) (1 - q_c - d):
    treated, untreated = (d, 1.0), (1.0 - d, -1.0)  # q_c + d and 1 - q_c - d
    rate, rest = (0.0, 1.0), (1.0, -1.0)  # q_c and 1 - q_c
    cubic = _combine(
        (x_t, _times(untreated, rate, rest)),
        (-(n_t - x_t), _times(treated, rate, rest)),
        (x_c, _times(treated, untreated, rest)),
        (-(n_c - x_c), _times(treated, untreated, rate)),
    )
    q_c = _score_root(cubic, lo, hi)
    return q_c + d, q_c


def constrained_rates_ratio(
    x_t: int, n_t: int, x_c: int, n_c: int, r: float
) -> tuple[float, float]:
    """Maximum-likelihood (q_t, q_c) subject to q_t = r q_c (r > 0); a quadratic in q_c."""
    hi = min(1.0, 1.0 / r)
    # Score equation times q_c (1 - r q_c) (1 - q_c):
    quadratic = _combine(
        (x_t + x_c, _times((1.0, -r), (1.0, -1.0))),
        (-(n_t - x_t) * r, _times((0.0, 1.0), (1.0, -1.0))),
        (-(n_c - x_c), _times((0.0, 1.0), (1.0, -r))),
    )
    q_c = _score_root(quadratic, 0.0, hi)
    return r * q_c, q_c


Polynomial = tuple[float, ...]  # coefficients, constant term first


def _times(*factors: Polynomial) -> Polynomial:
    product: Polynomial = (1.0,)
    for factor in factors:
        out = [0.0] * (len(product) + len(factor) - 1)
        for i, a in enumerate(product):
            for j, b in enumerate(factor):
                out[i + j] += a * b
        product = tuple(out)
    return product


def _combine(*terms: tuple[float, Polynomial]) -> Polynomial:
    size = max(len(p) for _, p in terms)
    return tuple(sum(w * (p[i] if i < len(p) else 0.0) for w, p in terms) for i in range(size))


def _value(p: Polynomial, x: float) -> float:
    total = 0.0
    for coefficient in reversed(p):
        total = total * x + coefficient
    return total


def _score_root(coefficients: Polynomial, lo: float, hi: float) -> float:
    """The maximiser on [lo, hi]: the polynomial (the cleared score, positive where the
    likelihood rises) changes sign from + to - there once at most."""
    inside = [
        float(root.real)
        for root in np.roots(np.trim_zeros(np.array(coefficients[::-1]), "f"))
        if abs(root.imag) < 1e-9 and lo - 1e-12 <= root.real <= hi + 1e-12
    ]
    middle = (lo + hi) / 2
    for root in sorted(inside, key=lambda v: abs(v - middle)):
        # A root where the cleared score falls is the maximum (one of the factors cleared can
        # vanish at an edge and make a spurious root there).
        step = 1e-9 * max(1.0, hi - lo)
        left, right = max(lo, root - step), min(hi, root + step)
        if _value(coefficients, left) >= 0 >= _value(coefficients, right):
            return min(max(root, lo), hi)
    return hi if _value(coefficients, middle) > 0 else lo


def diff_statistic(x_t: int, n_t: int, x_c: int, n_c: int, d: float) -> float:
    q_t, q_c = constrained_rates_diff(x_t, n_t, x_c, n_c, d)
    variance = q_t * (1 - q_t) / n_t + q_c * (1 - q_c) / n_c
    gap = x_t / n_t - x_c / n_c - d
    return _ratio_of(gap, variance)


def ratio_statistic(x_t: int, n_t: int, x_c: int, n_c: int, r: float) -> float:
    q_t, q_c = constrained_rates_ratio(x_t, n_t, x_c, n_c, r)
    variance = q_t * (1 - q_t) / n_t + r * r * q_c * (1 - q_c) / n_c
    gap = x_t / n_t - r * x_c / n_c
    return _ratio_of(gap, variance)


def _ratio_of(gap: float, variance: float) -> float:
    if variance > 0:
        return gap / math.sqrt(variance)
    return 0.0 if gap == 0 else math.copysign(math.inf, gap)


def diff_interval(x_t: int, n_t: int, x_c: int, n_c: int, z: float) -> tuple[float, float]:
    """Score interval for p_t - p_c at critical value z (1.96 for 95 %)."""
    if not (n_t and n_c):
        return NAN, NAN
    estimate = x_t / n_t - x_c / n_c

    def excess(d: float) -> float:
        return abs(diff_statistic(x_t, n_t, x_c, n_c, d)) - z

    low = _edge(excess, estimate, -1.0 + _EDGE)
    high = _edge(excess, estimate, 1.0 - _EDGE)
    # Not rejected even next to the edge: the bound is the edge itself.
    return (-1.0 if low == -1.0 + _EDGE else low), (1.0 if high == 1.0 - _EDGE else high)


def ratio_interval(x_t: int, n_t: int, x_c: int, n_c: int, z: float) -> tuple[float, float]:
    """Score interval for p_t / p_c; NaN when the control arm had no event (no ratio)."""
    if not (n_t and n_c and x_c):
        return NAN, NAN
    estimate = (x_t / n_t) / (x_c / n_c)

    def excess(log_r: float) -> float:
        return abs(ratio_statistic(x_t, n_t, x_c, n_c, math.exp(log_r))) - z

    # Searched on the log scale, where the ratio has no edge. A treatment arm without events
    # has the estimate 0, and its lower bound is 0.
    if estimate == 0:
        return 0.0, math.exp(_edge(excess, math.log(_EDGE), _LOG_FAR))
    centre = math.log(estimate)
    low = _edge(excess, centre, centre - _LOG_FAR)
    return (0.0 if low == centre - _LOG_FAR else math.exp(low)), math.exp(
        _edge(excess, centre, centre + _LOG_FAR)
    )


def _edge(excess: Callable[[float], float], inside: float, outside: float) -> float:
    """Where `excess` crosses zero between the estimate (`inside`, not rejected) and `outside`;
    `outside` itself when even it is not rejected."""
    if excess(outside) <= 0:
        return outside
    if excess(inside) > 0:  # only when rounding puts the estimate on the wrong side
        return inside
    root: float = brentq(excess, min(inside, outside), max(inside, outside), xtol=1e-13, rtol=4e-15)
    return root
