"""SLO measurement and evaluation: sliding windows of request outcomes and the check verdict.

Pure logic (no aiohttp, no I/O). The request path calls `SlidingWindow.record` once per backend
call; the guard calls `snapshot` and `evaluate` once per check interval.

Latencies go into a fixed log-scale histogram: bin `i` holds [FLOOR * G**i, FLOOR * G**(i+1))
with G = 1.02, so a bin's geometric midpoint is within 1% of every latency in it. Recording is
one `math.log` and a dict increment; nothing is sorted per request. Percentiles interpolate
between order statistics like numpy's default ("linear") method.

Every call counts, failed ones too: a timeout is both an error and a slow request, and a
refused connection is an error whose tiny latency must not hide among the successes' latency
(the error rate catches it).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Protocol

Check = Literal["pass", "fail", "inconclusive"]
CHECK_SEVERITY: dict[Check, int] = {"pass": 0, "inconclusive": 1, "fail": 2}

LATENCY_FLOOR_S = 1e-5
LATENCY_CEILING_S = 600.0
GROWTH = 1.02
_INV_LOG_GROWTH = 1.0 / math.log(GROWTH)
MAX_BIN = int(math.log(LATENCY_CEILING_S / LATENCY_FLOOR_S) * _INV_LOG_GROWTH)
_INV_FLOOR = 1.0 / LATENCY_FLOOR_S
_log = math.log


def latency_bin(latency_s: float) -> int:
    """The histogram bin of a latency; out-of-range values go to the first or last bin."""
    if not latency_s > LATENCY_FLOOR_S:  # also catches NaN
        return 0
    return min(int(_log(latency_s * _INV_FLOOR) * _INV_LOG_GROWTH), MAX_BIN)


def bin_value(index: int) -> float:
    """The geometric midpoint of a bin, in seconds."""
    return LATENCY_FLOOR_S * math.pow(GROWTH, index + 0.5)


def histogram_quantile(bins: Mapping[int, int], q: float) -> Optional[float]:
    """The q-quantile (0..1) in seconds of a bin -> count histogram; None when it is empty.

    Order statistic k (0-based) is taken as its bin's midpoint; the quantile interpolates
    linearly between order statistics floor(q*(n-1)) and the next, as numpy does.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be between 0 and 1, got {q}")
    total = sum(bins.values())
    if total == 0:
        return None
    rank = q * (total - 1)
    low_rank = math.floor(rank)
    fraction = rank - low_rank
    low_value: Optional[float] = None
    seen = 0
    for index in sorted(bins):
        seen += bins[index]
        if low_value is None and seen > low_rank:
            low_value = bin_value(index)
            if fraction == 0 or seen > low_rank + 1:
                return low_value
        elif low_value is not None and seen > low_rank + 1:
            return low_value + fraction * (bin_value(index) - low_value)
    assert low_value is not None  # rank < total, so the loop found it
    return low_value


@dataclass(frozen=True)
class WindowStats:
    """What one arm did in the window: calls, failed calls, their rate and p99 latency."""

    count: int
    errors: int
    error_rate: Optional[float]  # None without calls
    p99_ms: Optional[float]  # None without calls
    compared: int = 0  # shadow answers compared with control's
    agreed: int = 0  # ... of which had the same top class

    @property
    def agreement_rate(self) -> Optional[float]:
        return self.agreed / self.compared if self.compared else None

    def as_measured(self, prefix: str = "") -> dict[str, Any]:
        measured: dict[str, Any] = {
            f"{prefix}samples": self.count,
            f"{prefix}errors": self.errors,
            f"{prefix}error_rate": _rounded(self.error_rate, 6),
            f"{prefix}p99_ms": _rounded(self.p99_ms, 3),
        }
        if self.compared:
            measured[f"{prefix}agreement_rate"] = _rounded(self.agreement_rate, 6)
            measured[f"{prefix}compared"] = self.compared
        return measured


EMPTY_STATS = WindowStats(count=0, errors=0, error_rate=None, p99_ms=None)


class _Bucket:
    """One time slice of the window."""

    __slots__ = ("agreed", "bins", "compared", "count", "errors", "slot")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.count = 0
        self.errors = 0
        self.compared = 0
        self.agreed = 0
        self.bins: dict[int, int] = {}


# A SlidingWindow as plain data: {"total": n, "slices": [[slot, count, errors, compared,
# agreed, [[bin, n], ...]], ...]}.
WindowExport = dict[str, Any]


def _add_slice(
    slots: dict[int, _Bucket],
    slot: int,
    count: int,
    errors: int,
    compared: int,
    agreed: int,
    bins: Iterable[Any],
) -> None:
    bucket = slots.get(slot)
    if bucket is None:
        bucket = slots[slot] = _Bucket(slot)
    bucket.count += count
    bucket.errors += errors
    bucket.compared += compared
    bucket.agreed += agreed
    for index, n in bins:
        bucket.bins[index] = bucket.bins.get(index, 0) + n


class SlidingWindow:
    """Outcomes of one (experiment, arm) over the last `retention_s` seconds.

    Time is cut into slices of `resolution_s`; a snapshot covers the slices overlapping the last
    `window_s` seconds, so it spans between `window_s - resolution_s` and `window_s` of data.
    Memory is bounded by retention_s / resolution_s slices of at most MAX_BIN + 1 counters.
    A clock that steps back adds to the newest slice instead of reordering slices.
    """

    def __init__(self, retention_s: float, resolution_s: float = 1.0) -> None:
        if not retention_s > 0 or not resolution_s > 0:
            raise ValueError("retention_s and resolution_s must be > 0")
        self.retention_s = retention_s
        self.resolution_s = resolution_s
        self._keep_slots = math.ceil(retention_s / resolution_s) + 1
        self._buckets: deque[_Bucket] = deque()
        self.total = 0  # every call ever recorded: the ramp counts samples per step from it

    @property
    def slices(self) -> int:
        """Time slices held now (bounded by retention_s / resolution_s + 2)."""
        return len(self._buckets)

    def _bucket_at(self, now: float) -> _Bucket:
        slot = math.floor(now / self.resolution_s)
        buckets = self._buckets
        if buckets and buckets[-1].slot >= slot:
            return buckets[-1]
        bucket = _Bucket(slot)
        buckets.append(bucket)
        oldest = slot - self._keep_slots
        while buckets[0].slot <= oldest:
            buckets.popleft()
        return bucket

    def record(self, latency_s: float, ok: bool, now: float) -> None:
        # The request path: latency_bin and _bucket_at inlined (half the cost of calling them).
        buckets = self._buckets
        bucket = buckets[-1] if buckets else None
        if bucket is None or now >= (bucket.slot + 1) * self.resolution_s:
            bucket = self._bucket_at(now)
        bucket.count += 1
        if not ok:
            bucket.errors += 1
        if latency_s > LATENCY_FLOOR_S:
            index = int(_log(latency_s * _INV_FLOOR) * _INV_LOG_GROWTH)
            if index > MAX_BIN:
                index = MAX_BIN
        else:
            index = 0
        bins = bucket.bins
        bins[index] = bins.get(index, 0) + 1
        self.total += 1

    def record_agreement(self, agree: bool, now: float) -> None:
        bucket = self._bucket_at(now)
        bucket.compared += 1
        if agree:
            bucket.agreed += 1

    def export(self) -> WindowExport:
        """The slices as plain data, for another process to merge (the fleet's guard)."""
        return {
            "total": self.total,
            "slices": [
                [b.slot, b.count, b.errors, b.compared, b.agreed, sorted(b.bins.items())]
                for b in self._buckets
            ],
        }

    def merged(self, exports: Iterable[WindowExport]) -> SlidingWindow:
        """A window with this one's calls and those of `exports` (other processes' windows of
        the same length, on clocks that agree): slices of the same time add up."""
        slots: dict[int, _Bucket] = {}
        for bucket in self._buckets:
            _add_slice(slots, bucket.slot, bucket.count, bucket.errors, bucket.compared,
                       bucket.agreed, bucket.bins.items())  # fmt: skip
        total = self.total
        for exported in exports:
            total += int(exported["total"])
            for slot, count, errors, compared, agreed, bins in exported["slices"]:
                _add_slice(slots, slot, count, errors, compared, agreed, bins)
        window = SlidingWindow(self.retention_s, self.resolution_s)
        window._buckets.extend(slots[slot] for slot in sorted(slots))
        window.total = total
        return window

    def snapshot(self, now: float, window_s: float) -> WindowStats:
        newest = math.floor(now / self.resolution_s)
        first = newest - max(1, math.ceil(window_s / self.resolution_s - 1e-9)) + 1
        count = errors = compared = agreed = 0
        bins: dict[int, int] = {}
        for bucket in self._buckets:
            if not first <= bucket.slot <= newest:
                continue
            count += bucket.count
            errors += bucket.errors
            compared += bucket.compared
            agreed += bucket.agreed
            for index, n in bucket.bins.items():
                bins[index] = bins.get(index, 0) + n
        if count == 0:
            return WindowStats(0, 0, None, None, compared, agreed)
        p99_s = histogram_quantile(bins, 0.99)
        assert p99_s is not None
        return WindowStats(count, errors, errors / count, p99_s * 1000.0, compared, agreed)


# --- thresholds and the check ----------------------------------------------------------------


class SloConfigLike(Protocol):
    """The attributes of an experiment's `slo:` section that the check reads."""

    @property
    def min_samples(self) -> int: ...
    @property
    def p99_ms(self) -> Optional[float]: ...
    @property
    def error_rate(self) -> Optional[float]: ...
    @property
    def p99_ratio_max(self) -> Optional[float]: ...
    @property
    def error_rate_delta_max(self) -> Optional[float]: ...


@dataclass(frozen=True)
class SloThresholds:
    min_samples: int
    p99_ms: Optional[float] = None
    error_rate: Optional[float] = None
    p99_ratio_max: Optional[float] = None
    error_rate_delta_max: Optional[float] = None

    def __post_init__(self) -> None:
        if self.min_samples < 0:
            raise ValueError(f"slo.min_samples: must be >= 0, got {self.min_samples}")
        for name in ("p99_ms", "error_rate", "p99_ratio_max", "error_rate_delta_max"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"slo.{name}: must be >= 0, got {value}")

    @classmethod
    def from_config(cls, slo: SloConfigLike) -> SloThresholds:
        return cls(
            min_samples=slo.min_samples,
            p99_ms=slo.p99_ms,
            error_rate=slo.error_rate,
            p99_ratio_max=slo.p99_ratio_max,
            error_rate_delta_max=slo.error_rate_delta_max,
        )

    @property
    def relative(self) -> bool:
        return self.p99_ratio_max is not None or self.error_rate_delta_max is not None

    def as_record(self) -> dict[str, Any]:
        """The thresholds that are set, as logged in decision records."""
        return {
            name: value
            for name, value in (
                ("min_samples", self.min_samples),
                ("p99_ms", self.p99_ms),
                ("error_rate", self.error_rate),
                ("p99_ratio_max", self.p99_ratio_max),
                ("error_rate_delta_max", self.error_rate_delta_max),
            )
            if value is not None
        }


@dataclass(frozen=True)
class CheckResult:
    check: Check
    measured: Mapping[str, Any]
    thresholds: Mapping[str, Any]
    reasons: tuple[str, ...] = field(default=())

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def evaluate(
    thresholds: SloThresholds, treatment: WindowStats, control: Optional[WindowStats] = None
) -> CheckResult:
    """The verdict on one arm's window, against absolute limits and, if set, control's window.

    - No calls, or fewer than `min_samples`: inconclusive, whatever the numbers say.
    - Any limit exceeded (strictly): fail. Limits that could be evaluated are enough to fail.
    - A relative limit (`p99_ratio_max`, `error_rate_delta_max`) needs control to have
      `min_samples` calls too; without them that limit is inconclusive, and so is the check
      unless another limit failed. A check passes only when every configured limit was
      evaluated and held.
    """
    measured = treatment.as_measured()
    record = thresholds.as_record()
    if treatment.count == 0 or treatment.count < thresholds.min_samples:
        reason = f"{treatment.count} samples < min_samples {thresholds.min_samples}"
        return CheckResult("inconclusive", measured, record, (reason,))
    assert treatment.error_rate is not None and treatment.p99_ms is not None

    failures: list[str] = []
    unknowns: list[str] = []
    if thresholds.p99_ms is not None and treatment.p99_ms > thresholds.p99_ms:
        failures.append(f"p99 {treatment.p99_ms:.1f} ms > {thresholds.p99_ms:g} ms")
    if thresholds.error_rate is not None and treatment.error_rate > thresholds.error_rate:
        failures.append(f"error rate {treatment.error_rate:.4f} > {thresholds.error_rate:g}")

    if thresholds.relative:
        if control is None or control.count == 0 or control.count < thresholds.min_samples:
            have = control.count if control is not None else 0
            unknowns.append(
                f"control has {have} samples < min_samples {thresholds.min_samples}: "
                "relative limits not evaluated"
            )
        else:
            assert control.error_rate is not None and control.p99_ms is not None
            measured.update(control.as_measured("control_"))
            if thresholds.p99_ratio_max is not None:
                ratio = treatment.p99_ms / control.p99_ms
                measured["p99_ratio"] = round(ratio, 4)
                if ratio > thresholds.p99_ratio_max:
                    failures.append(
                        f"p99 ratio to control {ratio:.2f} > {thresholds.p99_ratio_max:g}"
                    )
            if thresholds.error_rate_delta_max is not None:
                delta = treatment.error_rate - control.error_rate
                measured["error_rate_delta"] = round(delta, 6)
                if delta > thresholds.error_rate_delta_max:
                    failures.append(
                        f"error rate {delta:+.4f} above control > {thresholds.error_rate_delta_max:g}"
                    )

    if failures:
        return CheckResult("fail", measured, record, tuple(failures + unknowns))
    if unknowns:
        return CheckResult("inconclusive", measured, record, tuple(unknowns))
    return CheckResult("pass", measured, record, ("all limits held",))


def worst(results: Mapping[str, CheckResult]) -> tuple[str, CheckResult]:
    """The arm whose check is most severe (fail > inconclusive > pass); first listed on ties."""
    if not results:
        raise ValueError("worst() needs at least one check result")
    return max(results.items(), key=lambda item: CHECK_SEVERITY[item[1].check])


def _rounded(value: Optional[float], digits: int) -> Optional[float]:
    return None if value is None else round(value, digits)
