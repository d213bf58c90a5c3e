"""Reading the registry's analysis block, arms and log settings (through the router's schema)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis.registry import RegistryError, load_registry, parse_registry
from tests.analysis.logbook import registry as make_registry
from tests.analysis.tables import table

REPO = Path(__file__).resolve().parent.parent.parent


def test_the_repositorys_registry() -> None:
    """The demo registry reads; its values are the lead's to change, so they come from the file."""
    raw = yaml.safe_load((REPO / "experiments.yaml").read_text())
    registry = load_registry(REPO / "experiments.yaml")
    assert registry.log_dir == REPO / raw["router"]["log_dir"].rstrip("/")
    assert registry.attributes == tuple(raw["router"]["attributes"])
    for name, body in raw["experiments"].items():
        spec = registry.experiment(name)
        if "traffic" in body:
            assert spec.arms.configured_traffic == body["traffic"]
        if "ramp" in body:
            assert spec.ramp_steps == tuple(body["ramp"]["steps"])
        plan, registered = spec.plan, body.get("analysis")
        if registered is None:
            assert plan is None
            continue
        assert plan is not None
        assert plan.primary.metric == registered["primary"]["metric"]
        assert plan.primary.type == registered["primary"]["type"]
        assert plan.primary.mde == registered["primary"].get("mde")
        assert [m.metric for m in plan.secondary] == [
            m["metric"] for m in registered.get("secondary", [])
        ]
        assert [m.metric for m in plan.guardrails] == [
            m["metric"] for m in registered.get("guardrails", [])
        ]
        assert plan.alpha == registered.get("alpha", 0.05)
        assert plan.min_days == registered.get("min_days", 7)


def test_multi_arm_registry() -> None:
    raw = make_registry(Path("/logs"))
    body = raw["experiments"]["sentiment"]
    for two_arm in ("control", "treatment", "traffic"):
        del body[two_arm]
    body["variants"] = [
        {"name": "legacy", "backend": "sentiment-v1", "weight": 60},
        {"name": "new", "backend": "sentiment-v2", "weight": 40},
    ]
    spec = parse_registry(raw).experiment("sentiment")
    assert spec.arms.names == ("legacy", "new")
    assert spec.arms.configured_traffic == 40
    assert spec.arms.shares(40) == pytest.approx({"legacy": 0.6, "new": 0.4})


def test_no_plan_is_allowed_and_unknown_fields_are_refused_as_by_the_router() -> None:
    assert parse_registry(make_registry(Path("/logs"), analysis={})).experiment(None).plan is None
    raw = make_registry(Path("/logs"), analysis={}, extra={"future_field": {"x": 1}})
    with pytest.raises(RegistryError, match=r"experiments\.sentiment\.future_field: unknown key"):
        parse_registry(raw)


@pytest.mark.parametrize(
    "case", table("analysis_registry.json")["invalid"], ids=lambda c: c["name"]
)
def test_invalid_registry_names_the_place(case: dict[str, Any]) -> None:
    raw = make_registry(Path("/logs"))
    body = copy.deepcopy(raw["experiments"]["sentiment"])
    body.update(case["experiment"])
    raw["experiments"]["sentiment"] = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(RegistryError) as caught:
        parse_registry(raw, source="experiments.yaml")
    assert case["error"] in str(caught.value)
    assert str(caught.value).startswith("experiments.yaml: ")


def test_choosing_an_experiment() -> None:
    raw = make_registry(Path("/logs"))
    raw["experiments"]["second"] = {
        **raw["experiments"]["sentiment"],
        "route": "/second/prediction",
    }
    registry = parse_registry(raw, source="r.yaml")
    with pytest.raises(RegistryError, match="2 defined; choose one with --experiment"):
        registry.experiment(None)
    with pytest.raises(
        RegistryError, match=r"experiments\.nope: not defined \(known: second, sentiment\)"
    ):
        registry.experiment("nope")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("router: [unclosed\n")
    with pytest.raises(RegistryError, match="invalid YAML"):
        load_registry(bad)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n")
    with pytest.raises(RegistryError, match="top level"):
        load_registry(not_mapping)
