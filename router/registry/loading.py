"""Loading `experiments.yaml`: YAML to the schema's models, every rule applied, one error.

`load_config(path)` is the one entry point for every reader of the file (the router at start
and on reload, `python -m router check`, the analysis, `python -m serving`). It reports every
problem it finds in one `ConfigError`, each with its dotted place
(`experiments.sentiment.traffic: must be between 0 and 100`).

Whatever the file holds, loading ends in a registry or a `ConfigError`, never in another
exception: the file is read by `read_registry` (a regular file of at most MAX_REGISTRY_BYTES,
checked before a byte is parsed, so a FIFO, a device or a huge file is refused at once and never
blocks or fills memory), YAML nested deeper than MAX_NESTING is refused with its line, and any
other exception while parsing or validating becomes a one-line problem.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from router.registry.problems import describe_errors, exception_line, one_line
from router.registry.rules import registry_problems
from router.registry.schema import (
    BackendConfig,
    ExperimentConfig,
    Frozen,
    RouterConfig,
    RouterSettings,
    check_name,
)

log = logging.getLogger(__name__)

TOP_LEVEL_KEYS = ("router", "backends", "experiments")
# A registry of a hundred experiments is some 30 KiB; anything near this is not a registry, and
# refusing it before parsing bounds the time and memory a reload can take.
MAX_REGISTRY_BYTES = 1 << 20
# Deeper than any registry goes (about six levels), far below Python's recursion limit: the
# YAML composer recurses once per level.
MAX_NESTING = 64
# How many problems an error message lists (all of them stay in `ConfigError.problems`).
MAX_LISTED_PROBLEMS = 100


class ConfigError(Exception):
    """A registry that cannot be used; `problems` lists each one as `place: message`.

    Each problem is one line. The message is `source: problem` for one problem, else a count
    followed by the problems, one per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = [one_line(p) for p in problems]
        if len(self.problems) == 1:
            super().__init__(f"{source}: {self.problems[0]}")
            return
        count = f"{len(self.problems)} problems"
        listed = [f"  {p}" for p in self.problems[:MAX_LISTED_PROBLEMS]]
        if len(self.problems) > MAX_LISTED_PROBLEMS:
            listed.append(f"  ... and {len(self.problems) - MAX_LISTED_PROBLEMS} more")
        super().__init__(f"{source}: {count}\n" + "\n".join(listed))


# --- reading the file ------------------------------------------------------------------------


def read_registry(path: Path) -> bytes:
    """The file's bytes; ConfigError unless it is a regular file of at most MAX_REGISTRY_BYTES.

    The kind and size are checked before the file is opened (a FIFO would block the reader, a
    device such as /dev/zero would never end), again on the opened file (it may have been
    swapped in between), and at most one byte over the limit is read (it may be growing)."""
    source = str(path)
    try:
        _refuse_unusable(os.stat(path), source)
        # O_NONBLOCK: should a FIFO be swapped in after the stat, opening it does not wait
        # for a writer; O_NOCTTY: a terminal never becomes ours.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            _refuse_unusable(os.fstat(descriptor), source)
            data = _read_at_most(descriptor, MAX_REGISTRY_BYTES + 1)
        finally:
            os.close(descriptor)
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror or exc}"]) from exc
    if len(data) > MAX_REGISTRY_BYTES:
        raise ConfigError(source, [_too_large(len(data), growing=True)])
    return data


def _refuse_unusable(info: os.stat_result, source: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(source, [f"cannot read: {_kind(info.st_mode)}, not a regular file"])
    if info.st_size > MAX_REGISTRY_BYTES:
        raise ConfigError(source, [_too_large(info.st_size)])


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")


def _too_large(size: int, *, growing: bool = False) -> str:
    what = "grew past the limit while being read" if growing else f"{size} bytes"
    return f"too large ({what}): a registry may be at most {MAX_REGISTRY_BYTES} bytes"


def _read_at_most(descriptor: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(descriptor, min(remaining, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# --- YAML ------------------------------------------------------------------------------------


class _RegistryLoader(yaml.SafeLoader):
    """SafeLoader with three refusals: two equal keys in a mapping (PyYAML keeps the last one;
    a registry with two `sentiment:` is an error), a key that is a list or a mapping, and
    nesting deeper than MAX_NESTING."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_NESTING} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
        mark = key_node.start_mark
        try:
            duplicate = key in seen
        except TypeError:  # unhashable: `? [a, b] : c`
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value, not a list or a mapping", mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (line {mark.line + 1})", mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_RegistryLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(data: bytes, source: str) -> Any:
    """The YAML document; ConfigError (one line, with the place when known) for any failure."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start : exc.start + 1].hex()
        raise ConfigError(
            source, [f"line {line}: not UTF-8 text (byte 0x{byte} at offset {exc.start})"]
        ) from None
    try:
        return yaml.load(text, Loader=_RegistryLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [f"{where}invalid YAML: {exc.problem or exc}"]) from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        problem = f"line {line}: invalid YAML: character #x{exc.character:04x}: {exc.reason}"
        raise ConfigError(source, [problem]) from exc
    except Exception as exc:  # RecursionError, MemoryError, a PyYAML bug: still one problem
        log.debug("%s: the YAML parser failed", source, exc_info=True)
        raise ConfigError(source, [f"invalid YAML: {exception_line(exc)}"]) from exc


# --- the registry ----------------------------------------------------------------------------


def load_config(path: Path) -> RouterConfig:
    """Read and validate a registry; relative log_dir/state_dir are taken from the file's folder.

    Raises ConfigError and nothing else, whatever the file holds."""
    source = str(path)
    raw = _parse_yaml(read_registry(path), source)
    if raw is None:
        # An editor that truncates the file before writing it shows an empty file for a moment;
        # taken as a registry with no experiments, it would end every experiment.
        raise ConfigError(source, ["(top level): the file is empty"])
    try:
        return parse_config(raw, source=source, base_dir=Path(path).resolve().parent)
    except ConfigError:
        raise
    except Exception as exc:  # a validator that failed on input nobody foresaw
        log.debug("%s: validation failed", source, exc_info=True)
        raise ConfigError(source, [f"cannot validate: {exception_line(exc)}"]) from exc


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
