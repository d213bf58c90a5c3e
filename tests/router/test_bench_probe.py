"""The router benchmark's interval for the paired p50 overhead (scripts/bench_router.py)."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from types import ModuleType
from typing import Any

import pytest
from scipy.stats import binom

from tests.router.data import load_table
from tests.support import REPO

SCRIPT = REPO / "scripts" / "bench_router.py"
CASES = load_table("bench_median_ranks.json")["cases"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_router", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"n={case['n']}")
def test_interval_is_the_tabled_order_statistics(bench: ModuleType, case: dict[str, Any]) -> None:
    n = case["n"]
    values = [float(rank) for rank in range(1, n + 1)]  # value == rank
    random.Random(n).shuffle(values)
    low, high = bench.median_interval(values)
    assert (low, high) == (case["low_rank"], case["high_rank"])
    coverage = 1 - 2 * binom.cdf(case["low_rank"] - 1, n, 0.5)
    assert coverage == pytest.approx(case["coverage"], abs=1e-5)
    assert coverage >= 0.95


def test_interval_covers_the_true_median_about_95_percent_of_the_time(bench: ModuleType) -> None:
    rng = random.Random(7)
    trials = 2000
    covered = 0
    for _ in range(trials):
        sample = [rng.expovariate(1.0) for _ in range(101)]  # skewed, like latencies
        low, high = bench.median_interval(sample)
        covered += low <= math.log(2) <= high  # the median of Exp(1)
    assert 0.93 <= covered / trials <= 0.98
