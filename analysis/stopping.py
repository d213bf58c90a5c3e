"""When a run may be judged, and by which p-value (pure).

The report is re-read as the logs grow; each read must not be a new chance of a false positive.
Each look is the end of a period of the daily series (a day, or an hour for a short run):

- The *planned end* (the horizon) is the first closed look at which the run has lasted
  `min_days` since its first exposure and every compared arm holds the planned units. It
  depends only on the data up to it, so every later read finds the same one, and the
  fixed-horizon test on the data up to it is read once, whatever day the report is run.
- Before the planned end, only the always-valid p-value may stop the run ("early stop"); it is
  valid however often it is read, and the first look at which it crosses alpha is kept.
- At and after the planned end the always-valid p-value no longer decides: letting both decide
  would add their false positives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Optional

RUNNING, EARLY, COMPLETE = "running", "early", "complete"


@dataclass(frozen=True)
class Look:
    end: datetime  # the end of the period: the data up to here
    units_ready: bool  # every compared arm holds the planned units (or none are planned)
    p_always_valid: float  # the running always-valid p-value (the smallest arm's, adjusted)


@dataclass(frozen=True)
class Stop:
    stage: str  # RUNNING, EARLY or COMPLETE
    index: Optional[int]  # the deciding look (None while running)


def stopping_point(
    looks: Sequence[Look],
    first_exposure: Optional[datetime],
    min_days: float,
    alpha: float,
    as_of: Optional[datetime] = None,
) -> Stop:
    """The look that decides, if any. `as_of` is when the report is read: a period that has not
    ended by then is open, and only the always-valid p-value may be read at it."""
    if first_exposure is None:
        return Stop(RUNNING, None)
    for index, look in enumerate(looks):
        closed = as_of is None or look.end <= as_of
        lasted = look.end - first_exposure >= timedelta(days=min_days)
        if closed and lasted and look.units_ready:
            return Stop(COMPLETE, index)
        if look.p_always_valid < alpha:
            return Stop(EARLY, index)
    return Stop(RUNNING, None)
