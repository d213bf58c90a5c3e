"""The admin API and X-Variant-Override, in process in front of fake pipelines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.router.fakes import Fakes, url_of
from tests.router.guard.inprocess import (
    AUTH,
    TOKEN,
    Guarded,
    guarded_registry,
    start_guarded,
)
from tests.router.harness import exposures, metric, unit_in

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def guarded(aiohttp_client: Any, tmp_path: Path, fakes: Fakes) -> Guarded:
    raw = guarded_registry(tmp_path, url_of(fakes["v1"][1]), url_of(fakes["v2"][1]))
    return await start_guarded(aiohttp_client, tmp_path, raw)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ],
    ids=["none", "empty", "wrong", "prefix", "basic", "no-scheme"],
)
async def test_admin_needs_the_token(guarded: Guarded, headers: dict[str, str]) -> None:
    reply = await guarded.admin("rollback", headers=headers, json={"reason": "x"})
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await reply.json())["code"] == "unauthorized"
    assert (await guarded.state())["status"] == "running"
    assert not [d for d in guarded.decisions() if d["actor"] == "admin"]
    assert metric(guarded.app, "router_http_errors_total", code="unauthorized") == 1


async def test_without_a_configured_token_admin_is_disabled(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    raw = guarded_registry(tmp_path, url_of(fakes["v1"][1]), url_of(fakes["v2"][1]))
    guarded = await start_guarded(aiohttp_client, tmp_path, raw, token=None)
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
        reply = await guarded.admin("pause", headers=headers)
        body = await reply.json()
        assert reply.status == 403 and body["code"] == "admin_disabled"
        assert "GUARD_TEST_ADMIN_TOKEN" in body["error"]
    # Nobody may override either.
    reply = await guarded.predict("u1", **{"X-Variant-Override": "treatment", **AUTH})
    assert reply.status == 403


async def test_each_action_is_a_decision_written_and_saved_before_the_answer(
    guarded: Guarded,
) -> None:
    steps = [
        ("pause", "paused", 50.0),
        ("resume", "running", 50.0),
        ("rollback", "rolled_back", 0.0),
        ("resume", "running", 50.0),
        ("promote", "promoted", 100.0),
        ("rollback", "rolled_back", 0.0),
    ]
    for index, (action, status, traffic) in enumerate(steps):
        reply = await guarded.admin(action, headers=AUTH, json={"reason": f"drill {index}"})
        assert reply.status == 200, await reply.text()
        body = await reply.json()
        assert body["saved"] is True
        assert body["decision"]["action"] == action and body["decision"]["actor"] == "admin"
        assert body["decision"]["reason"] == f"{action} by admin: drill {index}"
        assert body["experiment"]["status"] == status
        assert body["experiment"]["traffic"] == traffic
        # On disk already, without waiting for the writer thread: a crash now keeps both.
        last = guarded.decisions()[-1]
        assert (last["action"], last["actor"], last["status"]) == (action, "admin", status)
        assert guarded.saved_state()["status"] == status
        assert (await guarded.state())["status"] == status
    admin = [d["action"] for d in guarded.decisions() if d["actor"] == "admin"]
    assert admin == [action for action, _, _ in steps]
    assert metric(guarded.app, "router_decisions_total", action="resume", actor="admin") == 2


async def test_promote_sends_every_enrolled_unit_to_the_treatment(guarded: Guarded) -> None:
    units = [unit_in("control", start=i * 1000) for i in range(5)]
    assert (await guarded.admin("promote", headers=AUTH)).status == 200
    for unit in units:
        reply = await guarded.predict(unit)
        body = await reply.json()
        assert reply.headers["X-Variant"] == "treatment"
        assert body["experiment"]["enrolled"] is True and body["experiment"]["fallback"] is False


async def test_refusals_unknown_names_and_bad_bodies(guarded: Guarded) -> None:
    cases = [
        (await guarded.admin("pause", name="nothing", headers=AUTH), 404, "not_found"),
        (await guarded.admin("restart", headers=AUTH), 404, "not_found"),
        (await guarded.admin("pause", headers=AUTH, data=b"[1]"), 400, "bad_body"),
        (await guarded.admin("pause", headers=AUTH, data=b"{nope"), 400, "bad_body"),
        (await guarded.admin("pause", headers=AUTH, json={"reason": 3}), 400, "bad_body"),
        (await guarded.admin("pause", headers=AUTH, json={"why": "x"}), 400, "bad_body"),
        (await guarded.admin("pause", headers=AUTH, json={"reason": "x" * 1001}), 400, "bad_body"),
        (await guarded.client.get("/admin/experiments/sentiment/pause"), 405, "method_not_allowed"),
    ]  # fmt: skip
    for reply, status, code in cases:
        assert (reply.status, (await reply.json())["code"]) == (status, code)
    assert (await guarded.state())["status"] == "running"
    # State-dependent refusals are 409s: a rolled-back experiment cannot be paused.
    assert (await guarded.admin("rollback", headers=AUTH)).status == 200
    refused = await guarded.admin("pause", headers=AUTH)
    body = await refused.json()
    assert refused.status == 409 and body["code"] == "refused" and "rolled_back" in body["error"]
    # Repeating what the state already is: a decision with action none.
    again = await (await guarded.admin("rollback", headers=AUTH)).json()
    assert again["decision"]["action"] == "none"


async def test_override_serves_the_arm_unenrolled_and_only_with_the_token(
    guarded: Guarded,
) -> None:
    unit = unit_in("control")
    refused = [
        await guarded.predict(unit, **{"X-Variant-Override": "treatment"}),
        await guarded.predict(
            unit, **{"X-Variant-Override": "treatment", "Authorization": "Bearer nope"}
        ),
    ]
    for reply in refused:
        assert reply.status == 403 and (await reply.json())["code"] == "override_forbidden"
    unknown = await guarded.predict(unit, **{"X-Variant-Override": "candidate", **AUTH})
    assert unknown.status == 400 and (await unknown.json())["code"] == "bad_override"

    # Even while rolled back, QA reaches the treatment on purpose.
    assert (await guarded.admin("rollback", headers=AUTH)).status == 200
    reply = await guarded.predict(unit, **{"X-Variant-Override": "treatment", **AUTH})
    body = await reply.json()
    assert reply.status == 200 and reply.headers["X-Variant"] == "treatment"
    assert body["experiment"] == {
        "name": "sentiment", "group": "treatment", "version": "new_v2",
        "enrolled": False, "fallback": False,
    }  # fmt: skip
    plain = await guarded.predict(unit)
    assert plain.headers["X-Variant"] == "control"
    *_, overridden, normal = exposures(guarded.app)
    assert overridden["override"] is True and overridden["enrolled"] is False
    assert overridden["assigned"] == overridden["served"] == "treatment"
    assert "override" not in normal and normal["enrolled"] is True


async def test_a_state_dir_that_cannot_be_used_holds_the_experiment_rolled_back(
    aiohttp_client: Any, tmp_path: Path, fakes: Fakes
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    raw = guarded_registry(
        tmp_path,
        url_of(fakes["v1"][1]),
        url_of(fakes["v2"][1]),
        {"router": {"state_dir": str(blocker / "state")}},
    )
    guarded = await start_guarded(aiohttp_client, tmp_path, raw)
    state = await guarded.state()
    # The state may have been a rollback: hold users on control until someone looks.
    assert (state["status"], state["traffic"]) == ("rolled_back", 0)
    assert "unreadable" in state["reason"]
    reply = await guarded.admin("resume", headers=AUTH, json={"reason": "looked at it"})
    body = await reply.json()
    # In force, but not on disk: the answer says so.
    assert reply.status == 200 and body["saved"] is False
    assert body["experiment"]["status"] == "running" and body["experiment"]["traffic"] == 50
