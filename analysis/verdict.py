"""The verdict on the pre-registered primary metric, and only on it (pure).

Which p-value decides (`analysis.stopping` finds the stage):

- Before the planned end: only the always-valid p-value, which may stop the run early; a
  fixed-horizon p-value read at an unplanned peek is not a valid p-value. Otherwise: keep running.
- At the planned end, and at every later read: the fixed-horizon p-value on the data up to the
  planned end, the most powerful test for a run looked at once.

The interval printed with a verdict is the one that agrees with the test that decided it.
A sample ratio mismatch, or a loss of log records large enough to matter, withholds every
verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from analysis.stopping import COMPLETE, EARLY

FIXED = "fixed-horizon"
ALWAYS_VALID = "always-valid"


@dataclass(frozen=True)
class Evidence:
    arm: str
    metric: str
    kind: str  # "proportion" or "mean": how a difference is written
    direction: Optional[str]  # "increase", "decrease" or None (any change)
    alpha: float
    # The planned end's test level: alpha, less what the early-stop looks spent (spending.py).
    level: float
    stage: str  # analysis.stopping: RUNNING, EARLY or COMPLETE
    diff: float
    diff_ci: tuple[float, float]
    lift: float
    lift_ci: tuple[float, float]
    p_fixed: float
    p_always_valid: float
    always_valid_ci: tuple[float, float]  # for the difference
    srm_flagged: bool
    units_per_arm: int  # the smallest compared arm
    progress: str = ""  # what the run still lacks, while running
    decided_at: str = ""  # the end of the data that decided, as the reader should see it
    data_loss: str = ""  # a loss of records that withholds the verdict, described
    guardrails_harmed: tuple[str, ...] = ()


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
    if e.data_loss:
        return Verdict(
            "withheld_data_loss",
            f"NO VERDICT: {e.data_loss}. Restore the missing logs, or judge only a span they "
            "cover in full.",
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
    if e.stage == COMPLETE:
        return _at_planned_end(e)
    if e.stage == EARLY:
        effect = (
            f"{e.metric} {_percent(e.lift)} (difference {_diff(e.diff, e.kind)}, always-valid CI "
            f"{_interval(e.always_valid_ci, e.kind)})"
        )
        line = (
            f"VERDICT: EARLY STOP (always-valid p-value, data to {e.decided_at}): "
            f"{_outcome(e)} on {effect}; {ALWAYS_VALID} p = {e.p_always_valid:.3g} < alpha "
            f"{e.alpha:g}."
        )
        return Verdict(_code(e), line + _harmed(e), ALWAYS_VALID, e.p_always_valid)
    shown = "n/a (no mde registered)" if math.isnan(e.p_always_valid) else f"{e.p_always_valid:.3g}"
    return Verdict(
        "keep_running",
        f"VERDICT: KEEP RUNNING. The planned end is not reached ({e.progress}); "
        f"{ALWAYS_VALID} p = {shown} on {e.metric} {_percent(e.lift)}. Do not read the "
        "fixed-horizon p-value yet.",
        ALWAYS_VALID,
        1.0 if math.isnan(e.p_always_valid) else e.p_always_valid,
    )


def _at_planned_end(e: Evidence) -> Verdict:
    if math.isnan(e.lift_ci[0]) or math.isnan(e.lift):
        effect = (
            f"{e.metric} difference {_diff(e.diff, e.kind)} (CI {_interval(e.diff_ci, e.kind)})"
        )
    else:
        effect = (
            f"{e.metric} {_percent(e.lift)} (CI {_percent(e.lift_ci[0])} to "
            f"{_percent(e.lift_ci[1])})"
        )
    when = f"at the planned end (data to {e.decided_at})"
    level = f"alpha {e.alpha:g}"
    if e.level < e.alpha:
        level = f"{e.level:.4g} (alpha {e.alpha:g} less {e.alpha - e.level:.2g} for the early-stop looks)"
    if e.p_fixed < e.level:
        line = f"VERDICT: {_outcome(e)} on {effect}; {FIXED} p = {e.p_fixed:.3g} < {level} {when}."
        return Verdict(_code(e), line + _harmed(e), FIXED, e.p_fixed)
    return Verdict(
        "no_significant_difference",
        f"VERDICT: NO WINNER. {e.arm} vs control on {effect}: {FIXED} p = {e.p_fixed:.3g} >= "
        f"{level} {when}; the difference is within noise.",
        FIXED,
        e.p_fixed,
    )


def _code(e: Evidence) -> str:
    if e.direction is None:
        return "treatment_differs"
    return "treatment_wins" if (e.diff > 0) == (e.direction == "increase") else "treatment_loses"


def _outcome(e: Evidence) -> str:
    return {
        "treatment_differs": f"{e.arm} DIFFERS from control",
        "treatment_wins": f"{e.arm} WINS",
        "treatment_loses": f"{e.arm} LOSES (moves {e.metric} the wrong way)",
    }[_code(e)]


def _harmed(e: Evidence) -> str:
    if not e.guardrails_harmed:
        return ""
    return f" BUT guardrail {', '.join(e.guardrails_harmed)} got worse: review before shipping."


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:+.2f}%"


def _diff(value: float, kind: str) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value * 100:+.3f} pp" if kind == "proportion" else f"{value:+.4g}"


def _interval(bounds: tuple[float, float], kind: str) -> str:
    low, high = bounds
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    return f"{_diff(low, kind)} to {_diff(high, kind)}"
