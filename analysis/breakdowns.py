"""The same comparisons broken down: per segment of a logged attribute, and per day (pure).

Both stay within the ramp phases like the totals do (see `compare_strata`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from analysis.aggregates import TRAFFIC_SEGMENT, Aggregates, DayRow, MetricSums
from analysis.results import RoledMetric, SegmentResult, Trend, TrendPoint
from analysis.sequential import always_valid_interval, always_valid_p
from analysis.stats import ArmStats, compare, compare_strata


def daily_trends(
    aggregates: Aggregates,
    metrics: Sequence[RoledMetric],
    control: str,
    treatments: Sequence[str],
    alpha: float,
    tau: Optional[float],
    primary: Optional[RoledMetric],
) -> list[Trend]:
    trends = []
    for m in metrics:
        for arm in treatments:
            series = [
                (aggregates.daily.get((s, control, m.name)), aggregates.daily.get((s, arm, m.name)))
                for s in aggregates.strata
            ]
            pairs = [(c, t) for c, t in series if c and t]
            if not pairs:
                continue
            points = [_trend_point(m, rows, alpha) for rows in zip(*(zip(c, t) for c, t in pairs))]
            if m == primary and tau is not None:
                diff = np.array([p.cumulative.diff for p in points])
                variance = np.array([p.cumulative.diff_variance for p in points])
                running = always_valid_p(diff, variance, tau * tau)
                low, high = always_valid_interval(diff, variance, tau * tau, alpha)
                points = [
                    TrendPoint(p.day, p.daily, p.cumulative, float(v), (float(lo), float(hi)))
                    for p, v, lo, hi in zip(points, running, low, high)
                ]
            trends.append(Trend(m.name, m.role, m.kind, arm, tuple(points)))
    return trends


def _trend_point(m: RoledMetric, day: Sequence[tuple[DayRow, DayRow]], alpha: float) -> TrendPoint:
    """One day over all strata: `day` holds each stratum's (control, treatment) rows."""
    kind = m.kind
    daily = [(c.daily.as_stats(kind, c.units), t.daily.as_stats(kind, t.units)) for c, t in day]
    cumulative = [
        (c.cumulative.as_stats(kind, c.units), t.cumulative.as_stats(kind, t.units)) for c, t in day
    ]
    return TrendPoint(
        day[0][0].day,
        compare_strata(kind, daily, alpha, m.nonnegative),
        compare_strata(kind, cumulative, alpha, m.nonnegative),
    )


def segment_results(
    aggregates: Aggregates,
    metrics: Sequence[RoledMetric],
    control: str,
    treatments: Sequence[str],
    alpha: float,
) -> list[SegmentResult]:
    values: dict[str, set[str]] = {}
    for attribute, value, _, _ in aggregates.segment_units:
        values.setdefault(attribute, set()).add(value)
    # One value (an attribute nobody sent) is no segmentation.
    values = {attribute: seen for attribute, seen in values.items() if len(seen) > 1}

    def stats(attribute: str, value: str, stratum: float, arm: str, m: RoledMetric) -> ArmStats:
        key = (attribute, value, stratum, arm)
        sums = aggregates.segment_metrics.get((*key, m.name), MetricSums())
        return sums.as_stats(m.kind, aggregates.segment_units.get(key, 0))

    def whole(stratum: float, arm: str, m: RoledMetric) -> ArmStats:
        sums = aggregates.metrics.get((stratum, arm, m.name), MetricSums())
        return sums.as_stats(m.kind, aggregates.units.get((stratum, arm), 0))

    results = []
    for attribute in sorted(values):
        for value in sorted(values[attribute]):
            for m in metrics:
                for arm in treatments:
                    pairs = [
                        (stats(attribute, value, s, control, m), stats(attribute, value, s, arm, m))
                        for s in aggregates.strata
                    ]
                    comparison = compare_strata(m.kind, pairs, alpha, m.nonnegative)
                    results.append(SegmentResult(attribute, value, m.name, m.role, arm, comparison))
    if len(aggregates.strata) > 1:  # the ramp phases themselves, each compared on its own
        for stratum in aggregates.strata:
            for m in metrics:
                for arm in treatments:
                    comparison = compare(
                        m.kind,
                        whole(stratum, control, m),
                        whole(stratum, arm, m),
                        alpha,
                        m.nonnegative,
                    )
                    results.append(
                        SegmentResult(
                            TRAFFIC_SEGMENT, f"{stratum:g}%", m.name, m.role, arm, comparison
                        )
                    )
    return results
