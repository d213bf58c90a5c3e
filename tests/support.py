"""Small helpers shared by the test suites (no fixtures here: see conftest.py)."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from pathlib import Path
from typing import Any, Callable

from serving.synthetic import make_reviews

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"

# What a check may raise while the state it reads is still on its way (a field still null, a
# file not there yet, a line half written): "not yet", never a failure on its own. An
# AssertionError inside a check is a failure.
NOT_YET = (LookupError, TypeError, AttributeError, ValueError, OSError)


def demo_request(n_rows: int = 1, seed: int = 0) -> dict[str, Any]:
    """A valid pipeline request body for the demo sentiment bundles: `n_rows` real reviews."""
    reviews = make_reviews(n_rows, seed=seed)
    return {"key": ["x"], "value": [json.dumps(reviews.tokens.tolist())]}


async def eventually(
    check: Callable[[], object], timeout: float = 10.0, interval: float = 0.05
) -> float:
    """Seconds until `check()` (a function or a coroutine function) first gave a truthy result,
    polled every `interval` seconds; fails the test after `timeout` with what the last try saw.

    Tests wait for conditions, never for a fixed time: a machine faster or slower than the one
    a test was written on changes when things happen, not whether they do. A check that raises
    one of NOT_YET counts as "not yet".
    """
    started = time.monotonic()
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            last: object = result
            if result:
                return time.monotonic() - started
        except NOT_YET as exc:
            last = exc
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s; last try: {last!r:.2000}")
        await asyncio.sleep(interval)


async def settled(check: Callable[[], object], timeout: float = 10.0) -> bool:
    """Whether `check()` held within `timeout`, as `eventually` waits for it, without failing:
    for a wait whose outcome the test goes on to count and report itself."""
    try:
        await eventually(check, timeout)
    except AssertionError:
        return False
    return True
