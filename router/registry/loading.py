"""Loading `experiments.yaml`: YAML to the schema's models, every rule applied, one error.

`load_config(path)` is the one entry point for every reader of the file (the router at start
and on reload, `python -m router check`, the analysis, `python -m serving`). It reports every
problem it finds in one `ConfigError`, each with its dotted place
(`experiments.sentiment.traffic: must be between 0 and 100`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from router.registry.problems import describe_errors
from router.registry.rules import registry_problems
from router.registry.schema import (
    BackendConfig,
    ExperimentConfig,
    Frozen,
    RouterConfig,
    RouterSettings,
    check_name,
)

TOP_LEVEL_KEYS = ("router", "backends", "experiments")


class ConfigError(Exception):
    """A registry that cannot be used; `problems` lists each one as `place: message`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"{source}: {count}\n" + "\n".join(f"  {p}" for p in problems))


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
    model: type[Frozen], section: Any, place: str, problems: list[str], invalid: list[str]
) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        problems.append(f"{place}: must be a mapping of name -> settings")
        return {}
    validated: dict[str, Any] = {}
    for name, body in section.items():
        try:
            check_name(str(name))
        except ValueError as exc:
            problems.append(f"{place}.{name}: name {exc}")
        validated[str(name)] = _validate(model, body, f"{place}.{name}", problems, invalid)
    return validated


def _validate(
    model: type[Frozen], body: Any, place: str, problems: list[str], invalid: list[str]
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
