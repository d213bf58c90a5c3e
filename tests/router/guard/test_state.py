"""Rollout state on disk: atomic writes, round trips, unreadable files."""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from router.guard.rollout import RolloutState
from router.guard.state import StateStore, state_from_json, state_to_json

STATE = RolloutState(
    revision=3,
    configured_traffic=10.0,
    status="rolled_back",
    traffic=50.0,
    step_index=2,
    consecutive_fails=3,
    consecutive_passes=0,
    step_samples=1234,
    last_advance_at=1_800_000_000.5,
    status_since=1_800_000_100.0,
    last_check="fail",
    last_check_at=1_800_000_100.0,
    reason="3 consecutive failed checks: p99 312.0 ms > 200 ms",
)


def test_a_saved_state_loads_back_equal(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")  # created on first save
    store.save("sentiment", STATE)
    assert store.load("sentiment") == STATE
    document = json.loads((tmp_path / "state" / "sentiment.json").read_text())
    assert document["schema"] == 1 and document["experiment"] == "sentiment"
    assert document["state"]["status"] == "rolled_back"


def test_saving_again_replaces_the_file_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save("sentiment", STATE)
    newer = RolloutState(revision=4, configured_traffic=20.0)
    store.save("sentiment", newer)
    assert store.load("sentiment") == newer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentiment.json"]


def test_a_write_that_fails_midway_keeps_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)
    store.save("sentiment", STATE)

    def failing_fsync(descriptor: int) -> None:  # the disk gives up while writing
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        store.save("sentiment", RolloutState(revision=9, configured_traffic=99.0))
    monkeypatch.undo()
    assert store.load("sentiment") == STATE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentiment.json"]


def test_save_all_reports_what_it_could_not_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "state"
    blocked.write_text("a file where the directory should be")
    with caplog.at_level(logging.ERROR, logger="router.guard.state"):
        assert StateStore(blocked).save_all({"sentiment": STATE}) == ["sentiment"]
    assert "cannot save rollout state of sentiment" in caplog.text


def test_a_missing_file_is_a_first_start(tmp_path: Path) -> None:
    loaded = StateStore(tmp_path / "nowhere").load_all(["sentiment"])
    assert (loaded.states, loaded.unreadable) == ({}, {})


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        ("[]", "top level must be an object"),
        (json.dumps({"schema": 2, "experiment": "sentiment", "state": {}}), "schema: expected 1"),
        (json.dumps({**state_to_json("other", STATE)}), "experiment: expected 'sentiment'"),
        (
            json.dumps(
                {**state_to_json("sentiment", STATE), "state": {"revision": 1}},
            ),
            "state.configured_traffic: missing",
        ),
        (
            json.dumps(
                {
                    **state_to_json("sentiment", STATE),
                    "state": {"revision": 1, "configured_traffic": 10, "status": "exploded"},
                }
            ),
            "state.status: invalid value 'exploded'",
        ),
        (
            json.dumps(
                {
                    **state_to_json("sentiment", STATE),
                    "state": {"revision": 1, "configured_traffic": 10, "wat": 1},
                }
            ),
            "state.wat: unknown field",
        ),
        (
            json.dumps(
                {
                    **state_to_json("sentiment", STATE),
                    "state": {"revision": 1, "configured_traffic": 101},
                }
            ),
            "state.configured_traffic: invalid value 101",
        ),
    ],
)
def test_an_unreadable_file_is_reported_logged_and_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: Any, problem: str
) -> None:
    path = tmp_path / "sentiment.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    store = StateStore(tmp_path)
    with caplog.at_level(logging.ERROR, logger="router.guard.state"):
        loaded = store.load_all(["sentiment"])
    assert loaded.states == {}
    assert problem in loaded.unreadable["sentiment"]
    assert "stays rolled back until an operator resumes it" in caplog.text
    # Kept for inspection, out of the way of the next save.
    (kept,) = tmp_path.glob("sentiment.json.corrupt-*")
    assert kept.read_bytes() == (content if isinstance(content, bytes) else content.encode())
    assert not path.exists()


def test_one_bad_file_does_not_spoil_the_others(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save("good", STATE)
    (tmp_path / "bad.json").write_text("{")
    loaded = store.load_all(["good", "bad", "new"])
    assert loaded.states == {"good": STATE}
    assert set(loaded.unreadable) == {"bad"}


def test_experiment_names_that_are_not_file_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not usable as a file name"):
        StateStore(tmp_path).path_for("../etc/passwd")


def test_state_documents_round_trip_without_a_file() -> None:
    assert state_from_json(json.loads(json.dumps(state_to_json("e", STATE))), "e") == STATE


def test_concurrent_saves_never_leave_a_torn_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    states = [RolloutState(revision=1, configured_traffic=float(i)) for i in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda state: store.save("sentiment", state), states))
    assert store.load("sentiment") in states
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentiment.json"]
