"""The exposure record: one line of exposures-YYYY-MM-DD.jsonl per answered request.

It is what the analysis reads (`python -m analysis report`): which unit was assigned which arm,
which arm answered, and how. Configured attributes (`router.attributes`) are logged beside
these fields and may not take their names (router.registry.rules checks it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

from router.records.timestamps import utc_iso

EXPOSURE_FIELDS = frozenset(
    {
        "ts", "request_id", "experiment", "unit", "enrolled", "assigned", "served",
        "model_version", "status", "latency_ms", "fallback", "error",
    }
)  # fmt: skip
# Fields only some records carry (`override: true` on X-Variant-Override requests).
OPTIONAL_EXPOSURE_FIELDS = frozenset({"override"})


def exposure_record(
    *,
    ts: float,
    request_id: str,
    experiment: str,
    unit: Optional[str],
    enrolled: bool,
    assigned: str,
    served: Optional[str],
    model_version: Optional[str],
    status: int,
    latency_s: float,
    fallback: bool,
    errors: Iterable[object],
    overridden: bool,
    attributes: Iterable[tuple[str, Optional[str]]],
) -> dict[str, Any]:
    """`unit` as it is to be logged (hashed or not); `errors`, the backend failures in call
    order; `attributes`, (field, value) pairs."""
    record: dict[str, Any] = {
        "ts": utc_iso(ts),
        "request_id": request_id,
        "experiment": experiment,
        "unit": unit,
        "enrolled": enrolled,
        "assigned": assigned,
        "served": served,
        "model_version": model_version,
        "status": status,
        "latency_ms": round(latency_s * 1000, 3),
        "fallback": fallback,
        "error": "; ".join(str(e) for e in errors) or None,
    }
    if overridden:
        record["override"] = True
    record.update(attributes)
    return record
