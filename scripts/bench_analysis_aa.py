"""A/A simulation: how often does re-reading the report every day call a winner that is not there?

Each simulated run has two identical arms (10 % conversion, about 1,000 new units per arm a
day). The plan (min_days 4, a registered baseline and an mde whose planned units are reached on
day 4) is met at the end of day 4, and the report is then read again every day for 14 more
days. Every read goes through the report's own rules: `compare_proportions` for the
fixed-horizon p-value, `always_valid_p` for the always-valid one, `plan_sample_size` for the
planned units, `stopping_point` for which of them decides and `alpha_at_end` for the planned
end's level once early-stop looks came before it. A run counts as a false positive
when any read says WINS, LOSES or DIFFERS.

The rule the report used before (from the planned end on, the fixed-horizon p-value on all
the data so far) is simulated beside it on the same draws.

usage: scripts/bench_analysis_aa.py [--runs N] [--seed S] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.planning import plan_sample_size
from analysis.registry import AnalysisPlan, MetricPlan
from analysis.sequential import always_valid_p
from analysis.spending import alpha_at_end
from analysis.stats import ArmStats, compare_proportions, proportion_diff_variance
from analysis.stopping import COMPLETE, EARLY, Look, stopping_point

BASELINE, UNITS_PER_DAY, ALPHA = 0.10, 1_000, 0.05
PLAN_DAY, REREADS = 4, 14
DAYS = PLAN_DAY + REREADS
START = datetime(2026, 11, 20, tzinfo=timezone.utc)
# 0.021 absolute needs 3,498 units per arm (the standard two-proportion formula): reached on day 4, not 3.
PLAN = AnalysisPlan(
    primary=MetricPlan(
        metric="conversion", type="proportion", direction="increase", mde=0.021, baseline=BASELINE
    ),
    alpha=ALPHA,
    power=0.8,
    min_days=PLAN_DAY,
)
TAU2 = (PLAN.primary.mde or 0.0) ** 2


def simulate(runs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative units and conversions, shape (runs, arm, day)."""
    rng = np.random.default_rng(seed)
    units = rng.poisson(UNITS_PER_DAY, size=(runs, 2, DAYS))
    return units.cumsum(axis=-1), rng.binomial(units, BASELINE).cumsum(axis=-1)


def read_every_day(units: np.ndarray, conversions: np.ndarray) -> dict[str, float]:
    runs = len(units)
    diff, variance = proportion_diff_variance(
        conversions[:, 0], units[:, 0], conversions[:, 1], units[:, 1]
    )
    valid = always_valid_p(diff, variance, TAU2)
    ends = [START + timedelta(days=d + 1) for d in range(DAYS)]
    now_fp = before_fp = after_plan_now = after_plan_before = 0
    planned_day = []
    for run in range(runs):
        looks, fixed, variances = [], [], []
        for day in range(DAYS):
            c = compare_proportions(
                ArmStats.of_proportion(int(units[run, 0, day]), int(conversions[run, 0, day])),
                ArmStats.of_proportion(int(units[run, 1, day]), int(conversions[run, 1, day])),
                ALPHA,
            )
            planned, _ = plan_sample_size(PLAN, {("conversion", "treatment"): c}, ["treatment"])
            smallest = min(c.control.n, c.treatment.n)
            looks.append(Look(ends[day], planned is not None and smallest >= planned,
                              float(valid[run, day])))  # fmt: skip
            fixed.append(c.p_value)
            variances.append(c.diff_variance)
        level: dict[int, float] = {}
        positive_now = positive_before = False
        positive_now_after = positive_before_after = False
        for read in range(DAYS):  # the report read at the end of each day
            stop = stopping_point(looks[: read + 1], START, PLAN.min_days, ALPHA, ends[read])
            after = read + 1 >= PLAN_DAY
            now = stop.stage == EARLY
            if stop.stage == COMPLETE and stop.index is not None:
                end = stop.index
                if end not in level:
                    level[end] = alpha_at_end(variances[:end], variances[end], TAU2, ALPHA)
                now = fixed[end] < level[end]
            # The rule before: at and after the planned end, all the data so far.
            before = stop.stage == EARLY or (stop.stage == COMPLETE and fixed[read] < ALPHA)
            positive_now |= now
            positive_before |= before
            positive_now_after |= now and after
            positive_before_after |= before and after
            if stop.stage == COMPLETE and read == DAYS - 1 and stop.index is not None:
                planned_day.append(stop.index + 1)
        now_fp += positive_now
        before_fp += positive_before
        after_plan_now += positive_now_after
        after_plan_before += positive_before_after
    return {
        "runs": runs,
        "false_positive_rate": now_fp / runs,
        "false_positive_rate_reads_from_the_planned_end": after_plan_now / runs,
        "previous_rule_false_positive_rate": before_fp / runs,
        "previous_rule_reads_from_the_planned_end": after_plan_before / runs,
        "share_of_runs_planned_end_on_day_4": float(np.mean(np.array(planned_day) == PLAN_DAY)),
    }


def wilson(rate: float, runs: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a simulated rate: how far chance alone could move it."""
    centre = (rate + z * z / (2 * runs)) / (1 + z * z / runs)
    half = z * math.sqrt(rate * (1 - rate) / runs + z * z / (4 * runs * runs)) / (1 + z * z / runs)
    return centre - half, centre + half


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    result = read_every_day(*simulate(args.runs, args.seed))
    low, high = wilson(result["false_positive_rate"], args.runs)
    print(
        f"{args.runs:,} A/A runs, plan met on day {PLAN_DAY}, read every day to day {DAYS}, "
        f"alpha {ALPHA:g}"
    )
    print(f"  planned end on day {PLAN_DAY} in {result['share_of_runs_planned_end_on_day_4']:.1%}")
    print(
        f"  false positives, any read:              {result['false_positive_rate']:.2%} "
        f"(95% CI {low:.2%} to {high:.2%})"
    )
    print(
        "  false positives, reads from the planned end: "
        f"{result['false_positive_rate_reads_from_the_planned_end']:.2%}"
    )
    print(
        "  the previous rule (fixed-horizon p on all data at each read after the planned end): "
        f"{result['previous_rule_false_positive_rate']:.2%}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
