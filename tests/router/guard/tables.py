"""Building the guard's inputs from the JSON data tables of tests/data."""

from __future__ import annotations

import json
from typing import Any, Optional

from router.guard.rollout import Policy, RampPlan
from router.guard.slo import CheckResult, SloThresholds, WindowStats
from tests.support import DATA


def load_cases(name: str) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((DATA / name).read_text(encoding="utf-8"))["cases"]
    return cases


def case_id(case: dict[str, Any]) -> str:
    return str(case["name"])


def stats_from(row: Optional[dict[str, Any]]) -> Optional[WindowStats]:
    if row is None:
        return None
    count, errors = int(row["count"]), int(row["errors"])
    p99 = row["p99_ms"]
    return WindowStats(
        count=count,
        errors=errors,
        error_rate=errors / count if count else None,
        p99_ms=float(p99) if p99 is not None else None,
    )


def thresholds_from(row: dict[str, Any]) -> SloThresholds:
    return SloThresholds(**row)


def policy_from(row: dict[str, Any]) -> Policy:
    ramp = row.get("ramp")
    return Policy(
        failed_checks=row["failed_checks"],
        on_breach=row["on_breach"],
        ramp=RampPlan(tuple(ramp["steps"]), ramp["every_s"], ramp["min_samples"]) if ramp else None,
        multi_arm=row.get("multi_arm", False),
    )


def check_result(check: str, samples: int) -> CheckResult:
    """A check verdict as the table gives it (the rollout tests do not re-derive verdicts)."""
    assert check in ("pass", "fail", "inconclusive"), check
    return CheckResult(
        check,  # type: ignore[arg-type]  # validated above
        measured={"samples": samples},
        thresholds={"min_samples": 100},
        reasons=(f"table says {check}",),
    )
