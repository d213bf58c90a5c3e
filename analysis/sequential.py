"""Always-valid p-values: the mixture sequential probability ratio test (pure, vectorized).

Johari, Koomen, Pekelis and Walsh, "Always Valid Inference" (2017/2022): with an estimate
`diff` of the treatment effect whose variance is `variance`, and a normal mixing distribution
N(0, tau2) over the effect under the alternative, the likelihood ratio against "no effect" is

    Lambda = sqrt(V / (V + tau2)) * exp(tau2 * diff^2 / (2 V (V + tau2)))

and p_t = min(p_{t-1}, 1 / Lambda_t) stays valid however often it is looked at: under no
effect, the chance that it *ever* drops below alpha is at most alpha. The fixed-horizon p-value
has that guarantee only when it is looked at once, at the planned sample size.

`tau2` should come from the pre-registration, never from the data being tested: here it is the
square of the registered minimum detectable effect (absolute), the effect size the test is
tuned to find quickest.
"""

from __future__ import annotations

import numpy as np


def log_likelihood_ratio(diff: np.ndarray, variance: np.ndarray, tau2: float) -> np.ndarray:
    diff = np.asarray(diff, dtype=float)
    variance = np.asarray(variance, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = 0.5 * np.log(variance / (variance + tau2)) + tau2 * diff**2 / (
            2 * variance * (variance + tau2)
        )
    return np.asarray(log_lr, dtype=float)


def always_valid_p(diff: np.ndarray, variance: np.ndarray, tau2: float) -> np.ndarray:
    """Running always-valid p-values along the last axis (one entry per look).

    A look whose variance is not positive (no data yet) leaves the p-value where it was.
    """
    if tau2 <= 0:
        raise ValueError(f"tau2 must be positive, got {tau2}")
    log_lr = log_likelihood_ratio(diff, variance, tau2)
    usable = np.isfinite(log_lr) & (np.asarray(variance, dtype=float) > 0)
    instant = np.where(usable, np.exp(-np.clip(log_lr, 0.0, None)), 1.0)
    return np.minimum.accumulate(instant, axis=-1)


def always_valid_interval(
    diff: np.ndarray, variance: np.ndarray, tau2: float, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Running always-valid confidence intervals for the difference (one per look).

    Every effect d the same test does not reject: Lambda(d) < 1/alpha with `diff - d` in place
    of `diff`, which is diff +- sqrt(2 V (V + tau2) / tau2 * log(sqrt((V + tau2) / V) / alpha)).
    Intersected over the looks, like the p-value is minimised over them: the interval leaves
    out 0 exactly when the always-valid p-value is below alpha.
    """
    if tau2 <= 0:
        raise ValueError(f"tau2 must be positive, got {tau2}")
    diff = np.asarray(diff, dtype=float)
    variance = np.asarray(variance, dtype=float)
    usable = np.isfinite(diff) & np.isfinite(variance) & (variance > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.sqrt(
            2 * variance * (variance + tau2) / tau2
            * (np.log(1 / alpha) + 0.5 * np.log((variance + tau2) / variance))
        )  # fmt: skip
    low = np.maximum.accumulate(np.where(usable, diff - radius, -np.inf), axis=-1)
    high = np.minimum.accumulate(np.where(usable, diff + radius, np.inf), axis=-1)
    return low, high
