"""The registry's schema: `experiments.yaml` as typed, frozen models, field by field.

One schema for every reader of the file: the router, the analysis (its `analysis` block) and
`python -m serving` (the backends' models) all load it through `router.registry.loading`, so a
file valid for one is valid for all. Rules across fields and sections live in
`router.registry.rules`. Nothing is ever repaired silently: weights are not normalized, numbers
are not clamped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from router.registry.durations import parse_duration

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


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


def check_name(value: str) -> str:
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


def _check_rpc_endpoint(value: str) -> str:
    match = re.match(r"^([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})$", value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError("must look like HOST:PORT (a pipeline server's RPC port)")
    return f"{match.group(1)}:{int(match.group(2))}"


def _check_device(value: str) -> str:
    if value != "cpu" and not re.match(r"^gpu:\d+$", value):
        raise ValueError("must be 'cpu' or 'gpu:N'")
    return value


Percent = Annotated[float, BeforeValidator(_reject_bool), AfterValidator(_check_percent)]
Name = Annotated[str, AfterValidator(check_name)]
UrlPath = Annotated[str, AfterValidator(_check_path)]
Endpoint = Annotated[str, AfterValidator(_check_endpoint)]
RpcEndpoint = Annotated[str, AfterValidator(_check_rpc_endpoint)]
# A duration such as `30s`, `10m`, `1h`, `250ms` or a number of seconds; stored as float seconds.
Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveInt = Annotated[int, BeforeValidator(_reject_bool), Field(gt=0)]
NonNegativeInt = Annotated[int, BeforeValidator(_reject_bool), Field(ge=0)]
Probability = Annotated[float, BeforeValidator(_reject_bool), Field(gt=0, lt=1)]


def _refuse_repeats(what: str, values: Sequence[str]) -> None:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what}listed twice: {', '.join(repeated)}")


class Frozen(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, coerce_numbers_to_str=True
    )


# --- router section --------------------------------------------------------------------------


class UnitIdSource(Frozen):
    """Where the randomization unit comes from: a header first, then a top-level JSON field."""

    header: Optional[str] = "X-User-Id"
    json_field: Optional[str] = "user_id"


def _check_redis_url(value: str) -> str:
    if not re.match(r"^(rediss?|unix)://\S+$", value):
        raise ValueError("must be a Redis URL like redis://HOST:PORT/DB (rediss:// or unix://)")
    return value


class FleetSettings(Frozen):
    """Several routers acting as one: rollout state, the SLO guard's decisions and its
    measurements shared through Redis (router.fleet)."""

    redis: Annotated[str, AfterValidator(_check_redis_url)]
    # Prefix of every key and channel, so that several fleets can share one Redis.
    name: Name = "paddle-ab"
    # This replica's id in logs and records; default: host name and port.
    replica: Optional[Name] = None


class RouterSettings(Frozen):
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
    # The backend connection pool: in all, and to each endpoint.
    max_connections: PositiveInt = 1024
    max_connections_per_endpoint: PositiveInt = 256
    # What one client may send or make the router hold or wait for (nginx's defaults where
    # nginx has the same limit): the request line and each header field, the whole head, the
    # number of header fields, the time to send a head and then a body, client connections
    # open at once, answer bytes queued for a client that does not read before reading pauses,
    # how long a refused client may still send before the connection closes (lingering close).
    max_line_bytes: PositiveInt = 8192
    max_head_bytes: PositiveInt = 32768
    max_header_count: PositiveInt = 100
    head_timeout_s: Duration = Field(60.0, alias="head_timeout")
    body_timeout_s: Duration = Field(60.0, alias="body_timeout")
    max_client_connections: PositiveInt = 1024
    max_unread_answer_bytes: PositiveInt = 1 << 16
    lingering_timeout_s: Duration = Field(5.0, alias="lingering_timeout")
    # Each logged attribute's value, in characters.
    max_attribute_chars: PositiveInt = 256
    # /events takes outcomes stamped at most this long ago, or this far ahead of the clock.
    events_max_age_s: Duration = Field(7 * 86400.0, alias="events_max_age")
    events_max_ahead_s: Duration = Field(300.0, alias="events_max_ahead")
    # Absent: this router alone, its rollout state in state_dir.
    fleet: Optional[FleetSettings] = None
    # Set: Paddle Serving's gRPC service (PipelineService/inference) is served on this port
    # too, with at most `max_grpc_streams` calls in flight per client connection.
    grpc_port: Optional[Annotated[int, Field(ge=1, le=65535)]] = None
    max_grpc_streams: PositiveInt = 100


# --- backends --------------------------------------------------------------------------------


class BackendConfig(Frozen):
    endpoints: Annotated[tuple[Endpoint, ...], Field(min_length=1)]
    # The same servers' RPC ports, in the order of `endpoints`: gRPC calls go there.
    grpc_endpoints: Optional[Annotated[tuple[RpcEndpoint, ...], Field(min_length=1)]] = None
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
        _refuse_repeats("", endpoints)
        return endpoints

    @field_validator("grpc_endpoints")
    @classmethod
    def _unique_rpc_endpoints(
        cls, endpoints: Optional[tuple[str, ...]]
    ) -> Optional[tuple[str, ...]]:
        if endpoints is not None:
            _refuse_repeats("", endpoints)
        return endpoints

    @model_validator(mode="after")
    def _rpc_endpoint_per_endpoint(self) -> BackendConfig:
        if self.grpc_endpoints is not None and len(self.grpc_endpoints) != len(self.endpoints):
            raise ValueError(
                f"grpc_endpoints: {len(self.grpc_endpoints)} listed for "
                f"{len(self.endpoints)} endpoints (one RPC port per server, in the same order)"
            )
        return self


# --- experiments -----------------------------------------------------------------------------


class Variant(Frozen):
    name: Name
    backend: Name
    weight: Percent


class RampConfig(Frozen):
    steps: Annotated[tuple[Percent, ...], Field(min_length=1)]
    every_s: Duration = Field(alias="every")
    min_samples: NonNegativeInt = 0

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        if any(later <= earlier for earlier, later in zip(steps, steps[1:])):
            raise ValueError("must be strictly increasing")
        return steps


class SloConfig(Frozen):
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


MetricType = Literal["proportion", "mean"]
Direction = Literal["increase", "decrease"]
PositiveFloat = Annotated[float, BeforeValidator(_reject_bool), Field(gt=0)]


class MetricSpec(Frozen):
    metric: Name
    type: MetricType
    direction: Optional[Direction] = None
    mde: Optional[PositiveFloat] = None
    relative: bool = False
    # Expected control mean (rate for proportions), for the planned sample size. Without it
    # the observed control mean stands in, and the report says so.
    baseline: Optional[PositiveFloat] = None


class AnalysisPlan(Frozen):
    """The pre-registration the analysis judges a run by (docs/analysis.md)."""

    registered_at: Optional[date] = None  # undated plans are reported as such
    primary: MetricSpec
    secondary: tuple[MetricSpec, ...] = ()
    guardrails: tuple[MetricSpec, ...] = ()
    alpha: Probability = 0.05
    power: Probability = 0.8
    min_days: NonNegativeInt = 7

    @model_validator(mode="after")
    def _metrics_named_once(self) -> AnalysisPlan:
        metrics = [m.metric for m in (self.primary, *self.secondary, *self.guardrails)]
        _refuse_repeats("metric ", metrics)
        return self


class ExperimentConfig(Frozen):
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


class RouterConfig(Frozen):
    router: RouterSettings = RouterSettings.model_validate({})
    backends: dict[Name, BackendConfig] = {}
    experiments: dict[Name, ExperimentConfig] = {}
