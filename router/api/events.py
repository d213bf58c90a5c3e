"""`POST /events`: outcome events, validated, appended to the outcome log.

Accepts one event or a list of them; a list is taken whole or refused whole, so a client that
retries after a 400 never duplicates the good half.

An event's `ts` must lie within the registry's window around the router's clock, from
`router.events_max_age` before it to `router.events_max_ahead` after it (both ends accepted):
outcomes file into the log of their own day, and without a bound one request could make a
file for each of thousands of days.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Callable, Optional

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from router.experiment.units import MAX_UNIT_CHARS, checked_unit, logged_unit
from router.proxy.intake import BODY_ERRORS, parse_json
from router.proxy.live_registry import LiveRegistry
from router.records.jsonl import JsonlWriter
from router.records.timestamps import utc_iso_of
from router.registry.problems import describe_errors
from router.registry.schema import RouterSettings
from router.responses import error_answer, json_response, method_not_allowed, to_response

MAX_EVENTS_PER_REQUEST = 10_000
# Problems named in one answer; the rest are counted.
MAX_PROBLEMS_SHOWN = 20


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
        if ts.tzinfo is None:
            return ts.replace(tzinfo=timezone.utc)
        try:
            return ts.astimezone(timezone.utc)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise ValueError("out of range") from None

    def record(self, hash_units: bool, received: datetime) -> dict[str, Any]:
        """The outcome record; a replica of a fleet writes its `replica` after these fields
        (router.records.jsonl), a field no client can send (unknown keys are refused)."""
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


@dataclass(frozen=True)
class EventWindow:
    """The `ts` an event may carry: from `max_age_s` before the router's clock to `max_ahead_s`
    after it, both ends included."""

    max_age_s: float
    max_ahead_s: float

    @classmethod
    def of(cls, settings: RouterSettings) -> EventWindow:
        return cls(settings.events_max_age_s, settings.events_max_ahead_s)

    def problem(self, ts: datetime, now: datetime) -> Optional[str]:
        """Why `ts` is refused at `now`, naming the window; None when it is inside."""
        earliest, latest = _shifted(now, -self.max_age_s), _shifted(now, self.max_ahead_s)
        if earliest <= ts <= latest:
            return None
        why = (
            f"more than {_duration(self.max_age_s)} old (router.events_max_age)"
            if ts < earliest
            else f"more than {_duration(self.max_ahead_s)} ahead (router.events_max_ahead)"
        )
        return (
            f"{utc_iso_of(ts)} is {why}: accepted from {utc_iso_of(earliest)} "
            f"to {utc_iso_of(latest)}"
        )


def _shifted(moment: datetime, seconds: float) -> datetime:
    try:
        return moment + timedelta(seconds=seconds)
    except OverflowError:  # a window of thousands of years: it takes every datetime on that side
        limit = datetime.max if seconds > 0 else datetime.min
        return limit.replace(tzinfo=timezone.utc)


def _duration(seconds: float) -> str:
    """As the registry spells a duration: `7d`, `5m`, `90s`, `0.5s`."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_events(body: bytes, now: datetime, window: EventWindow) -> list[OutcomeEvent]:
    """The events of a request body received at `now`; raises ValueError naming every bad
    place (the first MAX_PROBLEMS_SHOWN of them, and how many more)."""
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
            event = OutcomeEvent.model_validate(item)
        except ValidationError as exc:
            problems.extend(describe_errors(place, exc))
            continue
        outside = None if event.ts is None else window.problem(event.ts, now)
        if outside is not None:
            problems.append(f"{place}.ts: {outside}")
        events.append(event)
    if problems:
        raise ValueError(_listed(problems))
    return events


def _listed(problems: list[str]) -> str:
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - MAX_PROBLEMS_SHOWN
    return f"{shown}; and {more:,} more" if more > 0 else shown


class OutcomeEndpoint:
    def __init__(
        self,
        writer: JsonlWriter,
        live: LiveRegistry,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self._writer = writer
        self._live = live
        self._clock = clock

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return to_response(method_not_allowed(request.method, ["POST"]))
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return to_response(error_answer(413, "body_too_large", "request body too large"))
        except BODY_ERRORS as exc:  # e.g. a Content-Encoding that does not decode
            return to_response(error_answer(400, "bad_event", f"body: cannot be read: {exc}"))
        received = self._clock()
        settings = self._live.current.config.router
        try:
            events = parse_events(body, received, EventWindow.of(settings))
        except ValueError as exc:
            return to_response(error_answer(400, "bad_event", str(exc)))
        hash_units = settings.hash_unit_ids
        for event in events:
            self._writer.write(event.record(hash_units, received))
        return json_response({"accepted": len(events)}, status=202)
