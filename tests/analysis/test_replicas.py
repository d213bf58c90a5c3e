"""The logs of several router replicas (router.fleet), read together: in several directories,
several replicas' files in one directory, and files without a replica beside them.

The cases and their answers are in tests/data/analysis_replicas.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from analysis.cli import main
from analysis.engine import aggregate_logs
from analysis.logfiles import find_logs, read_decisions
from analysis.traffic_history import BEGINNING, TrafficPeriod
from tests.analysis.logbook import START, exposure, iso, registry, write_registry
from tests.analysis.tables import table

CASES = table("analysis_replicas.json")["cases"]
DAY = START.date().isoformat()


def write_case(root: Path, case: dict[str, Any]) -> list[Path]:
    """The case's files under `root`; returns its `--logs` directories."""
    for name, records in case["files"].items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(_record(path.name, r)) + "\n" for r in records]
        path.write_text("".join(lines), encoding="utf-8")
    return [root / directory for directory in case["logs"]]


def _record(file_name: str, short: dict[str, Any]) -> dict[str, Any]:
    if file_name.startswith("decisions"):
        return short
    fields = dict(short)
    ts = f"{DAY}T{fields.pop('ts')}Z"
    replica = fields.pop("replica", None)
    if file_name.startswith("exposures"):
        request_id = fields.pop("request_id")
        record = exposure(START, fields.pop("unit"), fields.pop("assigned"), **fields)
        record.update(ts=ts, request_id=request_id)
    else:
        record = {"ts": ts, "unit": fields["unit"], "metric": fields["metric"], "value": 1.0,
                  "experiment": None, **fields}  # fmt: skip
    if replica is not None:  # the router writes it last
        record["replica"] = replica
    return record


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_replicas_read_together(tmp_path: Path, case: dict[str, Any]) -> None:
    logs = find_logs(*write_case(tmp_path, case))
    decisions = read_decisions(logs.decisions)
    result = aggregate_logs(
        logs, "sentiment", (), [TrafficPeriod(BEGINNING, 50.0)],
        decisions=decisions.records, threads=1,
    )  # fmt: skip
    expect = case["expect"]
    assert result.arms == expect["units"]
    conversions = {arm: 0 for arm in expect["conversions"]}
    for (_, arm, metric), sums in result.metrics.items():
        if metric == "conversion":
            conversions[arm] += sums.with_event
    assert conversions == expect["conversions"]
    quality = result.quality
    assert {key: getattr(quality, key) for key in expect["data_quality"]} == expect["data_quality"]
    replicas = [
        [r.replica, r.exposures, r.outcomes, r.decisions, iso_or_none(r.first_ts),
         iso_or_none(r.last_ts)]
        for r in quality.replicas
    ]  # fmt: skip
    assert replicas == expect["replicas"]
    if replicas:  # the table adds up to the Data section's counts
        assert sum(r[1] for r in replicas) == quality.exposure_records
        assert sum(r[2] for r in replicas) == quality.outcome_records


def iso_or_none(moment: Any) -> Any:
    return None if moment is None else moment.isoformat()


def report_text(capsys: pytest.CaptureFixture[str], config: Path, *logs: Path) -> str:
    arguments = ["report", "--config", str(config), "--threads", "1"]
    assert main([*arguments, "--logs", *map(str, logs)]) == 0
    return capsys.readouterr().out


def data_section(text: str) -> list[str]:
    return text[text.index("\nData\n----\n") :].strip("\n").split("\n")[2:]


def test_the_cli_reads_several_directories_and_counts_each_replica(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[0]
    a, b = write_case(tmp_path, case)
    config = write_registry(tmp_path / "experiments.yaml", registry(tmp_path / "unused"))
    lines = data_section(report_text(capsys, config, a, b))
    table_at = lines.index(next(line for line in lines if line.startswith("replica ")))
    assert lines[table_at : table_at + 4] == [
        "replica      exposures  outcomes  decisions  first record (UTC)  last record",
        "-----------  ---------  --------  ---------  ------------------  ----------------",
        "node-a:8080          3         1          0  2026-11-20 10:00    2026-11-20 11:00",
        "node-b:8080          3         2          0  2026-11-20 10:02    2026-11-20 12:00",
    ]
    assert "exposure files / outcome files" in lines[2] and lines[2].endswith("2 / 2")

    assert main(["report", "--config", str(config), "--json", "--logs", str(a), str(b)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run"]["units"] == {"control": 2, "treatment": 2}
    assert report["data_quality"]["replicas"][0] == {
        "replica": "node-a:8080", "exposures": 3, "outcomes": 1, "decisions": 0,
        "first_ts": "2026-11-20T10:00:00+00:00", "last_ts": "2026-11-20T11:00:00+00:00",
    }  # fmt: skip

    # One of the two directories alone: that replica's records only.
    only_a = data_section(report_text(capsys, config, a))
    assert any(line.startswith("node-a:8080 ") for line in only_a)
    assert not any(line.startswith("node-b:8080 ") for line in only_a)


def test_a_router_alone_reports_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No replica in any record: no replica table, and no row for copies when there are none."""
    (logs,) = write_case(tmp_path, CASES[-1])
    config = write_registry(tmp_path / "experiments.yaml", registry(logs))
    assert main(["report", "--config", str(config), "--threads", "1"]) == 0
    lines = data_section(capsys.readouterr().out)
    assert not any(line.startswith("replica") for line in lines)
    assert not any("copies" in line for line in lines)
    assert main(["report", "--config", str(config), "--json", "--threads", "1"]) == 0
    quality = json.loads(capsys.readouterr().out)["data_quality"]
    assert (quality["replicas"], quality["duplicate_exposures"]) == ([], 0)


def test_copies_are_counted_once_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = write_case(tmp_path, CASES[2])
    config = write_registry(tmp_path / "experiments.yaml", registry(tmp_path / "unused"))
    text = report_text(capsys, config, *dirs)
    lines = data_section(text)
    assert any(
        line.startswith("  copies of a record above (read twice; skipped)") and line.endswith(" 2")
        for line in lines
    )
    assert "2 exposure record(s) were copies of one already read" in text


def test_a_missing_directory_among_several_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (logs,) = write_case(tmp_path, CASES[-1])
    config = write_registry(tmp_path / "experiments.yaml", registry(logs))
    arguments = ["report", "--config", str(config), "--logs", str(logs), str(tmp_path / "nope")]
    assert main(arguments) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: log directory not found\n"


def test_file_names_of_every_replica_are_found(tmp_path: Path) -> None:
    names = [
        "exposures-2026-11-20.jsonl", "exposures-2026-11-20.jsonl.gz",
        "exposures-2026-11-20.node-1.example.com_8080-w2.jsonl",
        "outcomes-2026-11-20.r1.jsonl.gz", "decisions.jsonl", "decisions.r1.jsonl",
        "decisions-2026-11-01.jsonl.gz", "decisions.node_8080-w1.jsonl",
    ]  # fmt: skip
    ignored = ["exposures-2026-11-20..jsonl", "exposures.r1.jsonl", "decisions.r1.json", "x.jsonl"]
    for name in names + ignored:
        (tmp_path / name).write_text("")
    found = find_logs(tmp_path)
    assert sorted(p.name for p in (*found.exposures, *found.outcomes, *found.decisions)) == sorted(
        names
    )


def test_an_exposure_of_one_request_is_one_whatever_the_file(tmp_path: Path) -> None:
    """The same request_id on two replicas is two requests; on one replica, a copy."""
    first = exposure(START, "u1", "control")
    one = {**first, "request_id": "same", "replica": "r1"}
    other = {**first, "request_id": "same", "replica": "r2"}
    for directory, records in (("a", [one, other]), ("b", [one])):
        (tmp_path / directory).mkdir()
        path = tmp_path / directory / f"exposures-{DAY}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = aggregate_logs(
        find_logs(tmp_path / "a", tmp_path / "b"), "sentiment", (),
        [TrafficPeriod(BEGINNING, 50.0)], threads=1,
    )  # fmt: skip
    assert result.arms == {"control": 1}
    assert (result.quality.exposure_records, result.quality.duplicate_exposures) == (2, 1)
    assert iso(START) == first["ts"]
