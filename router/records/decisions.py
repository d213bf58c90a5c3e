"""The decision record: one line of decisions.jsonl, whoever decided.

The SLO guard, the ramp and operators decide through the rollout state machine
(router.guard.rollout.Decision); without the guard, a registry edit that changes an
experiment's traffic is recorded by the reload (router.proxy.reload). Both write this record,
which the analysis reads to know the traffic in force over time. In a fleet the log writer
adds the `replica` that wrote it (router.records.jsonl).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from router.records.timestamps import utc_iso


def decision_record(
    *,
    ts: float,
    experiment: str,
    check: Optional[str],
    action: str,
    actor: str,
    traffic: float,
    previous_traffic: Optional[float],
    configured_traffic: float,
    revision: int,
    reason: str,
    rollout: Optional[tuple[str, Optional[int]]] = None,
    variant: Optional[str] = None,
    measured: Optional[Mapping[str, Any]] = None,
    thresholds: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """`previous_traffic` only when the decision changed the traffic; `rollout` (status, ramp
    step) and the check's `variant`, `measured` and `thresholds` where a rollout decided."""
    record: dict[str, Any] = {
        "ts": utc_iso(ts),
        "experiment": experiment,
        "check": check,
        "action": action,
        "actor": actor,
        "traffic": traffic,
    }
    if previous_traffic is not None:
        record["previous_traffic"] = previous_traffic
    record["configured_traffic"] = configured_traffic
    if rollout is not None:
        record["status"], record["step"] = rollout
    record["revision"] = revision
    if variant is not None:
        record["variant"] = variant
    if rollout is not None:
        record["measured"] = dict(measured or {})
        record["thresholds"] = dict(thresholds or {})
    record["reason"] = reason
    return record
