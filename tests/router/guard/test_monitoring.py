"""monitoring/: the alert rules and the Grafana dashboard use only the router's metrics, and
the alert rules pass promtool's own checks and unit tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from router.guard.engine import Guard
from router.guard.metrics import SloMetrics
from router.records.metrics import RouterMetrics
from tests.router.guard.simulation import registry
from tests.support import REPO

MONITORING = REPO / "monitoring"
ALERTS = MONITORING / "prometheus" / "alerts.yml"
DASHBOARD = MONITORING / "grafana" / "paddle-ab-router.json"
METRIC_NAME = re.compile(r"\brouter_[a-z0-9_]+\b")

# The metric families the router exports: a contract with the dashboard and alert rules.
CONTRACT = {
    "router_requests_total",
    "router_request_duration_seconds",
    "router_backend_requests_total",
    "router_backend_duration_seconds",
    "router_fallbacks_total",
    "router_endpoint_up",
    "router_config_reloads_total",
    "router_config_last_reload_success",
    "router_events_dropped_total",
    "router_traffic_percent",
    "router_slo_state",
    "router_slo_p99_seconds",
    "router_slo_error_rate",
    "router_experiment_status",
    "router_decisions_total",
    "router_shadow_requests_total",
    "router_shadow_agreement_total",
}
HISTOGRAMS = {"router_request_duration_seconds", "router_backend_duration_seconds"}
# Registered at app start by the aiohttp parts (scrape-time gauges), not by a metrics class.
REGISTERED_BY_THE_APP = {
    "router_traffic_percent": "app.py",
    "router_endpoint_up": "proxy/upstreams.py",
}


def series_names(family: str) -> set[str]:
    if family in HISTOGRAMS:
        return {family, *(family + suffix for suffix in ("_bucket", "_sum", "_count"))}
    return {family}


ALLOWED = set().union(*(series_names(f) for f in CONTRACT))


def _exported_families() -> set[str]:
    """Families exported by RouterMetrics and SloMetrics, as they appear in PromQL."""
    metrics = RouterMetrics()
    SloMetrics(
        metrics.registry, Guard(registry({"control": "v1", "treatment": "v2", "traffic": 5}))
    )
    return _families(metrics.registry)


def _families(collector_registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in collector_registry.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_the_router_exports_every_metric_of_the_contract() -> None:
    exported = _exported_families()
    for name, module in REGISTERED_BY_THE_APP.items():
        assert f'"{name}"' in (REPO / "router" / module).read_text(), (name, module)
        exported.add(name)
    assert exported >= CONTRACT, sorted(CONTRACT - exported)


def _expressions(node: Any) -> Iterator[str]:
    """Every PromQL expression in a dashboard: targets, annotations, template queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            # `query` is also a template variable's type name ("prometheus"): skip those.
            is_query = key == "query" and isinstance(value, str) and "(" in value
            if is_query or (key in ("expr", "definition") and isinstance(value, str)):
                yield value
            else:
                yield from _expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from _expressions(item)


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alert_rules_are_well_formed_and_use_only_router_metrics() -> None:
    rules = _alert_rules()
    assert len(rules) >= 10
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    used: set[str] = set()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        texts = [rule["expr"], *rule["annotations"].values()]
        for text in texts:
            found = set(METRIC_NAME.findall(text))
            assert found <= ALLOWED, (rule["alert"], sorted(found - ALLOWED))
            used |= found
    # The alerts watch the guard's state, user-visible errors, fallbacks and backends.
    assert {
        "router_experiment_status",
        "router_slo_state",
        "router_requests_total",
        "router_fallbacks_total",
        "router_endpoint_up",
    } <= used


def test_the_dashboard_loads_and_uses_only_router_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    expressions = list(_expressions(dashboard))
    assert len(expressions) >= 15
    used: set[str] = set()
    for expression in expressions:
        found = set(METRIC_NAME.findall(expression))
        assert found, expression
        assert found <= ALLOWED, (expression, sorted(found - ALLOWED))
        used |= found
    # SLO state, p99 and error rate per variant, fallbacks, traffic share: all on the board.
    assert {
        "router_slo_state",
        "router_slo_p99_seconds",
        "router_slo_error_rate",
        "router_experiment_status",
        "router_fallbacks_total",
        "router_traffic_percent",
        "router_requests_total",
        "router_decisions_total",
        "router_shadow_requests_total",
        "router_shadow_agreement_total",
    } <= used
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
@pytest.mark.parametrize(
    "arguments",
    [
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "alerts.test.yml"],
    ],
    ids=lambda arguments: " ".join(arguments[:2]),
)
def test_promtool_accepts_the_rules(arguments: list[str]) -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, *arguments],
        cwd=MONITORING / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
