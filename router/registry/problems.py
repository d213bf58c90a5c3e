"""Pydantic validation errors as `place: message` lines in the registry's own words."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

# A problem is one line of a log or a terminal, however long the key or value it echoes.
MAX_PROBLEM_CHARS = 1000
_WHITESPACE_RUN = re.compile(r"\s*[\r\n]\s*")

_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown key",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
}


def describe_errors(place: str, error: ValidationError) -> list[str]:
    """One `place.field[index]: message` line per error, without pydantic's duplicates."""
    errors = error.errors()
    item_error_places = {
        tuple(e["loc"][:-1]) for e in errors if e["loc"] and isinstance(e["loc"][-1], int)
    }
    lines = [
        f"{place}{dotted(e['loc'])}: {message(e)}"
        for e in errors
        # pydantic echoes an invalid item as a length error of the whole sequence
        if not (e["type"] == "too_short" and tuple(e["loc"]) in item_error_places)
    ]
    return list(dict.fromkeys(lines))


def dotted(loc: tuple[Any, ...]) -> str:
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item != "[key]":
            parts.append(f".{item}")
    return "".join(parts)


def message(error: Any) -> str:
    template = _MESSAGES.get(error["type"])
    if template is not None:
        return template.format(**error.get("ctx", {}))
    text = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    if text.startswith("Input should be"):
        return "must be" + text[len("Input should be") :]
    return text


def one_line(text: str) -> str:
    """`text` as one line of at most MAX_PROBLEM_CHARS characters (line breaks become spaces)."""
    flat = _WHITESPACE_RUN.sub(" ", text).strip()
    if len(flat) > MAX_PROBLEM_CHARS:
        return flat[: MAX_PROBLEM_CHARS - 3] + "..."
    return flat


def exception_line(exc: BaseException) -> str:
    """An unexpected exception as one line: its type, then its message."""
    text = one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
