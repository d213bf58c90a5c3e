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
