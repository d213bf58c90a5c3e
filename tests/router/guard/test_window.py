"""Sliding windows: p99 accuracy against numpy on recorded and generated latencies, and the
window's time behaviour."""

from __future__ import annotations

import json
import math
from typing import Callable

import numpy as np
import pytest

from router.guard.slo import (
    GROWTH,
    LATENCY_FLOOR_S,
    MAX_BIN,
    SlidingWindow,
    bin_value,
    histogram_quantile,
    latency_bin,
)
from tests.support import DATA

TOLERANCE = 0.05  # the bar: within 5% of the exact p99


def recorded_latencies_s() -> np.ndarray:
    table = json.loads((DATA / "slo_latencies_recorded.json").read_text())
    assert table["unit"] == "ms"
    return np.asarray(table["latencies_ms"], dtype=float) / 1000.0


def _rng() -> np.random.Generator:
    return np.random.default_rng(20261128)


GENERATED: dict[str, Callable[[], np.ndarray]] = {
    "lognormal around 3 ms": lambda: _rng().lognormal(math.log(0.003), 0.5, 20_000),
    "exponential, mean 40 ms": lambda: _rng().exponential(0.040, 20_000),
    "pareto heavy tail": lambda: 0.005 * (1 + _rng().pareto(1.5, 20_000)),
    "uniform 1-100 ms": lambda: _rng().uniform(0.001, 0.100, 20_000),
    "bimodal: 1.5% stuck at 400 ms": lambda: np.concatenate(
        [_rng().normal(0.020, 0.003, 9_850).clip(0.001), np.full(150, 0.400)]
    ),
    "bimodal: exactly 1% slow (p99 between the modes)": lambda: np.concatenate(
        [_rng().normal(0.020, 0.003, 9_900).clip(0.001), _rng().normal(0.400, 0.02, 100)]
    ),
    "timeouts: 5% at the 500 ms timeout": lambda: np.concatenate(
        [_rng().lognormal(math.log(0.004), 0.3, 19_000), np.full(1_000, 0.500)]
    ),
    "constant 5 ms": lambda: np.full(5_000, 0.005),
    "tiny: 7 calls": lambda: np.array([0.003, 0.004, 0.0041, 0.005, 0.006, 0.020, 0.2]),
    "one call": lambda: np.array([0.0123]),
}


def _p99_ms_of(latencies_s: np.ndarray, spread_over_s: float = 0.0) -> float:
    window = SlidingWindow(retention_s=60.0)
    times = np.linspace(0.0, spread_over_s, len(latencies_s))
    for latency, at in zip(latencies_s.tolist(), times.tolist()):
        window.record(latency, True, 1000.0 + at)
    stats = window.snapshot(1000.0 + spread_over_s, 60.0)
    assert stats.count == len(latencies_s)
    assert stats.p99_ms is not None
    return stats.p99_ms


def test_p99_of_recorded_paddle_serving_latencies_is_within_5_percent() -> None:
    latencies = recorded_latencies_s()
    assert len(latencies) >= 5000
    exact_ms = float(np.percentile(latencies, 99)) * 1000
    measured = _p99_ms_of(latencies, spread_over_s=55.0)
    assert measured == pytest.approx(exact_ms, rel=TOLERANCE)
    # The histogram's bins are 2% wide: the error is in fact about 1% at most.
    assert measured == pytest.approx(exact_ms, rel=0.011)


@pytest.mark.parametrize("name", list(GENERATED))
def test_p99_of_generated_latencies_is_within_5_percent(name: str) -> None:
    latencies = GENERATED[name]()
    exact_ms = float(np.percentile(latencies, 99)) * 1000
    assert _p99_ms_of(latencies) == pytest.approx(exact_ms, rel=TOLERANCE)


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0])
def test_histogram_quantiles_follow_numpy_linear_interpolation(q: float) -> None:
    latencies = recorded_latencies_s()
    bins: dict[int, int] = {}
    for latency in latencies.tolist():
        index = latency_bin(latency)
        bins[index] = bins.get(index, 0) + 1
    value = histogram_quantile(bins, q)
    assert value == pytest.approx(float(np.quantile(latencies, q)), rel=0.011)


def test_histogram_quantile_edges() -> None:
    assert histogram_quantile({}, 0.99) is None
    with pytest.raises(ValueError, match="quantile must be between 0 and 1"):
        histogram_quantile({1: 1}, 1.5)
    # Two calls: p50 lies halfway between them.
    low, high = latency_bin(0.010), latency_bin(0.030)
    assert histogram_quantile({low: 1, high: 1}, 0.5) == pytest.approx(
        (bin_value(low) + bin_value(high)) / 2
    )


def test_bins_cover_their_latency_within_one_percent() -> None:
    for latency in np.geomspace(2 * LATENCY_FLOOR_S, 500.0, 2_000).tolist():
        assert bin_value(latency_bin(latency)) == pytest.approx(latency, rel=math.sqrt(GROWTH) - 1)


def test_out_of_range_latencies_are_clamped_not_lost() -> None:
    assert latency_bin(0.0) == 0
    assert latency_bin(-1.0) == 0
    assert latency_bin(float("nan")) == 0
    assert latency_bin(1e9) == MAX_BIN
    window = SlidingWindow(60.0)
    for latency in (0.0, -1.0, float("nan"), 1e9):
        window.record(latency, True, 10.0)
    assert window.snapshot(10.0, 60.0).count == 4


def test_errors_and_error_rate_count_failed_calls() -> None:
    window = SlidingWindow(60.0)
    for i in range(200):
        window.record(0.010, ok=i % 20 != 0, now=100.0 + i * 0.1)
    stats = window.snapshot(120.0, 60.0)
    assert (stats.count, stats.errors) == (200, 10)
    assert stats.error_rate == pytest.approx(0.05)


def test_the_window_slides_old_calls_out() -> None:
    window = SlidingWindow(retention_s=10.0, resolution_s=1.0)
    for i in range(100):  # fast and healthy during [0, 10)
        window.record(0.005, True, i * 0.1)
    for i in range(100):  # slow and failing during [60, 70)
        window.record(0.300, False, 60.0 + i * 0.1)
    recent = window.snapshot(69.95, 10.0)
    assert (recent.count, recent.errors) == (100, 100)
    assert recent.p99_ms == pytest.approx(300, rel=0.011)
    # Nothing in the last 10 s at t=200.
    assert window.snapshot(200.0, 10.0).count == 0
    assert window.snapshot(200.0, 10.0).p99_ms is None


def test_a_snapshot_spans_window_minus_one_slice_to_window() -> None:
    window = SlidingWindow(retention_s=60.0, resolution_s=1.0)
    for second in range(0, 100):
        window.record(0.01, True, second + 0.5)
    # At t=99.5 a 30 s window holds slices 70..99: 30 calls.
    assert window.snapshot(99.5, 30.0).count == 30
    assert window.snapshot(99.5, 1.0).count == 1


def test_memory_is_bounded_by_the_retention() -> None:
    window = SlidingWindow(retention_s=5.0, resolution_s=0.5)
    for i in range(20_000):
        window.record(0.001 * (1 + i % 300), True, i * 0.01)
    assert window.slices <= 5.0 / 0.5 + 2
    assert window.total == 20_000


def test_a_clock_stepping_back_adds_to_the_newest_slice() -> None:
    window = SlidingWindow(retention_s=60.0)
    window.record(0.01, True, 100.0)
    window.record(0.01, False, 50.0)  # NTP stepped the clock back
    stats = window.snapshot(100.0, 60.0)
    assert (stats.count, stats.errors) == (2, 1)


def test_shadow_agreement_is_counted_in_the_window() -> None:
    window = SlidingWindow(retention_s=60.0)
    for i in range(10):
        window.record_agreement(agree=i < 9, now=5.0)
    stats = window.snapshot(5.0, 60.0)
    assert (stats.compared, stats.agreed) == (10, 9)
    assert stats.agreement_rate == pytest.approx(0.9)
    assert stats.as_measured()["agreement_rate"] == pytest.approx(0.9)


def test_bad_window_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="retention_s and resolution_s must be > 0"):
        SlidingWindow(0.0)
    with pytest.raises(ValueError, match="retention_s and resolution_s must be > 0"):
        SlidingWindow(10.0, resolution_s=-1.0)
