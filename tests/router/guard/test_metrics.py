"""The guard's Prometheus metrics, read back from the exposition text."""

from __future__ import annotations

from typing import Optional

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.guard.engine import Guard
from router.guard.metrics import SloMetrics
from tests.router.guard.simulation import registry

T0 = 1_800_000_000.0
SLO = {"interval": "1s", "window": "5s", "min_samples": 20, "failed_checks": 1, "p99_ms": 100,
       "error_rate": 0.01}  # fmt: skip


class Scrape:
    """One scrape of a registry, as Prometheus would parse it."""

    def __init__(self, collector_registry: CollectorRegistry) -> None:
        text = generate_latest(collector_registry).decode()
        self._samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> Optional[float]:
        return self._samples.get((name, tuple(sorted(labels.items()))))

    def names(self) -> set[str]:
        return {name for name, _ in self._samples}


def test_gauges_follow_the_guard_and_counters_count_decisions() -> None:
    guard = Guard(registry({"control": "v1", "treatment": "v2", "traffic": 50, "slo": SLO}), now=T0)
    collector_registry = CollectorRegistry()
    metrics = SloMetrics(collector_registry, guard)
    metrics.record_decisions(guard.tick(T0))

    scrape = Scrape(collector_registry)
    assert scrape.value("router_experiment_status", experiment="sentiment") == 0
    assert "router_slo_state" not in scrape.names()  # no check yet

    for _ in range(40):
        guard.observe("sentiment", "treatment", 0.250, False, now=T0 + 0.5)
        guard.observe("sentiment", "control", 0.004, True, now=T0 + 0.5)
    metrics.record_decisions(guard.tick(T0 + 1))

    scrape = Scrape(collector_registry)
    treatment = {"experiment": "sentiment", "variant": "treatment"}
    control = {"experiment": "sentiment", "variant": "control"}
    assert scrape.value("router_slo_state", **treatment) == 2  # fail
    assert scrape.value("router_slo_state", **control) is None  # measured, not judged
    p99 = scrape.value("router_slo_p99_seconds", **treatment)
    assert p99 is not None and abs(p99 - 0.250) < 0.0025
    assert scrape.value("router_slo_error_rate", **treatment) == 1.0
    assert scrape.value("router_slo_error_rate", **control) == 0.0
    assert scrape.value("router_experiment_status", experiment="sentiment") == 2
    decisions = "router_decisions_total"
    assert scrape.value(decisions, experiment="sentiment", action="rollback", actor="slo") == 1
    assert scrape.value(decisions, experiment="sentiment", action="none", actor="config") == 1

    metrics.record_decisions([guard.promote("sentiment", now=T0 + 2)])
    scrape = Scrape(collector_registry)
    assert scrape.value("router_experiment_status", experiment="sentiment") == 3
    assert scrape.value(decisions, experiment="sentiment", action="promote", actor="admin") == 1


def test_shadow_counters() -> None:
    guard = Guard(registry({"control": "v1", "treatment": "v2", "traffic": 50, "mode": "shadow"}))
    collector_registry = CollectorRegistry()
    metrics = SloMetrics(collector_registry, guard)
    metrics.record_shadow("sentiment", "ok")
    metrics.record_shadow("sentiment", "ok")
    metrics.record_shadow("sentiment", "error")
    metrics.record_shadow("sentiment", "dropped")
    metrics.record_agreement("sentiment", True)
    metrics.record_agreement("sentiment", False)
    metrics.record_agreement("sentiment", True)

    scrape = Scrape(collector_registry)
    shadow, agreement = "router_shadow_requests_total", "router_shadow_agreement_total"
    assert scrape.value(shadow, experiment="sentiment", outcome="ok") == 2
    assert scrape.value(shadow, experiment="sentiment", outcome="error") == 1
    assert scrape.value(shadow, experiment="sentiment", outcome="dropped") == 1
    assert scrape.value(agreement, experiment="sentiment", agree="true") == 2
    assert scrape.value(agreement, experiment="sentiment", agree="false") == 1
