"""The exposure record bounds each logged attribute (a request header: the client's bytes) and
says which ones it cut."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytest

from router.records.exposure import MAX_ATTRIBUTE_CHARS, exposure_record
from router.records.jsonl import JsonlWriter, single_file
from router.registry.loading import ConfigError, parse_config
from router.registry.schema import RouterSettings
from tests.router.harness import registry


def record_with(attributes: list[tuple[str, Optional[str]]], **limit: int) -> dict[str, Any]:
    return exposure_record(
        ts=1764979200.0, request_id="r1", experiment="sentiment", unit="u1", enrolled=True,
        assigned="control", served="control", model_version="v1", status=200, latency_s=0.01,
        fallback=False, errors=[], overridden=False, attributes=attributes, **limit,
    )  # fmt: skip


def test_the_default_limit_is_the_registry_s() -> None:
    assert MAX_ATTRIBUTE_CHARS == RouterSettings.model_fields["max_attribute_chars"].default == 256


def test_a_value_over_the_limit_is_cut_and_named() -> None:
    megabyte, over = "x" * (1 << 20), "é" * 300
    record = record_with([("city", megabyte), ("device", over), ("plan", "pro")])
    assert record["city"] == "x" * 256
    assert record["device"] == "é" * 256
    assert record["plan"] == "pro"
    assert record["truncated"] == ["city", "device"]


def test_values_within_the_limit_are_logged_as_they_are_and_nothing_is_marked() -> None:
    record = record_with([("city", "y" * 256), ("device", None), ("plan", "")])
    assert (record["city"], record["device"], record["plan"]) == ("y" * 256, None, "")
    assert "truncated" not in record
    assert "truncated" not in record_with([])


def test_the_limit_is_a_parameter() -> None:
    record = record_with([("city", "Berlin"), ("device", "ab")], max_attribute_chars=3)
    assert (record["city"], record["device"], record["truncated"]) == ("Ber", "ab", ["city"])


def test_an_exposure_line_stays_short_whatever_the_headers(tmp_path: Path) -> None:
    # The worst characters for the line's length: lone surrogates (undecodable header bytes,
    # written as 6-byte escapes), control characters (6-byte escapes), 4-byte UTF-8.
    worst = ("\udcff\x01😀" * 400_000)[: 1 << 20]
    path = tmp_path / "exposures.jsonl"
    writer = JsonlWriter(single_file(path), flush_interval=3600)
    writer.write(record_with([("city", worst), ("device", worst), ("plan", "x" * 300)]))
    writer.close()
    [line] = path.read_bytes().splitlines()
    assert len(line) < 3 * 256 * 6 + 1000
    logged = json.loads(line)
    assert logged["truncated"] == ["city", "device", "plan"]
    assert len(logged["city"]) == len(logged["plan"]) == 256


def test_no_attribute_may_take_the_name_of_the_mark() -> None:
    raw = registry(Path("logs"), ["http://127.0.0.1:9"], ["http://127.0.0.1:9"])
    raw["router"]["attributes"] = {"truncated": "X-Truncated"}
    with pytest.raises(ConfigError) as refused:
        parse_config(raw)
    assert "router.attributes.truncated: clashes with an exposure record field" in str(
        refused.value
    )
