"""DuckDB reduces the exposure and outcome logs to `Aggregates`.

Why DuckDB: it parses JSON Lines (plain or gzipped) in parallel in C++, spills to disk past its
memory limit, and answers the whole report in a handful of SQL statements; on the 10-million-
exposure benchmark it is several times faster than pandas at a fraction of the memory (see
docs/analysis.md for the measurements).

The rules of the analysis live in the SQL below:
- a unit belongs to the arm of its *first* exposure (by `ts`); later exposures in another arm
  (a ramp moved it, a rollback sent it to control) do not move it;
- only records of this experiment with `enrolled: true` count; a fallback-served exposure stays
  in its assigned arm (intention to treat);
- an outcome counts only at or after its unit's first exposure, and only if it names no
  experiment or this one;
- a line that is not a record (truncated, garbled) is skipped and counted;
- the logs of several router replicas (router.fleet) are one experiment: a unit is one unit on
  every replica, an outcome joins its unit whoever logged it, and an exposure is one request on
  one replica (a copy of a record, the same request_id, replica, unit and ts, counts once).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Optional

import duckdb

from analysis.aggregates import (
    MISSING,
    Aggregates,
    CutFile,
    DataQuality,
    DayRow,
    MetricSums,
    ReplicaCounts,
)
from analysis.logfiles import LogFiles, gzip_complete, last_line_truncated
from analysis.traffic_history import TrafficPeriod, parse_utc


def aggregate_logs(
    logs: LogFiles,
    experiment: str,
    attributes: Sequence[str],
    history: Sequence[TrafficPeriod],
    *,
    decisions: Sequence[tuple[str, Mapping[str, Any]]] = (),
    control: str = "control",
    threads: Optional[int] = None,
    memory_limit: str = "2GB",
    temp_directory: Optional[Path] = None,
) -> Aggregates:
    with duckdb.connect(":memory:") as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET threads = {int(threads or os.cpu_count() or 1)}")
        con.execute(f"SET memory_limit = {_literal(memory_limit)}")
        con.execute("SET preserve_insertion_order = false")
        if temp_directory is not None:
            con.execute(f"SET temp_directory = {_literal(str(temp_directory))}")
        run = _Run(con, logs, experiment, tuple(attributes), tuple(history), control, decisions)
        return run.aggregates()


class _Run:
    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        logs: LogFiles,
        experiment: str,
        attributes: tuple[str, ...],
        history: tuple[TrafficPeriod, ...],
        control: str,
        decisions: Sequence[tuple[str, Mapping[str, Any]]] = (),
    ) -> None:
        self.con = con
        self.control = control
        self.logs = logs
        self.experiment = experiment
        self.attributes = attributes
        # Attribute columns get positional names: no user-chosen name ever reaches SQL unquoted.
        self.attr_columns = tuple(f"a{i}" for i in range(len(attributes)))
        self.history = history
        self.decisions = decisions

    def aggregates(self) -> Aggregates:
        exposure_quality = self._load_units()
        first, last = self._exposure_span()
        # A run shorter than two days has too few days for a trend: it is followed by the hour.
        hourly = first is not None and last is not None and last - first < timedelta(days=2)
        bucket = "date_trunc('hour', {ts})" if hourly else "CAST({ts} AS DATE)"
        outcome_quality = self._load_outcomes(bucket)
        unreadable = exposure_quality.pop("unreadable") + outcome_quality.pop("unreadable")
        truncated = self._truncated_last_lines() if unreadable else 0
        units, segment_units = self._unit_counts()
        metrics, segment_metrics = self._metric_sums()
        quality = DataQuality(
            exposure_files=len(self.logs.exposures),
            outcome_files=len(self.logs.outcomes),
            unreadable_lines=unreadable,
            truncated_last_lines=truncated,
            cut_files=self._cut_files(),
            replicas=self._replica_counts(),
            **exposure_quality,
            **outcome_quality,
        )
        return Aggregates(
            units=units,
            metrics=metrics,
            segment_units=segment_units,
            segment_metrics=segment_metrics,
            daily=self._daily(first, last, units, bucket, hourly),
            binary_metrics=self._binary_metrics(),
            first_exposure=first,
            last_exposure=last,
            quality=quality,
            period=timedelta(hours=1) if hourly else timedelta(days=1),
            signed_metrics=self._signed_metrics(),
        )

    # --- loading -------------------------------------------------------------------------------

    def _load_units(self) -> dict[str, int]:
        """One row per enrolled unit: its first arm, first/last exposure, attributes, traffic.

        Exposures are read per unit and replica (`unit_rows`), and the replicas' rows of a unit
        are then merged: min, max and arg_min give the same answer in either order. A record
        is one request's exposure; a copy of it (the same request_id, replica, unit and ts)
        counts once. Copies change none of the unit's values (min, max, arg_min and bool_or
        give the same with or without them), only the counts of records, which count the
        distinct hashes of (request_id, ts) in each group: a list of 8 bytes per record, where
        `count(DISTINCT ...)` cost half as much CPU again and 70% more memory (3M exposures).
        """
        attr_sql = "".join(
            f", coalesce(arg_min({_ident(name)}, ts), {_literal(MISSING)}) AS {column}"
            for name, column in zip(self.attributes, self.attr_columns)
        )
        columns = {
            "ts": "TIMESTAMPTZ", "experiment": "VARCHAR", "unit": "VARCHAR",
            "enrolled": "BOOLEAN", "assigned": "VARCHAR", "fallback": "BOOLEAN",
            "request_id": "VARCHAR", "replica": "VARCHAR",
            **dict.fromkeys(self.attributes, "VARCHAR"),
        }  # fmt: skip
        usable = (
            "experiment = $experiment AND enrolled IS TRUE AND unit IS NOT NULL "
            "AND ts IS NOT NULL AND assigned IS NOT NULL"
        )
        # `kind` sorts the rows of no usable unit; it is 'unit' wherever `unit` is set.
        self.con.execute(
            f"""
            CREATE TEMP TABLE unit_rows AS
            SELECT CASE WHEN {usable} THEN unit END AS unit,
                   replica,
                   CASE WHEN experiment IS NULL THEN 'unreadable'
                        WHEN {usable} THEN 'unit'
                        WHEN enrolled IS NOT TRUE THEN 'not_enrolled'
                        ELSE 'unusable' END AS kind,
                   arg_min(assigned, ts) AS arm,
                   min(ts) AS first_ts,
                   max(ts) AS last_ts,
                   min(assigned) <> max(assigned) AS switched,
                   coalesce(bool_or(fallback), false) AS fell_back
                   {attr_sql},
                   count(*) AS records,
                   list_unique(list(hash(request_id, ts)) FILTER (WHERE request_id IS NOT NULL))
                       + count(*) FILTER (WHERE request_id IS NULL) AS requests
            FROM {self._reader(self.logs.exposures, columns)}
            WHERE experiment = $experiment OR experiment IS NULL
            GROUP BY ALL
            """,
            {"experiment": self.experiment, "files": _paths(self.logs.exposures)},
        )
        self.con.execute("CREATE TEMP TABLE periods (since TIMESTAMPTZ, traffic DOUBLE)")
        self.con.executemany(
            "INSERT INTO periods VALUES (?, ?)", [(p.since, p.traffic) for p in self.history]
        )
        first_traffic = self.history[0].traffic if self.history else 0.0
        attr_columns = "".join(f", {c}" for c in self.attr_columns)
        replicas = self.con.execute(
            "SELECT count(DISTINCT coalesce(replica, '')) FROM unit_rows WHERE unit IS NOT NULL"
        ).fetchone()
        assert replicas is not None
        if int(replicas[0]) > 1:  # a unit may have rows of several replicas: merged
            merged = "".join(f", arg_min({c}, first_ts) AS {c}" for c in self.attr_columns)
            rows = f"""
                SELECT unit, arg_min(arm, first_ts) AS arm, min(first_ts) AS first_ts,
                       max(last_ts) AS last_ts,
                       bool_or(switched) OR min(arm) <> max(arm) AS switched,
                       bool_or(fell_back) AS fell_back {merged}
                FROM unit_rows WHERE unit IS NOT NULL GROUP BY unit
            """
        else:
            rows = f"""
                SELECT unit, arm, first_ts, last_ts, switched, fell_back {attr_columns}
                FROM unit_rows WHERE unit IS NOT NULL
            """
        self.con.execute(
            f"""
            CREATE TEMP TABLE units AS
            SELECT u.unit, u.arm, u.first_ts, u.last_ts, u.switched, u.fell_back
                   {"".join(f", u.{c}" for c in self.attr_columns)},
                   coalesce(p.traffic, {float(first_traffic)}) AS traffic
            FROM ({rows}) u
            ASOF LEFT JOIN periods p ON u.first_ts >= p.since
            """
        )
        row = self.con.execute(
            """
            SELECT coalesce(sum(records) FILTER (WHERE kind = 'unreadable'), 0),
                   coalesce(sum(requests) FILTER (WHERE kind <> 'unreadable'), 0),
                   coalesce(sum(records - requests) FILTER (WHERE kind <> 'unreadable'), 0),
                   coalesce(sum(requests) FILTER (WHERE kind = 'not_enrolled'), 0),
                   coalesce(sum(requests) FILTER (WHERE kind = 'unusable'), 0)
            FROM unit_rows
            """
        ).fetchone()
        units = self.con.execute(
            "SELECT count(*) FILTER (WHERE switched), count(*) FILTER (WHERE fell_back) FROM units"
        ).fetchone()
        # A later exposure in another arm is what a traffic change after the unit's first
        # exposure does: a rise moves control units out, a fall (a rollback) moves them back.
        moved = self.con.execute(
            """
            SELECT count(*) FILTER (WHERE NOT EXISTS (
                       SELECT 1 FROM periods p WHERE p.since > u.first_ts
                       AND CASE WHEN u.arm = $control THEN p.traffic > u.traffic
                                ELSE p.traffic < u.traffic END))
            FROM units u WHERE u.switched
            """,
            {"control": self.control},
        ).fetchone()
        assert row is not None and units is not None and moved is not None
        unreadable, records, copies, not_enrolled, unusable = (int(v) for v in row)
        switched, fell_back = (int(v) for v in units)
        return {
            "unreadable": unreadable,
            "exposure_records": records,
            "duplicate_exposures": copies,
            "not_enrolled": not_enrolled,
            "unusable_exposures": unusable,
            "switched_units": switched,
            "unexplained_switches": int(moved[0]),
            "fallback_units": fell_back,
        }

    def _load_outcomes(self, bucket: str) -> dict[str, int]:
        """Outcomes worth counting, once each: bad values and repeats are dropped and counted.

        A value must be a finite JSON number; a record without `value` is one occurrence. A
        record with the same `event_id` for the same unit and metric as an earlier one is a
        repeat (a client's retry), and so is, without `event_id`, a record identical in ts,
        unit, metric and value (a log shipper's second delivery). The earliest copy counts.
        Which replica logged an outcome does not matter: a retry that another replica took is
        a repeat too, and an outcome joins its unit's exposures whoever logged them.
        """
        columns = {
            "ts": "TIMESTAMPTZ", "unit": "VARCHAR", "metric": "VARCHAR", "value": "JSON",
            "experiment": "VARCHAR", "event_id": "VARCHAR", "replica": "VARCHAR",
        }  # fmt: skip
        self.con.execute(
            f"""
            CREATE TEMP TABLE outcome_raw AS
            SELECT ts, unit, metric, event_id, replica,
                   ts IS NOT NULL AND unit IS NOT NULL AND metric IS NOT NULL AS usable,
                   value IS NULL AS no_value,
                   CASE WHEN value IS NULL THEN 1.0
                        WHEN json_type(value) IN ('BIGINT', 'UBIGINT', 'DOUBLE')
                        THEN TRY_CAST(value AS DOUBLE) END AS value
            FROM {self._reader(self.logs.outcomes, columns)}
            WHERE experiment IS NULL OR experiment = $experiment
            """,
            {"experiment": self.experiment, "files": _paths(self.logs.outcomes)},
        )
        self._mark_null_values()
        self.con.execute(
            """
            CREATE TEMP TABLE outcome_rows AS
            SELECT min(ts) AS ts, unit, metric, arg_min(value, ts) AS value, count(*) AS copies
            FROM outcome_raw
            WHERE usable AND isfinite(value)
            GROUP BY unit, metric, event_id,
                     CASE WHEN event_id IS NULL THEN ts END,
                     CASE WHEN event_id IS NULL THEN value END
            """
        )
        # Units' per-period sums of each metric, counting only outcomes from the first exposure.
        self.con.execute(
            f"""
            CREATE TEMP TABLE unit_days AS
            SELECT o.unit, o.metric, {bucket.format(ts="o.ts")} AS day,
                   sum(o.value) AS v, bool_or(o.value > 0) AS pos
            FROM outcome_rows o JOIN units u ON o.unit = u.unit AND o.ts >= u.first_ts
            GROUP BY ALL
            """
        )
        raw = self.con.execute(
            """
            SELECT count(*) FILTER (WHERE NOT usable),
                   count(*) FILTER (WHERE usable AND NOT coalesce(isfinite(value), false))
            FROM outcome_raw
            """
        ).fetchone()
        row = self.con.execute(
            """
            SELECT coalesce(sum(o.copies), 0), coalesce(sum(o.copies - 1), 0),
                   count(*) FILTER (WHERE o.ts >= u.first_ts),
                   count(*) FILTER (WHERE o.ts < u.first_ts),
                   count(*) FILTER (WHERE u.unit IS NULL)
            FROM outcome_rows o LEFT JOIN units u ON o.unit = u.unit
            """
        ).fetchone()
        assert raw is not None and row is not None
        unreadable, bad_values = (int(v) for v in raw)
        records, repeats, used, before, unknown = (int(v) for v in row)
        return {
            "unreadable": unreadable,
            "outcome_records": records + bad_values,
            "bad_values": bad_values,
            "duplicate_outcomes": repeats,
            "outcomes_used": used,
            "outcomes_before_exposure": before,
            "outcomes_unknown_unit": unknown,
        }

    def _mark_null_values(self) -> None:
        """`"value": null` is a bad value, but a typed reader reads it as no value at all (one
        occurrence). Records without a value are rare (the router always writes one), so only
        when there are some are the outcome files read again as raw objects to tell the two
        apart."""
        row = self.con.execute("SELECT count(*) FROM outcome_raw WHERE usable AND no_value")
        found = row.fetchone()
        if not found or not found[0]:
            return
        self.con.execute(
            """
            CREATE TEMP TABLE null_values AS
            SELECT DISTINCT TRY_CAST(json_extract_string(json, '$.ts') AS TIMESTAMPTZ) AS ts,
                   json_extract_string(json, '$.unit') AS unit,
                   json_extract_string(json, '$.metric') AS metric
            FROM read_ndjson_objects($files, ignore_errors = true)
            WHERE json_type(json_extract(json, '$.value')) = 'NULL'
            """,
            {"files": _paths(self.logs.outcomes)},
        )
        self.con.execute(
            """
            UPDATE outcome_raw SET value = NULL
            WHERE no_value AND (ts, unit, metric) IN (SELECT (ts, unit, metric) FROM null_values)
            """
        )

    def _replica_counts(self) -> tuple[ReplicaCounts, ...]:
        """This experiment's exposures (each request once), outcomes (as `outcome_records`)
        and decisions per replica, with the span of their `ts`; () when no record names one."""
        found: dict[Optional[str], list[Any]] = {}
        exposures = self.con.execute(
            """
            SELECT replica, sum(requests), min(first_ts), max(last_ts) FROM unit_rows
            WHERE kind <> 'unreadable' GROUP BY replica
            """
        ).fetchall()
        outcomes = self.con.execute(
            "SELECT replica, count(*), min(ts), max(ts) FROM outcome_raw WHERE usable "
            "GROUP BY replica"
        ).fetchall()
        for column, rows in ((0, exposures), (1, outcomes)):
            for replica, count, first, last in rows:
                _count(found, replica, column, int(count), first, last)
        for _, record in self.decisions:
            if record.get("experiment") == self.experiment:
                replica = record.get("replica")
                moment = _moment(record.get("ts"))
                _count(found, None if replica is None else str(replica), 2, 1, moment, moment)
        if all(replica is None for replica in found):
            return ()
        return tuple(
            ReplicaCounts(replica, *counts)
            for replica, counts in sorted(found.items(), key=lambda i: (i[0] is None, i[0] or ""))
        )

    def _reader(self, files: Sequence[Path], columns: dict[str, str]) -> str:
        if not files:
            # An empty relation of the same shape: no outcome files is a valid (empty) log.
            fields = ", ".join(f"NULL::{kind} AS {_ident(name)}" for name, kind in columns.items())
            return f"(SELECT {fields} WHERE false AND $files IS NOT NULL)"
        spec = ", ".join(f"{_literal(name)}: {_literal(kind)}" for name, kind in columns.items())
        # ignore_errors turns a line that is not a JSON object into a row of NULLs (counted as
        # unreadable); a field of the wrong type becomes NULL.
        return (
            f"read_json($files, format = 'newline_delimited', columns = {{{spec}}}, "
            "ignore_errors = true, maximum_object_size = 16777216)"
        )

    def _truncated_last_lines(self) -> int:
        return sum(
            last_line_truncated(path) for path in (*self.logs.exposures, *self.logs.outcomes)
        )

    # --- aggregating ---------------------------------------------------------------------------

    def _grouping_sets(self, keys: Sequence[str]) -> str:
        """The whole arm, and each attribute's segments; always within strata."""
        base = ", ".join([*keys, "u.traffic"])
        sets = [f"({base})"] + [f"({base}, u.{c})" for c in self.attr_columns]
        return "GROUPING SETS (" + ", ".join(sets) + ")"

    def _segment_of(self, row: Sequence[Any]) -> Optional[tuple[str, str]]:
        """(attribute, value) of a grouping-set row whose attribute columns come first."""
        for name, value in zip(self.attributes, row[: len(self.attr_columns)]):
            if value is not None:
                return name, str(value)
        return None

    def _select_attributes(self) -> str:
        return "".join(f"u.{c}, " for c in self.attr_columns)

    def _unit_counts(
        self,
    ) -> tuple[dict[tuple[float, str], int], dict[tuple[str, str, float, str], int]]:
        rows = self.con.execute(
            f"""
            SELECT {self._select_attributes()} u.traffic, u.arm, count(*)
            FROM units u GROUP BY {self._grouping_sets(["u.arm"])}
            """
        ).fetchall()
        units: dict[tuple[float, str], int] = {}
        segments: dict[tuple[str, str, float, str], int] = {}
        for row in rows:
            traffic, arm, count = float(row[-3]), str(row[-2]), int(row[-1])
            segment = self._segment_of(row)
            if segment is None:
                units[(traffic, arm)] = count
            else:
                segments[(segment[0], segment[1], traffic, arm)] = count
        return units, segments

    def _metric_sums(
        self,
    ) -> tuple[
        dict[tuple[float, str, str], MetricSums], dict[tuple[str, str, float, str, str], MetricSums]
    ]:
        rows = self.con.execute(
            f"""
            WITH totals AS (
                SELECT unit, metric, sum(v) AS v, bool_or(pos) AS pos
                FROM unit_days GROUP BY ALL
            )
            SELECT {self._select_attributes()} u.traffic, u.arm, t.metric,
                   sum(t.v), sum(t.v * t.v), count(*) FILTER (WHERE t.pos)
            FROM totals t JOIN units u ON t.unit = u.unit
            GROUP BY {self._grouping_sets(["u.arm", "t.metric"])}
            """
        ).fetchall()
        metrics: dict[tuple[float, str, str], MetricSums] = {}
        segments: dict[tuple[str, str, float, str, str], MetricSums] = {}
        for row in rows:
            traffic, arm, metric = float(row[-6]), str(row[-5]), str(row[-4])
            sums = MetricSums(float(row[-3]), float(row[-2]), int(row[-1]))
            segment = self._segment_of(row)
            if segment is None:
                metrics[(traffic, arm, metric)] = sums
            else:
                segments[(segment[0], segment[1], traffic, arm, metric)] = sums
        return metrics, segments

    def _daily(
        self,
        first: Optional[datetime],
        last: Optional[datetime],
        units: dict[tuple[float, str], int],
        bucket: str,
        hourly: bool,
    ) -> dict[tuple[float, str, str], list[DayRow]]:
        """Per stratum, arm and metric, each day: that day's per-unit sums and the running ones.

        A running sum of per-unit *squares* cannot be added up from daily sums, so each unit
        contributes the change of its own squared running total on the days it had records.
        """
        if first is None or last is None:
            return {}
        new_units = self.con.execute(
            f"SELECT traffic, arm, {bucket.format(ts='first_ts')}, count(*) FROM units GROUP BY ALL"
        ).fetchall()
        rows = self.con.execute(
            """
            WITH running AS (
                SELECT unit, metric, day, v, pos,
                       sum(v) OVER w AS c, max(pos::INTEGER) OVER w AS had
                FROM unit_days
                WINDOW w AS (PARTITION BY unit, metric ORDER BY day
                             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
            ), changes AS (
                SELECT unit, metric, day, v, pos,
                       c * c - coalesce(lag(c) OVER w, 0) ^ 2 AS d_sq,
                       had - coalesce(lag(had) OVER w, 0) AS d_had
                FROM running
                WINDOW w AS (PARTITION BY unit, metric ORDER BY day)
            )
            SELECT u.traffic, u.arm, ch.metric, ch.day, sum(ch.v), sum(ch.v * ch.v),
                   count(*) FILTER (WHERE ch.pos), sum(ch.d_sq), sum(ch.d_had)
            FROM changes ch JOIN units u ON ch.unit = u.unit
            GROUP BY ALL
            """
        ).fetchall()
        outcome_days = [r[3] for r in rows]
        if hourly:
            start = first.replace(minute=0, second=0, microsecond=0)
            days: list[date] = list(_hour_range(start, max([last, *outcome_days])))
        else:
            days = _day_range(first.date(), max([last.date(), *outcome_days]))
        added = {(float(t), str(a), d): int(n) for t, a, d, n in new_units}
        cells = {(float(r[0]), str(r[1]), str(r[2]), r[3]): r[4:] for r in rows}
        metric_names = sorted({str(r[2]) for r in rows})
        series: dict[tuple[float, str, str], list[DayRow]] = {}
        for traffic, arm in units:
            for metric in metric_names:
                enrolled, total, total_sq, with_event = 0, 0.0, 0.0, 0
                out: list[DayRow] = []
                for day in days:
                    enrolled += added.get((traffic, arm, day), 0)
                    cell = cells.get((traffic, arm, metric, day))
                    daily = MetricSums()
                    if cell is not None:
                        v, v_sq, pos, d_sq, d_had = cell
                        daily = MetricSums(float(v), float(v_sq), int(pos))
                        total, total_sq, with_event = (
                            total + float(v),
                            total_sq + float(d_sq),
                            with_event + int(d_had),
                        )
                    out.append(
                        DayRow(day, enrolled, daily, MetricSums(total, total_sq, with_event))
                    )
                series[(traffic, arm, metric)] = out
        return series

    def _binary_metrics(self) -> frozenset[str]:
        rows = self.con.execute(
            "SELECT metric FROM outcome_rows GROUP BY metric HAVING bool_and(value IN (0, 1))"
        ).fetchall()
        return frozenset(str(r[0]) for r in rows)

    def _signed_metrics(self) -> frozenset[str]:
        """Metrics with a negative value (a refund): their means, and ratios, can go negative."""
        rows = self.con.execute(
            "SELECT metric FROM outcome_rows GROUP BY metric HAVING bool_or(value < 0)"
        ).fetchall()
        return frozenset(str(r[0]) for r in rows)

    def _cut_files(self) -> tuple[CutFile, ...]:
        """Gzipped logs whose compressed stream stops short: what is left of them, and when
        their last record was written (to estimate what the rest held)."""
        cut = []
        for kind, files in (("exposures", self.logs.exposures), ("outcomes", self.logs.outcomes)):
            for path in files:
                if path.suffix != ".gz" or gzip_complete(path):
                    continue
                row = self.con.execute(
                    "SELECT count(*), min(TRY_CAST(json_extract_string(json, '$.ts') AS "
                    "TIMESTAMPTZ)), max(TRY_CAST(json_extract_string(json, '$.ts') AS "
                    "TIMESTAMPTZ)) FROM read_ndjson_objects($file, ignore_errors = true) "
                    "WHERE json IS NOT NULL",
                    {"file": str(path)},
                ).fetchone()
                assert row is not None
                cut.append(CutFile(path.name, kind, int(row[0]), row[1], row[2]))
        return tuple(cut)

    def _exposure_span(self) -> tuple[Optional[datetime], Optional[datetime]]:
        row = self.con.execute("SELECT min(first_ts), max(last_ts) FROM units").fetchone()
        assert row is not None
        return row[0], row[1]


def _count(
    found: dict[Optional[str], list[Any]],
    replica: Optional[str],
    column: int,
    count: int,
    first: Optional[datetime],
    last: Optional[datetime],
) -> None:
    """Adds `count` records of one kind (0 exposures, 1 outcomes, 2 decisions) to a replica's
    counts [exposures, outcomes, decisions, first ts, last ts]."""
    counts = found.setdefault(replica, [0, 0, 0, None, None])
    counts[column] += count
    if first is not None and (counts[3] is None or first < counts[3]):
        counts[3] = first
    if last is not None and (counts[4] is None or last > counts[4]):
        counts[4] = last


def _moment(ts: Any) -> Optional[datetime]:
    try:
        return parse_utc(ts) if isinstance(ts, str) else None
    except ValueError:
        return None


def _day_range(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _hour_range(first: datetime, last: datetime) -> Iterator[datetime]:
    hour = first
    while hour <= last:
        yield hour
        hour += timedelta(hours=1)


def _paths(files: Sequence[Path]) -> list[str]:
    return [str(path) for path in files]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
