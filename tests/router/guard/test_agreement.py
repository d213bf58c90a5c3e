"""Comparing a shadow answer with control's: the top class of every row."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from router.guard.agreement import same_top_class, top_classes


def answer(value: Any) -> dict[str, Any]:
    return {"err_no": 0, "key": ["prob"], "value": [value]}


@pytest.mark.parametrize(
    ("value", "classes"),
    [
        ("[[0.12, 0.88]]", (1,)),
        ("[[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]]", (0, 1, 0)),  # a tie: the first, like argmax
        ("[0.1, 0.6, 0.3]", (1,)),  # a flat list is one row
        ("[[3, -1]]", (0,)),
        ("[[-1e309, -1e309]]", (0,)),
        ("[]", None),
        ("[[]]", None),
        ("[[0.1, NaN]]", None),
        ('[["a", "b"]]', None),
        ("[[true, false]]", None),
        ("[[0.1, 0.9], 0.3]", None),
        ("not json", None),
        (7, None),
    ],
)
def test_top_classes(value: Any, classes: Optional[tuple[int, ...]]) -> None:
    assert top_classes(answer(value)) == classes


@pytest.mark.parametrize("payload", [{}, {"value": []}, {"value": "[[1, 2]]"}, {"value": None}])
def test_answers_without_a_fetch_value(payload: dict[str, Any]) -> None:
    assert top_classes(payload) is None


def test_agreement_needs_every_row_to_agree() -> None:
    control = answer("[[0.1, 0.9], [0.8, 0.2]]")
    assert same_top_class(control, answer("[[0.4, 0.6], [0.6, 0.4]]")) is True
    assert same_top_class(control, answer("[[0.4, 0.6], [0.4, 0.6]]")) is False
    assert same_top_class(control, answer("[[0.4, 0.6]]")) is None  # row counts differ
    assert same_top_class(control, {"err_no": 0}) is None
