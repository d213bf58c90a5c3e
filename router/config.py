"""The registry: `experiments.yaml` as typed, frozen, validated configuration.

`load_config(path)` is the one entry point. It reports every problem it can find in one
`ConfigError`, each with its dotted place (`experiments.sentiment.traffic: must be between 0 and
100`). Nothing is ever repaired silently: weights are not normalized, numbers are not clamped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from router.checks import registry_problems
from router.durations import parse_duration
from router.problems import describe_errors

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
TOP_LEVEL_KEYS = ("router", "backends", "experiments")


class ConfigError(Exception):
    """A registry that cannot be used; `problems` lists each one as `place: message`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"{source}: {count}\n" + "\n".join(f"  {p}" for p in problems))


# --- field types -----------------------------------------------------------------------------


def _check_percent(value: float) -> float:
    if not 0 <= value <= 100:
        raise ValueError("must be between 0 and 100")
    if abs(value * 100 - round(value * 100)) > 1e-6:
        raise ValueError("must be a multiple of 0.01")
    return value


def _reject_bool(value: Any) -> Any:
    # YAML `yes`/`true` is a bool, and pydantic would take it as 1.
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


def _check_name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ValueError("must be 1-63 letters, digits, '_', '.' or '-', starting alphanumeric")
    return value


def _check_path(value: str) -> str:
    if not value.startswith("/") or any(c in value for c in " ?#\t\n"):
        raise ValueError("must be an absolute URL path like /sentiment/prediction")
    return value


def _check_endpoint(value: str) -> str:
    match = re.match(r"^(https?)://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})/?$", value)
    if not match or not 0 < int(match.group(3)) < 65536:
        raise ValueError("must look like http://HOST:PORT (no path)")
    return f"{match.group(1)}://{match.group(2)}:{int(match.group(3))}"


def _check_device(value: str) -> str:
    if value != "cpu" and not re.match(r"^gpu:\d+$", value):
        raise ValueError("must be 'cpu' or 'gpu:N'")
    return value


Percent = Annotated[float, BeforeValidator(_reject_bool), AfterValidator(_check_percent)]
Name = Annotated[str, AfterValidator(_check_name)]
UrlPath = Annotated[str, AfterValidator(_check_path)]
Endpoint = Annotated[str, AfterValidator(_check_endpoint)]
# A duration such as `30s`, `10m`, `1h`, `250ms` or a number of seconds; stored as float seconds.
Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveInt = Annotated[int, BeforeValidator(_reject_bool), Field(gt=0)]
NonNegativeInt = Annotated[int, BeforeValidator(_reject_bool), Field(ge=0)]
Probability = Annotated[float, BeforeValidator(_reject_bool), Field(gt=0, lt=1)]


class _Frozen(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, coerce_numbers_to_str=True
    )


# --- router section --------------------------------------------------------------------------


class UnitIdSource(_Frozen):
    """Where the randomization unit comes from: a header first, then a top-level JSON field."""

    header: Optional[str] = "X-User-Id"
    json_field: Optional[str] = "user_id"


class RouterSettings(_Frozen):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    unit_id: UnitIdSource = UnitIdSource()
    # logged field name -> request header it is read from
    attributes: dict[str, str] = {}
    log_dir: Path = Path("logs")
    state_dir: Path = Path("state")
    admin_token_env: str = "ROUTER_ADMIN_TOKEN"
    hash_unit_ids: bool = False
    max_body_bytes: PositiveInt = 1 << 20
    max_connections: PositiveInt = 1024
    max_connections_per_endpoint: PositiveInt = 256


# --- backends --------------------------------------------------------------------------------


class BackendConfig(_Frozen):
    endpoints: Annotated[tuple[Endpoint, ...], Field(min_length=1)]
    version: str
    model: Optional[str] = None
    device: Annotated[str, AfterValidator(_check_device)] = "cpu"
    timeout_ms: PositiveInt = 1000
    # Forward to this path instead of the request's own path.
    path: Optional[UrlPath] = None
    # Consecutive transport failures (refused, timeout, 5xx, non-JSON) that eject an endpoint.
    eject_after: PositiveInt = 3
    probe_interval_s: Duration = Field(1.0, alias="probe_interval")

    @field_validator("endpoints")
    @classmethod
    def _unique_endpoints(cls, endpoints: tuple[str, ...]) -> tuple[str, ...]:
        duplicates = sorted({e for e in endpoints if endpoints.count(e) > 1})
        if duplicates:
            raise ValueError(f"listed twice: {', '.join(duplicates)}")
        return endpoints


# --- experiments -----------------------------------------------------------------------------


class Variant(_Frozen):
    name: Name
    backend: Name
    weight: Percent


class RampConfig(_Frozen):
    steps: Annotated[tuple[Percent, ...], Field(min_length=1)]
    every_s: Duration = Field(alias="every")
    min_samples: NonNegativeInt = 0

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        if any(later <= earlier for earlier, later in zip(steps, steps[1:])):
            raise ValueError("must be strictly increasing")
        return steps


class SloConfig(_Frozen):
    interval_s: Duration = Field(30.0, alias="interval")
    window_s: Duration = Field(60.0, alias="window")
    min_samples: NonNegativeInt = 200
    failed_checks: PositiveInt = 3
    p99_ms: Annotated[float, BeforeValidator(_reject_bool), Field(gt=0)]
    error_rate: Annotated[float, BeforeValidator(_reject_bool), Field(ge=0, le=1)]
    # Relative limits against control, for noisy absolute thresholds.
    p99_ratio_max: Optional[Annotated[float, BeforeValidator(_reject_bool), Field(gt=0)]] = None
    error_rate_delta_max: Optional[
        Annotated[float, BeforeValidator(_reject_bool), Field(ge=0, le=1)]
    ] = None
    on_breach: Literal["rollback", "pause"] = "rollback"

    @model_validator(mode="after")
    def _window_covers_interval(self) -> SloConfig:
        if self.window_s < self.interval_s:
            raise ValueError("window must be at least as long as interval")
        return self


class MetricSpec(_Frozen):
    metric: Name
    type: Literal["proportion", "mean"]
    direction: Optional[Literal["increase", "decrease"]] = None
    mde: Optional[Annotated[float, BeforeValidator(_reject_bool), Field(gt=0)]] = None
    relative: bool = False


class AnalysisPlan(_Frozen):
    registered_at: date
    primary: MetricSpec
    secondary: tuple[MetricSpec, ...] = ()
    guardrails: tuple[MetricSpec, ...] = ()
    alpha: Probability = 0.05
    power: Probability = 0.8
    min_days: PositiveInt = 7


class ExperimentConfig(_Frozen):
    route: UrlPath
    salt: Annotated[str, Field(min_length=1)]
    revision: PositiveInt = 1
    mode: Literal["ab", "shadow"] = "ab"
    description: Optional[str] = None
    # Two arms ...
    control: Optional[Name] = None
    treatment: Optional[Name] = None
    traffic: Optional[Percent] = None
    # ... or several; the first variant is the control (the fallback target).
    variants: Optional[tuple[Variant, ...]] = None
    fallback: Literal["control", "none"] = "control"
    layer: Optional[Name] = None
    # Percent of the layer's bucket space this experiment owns, [start, end).
    layer_range: Optional[tuple[Percent, Percent]] = None
    ramp: Optional[RampConfig] = None
    slo: Optional[SloConfig] = None
    analysis: Optional[AnalysisPlan] = None

    @property
    def is_multi_arm(self) -> bool:
        return self.variants is not None

    def arms(self) -> list[tuple[str, str]]:
        """(arm name, backend) pairs, control first."""
        if self.variants is not None:
            return [(v.name, v.backend) for v in self.variants]
        return [("control", self.control or ""), ("treatment", self.treatment or "")]

    def control_backend(self) -> str:
        return self.arms()[0][1]

    def configured_traffic(self) -> float:
        """Percent of enrolled units outside control, as written in the file."""
        if self.variants is not None:
            return round(100 - self.variants[0].weight, 2)
        return self.traffic or 0.0


class RouterConfig(_Frozen):
    router: RouterSettings = RouterSettings()
    backends: dict[Name, BackendConfig] = {}
    experiments: dict[Name, ExperimentConfig] = {}

    @model_validator(mode="after")
    def _consistent(self) -> RouterConfig:
        problems = registry_problems(self.router, set(self.backends), self.experiments)
        if problems:
            raise ValueError("; ".join(problems))
        return self


# --- loading ---------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a registry with two `sentiment:` is an error."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (line {mark.line + 1})", mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: Path) -> RouterConfig:
    """Read and validate a registry; relative log_dir/state_dir are taken from the file's folder."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [f"cannot read: {exc}"]) from exc
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}invalid YAML: {problem}"]) from exc
    return parse_config(raw, source=source, base_dir=Path(path).resolve().parent)


def parse_config(
    raw: Any, *, source: str = "config", base_dir: Optional[Path] = None
) -> RouterConfig:
    """Validate a parsed registry; raises ConfigError listing every problem found."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(source, [f"(top level): must be a mapping, got {type(raw).__name__}"])
    problems = [f"{key}: unknown key" for key in raw if key not in TOP_LEVEL_KEYS]
    # Places whose own value was invalid: cross-section checks stay silent about them.
    invalid: list[str] = []

    router = _validate(RouterSettings, raw.get("router"), "router", problems, invalid)
    backends = _validate_section(BackendConfig, raw.get("backends"), "backends", problems, invalid)
    experiments = _validate_section(
        ExperimentConfig, raw.get("experiments"), "experiments", problems, invalid
    )
    problems += [
        problem
        for problem in registry_problems(router, set(backends), experiments)
        if not any(problem.startswith(place) and problem[len(place)] in ".:[" for place in invalid)
    ]
    if problems:
        raise ConfigError(source, problems)

    assert router is not None
    if base_dir is not None:
        router = router.model_copy(
            update={
                "log_dir": base_dir / router.log_dir,
                "state_dir": base_dir / router.state_dir,
            }
        )
    return RouterConfig.model_validate(
        {"router": router, "backends": backends, "experiments": experiments}
    )


def _validate_section(
    model: type[_Frozen], section: Any, place: str, problems: list[str], invalid: list[str]
) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        problems.append(f"{place}: must be a mapping of name -> settings")
        return {}
    validated: dict[str, Any] = {}
    for name, body in section.items():
        try:
            _check_name(str(name))
        except ValueError as exc:
            problems.append(f"{place}.{name}: name {exc}")
        validated[str(name)] = _validate(model, body, f"{place}.{name}", problems, invalid)
    return validated


def _validate(
    model: type[_Frozen], body: Any, place: str, problems: list[str], invalid: list[str]
) -> Any:
    """The validated model; if some fields are invalid, a model without them (for cross checks).

    The fields left out are added to `invalid`, so that the cross checks do not report them a
    second time (`traffic: required` after `traffic: must be between 0 and 100`).
    """
    if body is None:
        body = {}
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems.extend(describe_errors(place, exc))
        errors = exc.errors()
    if not isinstance(body, Mapping):
        invalid.append(place)
        return None
    bad_fields = {str(e["loc"][0]) for e in errors if e["loc"]}
    invalid.extend(f"{place}.{field}" for field in bad_fields)
    try:
        return model.model_validate({k: v for k, v in body.items() if k not in bad_fields})
    except ValidationError:
        invalid.append(place)
        return None
