"""Daily trend plots (PNG, matplotlib's Agg backend: no display needed).

One figure per metric and treatment arm: above, each arm's daily value (from zero); below, the
daily lift with its interval as points and the cumulative lift as a line with a band. A run
shorter than two days is plotted by the hour. A novelty effect
shows as a daily lift that starts high and decays; a learning effect as one that grows.
"""

from __future__ import annotations

import re
import warnings
from datetime import date
from pathlib import Path

import numpy as np

with warnings.catch_warnings():
    # matplotlib 3.9 calls pyparsing APIs that pyparsing 3.3 deprecates, at import time.
    warnings.simplefilter("ignore", DeprecationWarning)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

from analysis.results import PRIMARY, Trend
from analysis.stats import Comparison

CONTROL_COLOR, TREATMENT_COLOR, CUMULATIVE_COLOR = "#4c72b0", "#dd8452", "#2a2a2a"


def plot_trend(trend: Trend, control: str, path: Path, period: str = "day") -> Path:
    fig = trend_figure(trend, control, period)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def trend_figure(trend: Trend, control: str, period: str = "day") -> Figure:
    """`period`: "day", or "hour" for a run shorter than two days (one point per hour)."""
    starts = [p.day for p in trend.points]
    x = np.arange(len(starts))
    percent = trend.kind == "proportion"
    scale = 100.0 if percent else 1.0

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 6.5), sharex=True, gridspec_kw={"height_ratios": [1, 1.3]}
    )
    values = [
        [p.daily.control_mean * scale for p in trend.points],
        [p.daily.treatment_mean * scale for p in trend.points],
    ]
    top.plot(x, values[0], "o-", color=CONTROL_COLOR, label=control)
    top.plot(x, values[1], "o-", color=TREATMENT_COLOR, label=trend.arm)
    top.set_ylabel(f"{trend.metric} that {period}\nper enrolled unit" + (" (%)" if percent else ""))
    # From zero when nothing is negative: a zoomed axis makes small differences look large.
    if all(v >= 0 for v in np.concatenate(values) if np.isfinite(v)):
        top.set_ylim(bottom=0)
    top.legend(loc="best", frameon=False)
    top.grid(alpha=0.3)

    daily = _lifts([p.daily for p in trend.points])
    cumulative = _lifts([p.cumulative for p in trend.points])
    bottom.axhline(0, color="#888", linewidth=1)
    band = bottom.fill_between(x, cumulative[1], cumulative[2], color=CUMULATIVE_COLOR,
                               alpha=0.12, label="cumulative: interval")  # fmt: skip
    if len(x) == 1:  # a band of one point has no width: show it as a bar
        band.remove()
        bottom.errorbar(x, cumulative[0], yerr=np.vstack([cumulative[0] - cumulative[1],
                        cumulative[2] - cumulative[0]]), fmt="none", ecolor=CUMULATIVE_COLOR,
                        alpha=0.35, elinewidth=8, label="cumulative: interval")  # fmt: skip
    # Markers, so that a line of one point still shows.
    bottom.plot(x, cumulative[0], "s-", color=CUMULATIVE_COLOR, linewidth=2, markersize=4,
                label="cumulative lift")  # fmt: skip
    bottom.errorbar(
        x, daily[0], yerr=np.vstack([daily[0] - daily[1], daily[2] - daily[0]]), fmt="o",
        color=TREATMENT_COLOR, ecolor=TREATMENT_COLOR, alpha=0.8, capsize=3,
        label=f"lift of the {period}, with interval",
    )  # fmt: skip
    # Scaled to the cumulative band and the daily estimates: the daily intervals of small
    # periods can be many times wider, and would flatten everything else (they are cut off).
    shown = np.concatenate([cumulative[1], cumulative[2], daily[0]])
    shown = shown[np.isfinite(shown)]
    if shown.size:
        low, high = float(shown.min()), float(shown.max())
        pad = max(high - low, 1.0) * 0.15
        bottom.set_ylim(min(low, 0.0) - pad, max(high, 0.0) + pad)
    bottom.set_ylabel(f"lift of {trend.arm} vs {control} (%)")
    bottom.legend(loc="best", frameon=False, fontsize=9)
    bottom.grid(alpha=0.3)
    step = max(1, len(starts) // 10)
    bottom.set_xticks(x[::step])
    bottom.set_xticklabels(_tick_labels(starts[::step], period))
    bottom.set_xlabel(f"{period} (UTC)")

    title = f"{trend.metric}: {trend.arm} vs {control}"
    last = trend.points[-1]
    if trend.role == PRIMARY and last.always_valid_p is not None:
        title += f"  (always-valid p = {last.always_valid_p:.3g})"
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _tick_labels(starts: list[date], period: str) -> list[str]:
    """Days as 11-20; hours as 14:00, with the date under the first hour of each day shown."""
    if period == "day":
        return [d.strftime("%m-%d") for d in starts]
    labels, seen = [], None
    for start in starts:
        day = start.strftime("%m-%d")
        labels.append(start.strftime("%H:00") + ("" if day == seen else f"\n{day}"))
        seen = day
    return labels


def _lifts(comparisons: list[Comparison]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lift and its interval in percent; NaN where undefined (a gap in the plot)."""
    value = np.array([c.lift for c in comparisons], dtype=float) * 100
    low = np.array([c.lift_ci[0] for c in comparisons], dtype=float) * 100
    high = np.array([c.lift_ci[1] for c in comparisons], dtype=float) * 100
    # Error bars need both ends; a point without an interval is drawn without a bar.
    missing = np.isnan(low) | np.isnan(high)
    low[missing], high[missing] = value[missing], value[missing]
    return value, low, high


def plot_file_name(trend: Trend) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{trend.metric}-{trend.arm}")
    return f"trend-{safe}.png"
