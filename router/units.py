"""Randomization units: where a request's unit id comes from, and how it is logged."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Optional

from router.config import UnitIdSource


def unit_of(
    headers: Mapping[str, str], payload: Mapping[str, Any], source: UnitIdSource
) -> Optional[str]:
    """The unit id from the header, else from the top-level JSON field; None if neither has one."""
    if source.header:
        unit = headers.get(source.header)
        if unit:
            return unit
    if source.json_field:
        value = payload.get(source.json_field)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def logged_unit(unit: Optional[str], hashed: bool) -> Optional[str]:
    """The unit as written to the logs: raw, or a pseudonym (sha256, 32 hex digits).

    Exposures and outcomes go through the same function, so the analysis still joins them.
    A plain hash hides ids from casual readers; it is pseudonymization, not anonymization.
    """
    if unit is None or not hashed:
        return unit
    return hashlib.sha256(unit.encode()).hexdigest()[:32]
