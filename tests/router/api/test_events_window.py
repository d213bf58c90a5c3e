"""The window of `ts` that POST /events accepts (router.api.events), on a fixed clock: its
ends are inside, a second (or a microsecond) beyond them is not."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from router.api.events import EventWindow, parse_events

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=timezone.utc)
WINDOW = EventWindow(max_age_s=7 * 86400.0, max_ahead_s=300.0)


def events_at(*moments: datetime) -> bytes:
    return json.dumps(
        [{"unit_id": "u", "metric": "m", "ts": m.isoformat()} for m in moments]
    ).encode()


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [
        (timedelta(days=-7), True),  # exactly the oldest accepted
        (timedelta(days=-7, seconds=-1), False),
        (timedelta(days=-7, microseconds=-1), False),
        (timedelta(0), True),
        (timedelta(minutes=5), True),  # exactly the latest accepted
        (timedelta(minutes=5, seconds=1), False),
        (timedelta(minutes=5, microseconds=1), False),
    ],
    ids=["max-age", "max-age+1s", "max-age+1us", "now", "max-ahead", "max-ahead+1s",
         "max-ahead+1us"],
)  # fmt: skip
def test_the_window_ends_are_accepted_and_a_moment_beyond_is_not(
    offset: timedelta, accepted: bool
) -> None:
    body = events_at(NOW + offset)
    if accepted:
        [event] = parse_events(body, NOW, WINDOW)
        assert event.ts == NOW + offset
    else:
        with pytest.raises(ValueError) as refused:
            parse_events(body, NOW, WINDOW)
        assert str(refused.value).startswith("events[0].ts: ")


def test_a_refusal_names_the_event_and_the_window() -> None:
    old, ahead = NOW - timedelta(days=7, seconds=1), NOW + timedelta(minutes=6)
    with pytest.raises(ValueError) as refused:
        parse_events(events_at(NOW, old, NOW, ahead), NOW, WINDOW)
    assert str(refused.value) == (
        "events[1].ts: 2026-11-29T11:59:59.000Z is more than 7d old (router.events_max_age): "
        "accepted from 2026-11-29T12:00:00.000Z to 2026-12-06T12:05:00.000Z; "
        "events[3].ts: 2026-12-06T12:06:00.000Z is more than 5m ahead "
        "(router.events_max_ahead): accepted from 2026-11-29T12:00:00.000Z "
        "to 2026-12-06T12:05:00.000Z"
    )


def test_a_window_of_any_size_never_overflows() -> None:
    huge = EventWindow(max_age_s=1e12, max_ahead_s=1e12)
    body = events_at(
        datetime(1, 1, 2, tzinfo=timezone.utc), datetime(9999, 12, 30, tzinfo=timezone.utc)
    )
    assert len(parse_events(body, NOW, huge)) == 2
