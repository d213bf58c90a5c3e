"""Rollout state on disk: one JSON file per experiment in `state_dir`, written atomically.

A write goes to a temporary file in the same directory, is fsync'ed, and replaces the old file
with `os.replace`, so a crash leaves either the old or the new state, never half of one. The
directory is fsync'ed too, so the rename itself survives a power cut.

Loading never raises: a missing file is a first start; a file that cannot be read or parsed is
logged, kept aside as `<name>.json.corrupt-<epoch>` for inspection, and reported as unreadable
(the guard then holds that experiment rolled back until an operator resumes it). `read_all`
only reads, so that a start refused after reading (router.guard.runtime) moves nothing aside.

Next to the state, a file keeps the experiment's `assignment`: a digest of each registry setting
that decides which arm a unit gets (salt, variants, layer; router.guard.runtime
`assignment_facets`), so that a restart can tell that one changed without a new revision. Files
written before it was kept have none; they load as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, get_args

from router.guard.rollout import STATUSES, RolloutState
from router.guard.slo import Check

log = logging.getLogger(__name__)

SCHEMA = 1
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_CHECKS = get_args(Check)


class StateFileError(ValueError):
    """A state file whose content is not a valid rollout state; the message names the place."""


# Per experiment: setting name (salt, variants, layer) -> digest of its value.
Assignment = Mapping[str, str]


def state_to_json(
    experiment: str, state: RolloutState, assignment: Optional[Assignment] = None
) -> dict[str, Any]:
    document = {"schema": SCHEMA, "experiment": experiment, "state": dataclasses.asdict(state)}
    if assignment is not None:
        document["assignment"] = dict(assignment)
    return document


def assignment_from_json(data: Any) -> Optional[dict[str, str]]:
    """The document's `assignment` (None in files written before it was kept); raises
    StateFileError if it is not an object of strings."""
    if not isinstance(data, dict) or "assignment" not in data:
        return None
    value = data["assignment"]
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise StateFileError(f"assignment: invalid value {value!r:.200}")
    return dict(value)


def state_from_json(data: Any, experiment: str) -> RolloutState:
    """Parse and validate a state document; raises StateFileError naming the bad field."""
    if not isinstance(data, dict):
        raise StateFileError(f"top level must be an object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise StateFileError(f"schema: expected {SCHEMA}, got {data.get('schema')!r}")
    if data.get("experiment") != experiment:
        raise StateFileError(f"experiment: expected {experiment!r}, got {data.get('experiment')!r}")
    body = data.get("state")
    if not isinstance(body, dict):
        raise StateFileError("state: must be an object")
    known = {f.name for f in dataclasses.fields(RolloutState)}
    unknown = sorted(set(body) - known)
    if unknown:
        raise StateFileError(f"state.{unknown[0]}: unknown field")
    for name, check in _FIELD_CHECKS.items():
        if name in body and not check(body[name]):
            raise StateFileError(f"state.{name}: invalid value {body[name]!r}")
    for required in ("revision", "configured_traffic"):
        if required not in body:
            raise StateFileError(f"state.{required}: missing")
    return RolloutState(**body)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _percent(value: Any) -> bool:
    return _number(value) and 0 <= value <= 100


_FIELD_CHECKS: dict[str, Any] = {
    "revision": lambda v: _count(v) and v >= 1,
    "configured_traffic": _percent,
    "status": lambda v: v in STATUSES,
    "traffic": lambda v: v is None or _percent(v),
    "step_index": lambda v: v is None or _count(v),
    "consecutive_fails": _count,
    "consecutive_passes": _count,
    "step_samples": _count,
    "last_advance_at": _number,
    "status_since": _number,
    "last_check": lambda v: v is None or v in _CHECKS,
    "last_check_at": lambda v: v is None or _number(v),
    "reason": lambda v: isinstance(v, str),
}


@dataclass(frozen=True)
class SavedState:
    state: RolloutState
    assignment: Optional[dict[str, str]]  # None: saved before assignments were kept


@dataclass
class LoadedStates:
    states: dict[str, RolloutState] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # experiment -> problem
    # experiment -> its saved assignment (absent for files written before they were kept)
    assignments: dict[str, dict[str, str]] = field(default_factory=dict)


class StateStore:
    """Saves may come from several executor threads; they are serialized here. Callers keep
    them in order (one save at a time per experiment), so an older state never lands last."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()

    def path_for(self, experiment: str) -> Path:
        if not _SAFE_NAME.match(experiment):
            raise ValueError(f"experiment name {experiment!r} is not usable as a file name")
        return self.directory / f"{experiment}.json"

    def save(
        self, experiment: str, state: RolloutState, assignment: Optional[Assignment] = None
    ) -> None:
        """Write one state (and the assignment it runs with) atomically; raises OSError if the
        disk refuses."""
        path = self.path_for(experiment)
        document = state_to_json(experiment, state, assignment)
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=".tmp", dir=self.directory
            )
            try:
                with open(descriptor, "w", encoding="utf-8") as file:
                    file.write(text)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            _fsync_directory(self.directory)

    def save_all(
        self,
        states: Mapping[str, RolloutState],
        assignments: Optional[Mapping[str, Assignment]] = None,
    ) -> list[str]:
        """Write each state, with its experiment's assignment if given; returns the experiments
        that could not be written (logged)."""
        failed = []
        for experiment, state in states.items():
            try:
                self.save(experiment, state, (assignments or {}).get(experiment))
            except OSError as exc:
                log.error("cannot save rollout state of %s: %s", experiment, exc)
                failed.append(experiment)
        return failed

    def load(self, experiment: str) -> Optional[RolloutState]:
        """The saved state, None if there is none; raises StateFileError or OSError."""
        saved = self.load_saved(experiment)
        return saved.state if saved is not None else None

    def load_saved(self, experiment: str) -> Optional[SavedState]:
        """The saved state and assignment, None if there is none; raises StateFileError or
        OSError."""
        path = self.path_for(experiment)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as exc:
            raise StateFileError(f"not UTF-8 text: {exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StateFileError(f"not JSON: {exc}") from exc
        try:
            return SavedState(state_from_json(data, experiment), assignment_from_json(data))
        except TypeError as exc:  # a field combination RolloutState rejects
            raise StateFileError(str(exc)) from exc

    def load_all(self, experiments: Iterable[str]) -> LoadedStates:
        """The saved states of these experiments; unreadable ones are logged and set aside."""
        loaded = self.read_all(experiments)
        self.set_aside_unreadable(loaded)
        return loaded

    def read_all(self, experiments: Iterable[str]) -> LoadedStates:
        """The saved states of these experiments, and the problems of the unreadable ones;
        changes nothing on disk."""
        loaded = LoadedStates()
        for experiment in experiments:
            try:
                saved = self.load_saved(experiment)
            except (StateFileError, OSError) as exc:
                loaded.unreadable[experiment] = f"{self.path_for(experiment)}: {exc}"
                continue
            if saved is not None:
                loaded.states[experiment] = saved.state
                if saved.assignment is not None:
                    loaded.assignments[experiment] = saved.assignment
        return loaded

    def set_aside_unreadable(self, loaded: LoadedStates) -> None:
        """Move the unreadable files out of the way of the next save, and log each."""
        for experiment, problem in loaded.unreadable.items():
            kept = self._set_aside(self.path_for(experiment))
            log.error(
                "rollout state unreadable: %s; %s; %s stays rolled back until an operator "
                "resumes it",
                problem,
                f"kept as {kept.name}" if kept else "could not move it aside",
                experiment,
            )

    @staticmethod
    def _set_aside(path: Path) -> Optional[Path]:
        target = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(path, target)
        except OSError:
            return None
        return target


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not every platform opens directories; the rename is atomic regardless
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
