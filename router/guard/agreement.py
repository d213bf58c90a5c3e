"""Do two Paddle Serving answers agree? Same top class in every row of the first fetch value.

A pipeline answer carries its fetch values as JSON text: `{"key": ["prob"], "value":
["[[0.12, 0.88], [0.7, 0.3]]"]}`. The top class of a row is the index of its largest score
(the first one on ties, like numpy's argmax); a flat list is one row. Answers that are not of
this shape (no value, not numbers, rows of different counts) cannot be compared: None.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Optional

# The fetch value is parsed on the event loop: a shadow answer larger than this is not compared.
MAX_VALUE_CHARS = 1 << 20


def top_classes(payload: Mapping[str, Any]) -> Optional[tuple[int, ...]]:
    """The argmax of each row of the answer's first fetch value; None if there is none."""
    values = payload.get("value")
    if not isinstance(values, list) or not values:
        return None
    text = values[0]
    if not isinstance(text, str) or len(text) > MAX_VALUE_CHARS:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, list) or not data:
        return None
    rows = data if all(isinstance(row, list) for row in data) else [data]
    classes = []
    for row in rows:
        best = _argmax(row)
        if best is None:
            return None
        classes.append(best)
    return tuple(classes)


def same_top_class(control: Mapping[str, Any], shadow: Mapping[str, Any]) -> Optional[bool]:
    """Whether both answers pick the same class in every row; None if they cannot be compared."""
    ours, theirs = top_classes(control), top_classes(shadow)
    if ours is None or theirs is None or len(ours) != len(theirs):
        return None
    return ours == theirs


def _argmax(row: Any) -> Optional[int]:
    if not isinstance(row, list) or not row:
        return None
    best_index, best = -1, -math.inf
    for index, score in enumerate(row):
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            return None
        if score > best or best_index < 0:
            best_index, best = index, score
    return best_index
