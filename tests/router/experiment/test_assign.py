from __future__ import annotations

import random
from typing import Any

import pytest

from router.experiment.assign import bucket, compile_plan, compile_plans
from router.registry.layers import BUCKETS
from router.registry.schema import ExperimentConfig
from tests.router.data import load_table

BUCKET_VECTORS = load_table("assign_buckets.json")["vectors"]
TWO_ARM = load_table("assign_two_arm.json")
MULTI_ARM = load_table("assign_multi_arm.json")
LAYERS = load_table("assign_layers.json")


def two_arm(salt: str = "sentiment-2026-11", traffic: float = 10, **extra: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "route": "/r",
            "salt": salt,
            "control": "v1",
            "treatment": "v2",
            "traffic": traffic,
            **extra,
        }
    )


@pytest.mark.parametrize("vector", BUCKET_VECTORS, ids=lambda v: f"{v['salt']}:{v['unit']}")
def test_bucket_matches_independent_vectors(vector: dict[str, Any]) -> None:
    assert bucket(vector["salt"], vector["unit"]) == vector["bucket"]


@pytest.mark.parametrize("case", TWO_ARM["cases"], ids=lambda c: f"{c['unit']}@{c['traffic']}")
def test_two_arm_vectors(case: dict[str, Any]) -> None:
    plan = compile_plan("e", two_arm(TWO_ARM["salt"]))
    assignment = plan.assign(case["unit"], case["traffic"])
    assert assignment.arm.name == case["variant"]
    assert assignment.arm.backend == ("v2" if case["variant"] == "treatment" else "v1")
    assert (assignment.bucket, assignment.enrolled) == (case["bucket"], True)


@pytest.mark.parametrize("case", MULTI_ARM["cases"], ids=lambda c: c["unit"])
def test_multi_arm_vectors(case: dict[str, Any]) -> None:
    variants = [{**v, "backend": f"b-{v['name']}"} for v in MULTI_ARM["variants"]]
    config = ExperimentConfig.model_validate(
        {"route": "/r", "salt": MULTI_ARM["salt"], "variants": variants}
    )
    plan = compile_plan("e", config)
    assignment = plan.assign(case["unit"], config.configured_traffic())
    assert (assignment.arm.name, assignment.bucket) == (case["variant"], case["bucket"])
    assert assignment.arm.backend == f"b-{case['variant']}"
    # a rollback (traffic 0) sends every unit to the control variant
    assert plan.assign(case["unit"], 0).arm.name == "base"


@pytest.mark.parametrize("case", LAYERS["cases"], ids=lambda c: f"{c['unit']}-{c['experiment']}")
def test_layer_vectors(case: dict[str, Any]) -> None:
    experiments = {
        name: ExperimentConfig.model_validate(
            {
                "route": f"/{name}",
                "salt": salt,
                "control": "v1",
                "treatment": "v2",
                "traffic": LAYERS["traffic"],
                "layer": LAYERS["layer"],
            }
        )
        for name, salt in LAYERS["experiments"].items()
    }
    plan = compile_plans(experiments)[case["experiment"]]
    assignment = plan.assign(case["unit"], LAYERS["traffic"])
    assert (assignment.arm.name, assignment.enrolled) == (case["variant"], case["enrolled"])


def test_layers_are_mutually_exclusive_and_cover_everyone() -> None:
    experiments = {name: two_arm(salt=name, traffic=50, layer="home") for name in ("a", "b", "c")}
    plans = compile_plans(experiments)
    for index in range(3000):
        unit = f"user-{index}"
        enrolled_in = [name for name, plan in plans.items() if plan.assign(unit, 50).enrolled]
        assert len(enrolled_in) == 1, unit


def test_no_unit_gets_control_not_enrolled() -> None:
    plan = compile_plan("e", two_arm(traffic=100))
    for unit in (None, ""):
        assignment = plan.assign(unit, 100)
        assert (assignment.arm.name, assignment.enrolled, assignment.bucket) == (
            "control",
            False,
            None,
        )


def test_split_of_20000_random_units_is_within_one_point() -> None:
    plan = compile_plan("e", two_arm(salt="split-test"))
    rng = random.Random(7)
    units = [f"{rng.getrandbits(64):016x}" for _ in range(20_000)]
    for traffic in (1, 10, 33.33, 50, 90):
        share = sum(not plan.assign(u, traffic).is_control for u in units) / len(units) * 100
        assert abs(share - traffic) < 1, (traffic, share)


def test_raising_traffic_only_adds_units() -> None:
    plan = compile_plan("e", two_arm())
    units = [f"u{index}" for index in range(5000)]
    before = {u for u in units if not plan.assign(u, 10).is_control}
    after = {u for u in units if not plan.assign(u, 50).is_control}
    assert before < after


def test_bucket_range() -> None:
    assert all(0 <= bucket("s", str(index)) < BUCKETS for index in range(1000))
