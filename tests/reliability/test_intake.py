"""The input checks and fault handling behind the reliability suite, in process and fast."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Optional

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from router.experiment.units import BadUnit, checked_unit, unit_of
from router.proxy.intake import parse_json, pipeline_problem, request_id_of
from router.records.jsonl import JsonlWriter, single_file
from tests.router.fakes import FakePipeline, closed_port_url, start_fake, url_of
from tests.router.harness import DEMO_BODY, build_app, exposures, metric, registry, unit_in

GOOD: dict[str, Any] = {"key": ["x"], "value": ["[[1, 2]]"]}

PIPELINE = [
    (GOOD, None),
    ({}, None),  # the backend says what is missing (err_no), the envelope is fine
    ({**GOOD, "user_id": "u", "extra": {"a": [1]}}, None),
    ({**GOOD, "logid": "12", "name": "n", "method": "m", "clientip": "1.2.3.4"}, None),
    ({**GOOD, "tensors": [{}], "logid": -(2**63)}, None),
    ({"key": None, "value": None, "tensors": None}, None),
    ({"key": "x", "value": ["1"]}, "key: must be a list of strings"),
    ({"key": [1], "value": ["1"]}, "key: must be a list of strings"),
    ({"key": ["x"], "value": [[1]]}, "value: must be a list of strings"),
    ({"key": ["x", "y"], "value": ["1"]}, "key and value: 2 names but 1 values"),
    ({**GOOD, "tensors": [1]}, "tensors: must be a list of objects"),
    ({**GOOD, "tensors": {}}, "tensors: must be a list of objects"),
    ({**GOOD, "name": 5}, "name: must be a string"),
    ({**GOOD, "logid": 1.5}, "logid: must be a 64-bit integer"),
    ({**GOOD, "logid": 2**63}, "logid: must be a 64-bit integer"),
    ({**GOOD, "logid": True}, "logid: must be a 64-bit integer"),
    ({**GOOD, "logid": "1e3"}, "logid: must be a 64-bit integer"),
]


@pytest.mark.parametrize(("payload", "problem"), PIPELINE)
def test_pipeline_envelope(payload: dict[str, Any], problem: Optional[str]) -> None:
    assert pipeline_problem(payload) == problem


@pytest.mark.parametrize("text", [b"NaN", b'{"a": Infinity}', b"[-Infinity]", b"[1,", b"\xff"])
def test_parse_json_is_strict(text: bytes) -> None:
    with pytest.raises(ValueError):
        parse_json(text)


@pytest.mark.parametrize(
    "text",
    [b'{"user_id": 100000000000000000000}', b'{"logid": -9223372036854775809}',
     b'{"a": 1.5, "b": [1, "x", {"c": null}]}', b'{"key": ["\\u00fc"], "value": ["1"]}',
     b'{"user_id": 12345678901234567890123}', b'[18446744073709551616]', b'"x"'],
)  # fmt: skip
def test_parse_json_reads_what_the_standard_library_reads(text: bytes) -> None:
    # orjson reads integers past 64 bits as floats; what the router reads must not change.
    assert repr(parse_json(text)) == repr(json.loads(text))


def test_parse_json_deep_nesting_raises_recursion_error_not_crash() -> None:
    with pytest.raises(RecursionError):
        parse_json(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123", True), ("a.b:c_d-e", True), ("r" * 128, True), ("r" * 129, False),
     ("../x", False), ("a b", False), ("", False), ("-a", False), ("\udcff", False)],
)  # fmt: skip
def test_request_id(given: str, kept: bool) -> None:
    result = request_id_of({"x-request-id": given})
    assert (result == given) is kept
    assert len(result) <= 128


@pytest.mark.parametrize(
    ("unit", "problem"),
    [("u" * 256, None), ("用户🙂", None), ("u" * 257, "longer than 256"), ("a\tb", "control"),
     ("a\x7fb", "control"), ("\udcff", "not valid UTF-8"), ("\ud800", "not valid UTF-8")],
)  # fmt: skip
def test_checked_unit(unit: str, problem: Optional[str]) -> None:
    if problem is None:
        assert checked_unit(unit) == unit
    else:
        with pytest.raises(BadUnit, match=problem):
            checked_unit(unit)


def test_unit_of_names_the_place() -> None:
    from router.registry.schema import UnitIdSource

    source = UnitIdSource()
    with pytest.raises(BadUnit, match="header X-User-Id: unit id longer"):
        unit_of({"x-user-id": "u" * 300}, {}, source)
    with pytest.raises(BadUnit, match="field user_id: unit id with control"):
        unit_of({}, {"user_id": "a\nb"}, source)
    assert unit_of({}, {"user_id": ["a"]}, source) is None


def test_the_log_writer_survives_lone_surrogates(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    dropped: list[int] = []
    writer = JsonlWriter(single_file(path), on_drop=dropped.append, flush_interval=0.01)
    writer.start()
    writer.write({"city": "\udcff\udcfe caf\udce9", "n": 1})
    writer.write({"unit": "\ud800", "n": 2})
    unserializable: dict[Any, Any] = {("not", "a str key"): 1, "n": 3}
    writer.write(unserializable)  # cannot be JSON: dropped and counted
    writer.write({"n": 4})
    writer.close()
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["n"] for r in records] == [1, 2, 4]
    assert records[0]["city"] == "\udcff\udcfe caf\udce9"  # escaped in the file, intact in JSON
    assert dropped == [1]


@pytest_asyncio.fixture
async def fakes() -> AsyncIterator[dict[str, tuple[FakePipeline, TestServer]]]:
    started = {name: await start_fake(name) for name in ("v1", "v2")}
    yield started
    for _, server in started.values():
        await server.close()


@pytest.mark.asyncio
async def test_a_dead_replica_is_retried_on_the_other_one(
    aiohttp_client: Any, tmp_path: Path, fakes: dict[str, tuple[FakePipeline, TestServer]]
) -> None:
    dead = closed_port_url()
    raw = registry(
        tmp_path / "logs",
        [dead, url_of(fakes["v1"][1])],
        [url_of(fakes["v2"][1])],
        {"backends": {"v1": {"eject_after": 2, "probe_interval": "10s"}}},
    )
    app = build_app(raw)
    client = await aiohttp_client(app)
    unit = unit_in("control")
    for _ in range(6):
        response = await client.post(
            "/sentiment/prediction", json=DEMO_BODY, headers={"X-User-Id": unit}
        )
        assert response.status == 200
        assert (await response.json())["value"][1] == "v1"
    assert metric(app, "router_endpoint_up", backend="v1", endpoint=dead) == 0
    assert metric(app, "router_backend_requests_total", backend="v1", outcome="error") == 2
    assert all(r["status"] == 200 and r["error"] is None for r in exposures(app))


@pytest.mark.asyncio
async def test_a_timeout_is_not_retried(
    aiohttp_client: Any, tmp_path: Path, fakes: dict[str, tuple[FakePipeline, TestServer]]
) -> None:
    slow, fast = fakes["v1"][0], fakes["v2"][0]
    slow.mode, slow.delay_s = "slow", 1.0
    raw = registry(
        tmp_path / "logs",
        [url_of(fakes["v1"][1]), url_of(fakes["v2"][1])],
        [url_of(fakes["v2"][1])],
    )
    client = await aiohttp_client(build_app(raw))
    response = await client.post(
        "/sentiment/prediction", json=DEMO_BODY, headers={"X-User-Id": unit_in("control")}
    )
    assert response.status == 504  # the budget is spent: no second try
    assert fast.received == []
