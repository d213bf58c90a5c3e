"""A `Report` laid out as a `Document`: the summary for the terminal, the full one for files."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Optional

from analysis.aggregates import MISSING, ReplicaCounts
from analysis.document import Block, Bullets, Document, Image, Paragraph, Section, Table
from analysis.registry import MetricPlan
from analysis.results import PRIMARY, SECONDARY, MetricResult, Report, SegmentResult, Trend
from analysis.stats import Comparison

TRUST_NOTE = (
    "Which p-value decides: before the planned end (min_days and the planned units per arm), "
    "only the always-valid p-value can stop the test early, because it stays valid however "
    "often you look. From the planned end on, the verdict is the fixed-horizon p-value on the "
    "data up to the planned end, and every later report repeats it: new data after that "
    "no longer changes the verdict."
)


def build_document(report: Report, *, full: bool, plots: Mapping[str, str] = {}) -> Document:
    """`full`: every metric's segments and daily rows; otherwise the primary metric's only.

    `plots` maps "metric/arm" to an image path to show under the daily trend.
    """
    doc = Document(f"Experiment {report.experiment}: {_arms(report)}")
    doc.sections.append(_summary(report))
    doc.sections.append(_metrics(report))
    if report.warnings:
        doc.sections.append(Section("Warnings", [Bullets(report.warnings)]))
    doc.sections.append(_srm(report))
    segments = _segments(report, full)
    if segments.blocks:
        doc.sections.append(segments)
    trend = _trends(report, full, plots)
    if trend.blocks:
        doc.sections.append(trend)
    doc.sections.append(_data(report))
    return doc


def _arms(report: Report) -> str:
    return " vs ".join((*report.treatments, report.control))


def _summary(report: Report) -> Section:
    blocks: list[Block] = [Paragraph(v.line, loud=True) for v in report.verdicts]
    span = "no enrolled exposures"
    if report.first_exposure and report.last_exposure:
        span = (
            f"{_time(report.first_exposure)} to {_time(report.last_exposure)} UTC "
            f"({report.days_run:.1f} days)"
        )
    units = ", ".join(f"{arm} {n:,}" for arm, n in report.units.items())
    blocks.append(Paragraph(f"Run: {span}; units: {units}{_compared(report)}."))
    plan = report.plan
    if plan.registered is not None:
        p = plan.registered
        registered = f"registered {p.registered_at}" if p.registered_at else "undated"
        secondary = ", ".join(m.metric for m in p.secondary) or "none"
        guardrails = ", ".join(m.metric for m in p.guardrails) or "none"
        planned = (
            f"{plan.planned_units:,} units per arm ({plan.planned_units_basis})"
            if plan.planned_units is not None
            else f"unknown ({plan.planned_units_basis})"
        )
        blocks.append(
            Paragraph(
                f"Plan ({registered}): primary {_metric_plan(p.primary)}; secondary {secondary}; "
                f"guardrails {guardrails}; alpha {p.alpha:g}, power {p.power:g}, "
                f"min_days {p.min_days}; sample size needed: {planned}."
            )
        )
    blocks.append(Paragraph(TRUST_NOTE))
    return Section("Verdict", blocks)


def _compared(report: Report) -> str:
    """Why the comparison counts fewer units than the run, when it does."""
    left_out = {
        arm: report.units.get(arm, 0) - n
        for arm, n in report.compared_units.items()
        if report.units.get(arm, 0) != n
    }
    if not left_out:
        return ""
    compared = ", ".join(f"{arm} {n:,}" for arm, n in report.compared_units.items())
    out = ", ".join(f"{n:,} {arm}" for arm, n in left_out.items())
    return (
        f" (compared: {compared}; {out} unit(s) were enrolled while the traffic gave another "
        "arm no share, so nothing enrolled then can be compared with them)"
    )


def _metric_plan(m: MetricPlan) -> str:
    parts: list[str] = [m.type, m.direction or "either direction"]
    if m.mde is not None:
        parts.append(f"mde {m.mde:g}" + (" relative" if m.relative else ""))
    return f"{m.metric} ({', '.join(parts)})"


def _metrics(report: Report) -> Section:
    multi = len(report.treatments) > 1
    headers = ("role", "metric", *(("arm",) if multi else ()), "data to", "control",
               "treatment", "difference [CI]", "lift [CI]", "p", "p adjusted",
               "always-valid p")  # fmt: skip
    rows = []
    reasons = _Reasons()
    last = _time(report.last_exposure) if report.last_exposure else "-"
    for m in report.metrics:
        c = m.comparison
        role = m.role + (" HARMED" if m.harmed else "")
        rows.append(
            (
                role, m.metric, *((m.arm,) if multi else ()),
                _time(m.through) if m.through else last,
                _value(c.control_mean, m.kind), _value(c.treatment_mean, m.kind),
                _diff(c, m.kind), reasons.lift(c), _p(c.p_value),
                _p(m.p_adjusted) if _adjusted(m, multi) else "",
                _p(m.always_valid_p) if m.role == PRIMARY else "",
            )
        )  # fmt: skip
    align = ("l", "l", *(("l",) if multi else ()), "l", "r", "r", "r", "r", "r", "r", "r")
    method = (
        "Proportions: pooled z-test with score intervals (for the difference and the ratio). "
        "Means (per-unit sums): Welch's t-test with its interval, and Fieller's interval for "
        "the ratio."
    )
    if any(m.comparison.strata for m in report.metrics):
        method = (
            "The traffic changed during the run: each arm is compared within the ramp phases "
            "(traffic at first exposure), combined with weights n_control * n_treatment / n per "
            "phase; normal test and interval, Fieller's interval for the ratio. Arm values are "
            "the phase-weighted ones."
        )
    through = ""
    if report.plan.planned_end is not None:
        through = (
            " The primary and secondary metrics are read on the data to the planned end, once; "
            "the daily trend shows what came after."
        )
    note = Paragraph(
        f"Two-sided tests at alpha {report.plan.alpha:g}; intervals are "
        f"{_confidence(report.plan.alpha)}, each leaving out no difference exactly when its "
        f"test's p < alpha. {method} Secondary p-values are Holm-adjusted; exploratory metrics "
        f"were not registered and decide nothing.{through}"
    )
    return Section("Metrics", [Table(headers, tuple(rows), align), note, *reasons.legend()])


def _adjusted(m: MetricResult, multi_arm: bool) -> bool:
    return m.role == SECONDARY or (m.role == PRIMARY and multi_arm)


def _srm(report: Report) -> Section:
    srm = report.srm
    rows = tuple(
        (arm, f"{srm.observed.get(arm, 0):,}", f"{srm.expected.get(arm, 0.0):,.1f}")
        for arm in srm.observed
    )
    status = "MISMATCH: verdict withheld" if srm.flagged else "ok"
    text = f"chi-square p = {_p(srm.p_value)} (flagged below {srm.threshold:g}): {status}."
    return Section(
        "Sample ratio",
        [
            Table(("arm", "units", "expected"), rows, ("l", "r", "r")),
            Paragraph(
                text + " Expected counts use the traffic in force at each unit's first exposure "
                "(decisions.jsonl).",
                loud=srm.flagged,
            ),
        ],
    )


def _segments(report: Report, full: bool) -> Section:
    section = Section("Segments")
    wanted = _shown_metrics(report, full)
    multi = len(report.treatments) > 1
    by_key: dict[tuple[str, str], list[SegmentResult]] = {}
    for s in report.segments:
        if s.metric in wanted:
            by_key.setdefault((s.attribute, s.metric), []).append(s)
    kinds = {m.metric: m.kind for m in report.metrics}
    reasons = _Reasons()
    for (attribute, metric), rows in by_key.items():
        kind = kinds.get(metric, "mean")
        section.blocks.append(Paragraph(f"{metric} by {attribute}:"))
        table_rows = tuple(
            (
                s.value, *((s.arm,) if multi else ()),
                f"{s.comparison.control.n:,}", f"{s.comparison.treatment.n:,}",
                _value(s.comparison.control_mean, kind), _value(s.comparison.treatment_mean, kind),
                reasons.lift(s.comparison), _p(s.comparison.p_value),
            )
            for s in rows
        )  # fmt: skip
        headers = (attribute, *(("arm",) if multi else ()), "units control", "units treatment",
                   "control", "treatment", "lift [CI]", "p")  # fmt: skip
        align = ("l", *(("l",) if multi else ()), "r", "r", "r", "r", "r", "r")
        section.blocks.append(Table(headers, table_rows, align))
    section.blocks.extend(reasons.legend())
    return section


def _trends(report: Report, full: bool, plots: Mapping[str, str]) -> Section:
    section = Section("Daily trend")
    wanted = _shown_metrics(report, full)
    period = report.period
    reasons = _Reasons()
    for trend in report.trends:
        if trend.metric not in wanted:
            continue
        section.blocks.append(
            Paragraph(
                f"{trend.metric} ({trend.arm} vs {report.control}), by {period} (UTC): the lift "
                f"of each {period} (its outcomes, over units enrolled by then) and cumulative "
                f"to the {period}'s end."
            )
        )
        section.blocks.append(_trend_table(trend, period, reasons))
        plot = plots.get(plot_key(trend))
        if plot:
            section.blocks.append(Image(plot, f"{trend.metric} daily and cumulative lift"))
    section.blocks.extend(reasons.legend())
    return section


def _trend_table(trend: Trend, period: str, reasons: _Reasons) -> Table:
    show_valid = trend.role == PRIMARY
    headers = (period, "units", f"lift of the {period} [CI]", "cumulative lift [CI]",
               "cumulative p", *(("always-valid p",) if show_valid else ()))  # fmt: skip
    rows = tuple(
        (
            p.day.isoformat() if period == "day" else f"{p.day:%m-%d %H:00}",
            f"{p.cumulative.control.n + p.cumulative.treatment.n:,}",
            reasons.lift(p.daily), reasons.lift(p.cumulative), _p(p.cumulative.p_value),
            *((_p(p.always_valid_p),) if show_valid else ()),
        )
        for p in trend.points
    )  # fmt: skip
    return Table(headers, rows, ("l", "r", "r", "r", "r", "r"))


def _data(report: Report) -> Section:
    q = report.quality
    rows = (
        ("exposure files / outcome files", f"{q.exposure_files} / {q.outcome_files}"),
        ("exposure records of this experiment", f"{q.exposure_records:,}"),
        *(
            (("  copies of a record above (read twice; skipped)", f"{q.duplicate_exposures:,}"),)
            if q.duplicate_exposures
            else ()
        ),
        ("  not enrolled (not counted)", f"{q.not_enrolled:,}"),
        ("  enrolled but missing ts, unit or arm", f"{q.unusable_exposures:,}"),
        ("units logged in more than one arm (kept in the first)", f"{q.switched_units:,}"),
        ("  of which no traffic change explains", f"{q.unexplained_switches:,}"),
        ("units served by a fallback at least once (kept in their arm)", f"{q.fallback_units:,}"),
        ("outcome records (this experiment or none named)", f"{q.outcome_records:,}"),
        ("  value not a finite number (skipped)", f"{q.bad_values:,}"),
        ("  repeats of an earlier record (skipped)", f"{q.duplicate_outcomes:,}"),
        ("  counted (at or after the unit's first exposure)", f"{q.outcomes_used:,}"),
        ("  before the unit's first exposure (not counted)", f"{q.outcomes_before_exposure:,}"),
        ("  of units never exposed (not counted)", f"{q.outcomes_unknown_unit:,}"),
        ("lines that were not records (skipped)", f"{q.unreadable_lines:,}"),
        ("  of which a file's incomplete last line", f"{q.truncated_last_lines:,}"),
        ("gzipped files cut short (records missing)", f"{len(q.cut_files):,}"),
    )
    blocks: list[Block] = [Table(("", "count"), rows, ("l", "r"))]
    if q.replicas:
        blocks += [
            Paragraph("Records per router replica (the `replica` field of each record):"),
            _replicas(q.replicas),
        ]
    if report.notes:
        blocks.append(Bullets(report.notes))
    return Section("Data", blocks)


def _replicas(replicas: Sequence[ReplicaCounts]) -> Table:
    """The records of each router replica (router.fleet) whose logs were read."""
    rows = tuple(
        (
            MISSING if r.replica is None else r.replica,
            f"{r.exposures:,}", f"{r.outcomes:,}", f"{r.decisions:,}",
            _time(r.first_ts) if r.first_ts else "-", _time(r.last_ts) if r.last_ts else "-",
        )
        for r in replicas
    )  # fmt: skip
    return Table(
        ("replica", "exposures", "outcomes", "decisions", "first record (UTC)", "last record"),
        rows,
        ("l", "r", "r", "r", "l", "l"),
    )


def _shown_metrics(report: Report, full: bool) -> set[str]:
    if full:
        return {m.metric for m in report.metrics}
    return {m.metric for m in report.metrics if m.role == PRIMARY}


def plot_key(trend: Trend) -> str:
    return f"{trend.metric}/{trend.arm}"


# --- number formats --------------------------------------------------------------------------


def _value(value: float, kind: str) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value * 100:.3f}%" if kind == "proportion" else f"{value:.4g}"


def _diff(c: Comparison, kind: str) -> str:
    """Proportions in percentage points with three decimals; means with four digits."""
    if math.isnan(c.diff):
        return "n/a"

    def number(value: float) -> str:
        return f"{value * 100:+.3f}" if kind == "proportion" else f"{value:+.4g}"

    unit = " pp" if kind == "proportion" else ""
    low, high = c.diff_ci
    if math.isnan(low):
        return f"{number(c.diff)}{unit}"
    return f"{number(c.diff)}{unit} [{number(low)}, {number(high)}]"


class _Reasons:
    """Marks a lift printed without an interval, and explains each mark once under the table."""

    def __init__(self) -> None:
        self.marks: dict[str, str] = {}

    def lift(self, c: Comparison) -> str:
        text = _lift(c)
        reason = c.missing_interval
        if reason is None:
            return text
        mark = self.marks.setdefault(reason, "*" * (len(self.marks) + 1))
        return f"{text} {mark}"

    def legend(self) -> list[Block]:
        return [Paragraph(f"{mark} no interval: {reason}.") for reason, mark in self.marks.items()]


def _lift(c: Comparison) -> str:
    if math.isnan(c.lift):
        return "n/a"
    low, high = c.lift_ci
    if math.isnan(low):
        return f"{c.lift * 100:+.2f}%"
    return f"{c.lift * 100:+.2f}% [{low * 100:+.2f}%, {high * 100:+.2f}%]"


def _p(value: Optional[float]) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if value == 0:
        return "< 1e-300"  # below what a double holds
    return f"{value:.4f}" if value >= 0.0001 else f"{value:.1e}"


def _confidence(alpha: float) -> str:
    return f"{(1 - alpha) * 100:g}% confidence intervals"


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")
