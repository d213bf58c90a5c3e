"""The on-disk layout of a Paddle Serving model bundle and its small metadata file.

A bundle directory holds:

    inference.pdmodel / inference.pdiparams   the static graph and weights (Paddle 2.x format)
    serving_server_conf.prototxt              what Paddle Serving's LocalPredictor reads
    serving_client_conf.prototxt              the same, for Paddle Serving clients
    bundle.json                               name, version, feeds and fetches (this module)

A feed in `bundle.json` may carry `"value_range": [low, high]`: every value must satisfy
`low <= value < high` (for ids into an embedding table, `[0, vocab_size]`). Paddle itself would
refuse a value outside it, inside inference; with the range recorded, the serving op refuses it
first, as the client's bad input. Bundles without the field are not range-checked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

BUNDLE_META = "bundle.json"
MODEL_FILE = "inference.pdmodel"
PARAMS_FILE = "inference.pdiparams"
SERVER_CONF = "serving_server_conf.prototxt"
CLIENT_CONF = "serving_client_conf.prototxt"

# Paddle Serving's feed_type / fetch_type codes (general_model_config.proto).
SERVING_TYPE_CODES = {
    "int64": 0,
    "float32": 1,
    "int32": 2,
    "float64": 3,
    "int16": 4,
    "float16": 5,
    "bfloat16": 6,
    "uint8": 7,
    "int8": 8,
    "bool": 9,
    "complex64": 10,
    "complex128": 11,
}

INTEGER_DTYPES = frozenset({"int64", "int32", "int16", "int8", "uint8"})


class BundleError(Exception):
    """A bundle or a model to export is missing, malformed or in an unsupported format."""


@dataclass(frozen=True)
class TensorSpec:
    """One feed or fetch: `name` is what clients use (the pipeline `key`), `var` the graph var.

    `value_range` (integer feeds only): `(low, high)`, every value must be `low <= v < high`;
    None when unknown (no check).
    """

    name: str
    var: str
    dtype: str
    shape: tuple[int, ...]  # -1 for a free dimension; the first is the batch dimension
    value_range: Optional[tuple[int, int]] = None

    def __post_init__(self) -> None:
        if self.value_range is None:
            return
        low, high = self.value_range
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
            raise ValueError(f"'{self.name}': value_range {list(self.value_range)} is not 2 ints")
        if low >= high:
            raise ValueError(f"'{self.name}': value_range {[low, high]} is empty (low >= high)")
        if self.dtype not in INTEGER_DTYPES:
            raise ValueError(
                f"'{self.name}': value_range {[low, high]} on a {self.dtype} tensor "
                "(integer feeds only)"
            )

    def check(self, array: np.ndarray) -> None:
        """Raise ValueError saying what was expected if `array` does not fit this spec.

        `array` is the value as decoded, before the cast to `dtype` (which could wrap it).
        """
        if array.ndim != len(self.shape):
            raise ValueError(
                f"feed '{self.name}': expected {len(self.shape)} dimensions "
                f"(shape {list(self.shape)}, -1 = any), got shape {list(array.shape)}"
            )
        for axis, (want, got) in enumerate(zip(self.shape, array.shape)):
            if want >= 0 and want != got:
                raise ValueError(
                    f"feed '{self.name}': expected shape {list(self.shape)} (-1 = any), "
                    f"got {list(array.shape)} (axis {axis})"
                )
        if array.shape[0] == 0:
            raise ValueError(f"feed '{self.name}': the batch is empty")
        if self.value_range is not None and array.size:
            low, high = self.value_range
            smallest, largest = int(array.min()), int(array.max())
            if smallest < low or largest >= high:
                value = smallest if smallest < low else largest
                raise ValueError(
                    f"feed '{self.name}': value {value} is outside the valid range "
                    f"{low} <= {self.name} < {high}"
                )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.value_range is None:
            del data["value_range"]  # as bundles were before the field existed
        else:
            data["value_range"] = list(self.value_range)
        return data

    @classmethod
    def from_dict(cls, item: dict[str, Any]) -> TensorSpec:
        raw_range = item.get("value_range")
        value_range: Optional[tuple[int, int]] = None
        if raw_range is not None:
            if not isinstance(raw_range, list) or len(raw_range) != 2:
                raise ValueError(f"value_range {raw_range!r}: expected [low, high]")
            value_range = (raw_range[0], raw_range[1])
        return cls(
            name=str(item["name"]),
            var=str(item["var"]),
            dtype=str(item["dtype"]),
            shape=tuple(int(d) for d in item["shape"]),
            value_range=value_range,
        )


@dataclass(frozen=True)
class BundleMeta:
    name: str
    version: str
    feeds: tuple[TensorSpec, ...]
    fetches: tuple[TensorSpec, ...]
    paddle_version: str = ""

    def to_json(self) -> str:
        data = {
            "name": self.name,
            "version": self.version,
            "feeds": [spec.to_dict() for spec in self.feeds],
            "fetches": [spec.to_dict() for spec in self.fetches],
            "paddle_version": self.paddle_version,
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleMeta:
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            feeds=tuple(TensorSpec.from_dict(item) for item in data["feeds"]),
            fetches=tuple(TensorSpec.from_dict(item) for item in data["fetches"]),
            paddle_version=str(data.get("paddle_version", "")),
        )


def read_bundle(bundle_dir: Path) -> BundleMeta:
    """Load `bundle.json`, or explain what is wrong with the directory."""
    meta_path = bundle_dir / BUNDLE_META
    if not bundle_dir.is_dir():
        raise BundleError(
            f"{bundle_dir}: not a directory (export one with `python -m serving export`)"
        )
    for required in (MODEL_FILE, PARAMS_FILE, SERVER_CONF, BUNDLE_META):
        if not (bundle_dir / required).is_file():
            raise BundleError(
                f"{bundle_dir}: missing {required}; "
                "is this a bundle made by `python -m serving export`?"
            )
    try:
        return BundleMeta.from_dict(json.loads(meta_path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{meta_path}: malformed bundle metadata ({exc!r})") from exc
