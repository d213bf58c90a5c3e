"""`POST /events`: outcome events, validated, appended to the outcome log.

Accepts one event or a list of them; a list is taken whole or refused whole, so a client that
retries after a 400 never duplicates the good half.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Optional

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from router.experiment.units import MAX_UNIT_CHARS, checked_unit, logged_unit
from router.proxy.intake import BODY_ERRORS, parse_json
from router.proxy.live_registry import LiveRegistry
from router.records.jsonl import JsonlWriter
from router.records.timestamps import utc_iso_of
from router.registry.problems import describe_errors
from router.responses import error_answer, json_response, method_not_allowed, to_response

MAX_EVENTS_PER_REQUEST = 10_000
# An outcome files into the log of its own day: no day after tomorrow (clock skew allowed).
MAX_FUTURE = timedelta(days=1)


class OutcomeEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    unit_id: Annotated[str, Field(min_length=1, max_length=MAX_UNIT_CHARS)]
    metric: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
    # An event without a value is one occurrence (a conversion).
    value: float = 1.0
    ts: Optional[datetime] = None
    # The registry's experiment names (router.registry.schema.NAME_PATTERN).
    experiment: Optional[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]] = None
    # The client's own id for the event: the analysis counts an event sent twice once.
    event_id: Optional[Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,128}$")]] = None

    @field_validator("unit_id")
    @classmethod
    def _unit(cls, unit: str) -> str:
        # The same rules as a unit id on the request path (no control characters, valid UTF-8).
        return checked_unit(unit)

    @field_validator("value", mode="before")
    @classmethod
    def _numeric(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError("must be a finite number")
        return value

    @field_validator("ts")
    @classmethod
    def _utc(cls, ts: Optional[datetime]) -> Optional[datetime]:
        if ts is None:
            return None
        # A time without zone is taken as UTC, like every ts the router writes.
        ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)
        if ts > datetime.now(timezone.utc) + MAX_FUTURE:
            raise ValueError("more than a day in the future")
        return ts

    def record(self, hash_units: bool, received: datetime) -> dict[str, Any]:
        ts = self.ts or received
        record = {
            "ts": utc_iso_of(ts),
            "unit": logged_unit(self.unit_id, hash_units),
            "metric": self.metric,
            "value": self.value,
            "experiment": self.experiment,
        }
        if self.event_id is not None:
            record["event_id"] = self.event_id
        return record


def parse_events(body: bytes) -> list[OutcomeEvent]:
    """The events of a request body; raises ValueError naming every bad place."""
    try:
        data = parse_json(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise ValueError("body: not JSON") from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ValueError("body: empty list")
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise ValueError(f"body: more than {MAX_EVENTS_PER_REQUEST} events")
    events, problems = [], []
    for index, item in enumerate(items):
        place = f"events[{index}]" if isinstance(data, list) else "event"
        if not isinstance(item, dict):
            problems.append(f"{place}: must be a JSON object")
            continue
        try:
            events.append(OutcomeEvent.model_validate(item))
        except ValidationError as exc:
            problems.extend(describe_errors(place, exc))
    if problems:
        raise ValueError("; ".join(problems[:20]))
    return events


class OutcomeEndpoint:
    def __init__(self, writer: JsonlWriter, live: LiveRegistry) -> None:
        self._writer = writer
        self._live = live

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return to_response(method_not_allowed(request.method, ["POST"]))
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return to_response(error_answer(413, "body_too_large", "request body too large"))
        except BODY_ERRORS as exc:  # e.g. a Content-Encoding that does not decode
            return to_response(error_answer(400, "bad_event", f"body: cannot be read: {exc}"))
        try:
            events = parse_events(body)
        except ValueError as exc:
            return to_response(error_answer(400, "bad_event", str(exc)))
        received = datetime.now(timezone.utc)
        hash_units = self._live.current.config.router.hash_unit_ids
        for event in events:
            self._writer.write(event.record(hash_units, received))
        return json_response({"accepted": len(events)}, status=202)
