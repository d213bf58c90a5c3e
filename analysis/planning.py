"""What the pre-registration asks of the run (pure).

Its sample size per arm, the scale of its always-valid test, and the warnings when the run
falls short of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

from analysis.aggregates import Aggregates
from analysis.power import Effect, units_per_arm_mean, units_per_arm_proportion
from analysis.registry import AnalysisPlan, ExperimentSpec, MetricPlan
from analysis.stats import Comparison


def plan_sample_size(
    plan: Optional[AnalysisPlan],
    comparisons: dict[tuple[str, str], Comparison],
    treatments: Sequence[str],
) -> tuple[Optional[int], str]:
    if plan is None:
        return None, "no pre-registration"
    primary = plan.primary
    if primary.mde is None:
        return None, "no mde registered for the primary metric"
    comparison = comparisons[(primary.metric, treatments[0])]
    control, control_mean = comparison.control, comparison.control_mean
    baseline = primary.baseline
    source = "registered baseline"
    if baseline is None:
        baseline, source = control_mean, "observed control mean (no baseline registered)"
    if not baseline or math.isnan(baseline):
        return None, "no baseline: the control arm has no data yet"
    try:
        effect = Effect.of(baseline, primary.mde, primary.relative)
        if primary.type == "proportion":
            n = units_per_arm_proportion(effect, plan.alpha, plan.power)
            return (
                n,
                f"standard two-proportion formula, baseline {baseline:.4g} ({source}), mde {mde_text(primary)}",
            )
        sd = math.sqrt(control.variance)
        n = units_per_arm_mean(sd, effect.delta, plan.alpha, plan.power)
        return n, f"normal approximation, observed control sd {sd:.4g}, mde {mde_text(primary)}"
    except ValueError as exc:
        return None, f"cannot compute: {exc}"


def mde_text(metric: MetricPlan) -> str:
    return f"{metric.mde:g}" + (" relative" if metric.relative else " absolute")


def always_valid_scale(
    plan: Optional[AnalysisPlan],
    comparisons: dict[tuple[str, str], Comparison],
    treatments: Sequence[str],
) -> Optional[float]:
    """The always-valid test's effect scale: the registered mde, made absolute."""
    if plan is None or plan.primary.mde is None:
        return None
    if not plan.primary.relative:
        return plan.primary.mde
    baseline = (
        plan.primary.baseline or comparisons[(plan.primary.metric, treatments[0])].control_mean
    )
    if not baseline or math.isnan(baseline):
        return None
    return plan.primary.mde * abs(baseline)


def plan_warnings(
    spec: ExperimentSpec,
    plan: Optional[AnalysisPlan],
    aggregates: Aggregates,
    planned_units: Optional[int],
    units: dict[str, int],
    tau: Optional[float],
    warnings: list[str],
) -> None:
    if plan is None:
        warnings.append("no pre-registration (`analysis` block): every metric is exploratory")
        return
    if aggregates.days_run < plan.min_days:
        warnings.append(
            f"the run is {aggregates.days_run:.1f} days, shorter than the registered "
            f"min_days {plan.min_days}: weekly cycles are not covered yet"
        )
    smallest = min(units.get(arm, 0) for arm in spec.arms.names)
    if planned_units is not None and smallest < planned_units:
        warnings.append(
            f"the smallest arm has {smallest:,} units, fewer than the planned {planned_units:,} "
            "per arm: the test is underpowered for the registered mde"
        )
    if tau is None:
        warnings.append(
            "the primary metric has no usable mde: no always-valid p-value, so no early stop"
        )
    first = aggregates.first_exposure
    if plan.registered_at is not None and first is not None and plan.registered_at > first.date():
        warnings.append(
            f"the plan is dated {plan.registered_at}, after the first exposure "
            f"({first.date()}): it may have been written after seeing data"
        )
