"""Prometheus metrics of one router app, in its own CollectorRegistry.

The names are a contract with the Grafana dashboard (monitoring/): change them only together.
Gauges that mirror live state (traffic in force, endpoints in rotation) are computed at scrape
time by collectors, so they can never drift from what the router actually does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class _LiveGauge(Collector):
    """A labelled gauge whose samples come from a callback at scrape time."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: list[str],
        samples: Callable[[], Iterable[tuple[tuple[str, ...], float]]],
    ) -> None:
        self._name, self._documentation, self._labels = name, documentation, labels
        self._samples = samples

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=self._labels)
        for label_values, value in self._samples():
            family.add_metric(list(label_values), value)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._documentation, labels=self._labels)


class _BeforeScrape(Collector):
    """Registered first, so that its callbacks run before any metric is read at a scrape."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def collect(self) -> Iterator[Metric]:
        for callback in self.callbacks:
            callback()
        return iter(())


class _Children:
    """`metric.labels(...)` memoized: the request path asks for the same few children."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._before_scrape = _BeforeScrape()
        registry.register(self._before_scrape)
        self.requests = Counter(
            "router_requests",
            "Requests by experiment, assigned variant and outcome (ok, fallback, error).",
            ["experiment", "variant", "outcome"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "router_request_duration_seconds",
            "End-to-end request time in the router, by experiment and assigned variant.",
            ["experiment", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.backend_requests = Counter(
            "router_backend_requests",
            "Calls to backends by outcome (ok, error, timeout).",
            ["backend", "outcome"],
            registry=registry,
        )
        self.backend_duration = Histogram(
            "router_backend_duration_seconds",
            "Time of one backend call.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.fallbacks = Counter(
            "router_fallbacks",
            "Requests answered by control because the assigned variant failed.",
            ["experiment"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "router_config_reloads",
            "Registry reloads by result (ok, error).",
            ["result"],
            registry=registry,
        )
        self.config_last_reload_success = Gauge(
            "router_config_last_reload_success",
            "1 if the last reload attempt of experiments.yaml succeeded, else 0.",
            registry=registry,
        )
        self.config_last_reload_success.set(1)
        self.events_dropped = Counter(
            "router_events_dropped",
            "Log records that could not be written (full buffer or failing disk).",
            ["log"],
            registry=registry,
        )
        self.http_errors = Counter(
            "router_http_errors",
            "Requests refused by the router itself (bad body, unknown route, ...), by code.",
            ["code"],
            registry=registry,
        )
        self.shadow_skipped = Counter(
            "router_shadow_skipped",
            "Shadow copies not sent because too many were already in flight.",
            ["experiment"],
            registry=registry,
        )

        # Memoized children for the request path.
        self.requests_for = _Children(self.requests)
        self.request_duration_for = _Children(self.request_duration)
        self.backend_requests_for = _Children(self.backend_requests)
        self.backend_duration_for = _Children(self.backend_duration)
        self.fallbacks_for = _Children(self.fallbacks)

    def before_scrape(self, callback: Callable[[], None]) -> None:
        """Run `callback` at every scrape, before the metrics are read (pending counts)."""
        self._before_scrape.callbacks.append(callback)

    def add_live_gauge(
        self,
        name: str,
        documentation: str,
        labels: list[str],
        samples: Callable[[], Iterable[tuple[tuple[str, ...], float]]],
    ) -> None:
        self.registry.register(_LiveGauge(name, documentation, labels, samples))
