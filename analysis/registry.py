"""What the analysis takes from `experiments.yaml`, read through the router's own schema.

The file is loaded and validated by `router.registry.loading` exactly as the router loads it,
so a registry is valid for the analysis if and only if it is valid for the router (`python -m
router check`). From it the analysis keeps the log directory, the logged attributes, each
experiment's arms and mode, and its `analysis` block (the pre-registration).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from analysis.arms import ArmLayout
from router.registry.loading import ConfigError, load_config, parse_config
from router.registry.schema import AnalysisPlan, ExperimentConfig, MetricSpec, RouterConfig

__all__ = [
    "AnalysisPlan",
    "ExperimentSpec",
    "MetricPlan",
    "Registry",
    "RegistryError",
    "load_registry",
    "parse_registry",
]

# A metric of the plan (primary, secondary or guardrail), as the registry's schema reads it.
MetricPlan = MetricSpec


class RegistryError(Exception):
    """A registry the analysis cannot use; each problem reads `place: message`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    mode: str
    arms: ArmLayout
    plan: Optional[AnalysisPlan]
    ramp_steps: tuple[float, ...] = ()


@dataclass(frozen=True)
class Registry:
    source: str
    log_dir: Path
    attributes: tuple[str, ...]
    experiments: Mapping[str, ExperimentSpec]

    def experiment(self, name: Optional[str]) -> ExperimentSpec:
        """The named experiment; without a name, the only one there is."""
        if name is None:
            if len(self.experiments) != 1:
                raise RegistryError(
                    self.source,
                    [f"experiments: {len(self.experiments)} defined; choose one with --experiment"],
                )
            return next(iter(self.experiments.values()))
        if name not in self.experiments:
            known = ", ".join(sorted(self.experiments)) or "none"
            raise RegistryError(self.source, [f"experiments.{name}: not defined (known: {known})"])
        return self.experiments[name]


def load_registry(path: Path) -> Registry:
    """Read a registry file; a relative `log_dir` is taken from the file's folder."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise RegistryError(exc.source, exc.problems) from exc
    return _registry(str(path), config)


def parse_registry(
    raw: Any, *, source: str = "registry", base_dir: Optional[Path] = None
) -> Registry:
    """A registry already parsed from YAML (a mapping)."""
    try:
        config = parse_config(raw, source=source, base_dir=base_dir)
    except ConfigError as exc:
        raise RegistryError(exc.source, exc.problems) from exc
    return _registry(source, config)


def _registry(source: str, config: RouterConfig) -> Registry:
    experiments = {name: _spec(name, exp) for name, exp in config.experiments.items()}
    return Registry(source, config.router.log_dir, tuple(config.router.attributes), experiments)


def _spec(name: str, experiment: ExperimentConfig) -> ExperimentSpec:
    if experiment.variants is not None:
        arms = ArmLayout.multi_arm(tuple((v.name, v.weight) for v in experiment.variants))
    else:
        arms = ArmLayout.two_arm(experiment.traffic or 0.0)
    steps = tuple(experiment.ramp.steps) if experiment.ramp is not None else ()
    return ExperimentSpec(name, experiment.mode, arms, experiment.analysis, steps)
