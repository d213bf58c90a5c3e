"""Analysis benchmark: `python -m analysis report` on synthetic logs of 10M exposures, 2M outcomes.

1. Generates the logs once (DuckDB writes them: about half a minute) in the contract's format,
   14 daily files each, with a ramp 10 % -> 50 % on day 3 recorded in decisions.jsonl, and
   caches them under build/bench-analysis/ (the key is the parameters and the generator).
2. Runs the real command, `report --json` and `report --out`, each in its own process, and
   measures wall time and peak memory (the process's maximum resident set size).
3. With --engines, runs the core of the analysis (first exposure per unit, outcomes after it,
   per-arm and metric sums) in other engines on the same files, to compare: DuckDB
   (analysis/engine.py, which does more: segments and the daily series too), pandas over
   pyarrow's JSON reader, and polars when a Python with polars is given (--polars-python).

With --baseline DIR (a directory holding another version's `analysis/` package, for example
`git archive <commit> analysis | tar -x -C DIR`), that version's `report --json` runs too, in
turn with this one, on the same data: a before/after comparison on a shared machine.

usage: scripts/bench_analysis.sh [--exposures N] [--outcomes N] [--units N] [--days N]
                                 [--engines duckdb,pandas,polars] [--polars-python PY]
                                 [--baseline DIR] [--threads N] [--json FILE] [--regenerate]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
GENERATOR_VERSION = "5"
START_DAY = "2026-11-20"
EXPERIMENT = "sentiment"
RAMP = ((0, 10.0), (3, 50.0))  # (day, treatment traffic from that day on)
# A registry the router itself accepts (the analysis reads it through the router's schema).
REGISTRY = """\
router:
  attributes: {{city: X-City, device: X-Device, app_version: X-App-Version}}
  log_dir: {log_dir}
backends:
  sentiment-v1: {{endpoints: ["http://127.0.0.1:18080"], version: legacy_v1}}
  sentiment-v2: {{endpoints: ["http://127.0.0.1:18081"], version: paddle_new_v2}}
experiments:
  sentiment:
    route: /sentiment/prediction
    salt: bench
    control: sentiment-v1
    treatment: sentiment-v2
    traffic: 50
    ramp: {{steps: [10, 50], every: 1d}}
    slo: {{p99_ms: 200, error_rate: 0.01}}
    analysis:
      registered_at: 2026-11-19
      primary: {{metric: conversion, type: proportion, direction: increase, mde: 0.005}}
      secondary: [{{metric: revenue, type: mean}}]
      guardrails: [{{metric: complaint, type: proportion, direction: decrease}}]
      alpha: 0.05
      power: 0.8
      min_days: 7
"""


@dataclass
class Measurement:
    what: str
    seconds: float  # the fastest of the repeats: the machine is shared, noise only adds time
    peak_mb: float  # the largest of the repeats
    note: str = ""
    median_seconds: float = 0.0
    load_before: float = 0.0  # 1-minute load average when the first repeat started
    # CPU seconds (user + system) of the fastest repeat: steadier than wall time on a shared
    # machine, since other people's work does not add to it.
    cpu_seconds: float = 0.0


@dataclass
class Run:
    what: str
    command: list[str]
    note: str
    cwd: Path = REPO  # `python -m analysis` imports the package found here


def round_robin(
    runs: list[Run], repeat: int, progress: Any
) -> tuple[list[Measurement], dict[str, str]]:
    """Each run `repeat` times, interleaved (a, b, c, a, b, c, ...), so that the load other
    work puts on a shared machine falls on all of them alike. Returns the best time, the
    median, the largest peak, and each run's last stdout."""
    seen: dict[str, list[Measurement]] = {run.what: [] for run in runs}
    loads: dict[str, float] = {}
    stdout: dict[str, str] = {}
    for _ in range(repeat):
        for run in runs:
            loads.setdefault(run.what, os.getloadavg()[0])
            measured, stdout[run.what] = measure(run.what, run.command, run.note, run.cwd)
            seen[run.what].append(measured)
            progress.update()
    results = []
    for run in runs:
        ordered = sorted(seen[run.what], key=lambda m: m.seconds)
        best = ordered[0]
        results.append(
            Measurement(
                run.what, best.seconds, max(m.peak_mb for m in ordered), run.note,
                ordered[len(ordered) // 2].seconds, loads[run.what],
                min(m.cpu_seconds for m in ordered),
            )
        )  # fmt: skip
    return results, stdout


# --- data ------------------------------------------------------------------------------------


def dataset_dir(args: argparse.Namespace) -> Path:
    key = f"{GENERATOR_VERSION}:{args.exposures}:{args.outcomes}:{args.units}:{args.days}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return REPO / "build" / "bench-analysis" / f"e{args.exposures}-o{args.outcomes}-{digest}"


def generate(target: Path, args: argparse.Namespace) -> float:
    """Write the logs with DuckDB, one daily file at a time; returns the seconds it took.

    Units enroll at a steady pace: unit k is first exposed at t_k = k * span / units (span: the
    days less two) and seen `exposures / units` times, up to 8 hours apart, so the rows of a
    day come from a narrow range of units and each file is one bounded scan. Outcomes fall
    from 2 hours before to 34 hours after t_k (those before it must not count). A unit's arm
    at an exposure follows the router: its bucket against the traffic in force then, so the
    ramp moves some units to treatment, and the analysis keeps them in their first arm.
    """
    import duckdb
    from tqdm import tqdm

    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix="tmp-"))
    logs = scratch / "logs"
    logs.mkdir()
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads or os.cpu_count()}")
    units, days, outcomes_total = int(args.units), int(args.days), int(args.outcomes)
    per_unit = max(1, args.exposures // units)
    day_ms = 86_400_000
    span_ms = (days - 2) * day_ms
    gap_ms, before_ms, after_ms = 8 * 3_600_000, 2 * 3_600_000, 34 * 3_600_000

    def traffic_at(ms_expr: str) -> str:
        day = f"({ms_expr}) // {day_ms}"
        cases = " ".join(f"WHEN {day} >= {d} THEN {t}" for d, t in sorted(RAMP, reverse=True))
        return f"(CASE {cases} END)"

    def unit_at(ms: int) -> int:
        """The first unit enrolled at or after `ms` (clamped to the units there are)."""
        return min(max(ms * units // span_ms, 0), units)

    first_ms = f"(k * {span_ms} // {units})::BIGINT"
    bucket = "hash(k, 'bucket') % 10000"

    def exposure_query(day: int) -> str:
        lo = unit_at(day * day_ms - (per_unit - 1) * gap_ms - day_ms) * per_unit
        hi = unit_at((day + 1) * day_ms + day_ms) * per_unit
        return f"""
        WITH rows AS (
          SELECT i, i // {per_unit} AS k, i % {per_unit} AS j FROM range({lo}, {hi}) t(i)
        ), timed AS (
          SELECT *, {first_ms} + j * (hash(k, 'gap') % {gap_ms})::BIGINT AS ms FROM rows
        ), assigned AS (
          SELECT *, {bucket} < {traffic_at("ms")} * 100 AS treated,
                 hash(i, 'fallback') % 200 = 0 AS fell_back
          FROM timed WHERE ms // {day_ms} = {day}
        )
        SELECT strftime(TIMESTAMP '{START_DAY}' + to_milliseconds(ms), '%Y-%m-%dT%H:%M:%S.%gZ')
                 AS ts,
               md5(i::VARCHAR)[:24] AS request_id,
               '{EXPERIMENT}' AS experiment,
               'u' || k::VARCHAR AS unit,
               true AS enrolled,
               CASE WHEN treated THEN 'treatment' ELSE 'control' END AS assigned,
               CASE WHEN treated AND NOT fell_back THEN 'treatment' ELSE 'control' END AS served,
               CASE WHEN treated AND NOT fell_back THEN 'paddle_new_v2' ELSE 'legacy_v1' END
                 AS model_version,
               200 AS status,
               round(2 + (hash(i, 'lat') % 1000) / 100.0, 2) AS latency_ms,
               treated AND fell_back AS fallback,
               CASE WHEN treated AND fell_back THEN 'treatment: timeout' END AS error,
               ['beijing', 'shanghai', 'guangzhou', 'shenzhen', 'chengdu', 'hangzhou']
                 [(1 + hash(k, 'city') % 6)::BIGINT] AS city,
               ['android', 'ios'][(1 + hash(k, 'device') % 2)::BIGINT] AS device,
               ['2.3.0', '2.3.1', '2.4.0'][(1 + hash(k, 'app') % 3)::BIGINT] AS app_version
        FROM assigned
        """

    # 20 % conversion, 30 % revenue, 10 % complaint, 40 % click (not registered: exploratory).
    # Units first exposed in control lose 8 % of their conversions: treatment wins by ~8 %.
    # Outcome j belongs to a unit near j * units / outcomes, jittered by up to 1,000 units.
    def outcome_query(day: int) -> str:
        def row_at(ms: int) -> int:
            return min(
                max(ms * units // span_ms - 1000, 0) * outcomes_total // units, outcomes_total
            )

        lo = row_at(day * day_ms - after_ms - day_ms)
        hi = min(row_at((day + 1) * day_ms + before_ms + day_ms) + 2000 * outcomes_total // units + 1,
                 outcomes_total)  # fmt: skip
        return f"""
        WITH rows AS (
          SELECT j, j % 10 AS kind,
                 greatest(least(j * {units} // {outcomes_total} + hash(j, 'jitter') % 2001 - 1000,
                                {units - 1}), 0) AS k
          FROM range({lo}, {hi}) t(j)
        ), timed AS (
          SELECT *, {first_ms} AS first,
                 {first_ms} - {before_ms} + (hash(j, 'offset') % {before_ms + after_ms})::BIGINT
                   AS ms
          FROM rows
        )
        SELECT strftime(TIMESTAMP '{START_DAY}' + to_milliseconds(ms), '%Y-%m-%dT%H:%M:%S.%gZ')
                 AS ts,
               'u' || k::VARCHAR AS unit,
               CASE WHEN kind < 2 THEN 'conversion' WHEN kind < 5 THEN 'revenue'
                    WHEN kind < 6 THEN 'complaint' ELSE 'click' END AS metric,
               CASE WHEN kind BETWEEN 2 AND 4 THEN round(5 + (hash(j, 'v') % 5000) / 100.0, 2)
                    ELSE 1 END AS value,
               CASE WHEN kind = 6 THEN '{EXPERIMENT}' END AS experiment
        FROM timed
        WHERE ms // {day_ms} = {day}
          AND NOT (kind < 2 AND {bucket} >= {traffic_at("first")} * 100
                   AND hash(j, 'drop') % 100 < 8)
        """

    with tqdm(total=2 * days, desc="generating logs", unit="file") as progress:
        for name, query in (("exposures", exposure_query), ("outcomes", outcome_query)):
            for day in range(days):
                con.execute(
                    f"COPY ({query(day)}) TO '{logs}/{name}-{_day(day)}.jsonl' (FORMAT JSON)"
                )
                progress.update()
    with open(logs / "decisions.jsonl", "w") as file:
        for day, traffic in RAMP:
            record = {"ts": f"{_day(day)}T00:00:00.000Z", "experiment": EXPERIMENT,
                      "check": "pass", "action": "advance", "actor": "ramp", "traffic": traffic}  # fmt: skip
            file.write(json.dumps(record) + "\n")
    (scratch / "experiments.yaml").write_text(REGISTRY.format(log_dir="logs"))
    elapsed = time.perf_counter() - started
    os.rename(scratch, target)
    return elapsed


def _day(offset: int) -> str:
    from datetime import date, timedelta

    return (date.fromisoformat(START_DAY) + timedelta(days=offset)).isoformat()


# --- measuring -------------------------------------------------------------------------------


def measure(
    what: str, command: list[str], note: str = "", cwd: Path = REPO
) -> tuple[Measurement, str]:
    """Run `command`, returning wall time, the child's peak RSS and its stdout."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, cwd=cwd, stdout=out)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        stdout = out.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{what}: exited with {os.waitstatus_to_exitcode(status)}: {command}")
    measured = Measurement(what, seconds, usage.ru_maxrss / 1024, note)
    measured.cpu_seconds = usage.ru_utime + usage.ru_stime
    return measured, stdout


def report_commands(data: Path, args: argparse.Namespace) -> list[Run]:
    python = str(REPO / ".venv" / "bin" / "python")
    base = [python, "-m", "analysis", "report", "--config", str(data / "experiments.yaml")]
    if args.threads:
        base += ["--threads", str(args.threads)]
    runs = [
        Run("report --json", [*base, "--json"], "the whole analysis"),
        Run("report --out", [*base, "--out", str(data / "report")],
            "plus Markdown, HTML and PNG plots"),
    ]  # fmt: skip
    if args.baseline:
        baseline = Path(args.baseline).resolve()
        runs.insert(1, Run("baseline --json", [*base, "--json"], f"the analysis in {baseline}",
                           baseline))  # fmt: skip
    return runs


def engine_commands(data: Path, args: argparse.Namespace) -> list[Run]:
    runs = []
    for engine in args.engines:
        python = str(REPO / ".venv" / "bin" / "python")
        if engine == "polars":
            if not args.polars_python:
                print("polars: skipped (give --polars-python, a Python with polars installed)")
                continue
            python = args.polars_python
        command = [python, str(Path(__file__).resolve()), "--engine-worker", engine,
                   "--data", str(data)]  # fmt: skip
        if args.threads:
            command += ["--threads", str(args.threads)]
        runs.append(Run(f"core in {engine}", command, stdout_note(engine)))
    return runs


def stdout_note(engine: str) -> str:
    return {
        "duckdb": "analysis/engine.py: also segments and daily series",
        "pandas": "pyarrow JSON reader, pandas groupby/merge",
        "polars": "polars scan_ndjson, lazy",
    }[engine]


# --- engine workers (each run in its own process) --------------------------------------------


def worker(engine: str, data: Path, threads: Optional[int]) -> None:
    logs = data / "logs"
    exposures = sorted(str(p) for p in logs.glob("exposures-*.jsonl"))
    outcomes = sorted(str(p) for p in logs.glob("outcomes-*.jsonl"))
    if engine == "duckdb":
        sys.path.insert(0, str(REPO))
        from analysis.engine import aggregate_logs
        from analysis.logfiles import find_logs
        from analysis.traffic_history import BEGINNING, TrafficPeriod

        result = aggregate_logs(
            find_logs(logs), EXPERIMENT, ("city", "device", "app_version"),
            [TrafficPeriod(BEGINNING, 10.0)], threads=threads,
        )  # fmt: skip
        print(f"units {result.arms}")
    elif engine == "pandas":
        print(f"units {_pandas_core(exposures, outcomes)}")
    elif engine == "polars":
        print(f"units {_polars_core(exposures, outcomes)}")
    else:
        raise SystemExit(f"unknown engine {engine}")


def _pandas_core(exposures: list[str], outcomes: list[str]) -> dict[str, int]:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.json as pj

    def read(files: list[str], fields: dict[str, pa.DataType]) -> pd.DataFrame:
        schema = pa.schema(fields)
        options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        tables = [pj.read_json(f, parse_options=options) for f in files if os.path.getsize(f)]
        return pa.concat_tables(tables).to_pandas()

    e = read(exposures, {"ts": pa.string(), "experiment": pa.string(), "unit": pa.string(),
                         "enrolled": pa.bool_(), "assigned": pa.string(), "city": pa.string()})  # fmt: skip
    e = e[(e["experiment"] == EXPERIMENT) & e["enrolled"]]
    e["ts"] = pd.to_datetime(e["ts"], utc=True)
    units = e.sort_values("ts").drop_duplicates("unit")[["unit", "assigned", "ts", "city"]]
    del e
    o = read(outcomes, {"ts": pa.string(), "unit": pa.string(), "metric": pa.string(),
                        "value": pa.float64(), "experiment": pa.string()})  # fmt: skip
    o = o[o["experiment"].isna() | (o["experiment"] == EXPERIMENT)]
    o["ts"] = pd.to_datetime(o["ts"], utc=True)
    joined = o.merge(units, on="unit", suffixes=("", "_first"))
    joined = joined[joined["ts"] >= joined["ts_first"]]
    per_unit = joined.groupby(["unit", "assigned", "metric"])["value"].sum().reset_index()
    per_unit["sq"] = per_unit["value"] ** 2
    per_unit.groupby(["assigned", "metric"]).agg(
        total=("value", "sum"), total_sq=("sq", "sum"), n=("value", "size")
    )
    return {str(k): int(v) for k, v in units["assigned"].value_counts().items()}


def _polars_core(exposures: list[str], outcomes: list[str]) -> dict[str, int]:
    import polars as pl  # type: ignore[import-not-found]  # not a dependency: see --polars-python

    e = (
        pl.scan_ndjson(
            exposures,
            schema={
                "ts": pl.String,
                "experiment": pl.String,
                "unit": pl.String,
                "enrolled": pl.Boolean,
                "assigned": pl.String,
                "city": pl.String,
            },
        )
        .filter((pl.col("experiment") == EXPERIMENT) & pl.col("enrolled"))
        .with_columns(pl.col("ts").str.to_datetime(time_zone="UTC"))
    )
    units = (
        e.group_by("unit")
        .agg(
            pl.col("assigned").sort_by("ts").first(),
            pl.col("ts").min().alias("first_ts"),
            pl.col("city").sort_by("ts").first(),
        )
        .collect()
    )
    o = (
        pl.scan_ndjson(
            outcomes,
            schema={
                "ts": pl.String,
                "unit": pl.String,
                "metric": pl.String,
                "value": pl.Float64,
                "experiment": pl.String,
            },
        )
        .filter(pl.col("experiment").is_null() | (pl.col("experiment") == EXPERIMENT))
        .with_columns(pl.col("ts").str.to_datetime(time_zone="UTC"))
    )
    (
        o.join(units.lazy(), on="unit")
        .filter(pl.col("ts") >= pl.col("first_ts"))
        .group_by(["unit", "assigned", "metric"])
        .agg(pl.col("value").sum())
        .group_by(["assigned", "metric"])
        .agg(
            pl.col("value").sum().alias("total"),
            (pl.col("value") ** 2).sum().alias("sq"),
            pl.len().alias("n"),
        )
        .collect()
    )
    counts = units.group_by("assigned").len()
    return {str(a): int(n) for a, n in counts.iter_rows()}


# --- main ------------------------------------------------------------------------------------


def table(rows: list[Measurement]) -> str:
    lines = [
        f"{'run':<16} {'best s':>7} {'median s':>8} {'cpu s':>6} {'peak MB':>8} {'load':>5}  note",
        "-" * 100,
    ]
    lines += [
        f"{r.what:<16} {r.seconds:>7.1f} {r.median_seconds:>8.1f} {r.cpu_seconds:>6.1f} "
        f"{r.peak_mb:>8.0f} {r.load_before:>5.1f}  {r.note}"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exposures", type=int, default=10_000_000)
    parser.add_argument("--outcomes", type=int, default=2_000_000)
    parser.add_argument("--units", type=int, default=2_000_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--threads", type=int, help="engine threads (default: all cores)")
    parser.add_argument("--engines", type=lambda s: [e for e in s.split(",") if e], default=[],
                        help="also time the core in these engines: duckdb,pandas,polars")  # fmt: skip
    parser.add_argument("--polars-python", help="a Python with polars installed (not a dependency)")
    parser.add_argument("--baseline", type=Path,
                        help="a directory with another version's analysis/ to time beside this one")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each measurement; the table shows the best and median")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--regenerate", action="store_true", help="generate the logs again")
    parser.add_argument("--engine-worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_worker:
        worker(args.engine_worker, args.data, args.threads)
        return 0

    data = dataset_dir(args)
    if args.regenerate and data.exists():
        shutil.rmtree(data)
    generated: Optional[float] = None
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        generated = generate(data, args)
    # Written on every run: the logs are cached, the registry follows the schema of the day.
    (data / "experiments.yaml").write_text(REGISTRY.format(log_dir="logs"))
    size = sum(p.stat().st_size for p in (data / "logs").iterdir()) / 1e9
    print(f"data: {data} ({size:.2f} GB; {args.exposures:,} exposures, {args.outcomes:,} outcomes"
          + (f", generated in {generated:.0f} s)" if generated else ", cached)"))  # fmt: skip

    from tqdm import tqdm

    runs = report_commands(data, args) + engine_commands(data, args)
    with tqdm(total=len(runs) * args.repeat, desc="benchmark", unit="run") as progress:
        measurements, stdout = round_robin(runs, args.repeat, progress)
    for measured in measurements:
        if measured.what.startswith("core in"):
            measured.note += f"; {stdout[measured.what].strip()}"
    report = json.loads(stdout["report --json"])
    print()
    print(table(measurements))
    print()
    print(f"cores: {os.cpu_count()}; verdict: {report['verdict'][0]['line']}")
    if "baseline --json" in stdout:
        before = json.loads(stdout["baseline --json"])
        print(f"baseline verdict: {before['verdict'][0]['line']}")
    print(f"units: {report['run']['units']}; SRM p = {report['srm']['p_value']:.3g}")
    if args.json:
        args.json.write_text(json.dumps({
            "exposures": args.exposures, "outcomes": args.outcomes, "units": args.units,
            "days": args.days, "data_gb": size, "cores": os.cpu_count(),
            "runs": [asdict(m) for m in measurements],
        }, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
