"""The verdict on the primary metric, from the table in tests/data/analysis_verdicts.json."""

from __future__ import annotations

import math
from typing import Any

import pytest

from analysis.segments import SegmentLift, sign_warnings
from analysis.verdict import Evidence, decide
from tests.analysis.tables import table

VERDICTS = table("analysis_verdicts.json")
SEGMENTS = table("analysis_segments.json")


def evidence(change: dict[str, Any]) -> Evidence:
    fields = {**VERDICTS["base"], **change}
    for name in ("p_fixed", "p_always_valid"):
        if fields[name] is None:
            fields[name] = math.nan
    for name in ("diff_ci", "lift_ci", "always_valid_ci"):
        fields[name] = tuple(math.nan if v is None else v for v in fields[name])
    fields["guardrails_harmed"] = tuple(fields["guardrails_harmed"])
    return Evidence(**fields)


@pytest.mark.parametrize("case", VERDICTS["cases"], ids=lambda c: c["name"])
def test_verdict(case: dict[str, Any]) -> None:
    verdict = decide(evidence(case["change"]))
    assert verdict.code == case["code"]
    assert verdict.basis == case["basis"]
    for text in case["line"]:
        assert text in verdict.line


@pytest.mark.parametrize("case", SEGMENTS["cases"], ids=lambda c: c["name"])
def test_segment_sign_warnings(case: dict[str, Any]) -> None:
    segments = [
        SegmentLift(value, math.nan if diff is None else diff, math.nan if p is None else p)
        for value, diff, p in case["segments"]
    ]
    warnings = sign_warnings(
        "city", "conversion", case["total"], case["total_p"], segments, SEGMENTS["alpha"]
    )
    if case["warning"] is None:
        assert warnings == []
    else:
        assert len(warnings) == 1
        for text in case["warning"]:
            assert text in warnings[0]
