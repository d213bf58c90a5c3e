"""From aggregates and the pre-registration to a `Report` (pure: no files, no engine).

Roles follow the pre-registration: the primary metric alone gets a verdict; secondary metrics
get Holm-corrected p-values (one family across metrics and treatment arms); guardrails are
flagged when significantly worse; every other metric in the logs is exploratory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from analysis.aggregates import TRAFFIC_SEGMENT, Aggregates, DataQuality, DayRow, MetricSums
from analysis.arms import ArmLayout
from analysis.power import Effect, units_per_arm_mean, units_per_arm_proportion
from analysis.registry import AnalysisPlan, ExperimentSpec, MetricPlan
from analysis.results import (
    EXPLORATORY,
    GUARDRAIL,
    PRIMARY,
    SECONDARY,
    MetricResult,
    Plan,
    Report,
    SegmentResult,
    Trend,
    TrendPoint,
)
from analysis.segments import SegmentLift, sign_warnings
from analysis.sequential import always_valid_p
from analysis.srm import expected_counts, srm_test
from analysis.stats import ArmStats, Comparison, compare, compare_strata, holm
from analysis.verdict import Evidence, Verdict, decide

DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class _Metric:
    name: str
    role: str
    kind: str
    direction: Optional[str]


def build_report(
    spec: ExperimentSpec,
    aggregates: Aggregates,
    *,
    extra_quality_notes: Sequence[str] = (),
) -> Report:
    plan = spec.plan
    alpha = plan.alpha if plan else DEFAULT_ALPHA
    layout = spec.arms
    treatments = layout.others
    warnings: list[str] = []
    notes: list[str] = list(extra_quality_notes)
    strata = aggregates.strata

    srm = srm_test(aggregates.arms, expected_counts(layout, _units_by_stratum(aggregates)))
    if srm.flagged:
        warnings.append(f"SAMPLE RATIO MISMATCH (p < {srm.threshold:g}): {srm.describe()}")
    metrics = _metric_roles(plan, aggregates, warnings)
    units = {arm: aggregates.arms.get(arm, 0) for arm in layout.names}
    units.update({a: n for a, n in aggregates.arms.items() if a not in units})

    def stats(stratum: float, arm: str, m: _Metric) -> ArmStats:
        sums = aggregates.metrics.get((stratum, arm, m.name), MetricSums())
        return sums.as_stats(m.kind, aggregates.units.get((stratum, arm), 0))

    comparisons = {
        (m.name, arm): compare_strata(
            m.kind, [(stats(s, layout.control, m), stats(s, arm, m)) for s in strata], alpha
        )
        for m in metrics
        for arm in treatments
    }
    if len(strata) > 1:
        notes.append(
            "The traffic changed during the run ("
            + ", ".join(f"{s:g}%" for s in strata)
            + " at first exposure): every comparison is made within these ramp phases and "
            "combined by their unit shares, because pooling them would compare arms enrolled "
            "at different times."
        )
        warnings.extend(_pooling_warnings(metrics, treatments, comparisons, aggregates, layout))
    primary = metrics[0] if plan else None
    planned_units, basis = _planned_units(plan, comparisons, treatments)
    tau = _tau(plan, comparisons, treatments)
    trends = _trends(aggregates, metrics, layout.control, treatments, alpha, tau, primary)
    always_valid = {
        t.arm: t.points[-1].always_valid_p for t in trends if primary and t.metric == primary.name
    }
    results = _metric_results(metrics, treatments, comparisons, always_valid)
    harmed = tuple(r.metric for r in results if r.harmed)
    for result in results:
        if result.harmed:
            warnings.append(
                f"GUARDRAIL {result.metric} got significantly worse for {result.arm}: "
                f"{result.comparison.diff:+.4g} (p = {result.comparison.p_value:.3g})"
            )
    _plan_warnings(spec, plan, aggregates, planned_units, units, tau, warnings)
    verdicts = tuple(
        _verdict(spec, plan, primary, arm, results, srm.flagged, aggregates, planned_units, harmed)
        for arm in treatments
    )
    segments = _segments(aggregates, metrics, layout.control, treatments, alpha)
    for metric in metrics:
        if metric.role == EXPLORATORY:
            continue
        for arm in treatments:
            total = comparisons[(metric.name, arm)]
            for attribute in _attributes(segments):
                lifts = [
                    SegmentLift(s.value, s.comparison.diff, s.comparison.p_value)
                    for s in segments
                    if s.attribute == attribute and s.metric == metric.name and s.arm == arm
                ]
                label = metric.name if len(treatments) == 1 else f"{metric.name} ({arm})"
                warnings.extend(
                    sign_warnings(attribute, label, total.diff, total.p_value, lifts, alpha)
                )
    warnings.extend(_quality_warnings(aggregates.quality))
    return Report(
        experiment=spec.name,
        mode=spec.mode,
        control=layout.control,
        treatments=treatments,
        plan=Plan(plan, alpha, planned_units, basis, tau),
        units=units,
        first_exposure=aggregates.first_exposure,
        last_exposure=aggregates.last_exposure,
        days_run=aggregates.days_run,
        quality=aggregates.quality,
        srm=srm,
        verdicts=verdicts,
        metrics=results,
        segments=tuple(segments),
        trends=tuple(trends),
        warnings=tuple(warnings),
        notes=tuple(notes),
    )


def _units_by_stratum(aggregates: Aggregates) -> dict[float, int]:
    totals: dict[float, int] = {}
    for (stratum, _), count in aggregates.units.items():
        totals[stratum] = totals.get(stratum, 0) + count
    return totals


def _pooling_warnings(
    metrics: Sequence[_Metric],
    treatments: Sequence[str],
    comparisons: dict[tuple[str, str], Comparison],
    aggregates: Aggregates,
    layout: ArmLayout,
) -> list[str]:
    """Where pooling over the ramp would have told a different story, say so."""
    out = []
    for m in metrics:
        if m.role == EXPLORATORY:
            continue
        for arm in treatments:
            fair = comparisons[(m.name, arm)]
            pooled = compare(
                m.kind,
                _pooled(aggregates, layout.control, m),
                _pooled(aggregates, arm, m),
                fair.alpha,
            )
            flips = pooled.diff * fair.diff < 0 or pooled.significant != fair.significant
            if flips and not math.isnan(pooled.p_value):
                out.append(
                    f"{m.name}: pooled over the ramp phases, {arm} would read "
                    f"{_percent(pooled.lift)} (p = {pooled.p_value:.3g}) instead of "
                    f"{_percent(fair.lift)} (p = {fair.p_value:.3g}) within them: the arms were "
                    "enrolled at different times; the within-phase comparison is the fair one"
                )
    return out


def _pooled(aggregates: Aggregates, arm: str, m: _Metric) -> ArmStats:
    units = sum(n for (_, a), n in aggregates.units.items() if a == arm)
    sums = [v for (_, a, metric), v in aggregates.metrics.items() if a == arm and metric == m.name]
    total = MetricSums(
        sum(v.total for v in sums), sum(v.total_sq for v in sums), sum(v.with_event for v in sums)
    )
    return total.as_stats(m.kind, units)


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:+.2f}%"


def _metric_roles(
    plan: Optional[AnalysisPlan], aggregates: Aggregates, warnings: list[str]
) -> list[_Metric]:
    """Registered metrics first (primary, secondary, guardrails), then exploratory ones."""
    metrics: list[_Metric] = []
    if plan is not None:
        registered: list[tuple[str, MetricPlan]] = [(PRIMARY, plan.primary)]
        registered += [(SECONDARY, m) for m in plan.secondary]
        registered += [(GUARDRAIL, m) for m in plan.guardrails]
        for role, m in registered:
            metrics.append(_Metric(m.metric, role, m.type, m.direction))
            if m.metric not in aggregates.metric_names:
                warnings.append(
                    f"{role} metric {m.metric!r} has no outcome records after exposure "
                    "(is the metric name right?)"
                )
    known = {m.name for m in metrics}
    for name in aggregates.metric_names:
        if name not in known:
            kind = "proportion" if name in aggregates.binary_metrics else "mean"
            metrics.append(_Metric(name, EXPLORATORY, kind, None))
    return metrics


def _metric_results(
    metrics: Sequence[_Metric],
    treatments: Sequence[str],
    comparisons: dict[tuple[str, str], Comparison],
    always_valid: dict[str, Optional[float]],
) -> tuple[MetricResult, ...]:
    secondary_keys = [(m.name, a) for m in metrics if m.role == SECONDARY for a in treatments]
    adjusted = dict(zip(secondary_keys, holm([comparisons[k].p_value for k in secondary_keys])))
    primary_keys = [(m.name, a) for m in metrics if m.role == PRIMARY for a in treatments]
    if len(primary_keys) > 1:  # several treatment arms: the primary is a family too
        adjusted.update(zip(primary_keys, holm([comparisons[k].p_value for k in primary_keys])))
        valid = holm([always_valid.get(a) or math.nan for _, a in primary_keys])
        always_valid = {a: p for (_, a), p in zip(primary_keys, valid)}
    results = []
    for m in metrics:
        for arm in treatments:
            c = comparisons[(m.name, arm)]
            harmed = m.role == GUARDRAIL and c.significant and _worse(c.diff, m.direction)
            results.append(
                MetricResult(
                    metric=m.name,
                    role=m.role,
                    kind=m.kind,
                    arm=arm,
                    direction=m.direction,
                    comparison=c,
                    p_adjusted=adjusted.get((m.name, arm), c.p_value),
                    always_valid_p=always_valid.get(arm) if m.role == PRIMARY else None,
                    harmed=harmed,
                )
            )
    return tuple(results)


def _worse(diff: float, direction: Optional[str]) -> bool:
    if direction == "increase":
        return diff < 0
    if direction == "decrease":
        return diff > 0
    return diff != 0  # no direction registered: any significant change needs a look


def _planned_units(
    plan: Optional[AnalysisPlan],
    comparisons: dict[tuple[str, str], Comparison],
    treatments: Sequence[str],
) -> tuple[Optional[int], str]:
    if plan is None:
        return None, "no pre-registration"
    primary = plan.primary
    if primary.mde is None:
        return None, "no mde registered for the primary metric"
    comparison = comparisons[(primary.metric, treatments[0])]
    control, control_mean = comparison.control, comparison.control_mean
    baseline = primary.baseline
    source = "registered baseline"
    if baseline is None:
        baseline, source = control_mean, "observed control mean (no baseline registered)"
    if not baseline or math.isnan(baseline):
        return None, "no baseline: the control arm has no data yet"
    try:
        effect = Effect.of(baseline, primary.mde, primary.relative)
        if primary.type == "proportion":
            n = units_per_arm_proportion(effect, plan.alpha, plan.power)
            return n, f"article's formula, baseline {baseline:.4g} ({source}), mde {_mde(primary)}"
        sd = math.sqrt(control.variance)
        n = units_per_arm_mean(sd, effect.delta, plan.alpha, plan.power)
        return n, f"normal approximation, observed control sd {sd:.4g}, mde {_mde(primary)}"
    except ValueError as exc:
        return None, f"cannot compute: {exc}"


def _mde(metric: MetricPlan) -> str:
    return f"{metric.mde:g}" + (" relative" if metric.relative else " absolute")


def _tau(
    plan: Optional[AnalysisPlan],
    comparisons: dict[tuple[str, str], Comparison],
    treatments: Sequence[str],
) -> Optional[float]:
    """The always-valid test's effect scale: the registered mde, made absolute."""
    if plan is None or plan.primary.mde is None:
        return None
    if not plan.primary.relative:
        return plan.primary.mde
    baseline = (
        plan.primary.baseline or comparisons[(plan.primary.metric, treatments[0])].control_mean
    )
    if not baseline or math.isnan(baseline):
        return None
    return plan.primary.mde * abs(baseline)


def _trends(
    aggregates: Aggregates,
    metrics: Sequence[_Metric],
    control: str,
    treatments: Sequence[str],
    alpha: float,
    tau: Optional[float],
    primary: Optional[_Metric],
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
            points = [
                _trend_point(m.kind, rows, alpha) for rows in zip(*(zip(c, t) for c, t in pairs))
            ]
            if m == primary and tau is not None:
                running = always_valid_p(
                    np.array([p.cumulative.diff for p in points]),
                    np.array([p.cumulative.diff_variance for p in points]),
                    tau * tau,
                )
                points = [
                    TrendPoint(p.day, p.daily, p.cumulative, float(v))
                    for p, v in zip(points, running)
                ]
            trends.append(Trend(m.name, m.role, m.kind, arm, tuple(points)))
    return trends


def _trend_point(kind: str, day: Sequence[tuple[DayRow, DayRow]], alpha: float) -> TrendPoint:
    """One day over all strata: `day` holds each stratum's (control, treatment) rows."""
    daily = [(c.daily.as_stats(kind, c.units), t.daily.as_stats(kind, t.units)) for c, t in day]
    cumulative = [
        (c.cumulative.as_stats(kind, c.units), t.cumulative.as_stats(kind, t.units)) for c, t in day
    ]
    return TrendPoint(
        day[0][0].day,
        compare_strata(kind, daily, alpha),
        compare_strata(kind, cumulative, alpha),
    )


def _segments(
    aggregates: Aggregates,
    metrics: Sequence[_Metric],
    control: str,
    treatments: Sequence[str],
    alpha: float,
) -> list[SegmentResult]:
    values: dict[str, set[str]] = {}
    for attribute, value, _, _ in aggregates.segment_units:
        values.setdefault(attribute, set()).add(value)
    # One value (an attribute nobody sent) is no segmentation.
    values = {attribute: seen for attribute, seen in values.items() if len(seen) > 1}

    def stats(attribute: str, value: str, stratum: float, arm: str, m: _Metric) -> ArmStats:
        key = (attribute, value, stratum, arm)
        sums = aggregates.segment_metrics.get((*key, m.name), MetricSums())
        return sums.as_stats(m.kind, aggregates.segment_units.get(key, 0))

    def whole(stratum: float, arm: str, m: _Metric) -> ArmStats:
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
                    comparison = compare_strata(m.kind, pairs, alpha)
                    results.append(SegmentResult(attribute, value, m.name, m.role, arm, comparison))
    if len(aggregates.strata) > 1:  # the ramp phases themselves, each compared on its own
        for stratum in aggregates.strata:
            for m in metrics:
                for arm in treatments:
                    comparison = compare(
                        m.kind, whole(stratum, control, m), whole(stratum, arm, m), alpha
                    )
                    results.append(
                        SegmentResult(
                            TRAFFIC_SEGMENT, f"{stratum:g}%", m.name, m.role, arm, comparison
                        )
                    )
    return results


def _attributes(segments: Sequence[SegmentResult]) -> list[str]:
    return list(dict.fromkeys(s.attribute for s in segments))


def _verdict(
    spec: ExperimentSpec,
    plan: Optional[AnalysisPlan],
    primary: Optional[_Metric],
    arm: str,
    results: Sequence[MetricResult],
    srm_flagged: bool,
    aggregates: Aggregates,
    planned_units: Optional[int],
    harmed: tuple[str, ...],
) -> Verdict:
    if spec.mode == "shadow":
        return Verdict(
            "not_applicable",
            "NO VERDICT: a shadow experiment serves everyone control; there is nothing to compare.",
            None,
            math.nan,
        )
    if plan is None or primary is None:
        return Verdict(
            "no_plan",
            "NO VERDICT: no pre-registered `analysis` block; every metric below is exploratory.",
            None,
            math.nan,
        )
    result = next(r for r in results if r.role == PRIMARY and r.arm == arm)
    c = result.comparison
    av = result.always_valid_p
    return decide(
        Evidence(
            arm=arm,
            metric=primary.name,
            direction=primary.direction,
            alpha=plan.alpha,
            diff=c.diff,
            lift=c.lift,
            lift_ci=c.lift_ci,
            p_fixed=result.p_adjusted,
            p_always_valid=math.nan if av is None else av,
            srm_flagged=srm_flagged,
            days_run=aggregates.days_run,
            min_days=plan.min_days,
            units_per_arm=min(c.control.n, c.treatment.n),
            planned_units=planned_units,
            guardrails_harmed=harmed,
        )
    )


def _plan_warnings(
    spec: ExperimentSpec,
    plan: Optional[AnalysisPlan],
    aggregates: Aggregates,
    planned_units: Optional[int],
    units: dict[str, int],
    tau: Optional[float],
    warnings: list[str],
) -> None:
    if plan is None:
        warnings.append("no pre-registration (`analysis` block): every metric is exploratory")
        return
    if aggregates.days_run < plan.min_days:
        warnings.append(
            f"the run is {aggregates.days_run:.1f} days, shorter than the registered "
            f"min_days {plan.min_days}: weekly cycles are not covered yet"
        )
    smallest = min(units.get(arm, 0) for arm in spec.arms.names)
    if planned_units is not None and smallest < planned_units:
        warnings.append(
            f"the smallest arm has {smallest:,} units, fewer than the planned {planned_units:,} "
            "per arm: the test is underpowered for the registered mde"
        )
    if tau is None:
        warnings.append(
            "the primary metric has no usable mde: no always-valid p-value, so no early stop"
        )
    first = aggregates.first_exposure
    if plan.registered_at is not None and first is not None and plan.registered_at > first.date():
        warnings.append(
            f"the plan is dated {plan.registered_at}, after the first exposure "
            f"({first.date()}): it may have been written after seeing data"
        )


def _quality_warnings(q: DataQuality) -> list[str]:
    out = []
    # An incomplete last line is what a writer killed mid-record leaves: expected, only noted.
    garbled = q.unreadable_lines - q.truncated_last_lines
    if garbled > 0:
        out.append(f"{garbled:,} log line(s) in the middle of files were not records; skipped")
    if q.switched_units:
        out.append(
            f"{q.switched_units:,} unit(s) were logged in more than one arm (a ramp step, a "
            "rollback or a reshuffle); each is counted in its first arm"
        )
    if q.unusable_exposures:
        out.append(f"{q.unusable_exposures:,} enrolled exposure(s) lacked ts, unit or arm")
    return out
