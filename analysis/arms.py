"""Which share of enrolled units each arm should get at a given traffic (pure).

This mirrors the router's assignment contract without importing it: buckets 0..9,999; the
non-control arms take consecutive bucket ranges from 0 in the order listed, and only the
buckets below `traffic * 100` are outside control. Two arms are the case of one such range.
"""

from __future__ import annotations

from dataclasses import dataclass

BUCKETS = 10_000


@dataclass(frozen=True)
class ArmLayout:
    control: str
    others: tuple[str, ...]
    # Upper bucket bound of each arm in `others` (cumulative).
    upper_bounds: tuple[int, ...]
    # Percent of enrolled units outside control, as the registry says today.
    configured_traffic: float

    @classmethod
    def two_arm(cls, traffic: float) -> ArmLayout:
        return cls("control", ("treatment",), (BUCKETS,), traffic)

    @classmethod
    def multi_arm(cls, variants: tuple[tuple[str, float], ...]) -> ArmLayout:
        """`variants` as (name, weight percent), the first one the control."""
        (control, control_weight), *others = variants
        bounds, total = [], 0
        for _, weight in others:
            total += round(weight * 100)
            bounds.append(total)
        return cls(
            control,
            tuple(name for name, _ in others),
            tuple(bounds),
            round(100 - control_weight, 2),
        )

    @property
    def names(self) -> tuple[str, ...]:
        return (self.control, *self.others)

    def shares(self, traffic: float) -> dict[str, float]:
        """Expected share of each arm when `traffic` percent of units are outside control."""
        limit = min(round(traffic * 100), self.upper_bounds[-1])
        shares: dict[str, float] = {}
        lower = 0
        for name, upper in zip(self.others, self.upper_bounds):
            shares[name] = (min(upper, limit) - min(lower, limit)) / BUCKETS
            lower = upper
        return {self.control: 1 - sum(shares.values()), **shares}
