"""The verdict on the pre-registered primary metric, and only on it (pure).

Which p-value decides:

- The run is complete (at least `min_days` long and every arm at the planned sample size): the
  fixed-horizon p-value, the most powerful test for a run that was looked at once at its end.
- The run is not complete: only the always-valid p-value may stop it early, because a
  fixed-horizon p-value read at an unplanned peek is not a valid p-value. Otherwise: keep running.

A sample ratio mismatch withholds every verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

FIXED = "fixed-horizon"
ALWAYS_VALID = "always-valid"


@dataclass(frozen=True)
class Evidence:
    arm: str
    metric: str
    direction: Optional[str]  # "increase", "decrease" or None (any change)
    alpha: float
    diff: float
    lift: float
    lift_ci: tuple[float, float]
    p_fixed: float
    p_always_valid: float
    srm_flagged: bool
    days_run: float
    min_days: int
    units_per_arm: int  # the smallest arm
    planned_units: Optional[int]
    guardrails_harmed: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.days_run >= self.min_days and (
            self.planned_units is None or self.units_per_arm >= self.planned_units
        )


@dataclass(frozen=True)
class Verdict:
    code: str
    line: str
    basis: Optional[str]
    p_value: float


def decide(e: Evidence) -> Verdict:
    if e.srm_flagged:
        return Verdict(
            "withheld_srm",
            "NO VERDICT: sample ratio mismatch; the arms do not hold the planned shares of units, "
            "so no difference between them can be trusted. Find the cause first.",
            None,
            math.nan,
        )
    if e.units_per_arm == 0:
        return Verdict("no_data", "NO VERDICT: no enrolled units in some arm yet.", None, math.nan)
    if math.isnan(e.p_fixed):
        return Verdict(
            "not_computable",
            f"NO VERDICT: {e.metric} cannot be tested yet (no events, or no variation).",
            None,
            math.nan,
        )
    basis = FIXED if e.complete else ALWAYS_VALID
    # Without an always-valid p-value (no mde registered) an incomplete run cannot stop early.
    p = e.p_fixed if basis == FIXED else e.p_always_valid
    shown = "n/a (no mde registered)" if math.isnan(p) else f"{p:.3g}"
    p = 1.0 if math.isnan(p) else p
    effect = (
        f"{e.metric} {_percent(e.lift)} (CI {_percent(e.lift_ci[0])} to {_percent(e.lift_ci[1])})"
    )
    evidence = f"{basis} p = {p:.3g} < alpha {e.alpha:g}"
    early = "" if basis == FIXED else "EARLY STOP (always-valid p-value): "
    if p < e.alpha:
        if e.direction is None:
            code, outcome = "treatment_differs", f"{e.arm} DIFFERS from control"
        elif (e.diff > 0) == (e.direction == "increase"):
            code, outcome = "treatment_wins", f"{e.arm} WINS"
        else:
            code, outcome = "treatment_loses", f"{e.arm} LOSES (moves {e.metric} the wrong way)"
        line = f"VERDICT: {early}{outcome} on {effect}; {evidence}."
        if e.guardrails_harmed:
            line += f" BUT guardrail {', '.join(e.guardrails_harmed)} got worse: review before shipping."
        return Verdict(code, line, basis, p)
    if basis == FIXED:
        return Verdict(
            "no_significant_difference",
            f"VERDICT: NO WINNER. {e.arm} vs control on {effect}: {basis} p = {p:.3g} >= "
            f"alpha {e.alpha:g}; the difference is within noise.",
            basis,
            p,
        )
    return Verdict(
        "keep_running",
        f"VERDICT: KEEP RUNNING. The pre-registered run is not complete ({_progress(e)}); "
        f"{ALWAYS_VALID} p = {shown} on {effect}. Do not read the fixed-horizon p-value yet.",
        basis,
        p,
    )


def _progress(e: Evidence) -> str:
    """What is still missing: the days, the units, or both."""
    parts = []
    if e.days_run < e.min_days:
        parts.append(f"{e.days_run:.1f} of {e.min_days} days")
    if e.planned_units is not None and e.units_per_arm < e.planned_units:
        parts.append(f"{e.units_per_arm:,} of {e.planned_units:,} units in the smallest arm")
    return ", ".join(parts)


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:+.2f}%"
