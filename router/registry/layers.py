"""Bucket space and layers: how the registry's percentages become buckets.

Assignment (router.experiment.assign) hashes a unit into one of BUCKETS buckets; a percentage
of the file is a whole number of buckets (0.01% each). Experiments sharing a layer own disjoint
slices of the layer's buckets: a rule of the registry (router.registry.rules checks that
explicit slices do not overlap, and that a reload moves none without a new revision) as much
as of assignment.
"""

from __future__ import annotations

from collections.abc import Mapping

from router.registry.schema import ExperimentConfig

BUCKETS = 10_000


def percent_to_buckets(percent: float) -> int:
    return round(percent * 100)


def layer_slices(experiments: Mapping[str, ExperimentConfig]) -> dict[str, tuple[int, int]]:
    """[start, end) layer buckets of each experiment that has a layer.

    Explicit `layer_range`s are used as given; otherwise the experiments of a layer split it
    into equal consecutive slices in the order they appear in the file.
    """
    members: dict[str, list[str]] = {}
    for name, experiment in experiments.items():
        if experiment.layer is not None:
            members.setdefault(experiment.layer, []).append(name)
    slices: dict[str, tuple[int, int]] = {}
    for names in members.values():
        for index, name in enumerate(names):
            explicit = experiments[name].layer_range
            if explicit is not None:
                slices[name] = (percent_to_buckets(explicit[0]), percent_to_buckets(explicit[1]))
            else:
                slices[name] = (
                    BUCKETS * index // len(names),
                    BUCKETS * (index + 1) // len(names),
                )
    return slices
