"""From aggregates and the pre-registration to a `Report` (pure: no files, no engine).

Roles follow the pre-registration: the primary metric alone gets a verdict; secondary metrics
get Holm-corrected p-values (one family across metrics and treatment arms); guardrails are
flagged when significantly worse; every other metric in the logs is exploratory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Optional

from analysis.aggregates import Aggregates, DataQuality, MetricSums, period_start
from analysis.arms import ArmLayout
from analysis.breakdowns import daily_trends, segment_results
from analysis.loss import assess
from analysis.planning import always_valid_scale, plan_sample_size, plan_warnings
from analysis.registry import AnalysisPlan, ExperimentSpec, MetricPlan
from analysis.results import (
    EXPLORATORY,
    GUARDRAIL,
    PRIMARY,
    SECONDARY,
    MetricResult,
    Plan,
    Report,
    RoledMetric,
    SegmentResult,
    Trend,
)
from analysis.segments import SegmentLift, sign_warnings
from analysis.spending import alpha_at_end
from analysis.srm import expected_counts, srm_test
from analysis.stats import ArmStats, Comparison, at_level, compare, compare_strata, holm
from analysis.stopping import COMPLETE, EARLY, RUNNING, Look, Stop, stopping_point
from analysis.verdict import Evidence, Verdict, decide

DEFAULT_ALPHA = 0.05


def build_report(
    spec: ExperimentSpec,
    aggregates: Aggregates,
    *,
    extra_quality_notes: Sequence[str] = (),
    as_of: Optional[datetime] = None,
) -> Report:
    """`as_of`: when the report is read (None: after every period in the logs has ended)."""
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
    loss = assess(aggregates.quality)
    warnings.extend(loss.warnings)
    metrics = _metric_roles(plan, aggregates, warnings)
    units = {arm: aggregates.arms.get(arm, 0) for arm in layout.names}
    units.update({a: n for a, n in aggregates.arms.items() if a not in units})

    def stats(stratum: float, arm: str, m: RoledMetric) -> ArmStats:
        sums = aggregates.metrics.get((stratum, arm, m.name), MetricSums())
        return sums.as_stats(m.kind, aggregates.units.get((stratum, arm), 0))

    comparisons = {
        (m.name, arm): compare_strata(
            m.kind,
            [(stats(s, layout.control, m), stats(s, arm, m)) for s in strata],
            alpha,
            m.nonnegative,
        )
        for m in metrics
        for arm in treatments
    }
    if len(strata) > 1:
        notes.append(
            "The traffic changed during the run ("
            + ", ".join(f"{s:g}%" for s in strata)
            + " at first exposure): every comparison is made within these ramp phases and "
            "combined with weights n_control * n_treatment / n for each phase, because pooling "
            "them would compare arms enrolled at different times."
        )
        warnings.extend(_pooling_warnings(metrics, treatments, comparisons, aggregates, layout))
    primary = metrics[0] if plan else None
    planned_units, basis = plan_sample_size(plan, comparisons, treatments)
    tau = always_valid_scale(plan, comparisons, treatments)
    trends = daily_trends(aggregates, metrics, layout.control, treatments, alpha, tau, primary)
    stop, looks_planned = _stop(plan, primary, trends, treatments, aggregates, as_of)
    planned_end: Optional[datetime] = None
    at_end: dict[tuple[str, str], Comparison] = {}
    if stop.stage == COMPLETE and stop.index is not None:
        planned_units, basis = looks_planned[stop.index]
        planned_end = _look_end(trends, stop.index, aggregates.period)
        at_end = {
            (t.metric, t.arm): t.points[stop.index].cumulative
            for t in trends
            if t.role in (PRIMARY, SECONDARY)
        }
        if tau is not None and plan is not None:
            # The early-stop looks before the planned end spent some of alpha (see spending.py).
            for t in trends:
                if primary is not None and t.metric == primary.name:
                    level = alpha_at_end(
                        [p.cumulative.diff_variance for p in t.points[: stop.index]],
                        t.points[stop.index].cumulative.diff_variance,
                        tau * tau,
                        alpha,
                    )
                    at_end[(t.metric, t.arm)] = at_level(at_end[(t.metric, t.arm)], level)
    always_valid = {
        t.arm: t.points[-1].always_valid_p for t in trends if primary and t.metric == primary.name
    }
    results = _metric_results(
        metrics, treatments, {**comparisons, **at_end}, always_valid, planned_end, set(at_end)
    )
    harmed = tuple(r.metric for r in results if r.harmed)
    for result in results:
        if result.harmed:
            warnings.append(
                f"GUARDRAIL {result.metric} got significantly worse for {result.arm}: "
                f"{result.comparison.diff:+.4g} (p = {result.comparison.p_value:.3g})"
            )
    plan_warnings(spec, plan, aggregates, planned_units, units, tau, warnings)
    verdicts = tuple(
        _verdict(spec, plan, primary, arm, results, trends, stop, srm.flagged, loss.withhold,
                 harmed, aggregates.period, as_of, looks_planned)
        for arm in treatments
    )  # fmt: skip
    segments = segment_results(aggregates, metrics, layout.control, treatments, alpha)
    warnings.extend(_segment_warnings(metrics, treatments, comparisons, segments, alpha))
    quality_warnings, quality_notes = _quality_messages(aggregates.quality)
    warnings.extend(quality_warnings)
    notes.extend(quality_notes)
    compared: dict[str, int] = {}
    if primary is not None or metrics:
        first = comparisons[((primary or metrics[0]).name, treatments[0])] if treatments else None
        if first is not None:
            compared = {layout.control: first.control.n, treatments[0]: first.treatment.n}
            for arm in treatments[1:]:
                compared[arm] = comparisons[((primary or metrics[0]).name, arm)].treatment.n
    return Report(
        experiment=spec.name,
        mode=spec.mode,
        control=layout.control,
        treatments=treatments,
        plan=Plan(plan, alpha, planned_units, basis, tau, planned_end),
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
        period="hour" if aggregates.period < timedelta(days=1) else "day",
        compared_units=compared,
    )


def _look_end(trends: Sequence[Trend], index: int, period: timedelta) -> datetime:
    return period_start(trends[0].points[index].day) + period


def _stop(
    plan: Optional[AnalysisPlan],
    primary: Optional[RoledMetric],
    trends: Sequence[Trend],
    treatments: Sequence[str],
    aggregates: Aggregates,
    as_of: Optional[datetime],
) -> tuple[Stop, list[tuple[Optional[int], str]]]:
    """The stage of the run, from the primary metric's cumulative series; and the planned
    units at each look (computed from the data up to it, so that a later read finds the same
    planned end)."""
    series = [t for t in trends if primary is not None and t.metric == primary.name]
    if plan is None or primary is None or len(series) != len(treatments) or not series:
        return Stop(RUNNING, None), []
    looks, planned = [], []
    for index, point in enumerate(series[0].points):
        at = {(primary.name, t.arm): t.points[index].cumulative for t in series}
        units, basis = plan_sample_size(plan, at, treatments)
        smallest = min(min(c.control.n, c.treatment.n) for c in at.values())
        ready = smallest > 0 and (
            (units is not None and smallest >= units) or plan.primary.mde is None
        )
        valid = [_nan_if_none(t.points[index].always_valid_p) for t in series]
        if len(valid) > 1:
            valid = holm(valid)
        crossed = min((v for v in valid if not math.isnan(v)), default=math.nan)
        looks.append(Look(period_start(point.day) + aggregates.period, ready, crossed))
        planned.append((units, basis))
    stop = stopping_point(looks, aggregates.first_exposure, plan.min_days, plan.alpha, as_of)
    return stop, planned


def _units_by_stratum(aggregates: Aggregates) -> dict[float, int]:
    totals: dict[float, int] = {}
    for (stratum, _), count in aggregates.units.items():
        totals[stratum] = totals.get(stratum, 0) + count
    return totals


def _pooling_warnings(
    metrics: Sequence[RoledMetric],
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
                m.nonnegative,
            )
            # Two readings of noise that differ in sign are still noise.
            either = pooled.significant or fair.significant
            flips = either and (
                pooled.diff * fair.diff < 0 or pooled.significant != fair.significant
            )
            if flips and not math.isnan(pooled.p_value):
                out.append(
                    f"{m.name}: pooled over the ramp phases, {arm} would read "
                    f"{_percent(pooled.lift)} (p = {pooled.p_value:.3g}) instead of "
                    f"{_percent(fair.lift)} (p = {fair.p_value:.3g}) within them: the arms were "
                    "enrolled at different times; the within-phase comparison is the fair one"
                )
    return out


def _pooled(aggregates: Aggregates, arm: str, m: RoledMetric) -> ArmStats:
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
) -> list[RoledMetric]:
    """Registered metrics first (primary, secondary, guardrails), then exploratory ones."""
    metrics: list[RoledMetric] = []
    if plan is not None:
        registered: list[tuple[str, MetricPlan]] = [(PRIMARY, plan.primary)]
        registered += [(SECONDARY, m) for m in plan.secondary]
        registered += [(GUARDRAIL, m) for m in plan.guardrails]
        for role, m in registered:
            metrics.append(
                RoledMetric(
                    m.metric, role, m.type, m.direction, m.metric not in aggregates.signed_metrics
                )
            )
            if m.metric not in aggregates.metric_names:
                warnings.append(
                    f"{role} metric {m.metric!r} has no outcome records after exposure "
                    "(is the metric name right?)"
                )
    known = {m.name for m in metrics}
    for name in aggregates.metric_names:
        if name not in known:
            kind = "proportion" if name in aggregates.binary_metrics else "mean"
            metrics.append(
                RoledMetric(name, EXPLORATORY, kind, None, name not in aggregates.signed_metrics)
            )
    return metrics


def _metric_results(
    metrics: Sequence[RoledMetric],
    treatments: Sequence[str],
    comparisons: dict[tuple[str, str], Comparison],
    always_valid: dict[str, Optional[float]],
    planned_end: Optional[datetime],
    at_planned_end: set[tuple[str, str]],
) -> tuple[MetricResult, ...]:
    secondary_keys = [(m.name, a) for m in metrics if m.role == SECONDARY for a in treatments]
    adjusted = dict(zip(secondary_keys, holm([comparisons[k].p_value for k in secondary_keys])))
    primary_keys = [(m.name, a) for m in metrics if m.role == PRIMARY for a in treatments]
    if len(primary_keys) > 1:  # several treatment arms: the primary is a family too
        adjusted.update(zip(primary_keys, holm([comparisons[k].p_value for k in primary_keys])))
        valid = holm([_nan_if_none(always_valid.get(a)) for _, a in primary_keys])
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
                    through=planned_end if (m.name, arm) in at_planned_end else None,
                )
            )
    return tuple(results)


def _nan_if_none(value: Optional[float]) -> float:
    return math.nan if value is None else value


def _worse(diff: float, direction: Optional[str]) -> bool:
    if direction == "increase":
        return diff < 0
    if direction == "decrease":
        return diff > 0
    return diff != 0  # no direction registered: any significant change needs a look


def _segment_warnings(
    metrics: Sequence[RoledMetric],
    treatments: Sequence[str],
    comparisons: dict[tuple[str, str], Comparison],
    segments: Sequence[SegmentResult],
    alpha: float,
) -> list[str]:
    """Registered metrics whose segments disagree in sign with their total."""
    attributes = list(dict.fromkeys(s.attribute for s in segments))
    out = []
    for metric in metrics:
        if metric.role == EXPLORATORY:
            continue
        for arm in treatments:
            total = comparisons[(metric.name, arm)]
            label = metric.name if len(treatments) == 1 else f"{metric.name} ({arm})"
            for attribute in attributes:
                lifts = [
                    SegmentLift(s.value, s.comparison.diff, s.comparison.p_value)
                    for s in segments
                    if s.attribute == attribute and s.metric == metric.name and s.arm == arm
                ]
                out += sign_warnings(attribute, label, total.diff, total.p_value, lifts, alpha)
    return out


def _verdict(
    spec: ExperimentSpec,
    plan: Optional[AnalysisPlan],
    primary: Optional[RoledMetric],
    arm: str,
    results: Sequence[MetricResult],
    trends: Sequence[Trend],
    stop: Stop,
    srm_flagged: bool,
    data_loss: str,
    harmed: tuple[str, ...],
    period: timedelta,
    as_of: Optional[datetime],
    looks_planned: Sequence[tuple[Optional[int], str]],
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
    trend = next((t for t in trends if t.metric == primary.name and t.arm == arm), None)
    c = result.comparison  # the planned end's, once reached
    stage, decided_at = stop.stage, ""
    av_p = math.nan if result.always_valid_p is None else result.always_valid_p
    av_ci = (math.nan, math.nan)
    if stop.index is not None and trend is not None:
        point = trend.points[stop.index]
        decided_at = f"{period_start(point.day) + period:%Y-%m-%d %H:%M} UTC"
        if stage == EARLY:
            c = point.cumulative
            av_p = math.nan if point.always_valid_p is None else point.always_valid_p
            av_ci = point.always_valid_ci
            if not av_p < plan.alpha:  # another arm stopped the run; this one did not cross
                stage = RUNNING
    progress = _progress(plan, c, looks_planned, trend, period, as_of)
    return decide(
        Evidence(
            arm=arm,
            metric=primary.name,
            kind=primary.kind,
            direction=primary.direction,
            alpha=plan.alpha,
            level=c.alpha,
            stage=stage,
            diff=c.diff,
            diff_ci=c.diff_ci,
            lift=c.lift,
            lift_ci=c.lift_ci,
            p_fixed=result.p_adjusted,
            p_always_valid=av_p,
            always_valid_ci=av_ci,
            srm_flagged=srm_flagged,
            units_per_arm=min(c.control.n, c.treatment.n),
            progress=progress,
            decided_at=decided_at,
            data_loss=data_loss,
            guardrails_harmed=harmed,
        )
    )


def _progress(
    plan: AnalysisPlan,
    c: Comparison,
    looks_planned: Sequence[tuple[Optional[int], str]],
    trend: Optional[Trend],
    period: timedelta,
    as_of: Optional[datetime],
) -> str:
    """What the run still lacks: days, units, or the end of the period in which it got both."""
    if trend is None or not trend.points:
        return "no data yet"
    first = period_start(trend.points[0].day)
    last_end = period_start(trend.points[-1].day) + period
    parts = []
    days = (last_end - first).total_seconds() / 86400
    if days < plan.min_days:
        parts.append(f"{min(days, plan.min_days):.1f} of {plan.min_days} days")
    planned = looks_planned[-1][0] if looks_planned else None
    smallest = min(c.control.n, c.treatment.n)
    if planned is not None and smallest < planned:
        parts.append(f"{smallest:,} of {planned:,} units in the smallest compared arm")
    if not parts and as_of is not None and last_end > as_of:
        parts.append(
            f"the plan is met; the verdict reads the data to {last_end:%Y-%m-%d %H:%M} UTC"
        )
    return ", ".join(parts) or "the plan is not met yet"


def _quality_messages(q: DataQuality) -> tuple[list[str], list[str]]:
    """Warnings (something may be wrong) and notes (expected, said for completeness)."""
    warnings, notes = [], []
    # An incomplete last line is what a writer killed mid-record leaves: expected, only noted.
    garbled = q.unreadable_lines - q.truncated_last_lines
    if garbled > 0:
        warnings.append(f"{garbled:,} log line(s) in the middle of files were not records; skipped")
    if q.bad_values:
        warnings.append(
            f"{q.bad_values:,} outcome record(s) had a value that is not a finite number "
            "(text, null, NaN, Infinity); skipped"
        )
    if q.duplicate_exposures:
        notes.append(
            f"{q.duplicate_exposures:,} exposure record(s) were copies of one already read (the "
            "same request_id, replica, unit and ts: a log file read twice, or delivered twice); "
            "each request is counted once"
        )
    if q.duplicate_outcomes:
        notes.append(
            f"{q.duplicate_outcomes:,} outcome record(s) repeated an earlier one (the same "
            "event_id, or the same record twice); each event is counted once"
        )
    explained = q.switched_units - q.unexplained_switches
    if explained:
        notes.append(
            f"{explained:,} unit(s) were later logged in another arm after a traffic change "
            "(a ramp step or a rollback), as expected; each stays in its first arm"
        )
    if q.unexplained_switches:
        warnings.append(
            f"{q.unexplained_switches:,} unit(s) were logged in more than one arm without a "
            "traffic change to explain it (a reshuffle, or an assignment bug); each is counted "
            "in its first arm"
        )
    if q.unusable_exposures:
        warnings.append(f"{q.unusable_exposures:,} enrolled exposure(s) lacked ts, unit or arm")
    return warnings, notes
