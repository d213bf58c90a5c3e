"""The registry's rules across fields and sections, and of a reload against the running one.

Each rule returns `place: message` lines; nothing here raises or repairs anything.
`router.registry.loading` applies `registry_problems` to every file it loads, so a rule holds
the same in `python -m router check`, at start and on hot reload; `reload_problems` adds what a
running router must refuse on top.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Optional

from router.records.exposure import EXPOSURE_FIELDS, OPTIONAL_EXPOSURE_FIELDS
from router.registry.layers import layer_slices
from router.registry.schema import ExperimentConfig, RouterConfig, RouterSettings, Variant

ATTRIBUTE_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Paths the router serves itself; an experiment route may not shadow them.
RESERVED_PATHS = (
    "/events",
    "/experiments",
    "/metrics",
    "/healthz",
    "/readyz",
    "/openapi.yaml",
    "/openapi.json",
)
RESERVED_PREFIXES = ("/admin/",)


def experiment_problems(place: str, exp: ExperimentConfig, backends: set[str]) -> list[str]:
    problems: list[str] = []
    two_arm = [f for f in ("control", "treatment", "traffic") if getattr(exp, f) is not None]
    if exp.variants is not None and two_arm:
        problems.append(f"{place}: give either control/treatment/traffic or variants, not both")
    elif exp.variants is None:
        for missing in ("control", "treatment", "traffic"):
            if getattr(exp, missing) is None:
                problems.append(f"{place}.{missing}: required (or give variants)")
        if exp.control is not None and exp.control == exp.treatment:
            problems.append(f"{place}.treatment: must differ from control")
    else:
        problems += _variant_problems(f"{place}.variants", exp.variants)
        if exp.ramp is not None:
            problems.append(f"{place}.ramp: only two-arm experiments ramp")
        if exp.mode == "shadow":
            problems.append(f"{place}.mode: shadow needs a two-arm experiment")
    if exp.ramp is not None and exp.slo is None:
        # Placed at `slo`, so that an slo section invalid in itself is not reported twice.
        problems.append(f"{place}.slo: required with a ramp (it advances on passing checks)")
    for field, backend in _backend_refs(exp):
        if backend not in backends:
            known = ", ".join(sorted(backends)) or "none"
            problems.append(f"{place}.{field}: unknown backend '{backend}' (known: {known})")
    if exp.layer_range is not None:
        if exp.layer is None:
            problems.append(f"{place}.layer_range: needs layer")
        elif exp.layer_range[0] >= exp.layer_range[1]:
            problems.append(f"{place}.layer_range: start must be below end")
    return problems


def _variant_problems(place: str, variants: tuple[Variant, ...]) -> list[str]:
    problems: list[str] = []
    if len(variants) < 2:
        problems.append(f"{place}: needs at least two variants")
    seen: set[str] = set()
    for index, variant in enumerate(variants):
        if variant.name in seen:
            problems.append(f"{place}[{index}].name: duplicate '{variant.name}'")
        seen.add(variant.name)
    total = sum(round(v.weight * 100) for v in variants)
    if total != 10_000:
        problems.append(f"{place}: weights sum to {total / 100:g}, must be exactly 100")
    return problems


def _backend_refs(exp: ExperimentConfig) -> Iterable[tuple[str, str]]:
    if exp.variants is not None:
        for index, variant in enumerate(exp.variants):
            yield f"variants[{index}].backend", variant.backend
    else:
        for field in ("control", "treatment"):
            value = getattr(exp, field)
            if value is not None:
                yield field, value


def registry_problems(
    router: Optional[RouterSettings],
    backends: set[str],
    experiments: Mapping[str, Optional[ExperimentConfig]],
) -> list[str]:
    """Problems across sections; experiments that failed their own validation are None."""
    problems: list[str] = []
    if router is not None:
        problems += _router_problems(router)
    routes: dict[str, str] = {}
    for name, exp in experiments.items():
        if exp is None:
            continue
        place = f"experiments.{name}"
        problems += experiment_problems(place, exp, backends)
        if exp.route in RESERVED_PATHS or exp.route.startswith(RESERVED_PREFIXES):
            problems.append(f"{place}.route: {exp.route} is reserved for the router itself")
        elif exp.route in routes:
            problems.append(f"{place}.route: {exp.route} is already used by {routes[exp.route]}")
        else:
            routes[exp.route] = place
    problems += _layer_problems({n: e for n, e in experiments.items() if e is not None})
    return problems


def _router_problems(router: RouterSettings) -> list[str]:
    problems = []
    if not router.unit_id.header and not router.unit_id.json_field:
        problems.append("router.unit_id: give a header, a json_field or both")
    for field in router.attributes:
        if field in EXPOSURE_FIELDS or field in OPTIONAL_EXPOSURE_FIELDS:
            problems.append(f"router.attributes.{field}: clashes with an exposure record field")
        elif not ATTRIBUTE_PATTERN.match(field):
            problems.append(f"router.attributes.{field}: must be a lower_snake_case field name")
    return problems


def _layer_problems(experiments: Mapping[str, ExperimentConfig]) -> list[str]:
    problems: list[str] = []
    layers: dict[str, list[str]] = {}
    for name, exp in experiments.items():
        if exp.layer is not None:
            layers.setdefault(exp.layer, []).append(name)
    for layer, members in layers.items():
        explicit = [n for n in members if experiments[n].layer_range is not None]
        if explicit and len(explicit) != len(members):
            implicit = ", ".join(n for n in members if n not in explicit)
            problems.append(
                f"experiments.{implicit.split(', ')[0]}.layer_range: layer '{layer}' mixes "
                f"explicit and implicit ranges; give layer_range to {implicit} too"
            )
            continue
        spans = sorted((experiments[n].layer_range or (0.0, 0.0), n) for n in explicit)
        for (first, first_name), (second, second_name) in zip(spans, spans[1:]):
            if second[0] < first[1]:
                problems.append(
                    f"experiments.{second_name}.layer_range: overlaps {first_name} "
                    f"in layer '{layer}'"
                )
    return problems


def reshuffle_problems(old: RouterConfig, new: RouterConfig) -> list[str]:
    """Changes to running experiments that would move units between arms without a new revision.

    Raising or lowering `traffic` of a two-arm experiment is allowed: the ramp is monotone.
    """
    problems: list[str] = []
    old_slices, new_slices = layer_slices(old.experiments), layer_slices(new.experiments)
    for name, before in old.experiments.items():
        after = new.experiments.get(name)
        if after is None:
            continue
        place = f"experiments.{name}"
        if after.revision < before.revision:
            problems.append(f"{place}.revision: went down from {before.revision}")
            continue
        if after.revision > before.revision:
            continue
        changed = []
        if after.salt != before.salt:
            changed.append("salt")
        if _arm_weights(after) != _arm_weights(before):
            changed.append("variants")
        if old_slices.get(name) != new_slices.get(name) or after.layer != before.layer:
            changed.append("layer")
        for field in changed:
            problems.append(
                f"{place}.{field}: changed while running; bump revision "
                f"(now {before.revision}) to reshuffle units"
            )
    return problems


def _arm_weights(exp: ExperimentConfig) -> Optional[list[tuple[str, float]]]:
    """The bucket layout of a multi-arm experiment; None for two arms (whose traffic may move)."""
    if exp.variants is None:
        return None
    return [(v.name, v.weight) for v in exp.variants]


# Settings read once at startup (sockets, files, limits); a reload cannot change them.
RESTART_ONLY = (
    "host", "port", "log_dir", "state_dir", "admin_token_env",
    "max_body_bytes", "max_connections", "max_connections_per_endpoint",
    "max_line_bytes", "max_head_bytes", "max_header_count", "head_timeout_s", "body_timeout_s",
    "max_client_connections", "max_unread_answer_bytes", "lingering_timeout_s", "fleet",
    "grpc_port", "max_grpc_streams",
)  # fmt: skip


def reload_problems(old: RouterConfig, new: RouterConfig) -> list[str]:
    """Why a running router must keep `old` rather than put `new` in force (none: it may)."""
    return restart_problems(old, new) + reshuffle_problems(old, new)


def restart_problems(old: RouterConfig, new: RouterConfig) -> list[str]:
    return [
        f"router.{field}: cannot change without a restart "
        f"(running with {getattr(old.router, field)}, file says {getattr(new.router, field)})"
        for field in RESTART_ONLY
        if getattr(old.router, field) != getattr(new.router, field)
    ]
