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
