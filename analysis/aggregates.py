"""What the engine reduces the logs to: small tables of counts and sums, no engine types.

Everything downstream (statistics, verdict, plots) reads only this, so it can be built by
hand in tests, and the engine could be swapped without touching the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Optional, Union

from analysis.stats import ArmStats

# The built-in segment: the treatment traffic in force when a unit was first exposed.
TRAFFIC_SEGMENT = "traffic at first exposure"
# The segment of units whose attribute was not logged.
MISSING = "(none)"


@dataclass(frozen=True)
class MetricSums:
    """Per-unit sums of one metric over the units of one arm (or segment) that had records.

    Units without records count as zero, so the arm's unit count completes the statistics.
    `with_event` counts the units with at least one record of positive value.
    """

    total: float = 0.0
    total_sq: float = 0.0
    with_event: int = 0

    def as_stats(self, kind: str, units: int) -> ArmStats:
        if kind == "proportion":
            return ArmStats.of_proportion(units, self.with_event)
        return ArmStats(units, self.total, self.total_sq)


def period_start(day: Union[date, datetime]) -> datetime:
    """The moment a period of the daily series starts (a day is a date, an hour a datetime)."""
    if isinstance(day, datetime):
        return day
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


@dataclass(frozen=True)
class DayRow:
    """One arm and metric on one day (or hour): its per-unit sums, and the running totals."""

    day: date  # a datetime when the periods are hours
    units: int  # units enrolled by the end of the day (cumulative)
    daily: MetricSums  # outcomes on this day, per unit
    cumulative: MetricSums  # outcomes up to the end of this day, per unit


@dataclass(frozen=True)
class CutFile:
    """A gzipped log whose stream stops short: the records left and the span of their `ts`."""

    name: str
    kind: str  # "exposures" or "outcomes"
    records: int
    first_ts: Optional[datetime]
    last_ts: Optional[datetime]


@dataclass(frozen=True)
class ReplicaCounts:
    """The records of this experiment that one router replica wrote (router.fleet)."""

    replica: Optional[str]  # None: records without one (a router alone)
    exposures: int = 0  # each request once, as in DataQuality.exposure_records
    outcomes: int = 0  # as in DataQuality.outcome_records
    decisions: int = 0
    first_ts: Optional[datetime] = None  # of all three kinds
    last_ts: Optional[datetime] = None


@dataclass(frozen=True)
class DataQuality:
    exposure_files: int = 0
    outcome_files: int = 0
    exposure_records: int = 0  # records of this experiment, each request once
    # Copies of a record counted above (the same request_id, replica, unit and ts: a file read
    # twice, a log shipper's second delivery): skipped, not in exposure_records.
    duplicate_exposures: int = 0
    unreadable_lines: int = 0  # exposure and outcome lines that are not records
    truncated_last_lines: int = 0  # of those, a file's incomplete last line
    not_enrolled: int = 0
    unusable_exposures: int = 0  # of this experiment, but no ts, unit or arm
    switched_units: int = 0  # logged in more than one arm; counted in their first
    # of those, not explained by a traffic change after their first exposure
    unexplained_switches: int = 0
    fallback_units: int = 0  # served by control at least once through a fallback
    outcome_records: int = 0
    bad_values: int = 0  # of those, a value that is not a finite number: skipped
    duplicate_outcomes: int = 0  # of those, repeats of an earlier record: skipped
    outcomes_used: int = 0
    outcomes_before_exposure: int = 0
    outcomes_unknown_unit: int = 0
    cut_files: tuple[CutFile, ...] = ()
    # Per replica, when the records name one; sorted by replica, records without one last.
    replicas: tuple[ReplicaCounts, ...] = ()


Stratum = float  # the treatment traffic (percent) in force at a unit's first exposure


@dataclass(frozen=True)
class Aggregates:
    """Everything is kept per stratum (ramp phase), the unit of a fair comparison."""

    units: dict[tuple[Stratum, str], int]  # (stratum, arm) -> enrolled units
    metrics: dict[tuple[Stratum, str, str], MetricSums]  # (stratum, arm, metric) -> sums
    # (attribute, value, stratum, arm) -> units, and (..., metric) -> sums
    segment_units: dict[tuple[str, str, Stratum, str], int]
    segment_metrics: dict[tuple[str, str, Stratum, str, str], MetricSums]
    daily: dict[tuple[Stratum, str, str], list[DayRow]]  # (stratum, arm, metric) -> days
    binary_metrics: frozenset[str]  # metrics whose every value was 0 or 1
    first_exposure: Optional[datetime]
    last_exposure: Optional[datetime]
    quality: DataQuality = field(default_factory=DataQuality)
    # The length of the periods of `daily`: a day, or an hour for a run shorter than two days.
    period: timedelta = timedelta(days=1)
    signed_metrics: frozenset[str] = frozenset()  # metrics with a negative value

    @property
    def strata(self) -> list[Stratum]:
        return sorted({stratum for stratum, _ in self.units})

    @property
    def arms(self) -> dict[str, int]:
        """Enrolled units per arm (the arm of their first exposure), over all strata."""
        totals: dict[str, int] = {}
        for (_, arm), count in self.units.items():
            totals[arm] = totals.get(arm, 0) + count
        return totals

    @property
    def metric_names(self) -> list[str]:
        return sorted({metric for _, _, metric in self.metrics})

    @property
    def days_run(self) -> float:
        if self.first_exposure is None or self.last_exposure is None:
            return 0.0
        return (self.last_exposure - self.first_exposure).total_seconds() / 86400
