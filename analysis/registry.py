"""The parts of `experiments.yaml` the analysis needs, parsed on their own.

The router owns the full schema (router/config.py); this module reads only the log directory,
the logged attributes, each experiment's arms and its `analysis` block (the pre-registration),
and ignores everything else, so the analysis keeps working on registries the router grows.
Every problem is reported at once, each with its dotted place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from analysis.arms import ArmLayout

MetricType = Literal["proportion", "mean"]
Direction = Literal["increase", "decrease"]


class RegistryError(Exception):
    """A registry the analysis cannot use; each problem reads `place: message`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class _Lenient(BaseModel):
    # extra="ignore": the router validates the rest of the registry; the analysis must not break
    # when the router gains a field.
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class MetricPlan(_Lenient):
    metric: str = Field(min_length=1)
    type: MetricType
    direction: Optional[Direction] = None
    mde: Optional[float] = Field(None, gt=0)
    relative: bool = False
    # Expected control mean (rate for proportions), used for the planned sample size. Without it
    # the observed control mean stands in, and the report says so.
    baseline: Optional[float] = Field(None, gt=0)


class AnalysisPlan(_Lenient):
    registered_at: Optional[date] = None
    primary: MetricPlan
    secondary: list[MetricPlan] = []
    guardrails: list[MetricPlan] = []
    alpha: float = Field(0.05, gt=0, lt=1)
    power: float = Field(0.8, gt=0, lt=1)
    min_days: int = Field(7, ge=0)

    @model_validator(mode="after")
    def _metrics_named_once(self) -> AnalysisPlan:
        names = [m.metric for m in (self.primary, *self.secondary, *self.guardrails)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"metric listed twice: {', '.join(repeated)}")
        return self


class _Variant(_Lenient):
    name: str = Field(min_length=1)
    weight: float = Field(ge=0, le=100)


class _Ramp(_Lenient):
    steps: list[float] = []


class _Experiment(_Lenient):
    mode: Literal["ab", "shadow"] = "ab"
    ramp: Optional[_Ramp] = None
    traffic: Optional[float] = Field(None, ge=0, le=100)
    variants: Optional[list[_Variant]] = Field(None, min_length=2)
    analysis: Optional[AnalysisPlan] = None

    @model_validator(mode="after")
    def _arms_given(self) -> _Experiment:
        if self.variants is None and self.traffic is None:
            raise ValueError("needs `traffic` (two arms) or `variants`")
        return self


class _Router(_Lenient):
    log_dir: str = "logs"
    attributes: Mapping[str, str] = {}


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
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RegistryError(source, [f"cannot read: {exc.strerror or exc}"]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(file)"
        raise RegistryError(source, [f"{where}: invalid YAML: {exc}"]) from exc
    return parse_registry(raw, source=source, base_dir=Path(path).resolve().parent)


def parse_registry(
    raw: Any, *, source: str = "registry", base_dir: Optional[Path] = None
) -> Registry:
    if not isinstance(raw, Mapping):
        raise RegistryError(source, ["(top level): must be a mapping"])
    problems: list[str] = []
    router = _validated(_Router, raw.get("router") or {}, "router", problems)
    experiments_raw = raw.get("experiments") or {}
    if not isinstance(experiments_raw, Mapping):
        problems.append("experiments: must be a mapping of name -> settings")
        experiments_raw = {}
    experiments: dict[str, ExperimentSpec] = {}
    for name, body in experiments_raw.items():
        place = f"experiments.{name}"
        parsed = _validated(_Experiment, body or {}, place, problems)
        if parsed is not None:
            experiments[str(name)] = _experiment_spec(str(name), parsed)
    if problems or router is None:
        raise RegistryError(source, problems)
    log_dir = Path(router.log_dir)
    if base_dir is not None and not log_dir.is_absolute():
        log_dir = base_dir / log_dir
    return Registry(source, log_dir, tuple(router.attributes), experiments)


def _experiment_spec(name: str, parsed: _Experiment) -> ExperimentSpec:
    if parsed.variants is not None:
        arms = ArmLayout.multi_arm(tuple((v.name, v.weight) for v in parsed.variants))
    else:
        arms = ArmLayout.two_arm(parsed.traffic or 0.0)
    steps = tuple(parsed.ramp.steps) if parsed.ramp else ()
    return ExperimentSpec(name, parsed.mode, arms, parsed.analysis, steps)


def _validated(model: type[_Lenient], body: Any, place: str, problems: list[str]) -> Optional[Any]:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join([place, *(str(part) for part in error["loc"])])
            problems.append(f"{where}: {_message(error)}")
        return None


def _message(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
