"""Timestamps as every record of the router writes them: ISO 8601 UTC with milliseconds.

`2026-11-20T08:00:00.123Z`: exposures, outcomes, decisions, `GET /experiments`. One formatter,
so that records compare as strings and the analysis reads them all the same way.
"""

from __future__ import annotations

import time
from datetime import datetime


class _UtcClock:
    """Formats the date and time part once a second: one timestamp is formatted per request,
    and datetime.isoformat() was a visible share of that work. The cache is one tuple,
    replaced whole: the log writer threads format timestamps too."""

    def __init__(self) -> None:
        self._cached = (-1, "")  # (second, its date and time)

    def iso(self, ts: float) -> str:
        """`ts` (epoch seconds, as time.time()) in ISO 8601 UTC, milliseconds truncated."""
        millis = int(ts * 1000)
        second = millis // 1000
        cached = self._cached
        if cached[0] != second:
            cached = self._cached = (
                second,
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)),
            )
        return f"{cached[1]}.{millis % 1000:03d}Z"

    def now_iso(self) -> str:
        return self.iso(time.time())


_CLOCK = _UtcClock()
utc_iso = _CLOCK.iso
utc_now_iso = _CLOCK.now_iso


def utc_iso_of(moment: datetime) -> str:
    """An aware datetime, formatted like `utc_iso`."""
    return utc_iso(moment.timestamp())
