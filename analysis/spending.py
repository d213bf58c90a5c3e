"""The fixed-horizon test's level once early stops were allowed before it (pure).

Before the planned end the always-valid p-value may stop a run at any look; at the planned end
the fixed-horizon test decides. A false positive can come from either, so testing the planned
end at the full alpha would exceed alpha by the chance of an early stop that the planned end
would not have confirmed. The planned end is therefore tested at the level `alpha_at_end`
that leaves the two together at exactly alpha under no effect.

Under no effect the cumulative z statistics of the looks follow a Brownian motion in
information time t = I_k / I_end (I: the inverse variance of the difference): B(t_k) = Z_k
sqrt(t_k). The always-valid p-value crosses alpha at look k when |Z_k| exceeds

    b_k^2 = 2 (V_k + tau2) / tau2 * (log(1 / alpha) + log(sqrt((V_k + tau2) / V_k)))

(V_k: the variance of the difference at look k; the same inequality as in
`analysis.sequential`). The chance of no early crossing and |B(1)| < c is computed by
propagating the density of B over a grid from look to look (the recursive integration of
Armitage, McPherson and Rowe), and c is solved for; the level is 2 (1 - Phi(c)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

_STEP = 0.005  # grid spacing for B(t), in units of its standard deviation at the end
_REACH = 9.0  # the grid spans +-_REACH
_MERGE = 1e-4  # looks closer than this in information time are one look


def crossing_bound(variance: float, tau2: float, alpha: float) -> float:
    """|Z| at which the always-valid p-value falls below alpha, at a look of this variance."""
    ratio = (variance + tau2) / variance
    return math.sqrt(2 * ratio * variance / tau2 * (math.log(1 / alpha) + 0.5 * math.log(ratio)))


def alpha_at_end(early_variances: Sequence[float], end_variance: float, tau2: float,
                 alpha: float) -> float:  # fmt: skip
    """The level of the planned end's two-sided test, after early looks of these variances.

    Looks without a usable variance (no data yet) could not stop the run and are skipped.
    Without early looks this is alpha itself.
    """
    looks: list[tuple[float, float]] = []  # (information time, |B| bound)
    for variance in early_variances:
        if not (math.isfinite(variance) and variance > 0 and end_variance > 0):
            continue
        t = min(end_variance / variance, 1.0)
        bound = crossing_bound(variance, tau2, alpha) * math.sqrt(t)
        if looks and t - looks[-1][0] < _MERGE:
            looks[-1] = (looks[-1][0], min(looks[-1][1], bound))
        elif t < 1.0 - _MERGE:
            looks.append((t, bound))
    if not looks:
        return alpha
    grid = np.arange(-_REACH, _REACH + _STEP / 2, _STEP)
    density = np.zeros_like(grid)
    previous = 0.0
    for index, (t, bound) in enumerate(looks):
        if index == 0:
            density = norm.pdf(grid, scale=math.sqrt(t))
        else:
            density = _propagate(density, grid, t - previous)
        density = np.where(np.abs(grid) < bound, density, 0.0)
        previous = t
    density = _propagate(density, grid, 1.0 - previous)

    def excess(c: float) -> float:
        kept = float(np.sum(density[np.abs(grid) < c]) * _STEP)
        return (1.0 - kept) - alpha

    plain = float(norm.ppf(1 - alpha / 2))
    if excess(plain) <= 0:
        return alpha
    if excess(_REACH - 1.0) > 0:  # the early looks alone spent alpha: nothing is left
        return 0.0
    c = float(brentq(excess, plain, _REACH - 1.0, xtol=1e-10))
    return float(2 * norm.sf(c))


def _propagate(density: np.ndarray, grid: np.ndarray, dt: float) -> np.ndarray:
    """The density of B(t + dt) from that of B(t): a convolution with N(0, dt)."""
    sd = math.sqrt(max(dt, 1e-12))
    kernel = norm.pdf(np.arange(-_REACH, _REACH + _STEP / 2, _STEP), scale=sd) * _STEP
    convolved = np.convolve(density, kernel, mode="same")
    return np.asarray(convolved, dtype=float)
