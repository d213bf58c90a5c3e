"""What PipelineClient sends by default: the repr of a numpy array, parsed without eval; and
the tensor format, which Paddle Serving hands to the op as numpy arrays."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from serving.bundle import BundleMeta, TensorSpec
from serving.pipeline_service import decode_feeds, feed_value, parse_numpy_repr

META = BundleMeta(
    name="sentiment",
    version="t",
    feeds=(TensorSpec("x", "x", "int64", (-1, 128)),),
    fetches=(TensorSpec("prob", "softmax_0.tmp_0", "float32", (-1, 2)),),
)

ARRAYS = [
    np.array([[1, 2]], dtype=np.int64),
    np.arange(256).reshape(2, 128),  # several lines
    np.array([np.nan, np.inf, -np.inf, 1e-5, 2.5, -0.0]),
    np.array([[0.1, 0.2]], dtype=np.float32),
    np.array(5),
    np.array([], dtype=np.float64),
    np.array([True, False]),
    np.array([[1, -2]], dtype=np.int32),
    np.array([1e300, -1e-300]),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_the_repr_of_an_array_reads_back_the_same(array: np.ndarray) -> None:
    previous = np.get_printoptions()["threshold"]
    np.set_printoptions(threshold=sys.maxsize)  # as PipelineClient sets it
    try:
        text = repr(array)
    finally:
        np.set_printoptions(threshold=previous)
    parsed = parse_numpy_repr(text)
    assert parsed.dtype == array.dtype and parsed.shape == array.shape
    assert np.array_equal(parsed, array, equal_nan=array.dtype.kind == "f")


@pytest.mark.parametrize(
    "text",
    [
        "array([1, 2)",
        "array([[1], [2, 3]])",
        'array(__import__("os").system("true"))',
        "array([1, ...,  3])",  # a summarized repr: the values are not all there
        "array([1, 2]) + 1",
        "[1, 2",
        "array([" * 40 + "1" + "])" * 40,
    ],
)
def test_anything_else_is_refused_as_bad_input(text: str) -> None:
    with pytest.raises(ValueError):
        array = np.asarray(feed_value(text))
        if array.dtype == object:
            raise ValueError("not numbers")


def test_decode_feeds_takes_json_a_repr_and_an_array_alike() -> None:
    rows = np.arange(128).reshape(1, 128)
    for raw in (str(rows.tolist()), repr(rows), rows):
        (array,) = decode_feeds(META, {"x": raw}).values()
        assert array.dtype == np.int64 and np.array_equal(array, rows)


def test_a_float_repr_for_an_integer_feed_is_bad_input() -> None:
    with pytest.raises(ValueError, match="expected integers"):
        decode_feeds(META, {"x": repr(np.zeros((1, 128)))})
