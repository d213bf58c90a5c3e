"""Prometheus metrics of the SLO guard, registered on the router's CollectorRegistry.

The gauges mirror the guard's state and are computed at scrape time from `Guard.views()`, so
they can never disagree with what the guard acts on. The counters are fed by the app: each
decision it writes (`record_decisions`) and each shadow copy (`record_shadow`,
`record_agreement`). Names are a contract with monitoring/ (alert rules and dashboard).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.guard.engine import ExperimentView
from router.guard.rollout import STATUSES, Decision
from router.guard.slo import CHECK_SEVERITY

ShadowOutcome = Literal["ok", "error", "dropped"]

# Gauge values: router_slo_state is the check's severity (0 pass, 1 inconclusive, 2 fail),
# router_experiment_status the status's place in STATUSES (0 running ... 3 promoted).
SLO_STATE_VALUES = CHECK_SEVERITY
STATUS_VALUES = {status: index for index, status in enumerate(STATUSES)}

GAUGE_NAMES = (
    "router_slo_state",
    "router_slo_p99_seconds",
    "router_slo_error_rate",
    "router_experiment_status",
)
COUNTER_NAMES = (
    "router_decisions_total",
    "router_shadow_requests_total",
    "router_shadow_agreement_total",
)


class GuardViews(Protocol):
    def views(self) -> list[ExperimentView]: ...


class _GuardCollector(Collector):
    def __init__(self, guard: GuardViews) -> None:
        self._guard = guard

    def collect(self) -> Iterator[Metric]:
        state, p99, error_rate, status = self._families()
        for view in self._guard.views():
            status.add_metric([view.name], STATUS_VALUES[view.status])
            for arm in view.arms:
                labels = [view.name, arm.name]
                if arm.result is not None:
                    state.add_metric(labels, SLO_STATE_VALUES[arm.result.check])
                if arm.stats is not None and arm.stats.p99_ms is not None:
                    p99.add_metric(labels, arm.stats.p99_ms / 1000.0)
                if arm.stats is not None and arm.stats.error_rate is not None:
                    error_rate.add_metric(labels, arm.stats.error_rate)
        yield from (state, p99, error_rate, status)

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        arm_labels = ["experiment", "variant"]
        return (
            GaugeMetricFamily(
                "router_slo_state",
                "Last SLO check per evaluated variant: 0 pass, 1 inconclusive, 2 fail.",
                labels=arm_labels,
            ),
            GaugeMetricFamily(
                "router_slo_p99_seconds",
                "p99 latency of backend calls in the SLO window at the last check.",
                labels=arm_labels,
            ),
            GaugeMetricFamily(
                "router_slo_error_rate",
                "Share of failed backend calls in the SLO window at the last check.",
                labels=arm_labels,
            ),
            GaugeMetricFamily(
                "router_experiment_status",
                "Rollout status: 0 running, 1 paused, 2 rolled_back, 3 promoted.",
                labels=["experiment"],
            ),
        )


class SloMetrics:
    def __init__(self, registry: CollectorRegistry, guard: GuardViews) -> None:
        registry.register(_GuardCollector(guard))
        self.decisions = Counter(
            "router_decisions",
            "Guard decisions (every check and action) by experiment, action and actor.",
            ["experiment", "action", "actor"],
            registry=registry,
        )
        self.shadow_requests = Counter(
            "router_shadow_requests",
            "Shadow copies to the candidate by outcome (ok, error, dropped when saturated).",
            ["experiment", "outcome"],
            registry=registry,
        )
        self.shadow_agreement = Counter(
            "router_shadow_agreement",
            "Shadow answers compared with control's: agree=true when the top class matched.",
            ["experiment", "agree"],
            registry=registry,
        )

    def record_decisions(self, decisions: Iterable[Decision]) -> None:
        for decision in decisions:
            self.decisions.labels(decision.experiment, decision.action, decision.actor).inc()

    def record_shadow(self, experiment: str, outcome: ShadowOutcome) -> None:
        self.shadow_requests.labels(experiment, outcome).inc()

    def record_agreement(self, experiment: str, agree: bool) -> None:
        self.shadow_agreement.labels(experiment, "true" if agree else "false").inc()
