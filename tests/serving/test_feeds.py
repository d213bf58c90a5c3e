"""decode_feeds: what a request may carry, from the data table tests/data/serving_feeds.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.bundle import BundleMeta, TensorSpec
from serving.pipeline_service import decode_feeds, encode_fetches

CASES = json.loads((Path(__file__).parent.parent / "data" / "serving_feeds.json").read_text())[
    "cases"
]
META = BundleMeta(
    name="sentiment",
    version="t",
    feeds=(TensorSpec("x", "x", "int64", (-1, 128)),),
    fetches=(TensorSpec("prob", "softmax_0.tmp_0", "float32", (-1, 2)),),
)


def _field(spec: dict[str, Any]) -> Any:
    if "value" in spec:
        return spec["value"]
    rows = np.arange(spec["rows"] * spec["cols"]).reshape(spec["rows"], spec["cols"]).tolist()
    return rows if spec.get("as_list") else json.dumps(rows)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_decode_feeds(case: dict[str, Any]) -> None:
    request = {name: _field(spec) for name, spec in case["fields"].items()}
    if "error" in case:
        with pytest.raises(ValueError) as raised:
            decode_feeds(META, request)
        assert case["error"] in str(raised.value)
    else:
        feeds = decode_feeds(META, request)
        assert feeds["x"].dtype == np.int64
        assert list(feeds["x"].shape) == case["shape"]


def test_encode_fetches_is_json_text_per_fetch() -> None:
    encoded = encode_fetches(META, {"prob": np.array([[0.25, 0.75]], dtype=np.float32)})
    assert json.loads(encoded["prob"]) == [[0.25, 0.75]]


RANGED = BundleMeta(
    name="sentiment",
    version="t",
    feeds=(TensorSpec("x", "x", "int64", (-1, 4), value_range=(0, 1000)),),
    fetches=META.fetches,
)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[0, 1, 1000, 2]], "feed 'x': value 1000 is outside the valid range 0 <= x < 1000"),
        ([[0, 1, 2, 3], [5, -1, 7, 10**6]], "feed 'x': value -1 is outside the valid range"),
        ([[2**63] * 4], "value 9223372036854775808 is outside"),  # uint64; int64 would wrap
        ([[2**64 - 1] * 4], "value 18446744073709551615 is outside"),
    ],
    ids=["vocab-size", "minus-one-first", "2**63", "2**64-1"],
)
def test_a_value_outside_the_feeds_range_is_refused_naming_it(
    rows: list[list[int]], message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        decode_feeds(RANGED, {"x": json.dumps(rows)})
    assert message in str(raised.value)


def test_values_at_both_ends_of_the_range_are_taken() -> None:
    feeds = decode_feeds(RANGED, {"x": json.dumps([[0, 999, 0, 999], [1, 2, 3, 4]])})
    assert feeds["x"].dtype == np.int64
    assert feeds["x"].tolist() == [[0, 999, 0, 999], [1, 2, 3, 4]]


def test_without_a_range_any_int64_is_taken() -> None:
    """Bundles exported before ranges were recorded: no check (Paddle decides)."""
    feeds = decode_feeds(META, {"x": json.dumps([[-1, 10**6] * 64])})
    assert feeds["x"].min() == -1
