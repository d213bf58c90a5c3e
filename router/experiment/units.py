"""Randomization units: where a request's unit id comes from, and how it is logged."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Optional

from router.registry.schema import UnitIdSource

# The same bound as `unit_id` of an outcome event: a longer id could never be joined.
MAX_UNIT_CHARS = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BadUnit(ValueError):
    """A unit id the router refuses (400 `bad_unit`) rather than hash, log and enroll."""


def unit_of(
    headers: Mapping[str, str], payload: Mapping[str, Any], source: UnitIdSource
) -> Optional[str]:
    """The unit id from the header, else from the top-level JSON field; None if neither has one.

    Raises BadUnit for an id over MAX_UNIT_CHARS, with control characters, or that is not
    valid Unicode (undecodable header bytes, a lone surrogate escape in JSON).
    """
    if source.header:
        unit = headers.get(source.header.lower())
        if unit:
            return _from(unit, f"header {source.header}")
    if source.json_field:
        value = payload.get(source.json_field)
        if isinstance(value, str) and value:
            return _from(value, f"field {source.json_field}")
        if isinstance(value, int) and not isinstance(value, bool):
            return _from(str(value), f"field {source.json_field}")
    return None


def checked_unit(unit: str) -> str:
    """`unit` itself if the router takes it as a unit id; raises BadUnit otherwise."""
    if len(unit) > MAX_UNIT_CHARS:
        raise BadUnit(f"unit id longer than {MAX_UNIT_CHARS} characters")
    if unit.isascii() and unit.isprintable():  # the usual id, checked without a regex
        return unit
    if _CONTROL.search(unit):
        raise BadUnit("unit id with control characters")
    try:
        unit.encode()
    except UnicodeEncodeError:
        raise BadUnit("unit id is not valid UTF-8") from None
    return unit


def _from(unit: str, place: str) -> str:
    try:
        return checked_unit(unit)
    except BadUnit as exc:
        raise BadUnit(f"{place}: {exc}") from None


def logged_unit(unit: Optional[str], hashed: bool) -> Optional[str]:
    """The unit as written to the logs: raw, or a pseudonym (sha256, 32 hex digits).

    Exposures and outcomes go through the same function, so the analysis still joins them.
    A plain hash hides ids from casual readers; it is pseudonymization, not anonymization.
    """
    if unit is None or not hashed:
        return unit
    return hashlib.sha256(unit.encode()).hexdigest()[:32]
