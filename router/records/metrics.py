"""Prometheus metrics of one router app, in its own CollectorRegistry.

The names are a contract with the Grafana dashboard (monitoring/): change them only together.
Gauges that mirror live state (traffic in force, endpoints in rotation) are computed at scrape
time by collectors, so they can never drift from what the router actually does.

The per-request counts and latencies are `Tally` and `TallyHistogram`: plain numbers in a dict,
turned into Prometheus families by prometheus_client at scrape time. A prometheus_client
`Counter.inc` plus `Histogram.observe` cost about 60 bytecode instructions and a lock each, and
the router makes five per request: a fifth of its Python work (docs/benchmarks.md).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class _Labelled(Collector):
    """A labelled family whose samples this object gives at scrape time."""

    family: Callable[..., Metric] = GaugeMetricFamily  # CounterMetricFamily, ...

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self._name, self._documentation, self._labels = name, documentation, list(labels)

    def _empty(self) -> Any:
        return self.family(self._name, self._documentation, labels=self._labels)

    def describe(self) -> Iterator[Metric]:
        yield self._empty()


class _LiveGauge(_Labelled):
    """A labelled gauge whose samples come from a callback at scrape time."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: list[str],
        samples: Callable[[], Iterable[tuple[tuple[str, ...], float]]],
    ) -> None:
        super().__init__(name, documentation, labels)
        self._samples = samples

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        for label_values, value in self._samples():
            family.add_metric(list(label_values), value)
        yield family


class _BeforeScrape(Collector):
    """Registered first, so that its callbacks run before any metric is read at a scrape."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def collect(self) -> Iterator[Metric]:
        for callback in self.callbacks:
            callback()
        return iter(())


class Tally(_Labelled):
    """A labelled counter for the request path: `add(labels)` is one dict update.
    Only the event loop touches it (the request path and /metrics both run there)."""

    family = CounterMetricFamily

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, labels)
        self.counts: dict[tuple[str, ...], int] = {}

    def add(self, labels: tuple[str, ...]) -> None:
        counts = self.counts
        counts[labels] = counts.get(labels, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        for labels, count in self.counts.items():
            family.add_metric(labels, count)
        yield family


class TallyHistogram(_Labelled):
    """A labelled histogram for the request path: `observe` is a bisect and two additions."""

    family = HistogramMetricFamily

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, documentation, labels)
        self._bounds = tuple(buckets)
        self._le = [str(float(bound)) for bound in self._bounds] + ["+Inf"]
        # Per label set: the count in each bucket (the last one is +Inf), then the sum.
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        counts = self.series.get(labels)
        if counts is None:
            counts = self.series[labels] = [0.0] * (len(self._bounds) + 2)
        counts[bisect_left(self._bounds, value)] += 1  # `le`: a value on a bound counts in it
        counts[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        for labels, counts in self.series.items():
            cumulative, total = [], 0.0
            for le, count in zip(self._le, counts):
                total += count
                cumulative.append((le, total))
            family.add_metric(labels, cumulative, counts[-1])
        yield family


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._before_scrape = _BeforeScrape()
        registry.register(self._before_scrape)
        self.requests = Tally(
            "router_requests",
            "Requests by experiment, assigned variant and outcome (ok, fallback, error, bad_input).",
            ["experiment", "variant", "outcome"],
        )
        self.request_duration = TallyHistogram(
            "router_request_duration_seconds",
            "End-to-end request time in the router, by experiment and assigned variant.",
            ["experiment", "variant"],
            LATENCY_BUCKETS,
        )
        self.backend_requests = Tally(
            "router_backend_requests",
            "Calls to backends by outcome (ok, error, timeout, bad_input).",
            ["backend", "outcome"],
        )
        self.backend_duration = TallyHistogram(
            "router_backend_duration_seconds", "Time of one backend call.", ["backend"],
            LATENCY_BUCKETS,
        )  # fmt: skip
        self.fallbacks = Tally(
            "router_fallbacks",
            "Requests answered by control because the assigned variant failed.",
            ["experiment"],
        )
        for tally in (
            self.requests, self.request_duration, self.backend_requests, self.backend_duration,
            self.fallbacks,
        ):  # fmt: skip
            registry.register(tally)
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
        # Written + dropped + still buffered = every record the router made: a count to check
        # the log files against (each written record is one whole line).
        self.events_written = Counter(
            "router_events_written",
            "Log records written whole to their file.",
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
