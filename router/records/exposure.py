"""The exposure record: one line of exposures-YYYY-MM-DD.jsonl per answered request.

It is what the analysis reads (`python -m analysis report`): which unit was assigned which arm,
which arm answered, and how. Configured attributes (`router.attributes`) are logged beside
these fields and may not take their names (router.registry.rules checks it).

An attribute is a request header, so its value is the client's: a value longer than
`router.max_attribute_chars` (256 characters by default) is logged cut to that many characters,
and the record then names the attributes that were cut (`"truncated": ["city"]`). So no client
makes an exposure line longer than the fields below plus that bound per attribute.

In a fleet (router.fleet) the line also ends with `"replica": "<id>"`, the router process that
answered. This dict does not hold it: the log writer appends the field as a constant piece of
text (router.records.jsonl), so the request path pays nothing for it.
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
# Fields only some records carry (`override: true` on X-Variant-Override requests; `truncated`:
# the attributes whose value was cut to the limit; `replica`: the router process in a fleet,
# written by the log writer; `protocol: "grpc"` on calls of Paddle Serving's gRPC service, absent
# on HTTP requests).
OPTIONAL_EXPOSURE_FIELDS = frozenset({"override", "truncated", "replica", "protocol"})
# The default of `router.max_attribute_chars` (records sit below the registry: a test checks
# that the two agree).
MAX_ATTRIBUTE_CHARS = 256


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
    max_attribute_chars: int = MAX_ATTRIBUTE_CHARS,
) -> dict[str, Any]:
    """`unit` as it is to be logged (hashed or not); `errors`, the backend failures in call
    order; `attributes`, (field, value) pairs, each value logged cut to `max_attribute_chars`
    (`router.max_attribute_chars`)."""
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
    # One pass that stores and checks each value: as cheap as dict.update when nothing is cut.
    truncated = None
    for field, value in attributes:
        if value is not None and len(value) > max_attribute_chars:
            value = value[:max_attribute_chars]
            truncated = [*(truncated or ()), field]
        record[field] = value
    if truncated:
        record["truncated"] = truncated
    return record
