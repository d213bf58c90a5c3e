"""`python -m analysis report|samplesize`.

Exit status: 0 with a report (whatever its verdict), 2 on bad input (registry, logs, options).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from analysis.engine import aggregate_logs
from analysis.logfiles import LogError, find_logs, read_decisions
from analysis.power import (
    Effect,
    days_needed,
    statsmodels_units_per_arm,
    units_per_arm_proportion,
)
from analysis.registry import RegistryError, load_registry
from analysis.report import build_report
from analysis.results import Report
from analysis.traffic_history import DecisionError, TrafficPeriod, traffic_history


class UsageError(Exception):
    """A command-line value that cannot be used."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (RegistryError, LogError, DecisionError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis", description="Did the treatment win? Honest A/B statistics."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    report = commands.add_parser(
        "report",
        help="the experiment report from the exposure and outcome logs",
        description="Join exposures with outcomes and report significance, intervals, sample "
        "ratio, segments and the daily trend against the registry's pre-registration.",
    )
    report.add_argument("--config", type=Path, default=Path("experiments.yaml"),
                        help="the registry (default: experiments.yaml)")  # fmt: skip
    report.add_argument("--logs", type=Path, nargs="+", metavar="DIR",
                        help="log directories, one or more: the logs of several router replicas "
                        "are read together (default: the registry's log_dir)")  # fmt: skip
    report.add_argument("--experiment", help="experiment name (default: the only one)")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--out", type=Path,
                        help="also write report.md, report.html, report.json and PNG plots here")  # fmt: skip
    report.add_argument("--threads", type=int, help="engine threads (default: all cores)")
    report.add_argument("--memory-limit", default="2GB",
                        help="engine memory limit; it spills to disk past it (default: 2GB)")  # fmt: skip
    report.set_defaults(run=_report)

    size = commands.add_parser(
        "samplesize",
        help="units per arm (and days) to detect an effect on a proportion",
        description="Units per arm for a two-sided two-proportion test (the standard two-proportion formula), "
        "checked against statsmodels' power tools.",
    )
    size.add_argument("--baseline", type=float, required=True, help="control rate, e.g. 0.05")
    size.add_argument("--mde", type=float, required=True,
                      help="minimum detectable effect: absolute (0.005 = +0.5 pp) unless --relative")  # fmt: skip
    size.add_argument("--relative", action="store_true", help="--mde is relative (0.1 = +10%%)")
    size.add_argument("--alpha", type=float, default=0.05, help="significance level (0.05)")
    size.add_argument("--power", type=float, default=0.8, help="power (0.8)")
    size.add_argument("--daily-units", type=float,
                      help="new units per day across both arms: also print the days needed")  # fmt: skip
    size.add_argument("--json", action="store_true", help="print JSON")
    size.set_defaults(run=_samplesize)
    return parser


def _report(args: argparse.Namespace) -> int:
    registry = load_registry(args.config)
    spec = registry.experiment(args.experiment)
    logs = find_logs(*(args.logs or [registry.log_dir]))
    decisions = read_decisions(logs.decisions)
    history = traffic_history(
        decisions.records, spec.name, spec.arms.configured_traffic, spec.ramp_steps
    )
    aggregates = aggregate_logs(
        logs,
        spec.name,
        registry.attributes,
        history,
        decisions=decisions.records,
        control=spec.arms.control,
        threads=args.threads,
        memory_limit=args.memory_limit,
    )
    notes = []
    if decisions.unreadable:
        notes.append(
            f"decision log: {decisions.unreadable} line(s) skipped "
            f"({decisions.truncated_last_lines} incomplete last line(s))"
        )
    during = _periods_during(history, aggregates.first_exposure)
    if len(during) > 1:
        notes.append(
            "traffic over time (decisions.jsonl): "
            + ", ".join(
                f"{p.traffic:g}%" + ("" if i == 0 else f" from {p.since:%Y-%m-%d %H:%M}")
                for i, p in enumerate(during)
            )
        )
    report = build_report(
        spec, aggregates, extra_quality_notes=notes, as_of=datetime.now(timezone.utc)
    )
    if args.out is not None:
        written = write_report_files(report, args.out)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        from analysis.document import to_text
        from analysis.presentation import build_document

        print(to_text(build_document(report, full=False)), end="")
    return 0


def _periods_during(
    history: Sequence[TrafficPeriod], first_exposure: Optional[datetime]
) -> list[TrafficPeriod]:
    """The traffic periods from the one in force at the first exposure on."""
    if first_exposure is None:
        return list(history)
    started = [i for i, p in enumerate(history) if p.since <= first_exposure]
    return list(history[started[-1] if started else 0 :])


def write_report_files(report: Report, out: Path) -> list[Path]:
    # Imported here: matplotlib costs a second to import, and only --out needs it.
    from analysis.document import to_html, to_markdown
    from analysis.plots import plot_file_name, plot_trend
    from analysis.presentation import build_document, plot_key

    out.mkdir(parents=True, exist_ok=True)
    written, plots = [], {}
    for trend in report.trends:
        name = plot_file_name(trend)
        written.append(plot_trend(trend, report.control, out / name, report.period))
        plots[plot_key(trend)] = name
    doc = build_document(report, full=True, plots=plots)
    for name, text in (
        ("report.md", to_markdown(doc)),
        ("report.html", to_html(doc)),
        ("report.json", json.dumps(report.to_dict(), indent=2) + "\n"),
    ):
        (out / name).write_text(text, encoding="utf-8")
        written.insert(0, out / name)
    return written


def _samplesize(args: argparse.Namespace) -> int:
    try:
        effect = Effect.of(args.baseline, args.mde, args.relative)
        per_arm = units_per_arm_proportion(effect, args.alpha, args.power)
        check = statsmodels_units_per_arm(effect, args.alpha, args.power)
        days = days_needed(per_arm, args.daily_units) if args.daily_units is not None else None
    except ValueError as exc:
        raise UsageError(f"samplesize: {exc}") from None
    result: dict[str, Any] = {
        "baseline": effect.baseline,
        "target": effect.target,
        "absolute_mde": effect.delta,
        "alpha": args.alpha,
        "power": args.power,
        "units_per_arm": per_arm,
        "units_total": 2 * per_arm,
        "statsmodels_units_per_arm": check,
        "days": days,
        "daily_units": args.daily_units,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{per_arm:,} units per arm ({2 * per_arm:,} in total)")
    print(
        f"  to tell {effect.baseline:.4g} from {effect.target:.4g} "
        f"(absolute effect {effect.delta:+.4g}, relative {effect.delta / effect.baseline:+.2%}), "
        f"two-sided alpha {args.alpha:g}, power {args.power:g}; the standard two-proportion formula"
    )
    print(f"  statsmodels NormalIndPower (Cohen's h) check: {check:,.0f} per arm")
    if days is not None:
        print(f"  at {args.daily_units:,.0f} new units a day split evenly: {days} day(s)")
    return 0
