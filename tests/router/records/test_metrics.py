"""The request-path tallies (router.records.metrics) export exactly what prometheus_client's own
Counter and Histogram export for the same observations."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.samples import Sample

from router.records.metrics import LATENCY_BUCKETS, Tally, TallyHistogram


def _samples(registry: CollectorRegistry) -> list[Sample]:
    """Every sample but the `_created` timestamps, which the tallies do not keep."""
    return sorted(
        (s for family in registry.collect() for s in family.samples
         if not s.name.endswith("_created")),
        key=lambda s: (s.name, sorted(s.labels.items())),
    )  # fmt: skip


def test_tallies_export_what_prometheus_client_exports() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = Tally("t_requests", "Requests.", ["experiment", "outcome"])
    histogram = TallyHistogram("t_seconds", "Seconds.", ["backend"], LATENCY_BUCKETS)
    ours.register(tally)
    ours.register(histogram)
    counter = Counter("t_requests", "Requests.", ["experiment", "outcome"], registry=theirs)
    reference = Histogram(
        "t_seconds", "Seconds.", ["backend"], buckets=LATENCY_BUCKETS, registry=theirs
    )
    rng = random.Random(7)
    # Values on the bucket bounds too: `le` means a value equal to a bound counts in it.
    values = [*LATENCY_BUCKETS, 0.0, 11.0] + [rng.expovariate(50) for _ in range(500)]
    for value in values:
        backend = rng.choice(["v1", "v2"])
        histogram.observe((backend,), value)
        reference.labels(backend).observe(value)
        labels = (rng.choice(["a", "b"]), rng.choice(["ok", "error"]))
        tally.add(labels)
        counter.labels(*labels).inc()
    ours_samples, their_samples = _samples(ours), _samples(theirs)
    assert [(s.name, s.labels) for s in ours_samples] == [(s.name, s.labels) for s in their_samples]
    for mine, reference_sample in zip(ours_samples, their_samples):
        assert abs(mine.value - reference_sample.value) < 1e-9, mine
