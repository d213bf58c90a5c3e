"""The reliability table: every case records what it tried and what came of it.

Tests add rows through the `table` fixture (tests/reliability/conftest.py); at the end of the
session they are merged by case into build/reliability/summary.json (a partial run updates
only its own rows) and printed. `python -m tests.reliability.summary` prints the file again
as the Markdown table of docs/reliability.md.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
SUMMARY = REPO / "build" / "reliability" / "summary.json"
SECTIONS = ("hostile input", "schema", "fault", "security")


@dataclass
class Row:
    section: str  # one of SECTIONS
    case: str  # unique within the table
    tried: str  # the inputs tried or the fault injected
    requests: int  # requests sent
    failed: int  # requests that did not get the answer they must get
    lost: int  # events (exposures, outcomes) answered or accepted but not logged
    note: str = ""
    passed: Optional[bool] = None  # filled in from the test's result

    @property
    def key(self) -> str:
        return f"{self.section}: {self.case}"


def merge(rows: list[Row], path: Path = SUMMARY) -> list[Row]:
    """Rows of earlier runs, updated with these; written back to `path`."""
    known: dict[str, Row] = {}
    if path.exists():
        for raw in json.loads(path.read_text()):
            row = Row(**raw)
            known[row.key] = row
    for row in rows:
        known[row.key] = row
    ordered = sorted(
        known.values(),
        key=lambda r: (SECTIONS.index(r.section) if r.section in SECTIONS else 99, r.case),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in ordered], indent=1, ensure_ascii=False))
    return ordered


def markdown(rows: list[Row]) -> str:
    lines = [
        "| section | case | inputs tried / fault injected | requests sent | failed requests "
        "| events lost | result |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        result = {True: "pass", False: "FAIL", None: "?"}[r.passed]
        note = f" ({r.note})" if r.note else ""
        lines.append(
            f"| {r.section} | {r.case} | {r.tried}{note} | {r.requests} | {r.failed} "
            f"| {r.lost} | {result} |"
        )
    total = [
        sum(r.requests for r in rows),
        sum(r.failed for r in rows),
        sum(r.lost for r in rows),
    ]
    lines.append(f"| **total** | {len(rows)} cases | | {total[0]} | {total[1]} | {total[2]} | |")
    return "\n".join(lines)


def main() -> int:
    if not SUMMARY.exists():
        print(f"no {SUMMARY.relative_to(REPO)} yet: run .venv/bin/pytest tests/reliability")
        return 1
    rows = [Row(**raw) for raw in json.loads(SUMMARY.read_text())]
    print(markdown(rows))
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
