"""Durations as written in experiments.yaml: `250ms`, `30s`, `10m`, `1h`, `1d`, or plain seconds."""

from __future__ import annotations

import math
import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds as a float; raises ValueError for anything but a positive duration."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 30s, 10m or 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"must be a duration like 30s, 10m or 1h, got {value!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"must be a duration like 30s, 10m or 1h, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be > 0")
    return seconds
