"""Sample ratio mismatch, the expected arm shares, and the traffic history from decisions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pytest

from analysis.arms import ArmLayout
from analysis.srm import expected_counts, srm_test
from analysis.traffic_history import DecisionError, traffic_history
from tests.analysis.tables import table

TABLE = table("analysis_traffic.json")


def layout_of(spec: dict[str, Any]) -> ArmLayout:
    if "variants" in spec:
        return ArmLayout.multi_arm(tuple((name, float(w)) for name, w in spec["variants"]))
    return ArmLayout.two_arm(float(spec["traffic"]))


@pytest.mark.parametrize("case", TABLE["shares"], ids=str)
def test_arm_shares(case: dict[str, Any]) -> None:
    shares = layout_of(case["layout"]).shares(case["traffic"])
    assert shares == pytest.approx(case["shares"], abs=1e-12)


@pytest.mark.parametrize("case", TABLE["histories"], ids=lambda c: c["name"])
def test_traffic_history(case: dict[str, Any]) -> None:
    records = [(f"decisions.jsonl:{i + 1}", r) for i, r in enumerate(case["decisions"])]
    steps = tuple(float(s) for s in case.get("ramp_steps", ()))
    periods = traffic_history(records, "sentiment", case["configured"], steps)
    assert [(p.since, p.traffic) for p in periods] == [
        (datetime.fromisoformat(since), traffic) for since, traffic in case["periods"]
    ]


@pytest.mark.parametrize("case", TABLE["bad_decisions"], ids=str)
def test_bad_decision_records_name_their_place(case: dict[str, Any]) -> None:
    with pytest.raises(DecisionError, match=case["error"].replace(".", r"\.")):
        traffic_history([("decisions.jsonl:1", case["record"])], "sentiment", 10)


def test_injected_imbalance_at_a_million_units_is_flagged() -> None:
    layout = ArmLayout.two_arm(50)
    result = srm_test(
        {"control": 505_000, "treatment": 495_000}, expected_counts(layout, {50.0: 1_000_000})
    )
    assert result.flagged
    assert result.p_value < 1e-20
    assert result.chi2 == pytest.approx(100.0)  # 2 * 5000^2 / 500000


def test_balanced_random_assignment_is_not_flagged() -> None:
    rng = np.random.default_rng(5)
    treatment = int((rng.random(1_000_000) < 0.5).sum())
    layout = ArmLayout.two_arm(50)
    result = srm_test(
        {"control": 1_000_000 - treatment, "treatment": treatment},
        expected_counts(layout, {50.0: 1_000_000}),
    )
    assert not result.flagged


def test_expected_counts_follow_the_ramp() -> None:
    """10,000 units at 10 % then 10,000 at 50 %: 1,000 + 5,000 expected on treatment."""
    expected = expected_counts(ArmLayout.two_arm(50), {10.0: 10_000, 50.0: 10_000})
    assert expected == pytest.approx({"control": 14_000, "treatment": 6_000})
    honest = srm_test({"control": 14_050, "treatment": 5_950}, expected)
    assert not honest.flagged
    # Judged against today's 50/50 instead, the same data would look broken.
    naive = srm_test(
        {"control": 14_050, "treatment": 5_950}, {"control": 10_000, "treatment": 10_000}
    )
    assert naive.flagged


def test_units_in_an_arm_that_should_be_empty_are_a_mismatch() -> None:
    expected = expected_counts(ArmLayout.two_arm(0), {0.0: 1000})
    result = srm_test({"control": 990, "treatment": 10}, expected)
    assert result.flagged and result.unexpected_arms == ("treatment",)
    unknown = srm_test(
        {"control": 500, "bogus": 3, "treatment": 497}, {"control": 500, "treatment": 500}
    )
    assert unknown.flagged and "bogus" in unknown.describe()


def test_all_units_in_control_while_rolled_back_is_no_mismatch() -> None:
    expected = expected_counts(ArmLayout.two_arm(10), {0.0: 1000})
    assert not srm_test({"control": 1000}, expected).flagged
