"""Segment lifts that disagree with the total (pure).

When every segment of an attribute moves the metric the other way from the total, that is
Simpson's paradox: the total mixes segments in different proportions per arm (a ramp that
changed the split while conversion drifted does exactly that). A few segments disagreeing is
common noise with many segments: they are listed when the total or one of them is significant,
with the significant ones named.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SegmentLift:
    value: str
    diff: float
    p_value: float


def sign_warnings(
    attribute: str,
    metric: str,
    total_diff: float,
    total_p: float,
    segments: Sequence[SegmentLift],
    alpha: float,
) -> list[str]:
    """At most one warning for one attribute and metric.

    None when all segments agree, and none when neither the total nor any disagreeing segment
    is significant: the sign of noise disagreeing with the sign of noise means nothing.
    """
    if math.isnan(total_diff) or total_diff == 0:
        return []
    measured = [s for s in segments if not math.isnan(s.diff)]
    opposite = [s for s in measured if s.diff * total_diff < 0]
    if not opposite:
        return []
    total = f"the total ({_signed(total_diff)})"
    if len(measured) >= 2 and len(opposite) == len(measured):
        return [
            f"SIMPSON'S PARADOX: every {attribute} segment moves {metric} the other way from "
            f"{total}: "
            + ", ".join(f"{s.value} {_signed(s.diff)}" for s in opposite)
            + ". The pooled number mixes segments unevenly; read the segments."
        ]
    significant = [s for s in opposite if s.p_value < alpha]
    if not significant and not total_p < alpha:
        return []
    names = ", ".join(
        f"{s.value} {_signed(s.diff)}" + (f" (p = {s.p_value:.3g})" if s in significant else "")
        for s in opposite
    )
    note = "significantly so: " if significant else "none significantly: "
    return [
        f"{metric} by {attribute}: {len(opposite)} of {len(measured)} segments disagree in sign "
        f"with {total}, {note}{names}"
    ]


def _signed(value: float) -> str:
    return f"{value:+.4g}"
