"""The on-disk layout of a Paddle Serving model bundle and its small metadata file.

A bundle directory holds:

    inference.pdmodel / inference.pdiparams   the static graph and weights (Paddle 2.x format)
    serving_server_conf.prototxt              what Paddle Serving's LocalPredictor reads
    serving_client_conf.prototxt              the same, for Paddle Serving clients
    bundle.json                               name, version, feeds and fetches (this module)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


class BundleError(Exception):
    """A bundle or a model to export is missing, malformed or in an unsupported format."""


@dataclass(frozen=True)
class TensorSpec:
    """One feed or fetch: `name` is what clients use (the pipeline `key`), `var` the graph var."""

    name: str
    var: str
    dtype: str
    shape: tuple[int, ...]  # -1 for a free dimension; the first is the batch dimension

    def check(self, array: np.ndarray) -> None:
        """Raise ValueError saying what was expected if `array` does not fit this spec."""
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


@dataclass(frozen=True)
class BundleMeta:
    name: str
    version: str
    feeds: tuple[TensorSpec, ...]
    fetches: tuple[TensorSpec, ...]
    paddle_version: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleMeta:
        def specs(key: str) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(
                    name=str(item["name"]),
                    var=str(item["var"]),
                    dtype=str(item["dtype"]),
                    shape=tuple(int(d) for d in item["shape"]),
                )
                for item in data[key]
            )

        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            feeds=specs("feeds"),
            fetches=specs("fetches"),
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
