"""The treatment traffic in force over time, from the decision log (pure).

A decision record carries `traffic` (percent outside control after the record) whenever it
changed it. A `rollback` without `traffic` means 0 until a later record restores it. Before the
first record that sets traffic, the traffic in force is that record's `previous_traffic` when
it has one; else, when that record is a ramp advance to a registered step, the step before it;
else the registry's configured traffic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

BEGINNING = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class TrafficPeriod:
    since: datetime
    traffic: float


class DecisionError(ValueError):
    """A decision record that cannot be read; the message names its place."""


def traffic_history(
    decisions: Iterable[tuple[str, Mapping[str, Any]]],
    experiment: str,
    configured: float,
    ramp_steps: tuple[float, ...] = (),
) -> list[TrafficPeriod]:
    """Periods of constant traffic, oldest first; the first starts at `BEGINNING`.

    `decisions` are (place, record) pairs; the place (`decisions.jsonl:12`) names a bad record.
    """
    changes: list[tuple[datetime, float, Optional[float], Any]] = []
    for place, record in decisions:
        if record.get("experiment") != experiment:
            continue
        traffic = _traffic_after(record, place)
        if traffic is None:
            continue
        previous = _number(record.get("previous_traffic"), f"{place}.previous_traffic")
        at = _timestamp(record.get("ts"), f"{place}.ts")
        changes.append((at, traffic, previous, record.get("action")))
    changes.sort(key=lambda change: change[0])
    initial = _initial(changes[0][1:], configured, ramp_steps) if changes else configured
    periods = [TrafficPeriod(BEGINNING, initial)]
    for at, traffic, _, _ in changes:
        if at <= periods[-1].since:
            periods[-1] = TrafficPeriod(periods[-1].since, traffic)
        elif traffic != periods[-1].traffic:
            periods.append(TrafficPeriod(at, traffic))
    return periods


def _initial(
    first: tuple[float, Optional[float], Any], configured: float, ramp_steps: tuple[float, ...]
) -> float:
    traffic, previous, action = first
    if previous is not None:
        return previous
    if action == "advance" and traffic in ramp_steps and ramp_steps.index(traffic) > 0:
        return ramp_steps[ramp_steps.index(traffic) - 1]
    return configured


def _traffic_after(record: Mapping[str, Any], place: str) -> Optional[float]:
    traffic = _number(record.get("traffic"), f"{place}.traffic")
    if traffic is not None:
        if not 0 <= traffic <= 100:
            raise DecisionError(f"{place}.traffic: must be between 0 and 100, got {traffic}")
        return traffic
    return 0.0 if record.get("action") == "rollback" else None


def _number(value: Any, place: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecisionError(f"{place}: must be a number, got {value!r}")
    return float(value)


def _timestamp(value: Any, place: str) -> datetime:
    if not isinstance(value, str):
        raise DecisionError(f"{place}: must be an ISO 8601 time, got {value!r}")
    try:
        return parse_utc(value)
    except ValueError:
        raise DecisionError(f"{place}: not an ISO 8601 time: {value!r}") from None


_FRACTION = re.compile(r"(\.\d+)")


def parse_utc(value: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime; no zone means UTC, like every logged `ts`."""
    # Python 3.9's fromisoformat takes neither `Z` nor fractions other than 3 or 6 digits.
    text = _FRACTION.sub(lambda m: m.group(1)[:7].ljust(7, "0"), value.strip(), count=1)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)
