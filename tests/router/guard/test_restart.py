"""A restart against the saved rollout state: the reload's rules hold across it.

A changed salt, variants or layer with the same `revision`, or a `revision` lower than the saved
one, would reshuffle units silently; a live reload refuses exactly that
(router.registry.rules.reshuffle_problems), and so does a start: one line naming the experiment
and the fix, nothing changed on disk. A state file written before the assignment was kept is
accepted and saved with it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from prometheus_client import CollectorRegistry

from router.guard.rollout import RolloutState
from router.guard.runtime import (
    GuardRuntime,
    GuardSetup,
    StartRefused,
    assignment_facets,
    restart_problems,
)
from router.guard.state import LoadedStates, StateStore
from router.records.jsonl import JsonlWriter, single_file
from router.registry.loading import parse_config
from router.registry.rules import reshuffle_problems
from router.registry.schema import RouterConfig
from tests.router.data import merge_patch
from tests.router.guard.inprocess import guarded_registry
from tests.support import REPO

NOWHERE = "http://127.0.0.1:9"
MULTI_ARM = {
    "control": None, "treatment": None, "traffic": None,
    "variants": [
        {"name": "a", "backend": "v1", "weight": 60}, {"name": "b", "backend": "v2", "weight": 40},
    ],
}  # fmt: skip


def config_of(folder: Path, patch: Optional[dict[str, Any]] = None) -> RouterConfig:
    return parse_config(guarded_registry(folder, NOWHERE, NOWHERE, patch))


def edit(experiment: dict[str, Any]) -> dict[str, Any]:
    return {"experiments": {"sentiment": experiment}}


async def run_once(config: RouterConfig, folder: Path) -> None:
    """Start the guard on `config`, let it save its start, stop it: one run of the router."""
    setup = await GuardSetup.load(config)
    decisions = JsonlWriter(single_file(folder / "decisions.jsonl"), flush_interval=60)
    decisions.start()
    runtime = GuardRuntime(setup, decisions, CollectorRegistry())
    runtime.start()
    await runtime.stop()
    await asyncio.get_running_loop().run_in_executor(None, decisions.close)


def saved_document(folder: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((folder / "state" / "sentiment.json").read_text())
    return document


@pytest.mark.asyncio
async def test_the_state_is_saved_with_its_assignment(tmp_path: Path) -> None:
    config = config_of(tmp_path)
    await run_once(config, tmp_path)
    document = saved_document(tmp_path)
    assert document["assignment"] == assignment_facets(config)["sentiment"]
    assert set(document["assignment"]) == {"salt", "variants", "layer"}
    assert "test-salt" not in json.dumps(document)  # a digest, not the salt itself


@pytest.mark.asyncio
async def test_a_changed_salt_with_the_same_revision_is_refused(tmp_path: Path) -> None:
    await run_once(config_of(tmp_path), tmp_path)
    before = (tmp_path / "state" / "sentiment.json").read_bytes()
    with pytest.raises(StartRefused) as caught:
        await GuardSetup.load(config_of(tmp_path, edit({"salt": "other"})))
    assert str(caught.value) == (
        "experiments.sentiment.salt: changed since the last run (the rollout state in "
        f"{tmp_path / 'state' / 'sentiment.json'}); bump revision (now 1) to reshuffle units"
    )
    assert (tmp_path / "state" / "sentiment.json").read_bytes() == before
    # The fix the line names: a new revision starts afresh with the new salt.
    await run_once(config_of(tmp_path, edit({"salt": "other", "revision": 2})), tmp_path)
    assert saved_document(tmp_path)["state"]["revision"] == 2


@pytest.mark.asyncio
async def test_a_lower_revision_is_refused(tmp_path: Path) -> None:
    await run_once(config_of(tmp_path, edit({"revision": 3})), tmp_path)
    with pytest.raises(StartRefused) as caught:
        await GuardSetup.load(config_of(tmp_path, edit({"revision": 2})))
    assert str(caught.value) == (
        "experiments.sentiment.revision: went down from 3 (the rollout state in "
        f"{tmp_path / 'state' / 'sentiment.json'}); restore revision 3"
    )
    await run_once(config_of(tmp_path, edit({"revision": 3})), tmp_path)  # restored: starts


@pytest.mark.asyncio
async def test_a_refused_start_moves_no_unreadable_file_aside(tmp_path: Path) -> None:
    """Refused after reading: the other experiment's unreadable file stays where it is, so
    the start after the fix still holds that experiment rolled back."""
    two = {"experiments": {"other": {"route": "/other", "salt": "o", "control": "v1",
                                     "treatment": "v2", "traffic": 5}}}  # fmt: skip
    await run_once(config_of(tmp_path, two), tmp_path)
    (tmp_path / "state" / "other.json").write_text("{broken")
    with pytest.raises(StartRefused):
        await GuardSetup.load(config_of(tmp_path, merge_patch(two, edit({"salt": "x"}))))
    assert (tmp_path / "state" / "other.json").read_text() == "{broken"
    setup = await GuardSetup.load(config_of(tmp_path, two))
    assert setup.guard.state("other").status == "rolled_back"


@pytest.mark.asyncio
async def test_a_state_file_without_an_assignment_is_accepted_and_saved_with_it(
    tmp_path: Path,
) -> None:
    """Written by an older router: nothing to compare with, so accepted, then completed."""
    store = StateStore(tmp_path / "state")
    store.save("sentiment", RolloutState(revision=1, configured_traffic=50.0))
    assert "assignment" not in saved_document(tmp_path)
    config = config_of(tmp_path, edit({"salt": "changed-while-down"}))
    await run_once(config, tmp_path)
    assert saved_document(tmp_path)["assignment"] == assignment_facets(config)["sentiment"]


SECOND_IN_LAYER = {
    "experiments": {
        "second": {"route": "/second", "salt": "s", "control": "v1", "treatment": "v2",
                   "traffic": 5, "layer": "l1"},
    }
}  # fmt: skip
IN_LAYER = edit({"layer": "l1"})
# (registry of the last run, registry of the restart)
EDITS = {
    "salt": ({}, edit({"salt": "other"})),
    "layer": ({}, IN_LAYER),
    "layer slice": (IN_LAYER, merge_patch(IN_LAYER, SECOND_IN_LAYER)),
    "variants": (edit(MULTI_ARM), edit(merge_patch(MULTI_ARM, {"variants": [
        {"name": "a", "backend": "v1", "weight": 50}, {"name": "b", "backend": "v2", "weight": 50},
    ]}))),
    "traffic": ({}, edit({"traffic": 80})),
    "fallback": ({}, edit({"fallback": "none"})),
}  # fmt: skip


@pytest.mark.parametrize(("before", "after"), EDITS.values(), ids=EDITS.keys())
def test_a_restart_refuses_what_a_reload_refuses(
    tmp_path: Path, before: dict[str, Any], after: dict[str, Any]
) -> None:
    """The same settings as reshuffle_problems, compared through the saved assignment."""
    old, new = config_of(tmp_path, before), config_of(tmp_path, after)
    loaded = LoadedStates(
        states={"sentiment": RolloutState(revision=1, configured_traffic=50.0)},
        assignments={"sentiment": assignment_facets(old)["sentiment"]},
    )
    store = StateStore(tmp_path / "state")
    on_restart = restart_problems(new, loaded, assignment_facets(new), store)
    on_reload = [p for p in reshuffle_problems(old, new) if p.startswith("experiments.sentiment.")]
    assert [p.split(":")[0] for p in on_restart] == [p.split(":")[0] for p in on_reload]


@pytest.mark.asyncio
async def test_multi_arm_weights_changed_with_the_same_revision_are_refused(
    tmp_path: Path,
) -> None:
    before, after = EDITS["variants"]
    await run_once(config_of(tmp_path, before), tmp_path)
    with pytest.raises(StartRefused, match=r"^experiments\.sentiment\.variants: changed since"):
        await GuardSetup.load(config_of(tmp_path, after))


# --- the real router process -----------------------------------------------------------------


def router_start(config: Path) -> subprocess.CompletedProcess[str]:
    """`python -m router` on `config`, stopped by SIGTERM once it serves (or exited by itself)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "router", "--config", str(config), "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    first = process.stdout.readline()  # the serving line, or "" once it exited
    if first.startswith("router: serving on"):
        process.terminate()
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, first + out, err)


def test_the_router_refuses_to_restart_with_a_changed_salt(tmp_path: Path) -> None:
    raw = guarded_registry(tmp_path, NOWHERE, NOWHERE)
    config = tmp_path / "experiments.yaml"
    config.write_text(yaml.safe_dump(raw))
    first = router_start(config)
    assert first.returncode == 0, first.stderr
    assert "assignment" in saved_document(tmp_path)
    decisions = (tmp_path / "logs" / "decisions.jsonl").read_bytes()

    config.write_text(yaml.safe_dump(merge_patch(raw, edit({"salt": "reshuffled"}))))
    refused = router_start(config)
    assert refused.returncode == 1
    assert refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith("error: experiments.sentiment.salt: changed since the last run")
    assert line.endswith("bump revision (now 1) to reshuffle units")
    assert (tmp_path / "logs" / "decisions.jsonl").read_bytes() == decisions  # nothing written

    config.write_text(yaml.safe_dump(merge_patch(raw, edit({"traffic": 20}))))
    assert router_start(config).returncode == 0  # the saved salt again: starts
