"""Deterministic assignment of units to arms (pure: no I/O, no aiohttp).

The rules (docs/router.md, "Assignment"):

- bucket = first 8 bytes of sha256(f"{salt}:{unit}"), big-endian, mod 10,000.
- Two arms: treatment iff bucket < traffic * 100, so raising traffic only adds units.
- Several arms: the first variant is control; the other variants take consecutive bucket
  ranges from 0 in the order listed, control takes the rest. The share outside control is the
  experiment's traffic, so a rollback (traffic 0) sends everyone to control and restoring the
  traffic restores the same buckets.
- Layers: experiments sharing a layer own disjoint slices of the layer's bucket space, where the
  layer bucket uses the layer name as the salt. A unit outside an experiment's slice gets
  control and is not enrolled.
- No unit id: control, not enrolled.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Optional

from router.registry.layers import BUCKETS, layer_slices, percent_to_buckets
from router.registry.schema import ExperimentConfig

try:  # CPython's own sha256: a fraction of the cost per call of OpenSSL's, behind hashlib
    from _sha256 import sha256  # type: ignore[import-not-found]
except ImportError:  # Python 3.12 renamed the module; hashlib's gives the same digest
    from hashlib import sha256


def bucket(salt: str, unit: str) -> int:
    digest = sha256(f"{salt}:{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class Arm:
    name: str
    backend: str


class Assignment(NamedTuple):  # one per request: a tuple is the cheapest to build
    arm: Arm
    enrolled: bool
    bucket: Optional[int]  # the experiment bucket; None without a unit id
    is_control: bool


@dataclass(frozen=True)
class ExperimentPlan:
    """An experiment compiled for fast assignment."""

    name: str
    salt: str
    control: Arm
    others: tuple[Arm, ...]  # the non-control arms, in bucket order
    # Upper bucket bound of each arm in `others`; for two arms the bound is the traffic itself.
    upper_bounds: tuple[int, ...]
    multi_arm: bool
    layer: Optional[str] = None
    layer_slice: Optional[tuple[int, int]] = None  # [start, end) in layer buckets

    def assign(self, unit: Optional[str], traffic: float) -> Assignment:
        """The arm of `unit` with `traffic` percent of enrolled units outside control."""
        if not unit:
            return Assignment(self.control, enrolled=False, bucket=None, is_control=True)
        unit_bucket = bucket(self.salt, unit)
        if self.layer is not None and self.layer_slice is not None:
            start, end = self.layer_slice
            if not start <= bucket(self.layer, unit) < end:
                return Assignment(self.control, enrolled=False, bucket=unit_bucket, is_control=True)
        limit = percent_to_buckets(traffic)
        if self.multi_arm:
            limit = min(limit, self.upper_bounds[-1])
        if unit_bucket >= limit:
            return Assignment(self.control, enrolled=True, bucket=unit_bucket, is_control=True)
        index = bisect_right(self.upper_bounds, unit_bucket) if self.multi_arm else 0
        return Assignment(self.others[index], enrolled=True, bucket=unit_bucket, is_control=False)


def compile_plan(
    name: str, experiment: ExperimentConfig, layer_slice: Optional[tuple[int, int]] = None
) -> ExperimentPlan:
    if experiment.variants is None:
        return ExperimentPlan(
            name=name,
            salt=experiment.salt,
            control=Arm("control", experiment.control or ""),
            others=(Arm("treatment", experiment.treatment or ""),),
            upper_bounds=(BUCKETS,),
            multi_arm=False,
            layer=experiment.layer,
            layer_slice=layer_slice,
        )
    control, *others = experiment.variants
    bounds, total = [], 0
    for variant in others:
        total += percent_to_buckets(variant.weight)
        bounds.append(total)
    return ExperimentPlan(
        name=name,
        salt=experiment.salt,
        control=Arm(control.name, control.backend),
        others=tuple(Arm(v.name, v.backend) for v in others),
        upper_bounds=tuple(bounds),
        multi_arm=True,
        layer=experiment.layer,
        layer_slice=layer_slice,
    )


def compile_plans(experiments: Mapping[str, ExperimentConfig]) -> dict[str, ExperimentPlan]:
    slices = layer_slices(experiments)
    return {name: compile_plan(name, exp, slices.get(name)) for name, exp in experiments.items()}
