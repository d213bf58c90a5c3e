"""The finished report as data: what the terminal, JSON, Markdown and HTML views all show."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any, Optional

from analysis.aggregates import DataQuality
from analysis.registry import AnalysisPlan
from analysis.srm import SrmResult
from analysis.stats import Comparison
from analysis.verdict import Verdict

PRIMARY, SECONDARY, GUARDRAIL, EXPLORATORY = "primary", "secondary", "guardrail", "exploratory"


@dataclass(frozen=True)
class RoledMetric:
    """A metric with its part in the pre-registration."""

    name: str
    role: str  # PRIMARY, SECONDARY, GUARDRAIL or EXPLORATORY
    kind: str  # "proportion" or "mean"
    direction: Optional[str]
    nonnegative: bool = True  # no negative value was logged


@dataclass(frozen=True)
class MetricResult:
    metric: str
    role: str
    kind: str
    arm: str
    direction: Optional[str]
    comparison: Comparison
    # Holm-adjusted for secondary metrics; for a primary metric with several treatment arms,
    # adjusted across the arms; otherwise the p-value itself.
    p_adjusted: float
    always_valid_p: Optional[float] = None
    harmed: bool = False  # a guardrail that got significantly worse
    # The end of the data compared: the planned end for the confirmatory metrics once it is
    # reached (they are read there once), None for all the data.
    through: Optional[datetime] = None


@dataclass(frozen=True)
class SegmentResult:
    attribute: str
    value: str
    metric: str
    role: str
    arm: str
    comparison: Comparison


@dataclass(frozen=True)
class TrendPoint:
    day: date
    daily: Comparison
    cumulative: Comparison
    always_valid_p: Optional[float] = None
    always_valid_ci: tuple[float, float] = (math.nan, math.nan)  # for the difference


@dataclass(frozen=True)
class Trend:
    metric: str
    role: str
    kind: str
    arm: str
    points: tuple[TrendPoint, ...]


@dataclass(frozen=True)
class Plan:
    """The pre-registration as the report applied it."""

    registered: Optional[AnalysisPlan]
    alpha: float
    planned_units: Optional[int]
    planned_units_basis: str
    tau: Optional[float]  # mixing scale of the always-valid p-value (absolute effect)
    planned_end: Optional[datetime] = None  # the end of the data the verdict reads, once reached


@dataclass(frozen=True)
class Report:
    experiment: str
    mode: str
    control: str
    treatments: tuple[str, ...]
    plan: Plan
    units: dict[str, int]
    first_exposure: Optional[datetime]
    last_exposure: Optional[datetime]
    days_run: float
    quality: DataQuality
    srm: SrmResult
    verdicts: tuple[Verdict, ...]
    metrics: tuple[MetricResult, ...]
    segments: tuple[SegmentResult, ...]
    trends: tuple[Trend, ...]
    warnings: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())
    period: str = "day"  # of the trend: "day", or "hour" for a run shorter than two days
    # Units in the primary comparison, per arm: strata that lack an arm are left out of it.
    compared_units: dict[str, int] = field(default_factory=dict)

    @property
    def verdict_line(self) -> str:
        return " | ".join(v.line for v in self.verdicts)

    def to_dict(self) -> dict[str, Any]:
        registered = self.plan.registered
        return _clean_dict(
            {
                "experiment": self.experiment,
                "mode": self.mode,
                "arms": {"control": self.control, "treatments": list(self.treatments)},
                "verdict": [
                    {"arm": arm, **asdict(v)} for arm, v in zip(self.treatments, self.verdicts)
                ],
                "plan": {
                    "registered": registered.model_dump(mode="json") if registered else None,
                    "alpha": self.plan.alpha,
                    "planned_units_per_arm": self.plan.planned_units,
                    "planned_units_basis": self.plan.planned_units_basis,
                    "always_valid_tau": self.plan.tau,
                    "planned_end": self.plan.planned_end,
                },
                "run": {
                    "units": self.units,
                    "compared_units": self.compared_units,
                    "first_exposure": self.first_exposure,
                    "last_exposure": self.last_exposure,
                    "days": self.days_run,
                },
                "data_quality": asdict(self.quality),
                "srm": {
                    "observed": self.srm.observed,
                    "expected": self.srm.expected,
                    "chi2": self.srm.chi2,
                    "p_value": self.srm.p_value,
                    "threshold": self.srm.threshold,
                    "flagged": self.srm.flagged,
                    "unexpected_arms": list(self.srm.unexpected_arms),
                },
                "metrics": [
                    {
                        "metric": m.metric,
                        "role": m.role,
                        "type": m.kind,
                        "arm": m.arm,
                        "direction": m.direction,
                        **comparison_dict(m.comparison),
                        "p_adjusted": m.p_adjusted,
                        "always_valid_p": m.always_valid_p,
                        "guardrail_harmed": m.harmed if m.role == GUARDRAIL else None,
                        "data_through": m.through,
                    }
                    for m in self.metrics
                ],
                "segments": [
                    {
                        "attribute": s.attribute,
                        "value": s.value,
                        "metric": s.metric,
                        "role": s.role,
                        "arm": s.arm,
                        **comparison_dict(s.comparison),
                    }
                    for s in self.segments
                ],
                "daily": [
                    {
                        "metric": t.metric,
                        "role": t.role,
                        "arm": t.arm,
                        "period": self.period,
                        "days": [
                            {
                                "day": p.day,
                                "daily": comparison_dict(p.daily),
                                "cumulative": comparison_dict(p.cumulative),
                                "always_valid_p": p.always_valid_p,
                                "always_valid_diff_ci": list(p.always_valid_ci),
                            }
                            for p in t.points
                        ],
                    }
                    for t in self.trends
                ],
                "warnings": list(self.warnings),
                "notes": list(self.notes),
            }
        )


def comparison_dict(c: Comparison) -> dict[str, Any]:
    return {
        "control": {"units": c.control.n, "mean": c.control_mean, "total": c.control.total},
        "treatment": {"units": c.treatment.n, "mean": c.treatment_mean, "total": c.treatment.total},
        "stratified": bool(c.strata),
        "diff": c.diff,
        "diff_ci": list(c.diff_ci),
        "lift": c.lift,
        "lift_ci": list(c.lift_ci),
        "no_interval_because": c.missing_interval,
        "p_value": c.p_value,
        "statistic": c.statistic,
        "alpha": c.alpha,
    }


def _clean_dict(value: dict[str, Any]) -> dict[str, Any]:
    return {key: _clean(item) for key, item in value.items()}


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, dates ISO strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
