"""Sample ratio mismatch: do the arms hold the share of units the configuration promised? (pure)

Each unit is expected in an arm with the probability the traffic in force at its first
exposure gave that arm; summing over units gives expected counts, and a chi-square test compares
them with the observed ones. A mismatch means the assignment or the logging is broken (bots,
crashes in one arm, a filter that drops one arm's users), and then no lift can be trusted:
the verdict is withheld. A unit in an arm that should hold nobody is a mismatch outright.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from scipy.stats import chisquare

from analysis.arms import ArmLayout

SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class SrmResult:
    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    unexpected_arms: tuple[str, ...] = field(default=())
    threshold: float = SRM_THRESHOLD

    @property
    def flagged(self) -> bool:
        return bool(self.unexpected_arms) or self.p_value < self.threshold

    def describe(self) -> str:
        counts = ", ".join(
            f"{arm} {self.observed.get(arm, 0):,} (expected {self.expected.get(arm, 0.0):,.0f})"
            for arm in self.expected
        )
        if self.unexpected_arms:
            return (
                f"units in arms that should be empty: {', '.join(self.unexpected_arms)}; {counts}"
            )
        return f"{counts}; chi-square {self.chi2:.2f}, p = {self.p_value:.3g}"


def expected_counts(layout: ArmLayout, units_by_traffic: Mapping[float, int]) -> dict[str, float]:
    """Expected units per arm, given how many units were first exposed at each traffic."""
    expected = dict.fromkeys(layout.names, 0.0)
    for traffic, units in units_by_traffic.items():
        for arm, share in layout.shares(traffic).items():
            expected[arm] += share * units
    return expected


def srm_test(
    observed: Mapping[str, int],
    expected: Mapping[str, float],
    threshold: float = SRM_THRESHOLD,
) -> SrmResult:
    unexpected = tuple(
        sorted(arm for arm, count in observed.items() if count > 0 and expected.get(arm, 0) <= 0)
    )
    # Arms that should be empty and are: no degree of freedom, leave them out of the test.
    arms = [arm for arm, count in expected.items() if count > 0]
    observed_all = {arm: int(observed.get(arm, 0)) for arm in (*expected, *unexpected)}
    if unexpected or len(arms) < 2:
        p_value = 0.0 if unexpected else 1.0
        return SrmResult(observed_all, dict(expected), float("nan"), p_value, unexpected, threshold)
    chi2, p_value = chisquare([observed_all[arm] for arm in arms], [expected[arm] for arm in arms])
    return SrmResult(observed_all, dict(expected), float(chi2), float(p_value), (), threshold)
