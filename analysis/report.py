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
from analysis.stats import ArmStats, Comparison, compare, holm
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

    srm = srm_test(aggregates.arms, expected_counts(layout, _units_by_traffic(aggregates)))
    if srm.flagged:
        warnings.append(f"SAMPLE RATIO MISMATCH (p < {srm.threshold:g}): {srm.describe()}")
    metrics = _metric_roles(plan, aggregates, warnings)
    units = {arm: aggregates.arms.get(arm, 0) for arm in layout.names}
    unexpected = {a: n for a, n in aggregates.arms.items() if a not in units}
    units.update(unexpected)

    def stats(arm: str, metric: _Metric) -> ArmStats:
        sums = aggregates.metrics.get((arm, metric.name), MetricSums())
        return sums.as_stats(metric.kind, aggregates.arms.get(arm, 0))

    comparisons = {
        (m.name, arm): compare(m.kind, stats(layout.control, m), stats(arm, m), alpha)
        for m in metrics
        for arm in treatments
    }
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
            total = comparisons[(metric.name, arm)].diff
            for attribute in _attributes(segments):
                lifts = [
                    SegmentLift(s.value, s.comparison.diff, s.comparison.p_value)
                    for s in segments
                    if s.attribute == attribute and s.metric == metric.name and s.arm == arm
                ]
                label = metric.name if len(treatments) == 1 else f"{metric.name} ({arm})"
                warnings.extend(sign_warnings(attribute, label, total, lifts, alpha))
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


def _units_by_traffic(aggregates: Aggregates) -> dict[float, int]:
    totals: dict[float, int] = {}
    for (traffic, _), count in aggregates.units_by_traffic.items():
        totals[traffic] = totals.get(traffic, 0) + count
    return totals


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
            if not any(metric == m.metric for _, metric in aggregates.metrics):
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
    control = comparisons[(primary.metric, treatments[0])].control
    baseline = primary.baseline
    source = "registered baseline"
    if baseline is None:
        baseline, source = control.mean, "observed control mean (no baseline registered)"
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
        plan.primary.baseline or comparisons[(plan.primary.metric, treatments[0])].control.mean
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
        base = aggregates.daily.get((control, m.name))
        for arm in treatments:
            rows = aggregates.daily.get((arm, m.name))
            if not base or not rows:
                continue
            points = [_trend_point(m.kind, c, t, alpha) for c, t in zip(base, rows)]
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


def _trend_point(kind: str, control: DayRow, treatment: DayRow, alpha: float) -> TrendPoint:
    return TrendPoint(
        control.day,
        compare(
            kind,
            control.daily.as_stats(kind, control.units),
            treatment.daily.as_stats(kind, treatment.units),
            alpha,
        ),
        compare(
            kind,
            control.cumulative.as_stats(kind, control.units),
            treatment.cumulative.as_stats(kind, treatment.units),
            alpha,
        ),
    )


def _segments(
    aggregates: Aggregates,
    metrics: Sequence[_Metric],
    control: str,
    treatments: Sequence[str],
    alpha: float,
) -> list[SegmentResult]:
    values: dict[str, set[str]] = {}
    for attribute, value, _ in aggregates.segment_units:
        values.setdefault(attribute, set()).add(value)
    # One value (a single ramp step, an attribute nobody sent) is no segmentation.
    values = {attribute: seen for attribute, seen in values.items() if len(seen) > 1}

    def stats(attribute: str, value: str, arm: str, m: _Metric) -> ArmStats:
        sums = aggregates.segment_metrics.get((attribute, value, arm, m.name), MetricSums())
        return sums.as_stats(m.kind, aggregates.segment_units.get((attribute, value, arm), 0))

    results = []
    for attribute in sorted(values, key=lambda a: (a == TRAFFIC_SEGMENT, a)):
        for value in sorted(values[attribute]):
            for m in metrics:
                for arm in treatments:
                    comparison = compare(
                        m.kind,
                        stats(attribute, value, control, m),
                        stats(attribute, value, arm, m),
                        alpha,
                    )
                    results.append(SegmentResult(attribute, value, m.name, m.role, arm, comparison))
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
