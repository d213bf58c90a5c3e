"""Writing logs in the router's record formats (docs/router.md, "Logs") for the analysis tests."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

START = datetime(2026, 11, 20, tzinfo=timezone.utc)
ARMS = ("control", "treatment")
DEFAULT_ATTRIBUTES = {"city": "X-City", "device": "X-Device", "app_version": "X-App-Version"}


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def exposure(
    moment: datetime,
    unit: Optional[str],
    assigned: str,
    *,
    experiment: str = "sentiment",
    enrolled: bool = True,
    fallback: bool = False,
    **attributes: Optional[str],
) -> dict[str, Any]:
    served = "control" if fallback else assigned
    return {
        "ts": iso(moment),
        "request_id": f"r-{unit}-{moment.timestamp()}",
        "experiment": experiment,
        "unit": unit,
        "enrolled": enrolled,
        "assigned": assigned,
        "served": served,
        "model_version": "legacy_v1" if served == "control" else "paddle_new_v2",
        "status": 200,
        "latency_ms": 3.2,
        "fallback": fallback,
        "error": "treatment: timeout" if fallback else None,
        **attributes,
    }


def outcome(
    moment: datetime, unit: str, metric: str, value: float = 1.0, experiment: Optional[str] = None
) -> dict[str, Any]:
    return {"ts": iso(moment), "unit": unit, "metric": metric, "value": value,
            "experiment": experiment}  # fmt: skip


def write_daily(
    directory: Path, prefix: str, records: Iterable[dict[str, Any]], gzip_days: Iterable[str] = ()
) -> list[Path]:
    """`prefix-YYYY-MM-DD.jsonl` per UTC day of `ts`; days in `gzip_days` as `.jsonl.gz`."""
    by_day: dict[str, list[str]] = {}
    for record in records:
        by_day.setdefault(record["ts"][:10], []).append(json.dumps(record) + "\n")
    directory.mkdir(parents=True, exist_ok=True)
    zipped = set(gzip_days)
    paths = []
    for day, lines in sorted(by_day.items()):
        if day in zipped:
            path = directory / f"{prefix}-{day}.jsonl.gz"
            with gzip.open(path, "wt", encoding="utf-8") as file:
                file.write("".join(lines))
        else:
            path = directory / f"{prefix}-{day}.jsonl"
            path.write_text("".join(lines), encoding="utf-8")
        paths.append(path)
    return paths


def write_decisions(directory: Path, records: Iterable[dict[str, Any]]) -> Path:
    path = directory / "decisions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def registry(
    log_dir: Path,
    *,
    traffic: float = 50,
    analysis: Optional[dict[str, Any]] = None,
    attributes: Optional[dict[str, str]] = None,
    experiment: str = "sentiment",
    extra: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """A registry in the shape of the demo's `experiments.yaml`, valid for the router too."""
    plan = analysis if analysis is not None else {
        "registered_at": "2026-11-19",
        "primary": {"metric": "conversion", "type": "proportion", "direction": "increase",
                    "mde": 0.01},
        "secondary": [{"metric": "revenue", "type": "mean"}],
        "guardrails": [{"metric": "complaint", "type": "proportion", "direction": "decrease"}],
        "alpha": 0.05,
        "power": 0.8,
        "min_days": 7,
    }  # fmt: skip
    body: dict[str, Any] = {
        "route": "/sentiment/prediction",
        "salt": "sentiment-2026-11",
        "control": "sentiment-v1",
        "treatment": "sentiment-v2",
        "traffic": traffic,
        "slo": {"p99_ms": 200, "error_rate": 0.01},
        **({"analysis": plan} if plan else {}),
        **(extra or {}),
    }
    return {
        "router": {
            "log_dir": str(log_dir),
            "attributes": attributes if attributes is not None else DEFAULT_ATTRIBUTES,
        },
        "backends": {
            "sentiment-v1": {"endpoints": ["http://127.0.0.1:18080"], "version": "legacy_v1"},
            "sentiment-v2": {"endpoints": ["http://127.0.0.1:18081"], "version": "paddle_new_v2"},
        },
        "experiments": {experiment: body},
    }


def write_registry(path: Path, registry_body: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(registry_body, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Simulation:
    """Units with known arms and per-unit outcomes, and the log records that encode them."""

    arm: np.ndarray  # 0 control, 1 treatment
    converted: np.ndarray  # bool per unit
    revenue: np.ndarray  # per-unit sum
    exposures: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    def arm_values(self, values: np.ndarray, arm: int) -> np.ndarray:
        return np.asarray(values[self.arm == arm])


def simulate(
    units: int,
    *,
    p_control: float,
    p_treatment: float,
    days: int = 8,
    treatment_share: float = 0.5,
    seed: int = 0,
    cities: tuple[str, ...] = ("beijing", "shanghai"),
) -> Simulation:
    """Each unit is first exposed on a random day, seen once or twice more, and may convert
    (once) and spend (0-3 purchases) after its first exposure; some noise outcomes happen
    before it (they must not count)."""
    rng = np.random.default_rng(seed)
    arm = (rng.random(units) < treatment_share).astype(int)
    p = np.where(arm == 1, p_treatment, p_control)
    converted = rng.random(units) < p
    purchases = rng.poisson(np.where(arm == 1, 0.33, 0.3))
    start_seconds = rng.integers(0, days * 86400 - 7200, size=units)
    sim = Simulation(arm, converted, np.zeros(units))
    for u in range(units):
        unit = f"user-{u}"
        first = START + timedelta(seconds=int(start_seconds[u]))
        city = cities[u % len(cities)]
        device = "ios" if u % 3 == 0 else "android"
        assigned = ARMS[arm[u]]
        sim.exposures.append(exposure(first, unit, assigned, city=city, device=device))
        for repeat in range(int(rng.integers(0, 3))):
            later = first + timedelta(minutes=30 * (repeat + 1))
            sim.exposures.append(exposure(later, unit, assigned, city=city, device=device))
        if converted[u]:
            sim.outcomes.append(outcome(first + timedelta(minutes=20), unit, "conversion"))
        for k in range(int(purchases[u])):
            value = float(np.round(rng.gamma(2.0, 15.0), 2))
            sim.revenue[u] += value
            sim.outcomes.append(
                outcome(first + timedelta(minutes=5 + k), unit, "revenue", value, "sentiment")
            )
        if u % 7 == 0:  # an event before the first exposure: ignored
            sim.outcomes.append(outcome(first - timedelta(minutes=1), unit, "conversion"))
    return sim
