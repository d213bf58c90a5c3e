"""How much of the logs is missing, and whether that is too much for a verdict (pure).

What is lost can be counted (lines that are not records, values that are not numbers) or
estimated: a gzipped log cut short still holds its records up to the cut, and the rest of its
day is assumed to have gone on at the same pace. Lost outcomes lower one arm's metric more
than the other's whenever the arms' units were active at different times (a ramp, a
rollback), so past `LOSS_THRESHOLD` of either kind of record the verdict is withheld.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Optional

from analysis.aggregates import CutFile, DataQuality

# A loss above 1 % of the records can move a lift of a few percent by a sizeable part of itself.
LOSS_THRESHOLD = 0.01
_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_MIN_SPAN = timedelta(minutes=1)


@dataclass(frozen=True)
class LossReport:
    warnings: tuple[str, ...]
    withhold: str  # why the verdict is withheld; "" when it is not


def estimated_lost(cut: CutFile) -> Optional[float]:
    """Records the rest of the cut file's day would have held, at the pace of what is left."""
    found = _DAY.search(cut.name)
    if found is None or cut.last_ts is None or cut.first_ts is None:
        return None
    year, month, day = (int(g) for g in found.groups())
    day_end = datetime(year, month, day, tzinfo=timezone.utc) + timedelta(days=1)
    missing = max(day_end - cut.last_ts, timedelta(0))
    span = max(cut.last_ts - cut.first_ts, _MIN_SPAN)
    return cut.records * (missing / span)


def assess(q: DataQuality) -> LossReport:
    warnings: list[str] = []
    lost = {"exposures": 0.0, "outcomes": 0.0}
    for cut in q.cut_files:
        estimate = estimated_lost(cut)
        if estimate is None:
            warnings.append(
                f"{cut.name} is cut short (its gzip stream stops before its end) and what is "
                "left holds no readable record: that whole file is lost"
            )
            lost[cut.kind] += max(q.exposure_records if cut.kind == "exposures" else
                                  q.outcome_records, 1)  # fmt: skip
            continue
        lost[cut.kind] += estimate
        ends = f"{cut.last_ts:%Y-%m-%d %H:%M}" if cut.last_ts else "?"
        warnings.append(
            f"{cut.name} is cut short (its gzip stream stops before its end): its records end "
            f"at {ends} UTC; at that day's pace about {estimate:,.0f} {cut.kind} record(s) of "
            "the rest of the day are missing"
        )
    # Garbled lines in the middle of files could be either kind: counted against both.
    garbled = q.unreadable_lines - q.truncated_last_lines
    shares = {
        "exposures": _share(lost["exposures"] + garbled, q.exposure_records),
        "outcomes": _share(lost["outcomes"] + garbled + q.bad_values, q.outcome_records),
    }
    worst = max(shares, key=lambda kind: shares[kind])
    withhold = ""
    if shares[worst] > LOSS_THRESHOLD:
        withhold = (
            f"about {shares[worst]:.1%} of the {worst} records are missing or unusable "
            f"(more than {LOSS_THRESHOLD:.0%})"
        )
        warnings.append(f"DATA LOSS: {withhold}; the verdict is withheld")
    return LossReport(tuple(warnings), withhold)


def _share(lost: float, kept: int) -> float:
    """Lost records as a share of all there were (kept here counts any lost among them)."""
    total = kept + lost
    return lost / total if total > 0 else 0.0
