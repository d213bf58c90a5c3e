"""`python -m serving export`: a jit.save prefix becomes a bundle, or a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.bundle import BundleError, read_bundle
from serving.export import export_bundle

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-input model saved with paddle.jit.save."""
    import paddle

    class TwoInputs(paddle.nn.Layer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.linear = paddle.nn.Linear(4, 3)

        def forward(self, features: paddle.Tensor, scale: paddle.Tensor) -> paddle.Tensor:
            return paddle.nn.functional.softmax(self.linear(features) * scale, axis=1)

    prefix = tmp_path_factory.mktemp("tiny") / "tiny"
    paddle.jit.save(
        TwoInputs(),
        str(prefix),
        input_spec=[
            paddle.static.InputSpec([None, 4], "float32", name="features"),
            paddle.static.InputSpec([None, 1], "float32", name="scale"),
        ],
    )
    return prefix


def test_export_writes_a_bundle_with_metadata(tiny_prefix: Path, tmp_path: Path) -> None:
    meta = export_bundle(
        tiny_prefix, tmp_path / "b", name="tiny", version="7", fetch_names=["probs"]
    )
    assert read_bundle(tmp_path / "b") == meta
    assert [(f.name, f.dtype, f.shape) for f in meta.feeds] == [
        ("features", "float32", (-1, 4)),
        ("scale", "float32", (-1, 1)),
    ]
    assert [(f.name, f.dtype, f.shape) for f in meta.fetches] == [("probs", "float32", (-1, 3))]
    conf = (tmp_path / "b" / "serving_server_conf.prototxt").read_text()
    assert 'alias_name: "features"' in conf and 'alias_name: "probs"' in conf
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["version"] == "7"


def test_export_cli(tiny_prefix: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving", "export", "--model", str(tiny_prefix),
         "--out", str(tmp_path / "cli"), "--name", "tiny", "--version", "3"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "feed  features: float32 [-1, 4]" in result.stdout
    assert read_bundle(tmp_path / "cli").version == "3"


def test_pir_json_export_is_rejected_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "model.pdiparams").write_bytes(b"")
    with pytest.raises(BundleError, match="FLAGS_enable_pir_api=0"):
        export_bundle(tmp_path / "model", tmp_path / "out")


def test_missing_prefix_names_the_expected_files(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"prefix given to paddle\.jit\.save"):
        export_bundle(tmp_path / "nothing", tmp_path / "out")


def test_fetch_names_must_match_the_outputs(tiny_prefix: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"--fetch-names has 2 names but the model has 1 "):
        export_bundle(tiny_prefix, tmp_path / "out", fetch_names=["a", "b"])


def test_read_bundle_explains_a_non_bundle(tmp_path: Path) -> None:
    (tmp_path / "inference.pdmodel").write_bytes(b"")
    with pytest.raises(BundleError, match=r"missing inference\.pdiparams"):
        read_bundle(tmp_path)


@pytest.fixture(scope="module")
def token_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token ids into a 50-row embedding, and a float feed beside them."""
    import paddle

    class Tokens(paddle.nn.Layer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.embedding = paddle.nn.Embedding(50, 4)

        def forward(self, ids: paddle.Tensor, scale: paddle.Tensor) -> paddle.Tensor:
            return self.embedding(ids).sum(axis=1) * scale

    prefix = tmp_path_factory.mktemp("tokens") / "tokens"
    paddle.jit.save(
        Tokens(),
        str(prefix),
        input_spec=[
            paddle.static.InputSpec([None, 6], "int64", name="ids"),
            paddle.static.InputSpec([None, 1], "float32", name="scale"),
        ],
    )
    return prefix


def test_a_given_value_range_is_stored_and_read_back(token_prefix: Path, tmp_path: Path) -> None:
    meta = export_bundle(token_prefix, tmp_path / "b", value_ranges={"ids": (1, 40)})
    assert [(f.name, f.value_range) for f in meta.feeds] == [("ids", (1, 40)), ("scale", None)]
    assert read_bundle(tmp_path / "b") == meta
    feeds = json.loads((tmp_path / "b" / "bundle.json").read_text())["feeds"]
    assert feeds[0]["value_range"] == [1, 40]
    assert "value_range" not in feeds[1]


def test_an_embedding_lookups_range_comes_from_the_graph(
    token_prefix: Path, tmp_path: Path
) -> None:
    meta = export_bundle(token_prefix, tmp_path / "b")
    assert [f.value_range for f in meta.feeds] == [(0, 50), None]
    assert read_bundle(tmp_path / "b") == meta


def test_a_model_without_integer_feeds_records_no_range(tiny_prefix: Path, tmp_path: Path) -> None:
    meta = export_bundle(tiny_prefix, tmp_path / "b")
    assert [f.value_range for f in meta.feeds] == [None, None]
    assert "value_range" not in (tmp_path / "b" / "bundle.json").read_text()


@pytest.mark.parametrize(
    ("value_ranges", "message"),
    [
        ({"nope": (0, 5)}, r"value ranges for unknown feed\(s\) \['nope'\]"),
        ({"scale": (0, 5)}, r"feed 'scale': it is float32; only integer feeds"),
        ({"ids": (5, 5)}, r"feed 'ids': \(5, 5\); expected \(low, high\)"),
        ({"ids": (0, 2.5)}, r"feed 'ids': \(0, 2\.5\); expected \(low, high\)"),
        ({"ids": (0, 51)}, r"lets through ids that the model's embedding table \(50 rows\)"),
        ({"ids": (-1, 50)}, r"give a range within 0 <= ids < 50"),
    ],
    ids=["unknown-feed", "float-feed", "empty", "float-bound", "past-the-table", "negative"],
)
def test_a_wrong_value_range_is_refused_at_export(
    token_prefix: Path, tmp_path: Path, value_ranges: dict[str, tuple[int, int]], message: str
) -> None:
    with pytest.raises(BundleError, match=message):
        export_bundle(token_prefix, tmp_path / "out", value_ranges=value_ranges)


def _write_meta(bundle_dir: Path, feed: dict[str, object]) -> None:
    bundle_dir.mkdir()
    for required in ("inference.pdmodel", "inference.pdiparams", "serving_server_conf.prototxt"):
        (bundle_dir / required).write_bytes(b"")
    meta = {
        "name": "sentiment",
        "version": "legacy_v1",
        "feeds": [{"name": "x", "var": "x", "dtype": "int64", "shape": [-1, 128], **feed}],
        "fetches": [{"name": "prob", "var": "p", "dtype": "float32", "shape": [-1, 2]}],
        "paddle_version": "2.6.2",
    }
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))


def test_metadata_from_before_value_ranges_reads_without_one(tmp_path: Path) -> None:
    _write_meta(tmp_path / "old", {})
    meta = read_bundle(tmp_path / "old")
    assert [(f.name, f.shape, f.value_range) for f in meta.feeds] == [("x", (-1, 128), None)]
    assert "value_range" not in meta.to_json()


@pytest.mark.parametrize(
    "value_range",
    [[0], [5, 5], [0, 1.5], "0-1000", [True, 3]],
    ids=["one-bound", "empty", "float", "string", "bool"],
)
def test_a_malformed_value_range_in_metadata_is_explained(
    tmp_path: Path, value_range: object
) -> None:
    _write_meta(tmp_path / "bad", {"value_range": value_range})
    with pytest.raises(BundleError, match=r"malformed bundle metadata.*value_range"):
        read_bundle(tmp_path / "bad")
