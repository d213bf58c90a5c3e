"""`router.grpc_port` and `backends.B.grpc_endpoints`: optional, checked like the rest."""

from __future__ import annotations

from typing import Any

import pytest

from router.registry.loading import ConfigError, parse_config
from router.registry.rules import reload_problems
from tests.router.data import load_table, merge_patch

BASE = load_table("router_config_cases.json")["base"]


def parsed(patch: dict[str, Any]) -> Any:
    return parse_config(merge_patch(BASE, patch), source="experiments.yaml")


def test_grpc_is_off_unless_a_port_is_set() -> None:
    config = parsed({})
    assert config.router.grpc_port is None
    assert all(b.grpc_endpoints is None for b in config.backends.values())


def test_grpc_endpoints_pair_with_endpoints() -> None:
    [name, *_] = BASE["backends"]
    endpoints = BASE["backends"][name]["endpoints"]
    rpc = [f"127.0.0.1:{19080 + i}" for i in range(len(endpoints))]
    config = parsed({"router": {"grpc_port": 9090}, "backends": {name: {"grpc_endpoints": rpc}}})
    assert config.router.grpc_port == 9090
    assert config.backends[name].grpc_endpoints == tuple(rpc)
    with pytest.raises(ConfigError, match="one RPC port per server"):
        parsed({"backends": {name: {"grpc_endpoints": [*rpc, "127.0.0.1:1"]}}})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parsed({"backends": {name: {"grpc_endpoints": ["http://127.0.0.1:19080"]}}})
    with pytest.raises(ConfigError, match="grpc_port"):
        parsed({"router": {"grpc_port": 0}})


def test_the_grpc_port_is_read_once() -> None:
    old, new = parsed({}), parsed({"router": {"grpc_port": 9090}})
    assert any("grpc_port" in problem for problem in reload_problems(old, new))
