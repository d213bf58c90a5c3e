"""Real Paddle Serving pipeline servers on the exported demo bundles."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.bundle import MODEL_FILE, PARAMS_FILE
from serving.export import export_bundle
from serving.launcher import free_port, post_json, start_server
from serving.synthetic import SEQ_LEN, VOCAB_SIZE, make_reviews
from tests.conftest import Backend, BackendFactory


def paddle_inference(bundle_dir: Path, tokens: np.ndarray) -> np.ndarray:
    """The same bundle run in-process with Paddle Inference: the reference answer."""
    from paddle import inference

    config = inference.Config(str(bundle_dir / MODEL_FILE), str(bundle_dir / PARAMS_FILE))
    config.disable_gpu()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(tokens.shape))
    handle.copy_from_cpu(tokens)
    predictor.run()
    output: np.ndarray = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    return output


def predict(backend: Backend, body: dict[str, Any]) -> dict[str, Any]:
    return post_json(f"{backend.url}/sentiment/prediction", body, timeout=30)


def served_probs(backend: Backend, tokens: np.ndarray) -> np.ndarray:
    reply = predict(backend, {"key": ["x"], "value": [json.dumps(tokens.tolist())]})
    assert reply["err_no"] == 0, reply
    assert reply["key"] == ["prob"]
    return np.array(json.loads(reply["value"][0]))


@pytest.mark.parametrize("bundle", ["sentiment_v1", "sentiment_v2"])
@pytest.mark.parametrize("rows", [1, 16])
def test_served_probabilities_equal_in_process_inference(
    paddle_backends: dict[str, Backend], demo_models: Path, bundle: str, rows: int
) -> None:
    backend = paddle_backends[bundle.replace("_", "-")]
    tokens = make_reviews(rows, seed=100 + rows).tokens
    served = served_probs(backend, tokens)
    expected = paddle_inference(demo_models / bundle, tokens)
    assert served.shape == (rows, 2)
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)


def test_the_two_versions_really_differ(paddle_backends: dict[str, Backend]) -> None:
    tokens = make_reviews(64, seed=7).tokens
    v1 = served_probs(paddle_backends["sentiment-v1"], tokens)
    v2 = served_probs(paddle_backends["sentiment-v2"], tokens)
    assert np.abs(v1 - v2).max() > 0.1


def test_the_router_reads_the_serving_ops_bad_input_err_no_as_bad_input() -> None:
    """Two copies of one number (the router imports nothing of `serving`): they must agree,
    and neither may be one of Paddle Serving's own codes."""
    from paddle_serving_server.pipeline.error_catch import CustomExceptionCode

    from router.proxy.upstreams import BAD_INPUT_ERR_NO as ROUTER_BAD_INPUT_ERR_NO
    from serving.pipeline_service import BAD_INPUT_ERR_NO

    assert BAD_INPUT_ERR_NO == ROUTER_BAD_INPUT_ERR_NO
    assert BAD_INPUT_ERR_NO not in {code.value for code in CustomExceptionCode}
    assert 51 <= BAD_INPUT_ERR_NO <= 99  # the range Paddle Serving leaves to products


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"key": ["y"], "value": ["[[1]]"]}, "unknown feed(s) ['y']; this model takes ['x']"),
        ({"key": ["x"], "value": ["[[1, 2, 3]]"]}, "expected shape [-1, 128]"),
        ({"key": ["x"], "value": ["[[0.5]]"]}, "expected integers (int64)"),
        ({"key": ["x"], "value": ['[["a"]]']}, "expected a rectangular array of numbers"),
        ({"key": ["x"], "value": ["not json"]}, "not a JSON array"),
        ({"key": ["x"], "value": ["[" * 5000 + "]" * 5000]}, "not a JSON array"),
        ({"key": [], "value": []}, "missing feed"),
    ],
    ids=["feed-name", "shape", "dtype", "strings", "not-json", "nested-too-deep", "no-feed"],
)
def test_bad_feeds_get_the_bad_input_err_no_and_a_clear_message(
    paddle_backends: dict[str, Backend], body: dict[str, Any], message: str
) -> None:
    from serving.pipeline_service import BAD_INPUT_ERR_NO

    backend = paddle_backends["sentiment-v2"]
    reply = predict(backend, body)
    assert reply["err_no"] == BAD_INPUT_ERR_NO, reply
    assert message in reply["err_msg"]
    # ...and the server still answers good requests afterwards.
    assert served_probs(backend, make_reviews(1, seed=1).tokens).shape == (1, 2)


@pytest.mark.parametrize(
    ("token", "whole_row"),
    [(VOCAB_SIZE, False), (-1, False), (2**63, True)],
    ids=["vocab-size", "minus-one", "uint64-that-int64-would-wrap"],
)
@pytest.mark.parametrize("bundle", ["sentiment_v1", "sentiment_v2"])
def test_a_token_id_outside_the_vocabulary_is_bad_input_naming_feed_value_and_range(
    paddle_backends: dict[str, Backend], bundle: str, token: int, whole_row: bool
) -> None:
    """It fits the feed's shape and dtype, and Paddle's embedding lookup would refuse it (as
    its own error 10000, counted against the arm); the bundle records the vocabulary, so the op
    marks it as the client's. A row of 2**63 decodes as uint64, which the cast to int64 would
    wrap to -2**63: the range is checked on the value as sent."""
    from serving.pipeline_service import BAD_INPUT_ERR_NO

    backend = paddle_backends[bundle.replace("_", "-")]
    row = make_reviews(1, seed=3).tokens[0].tolist()
    if whole_row:
        row = [token] * SEQ_LEN
    row[64] = token
    reply = predict(backend, {"key": ["x"], "value": [json.dumps([row, row])]})
    assert reply["err_no"] == BAD_INPUT_ERR_NO, reply
    assert (
        f"feed 'x': value {token} is outside the valid range 0 <= x < {VOCAB_SIZE}"
        in reply["err_msg"]
    ), reply


@pytest.mark.parametrize("bundle", ["sentiment_v1", "sentiment_v2"])
def test_token_ids_at_both_ends_of_the_vocabulary_are_answered(
    paddle_backends: dict[str, Backend], demo_models: Path, bundle: str
) -> None:
    tokens = np.zeros((2, SEQ_LEN), dtype=np.int64)
    tokens[1, :] = VOCAB_SIZE - 1
    served = served_probs(paddle_backends[bundle.replace("_", "-")], tokens)
    np.testing.assert_allclose(
        served, paddle_inference(demo_models / bundle, tokens), atol=1e-5, rtol=0
    )


@pytest.fixture(scope="module")
def broken_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model that fails inside Paddle inference on every request, whatever its input: it
    looks up a row one past its embedding table. Its feed reaches no lookup, so the bundle
    records no value range."""
    import paddle

    class OffByOne(paddle.nn.Layer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.embedding = paddle.nn.Embedding(10, 2)

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            rows = paddle.full_like(x, 10)
            return paddle.nn.functional.softmax(self.embedding(rows).sum(axis=1), axis=1)

    scratch = tmp_path_factory.mktemp("broken")
    paddle.jit.save(
        OffByOne(),
        str(scratch / "model"),
        input_spec=[paddle.static.InputSpec(shape=[None, SEQ_LEN], dtype="int64", name="x")],
    )
    meta = export_bundle(scratch / "model", scratch / "bundle", name="sentiment")
    assert [spec.value_range for spec in meta.feeds] == [None]
    return scratch / "bundle"


def test_an_error_inside_paddle_inference_keeps_paddle_servings_own_err_no(
    broken_bundle: Path, tmp_path: Path
) -> None:
    """Valid input that a broken model fails on inside Paddle inference is the backend's
    error, Paddle Serving's own err_no, never bad input (docs/router.md, "Errors")."""
    from serving.pipeline_service import BAD_INPUT_ERR_NO

    # The readiness probe (a valid request answered with err_no 0) never passes on this model,
    # so not paddle_backend_factory: wait for the first reply from the pipeline itself.
    server = start_server(broken_bundle, free_port(), tmp_path)
    try:
        body = {"key": ["x"], "value": [json.dumps(make_reviews(1, seed=4).tokens.tolist())]}
        deadline = time.monotonic() + 120
        reply: dict[str, Any] = {}
        while "err_no" not in reply:
            assert server.process.poll() is None, server.log_tail()
            assert time.monotonic() < deadline, server.log_tail()
            try:
                reply = predict(server, body)
            except (OSError, ValueError):  # not listening yet, or the gateway's own error
                time.sleep(0.3)
        assert reply["err_no"] not in (0, BAD_INPUT_ERR_NO), reply
    finally:
        server.stop()


def test_auto_batching_server_answers_each_request_with_its_own_rows(
    paddle_backend_factory: BackendFactory, demo_models: Path
) -> None:
    backend = paddle_backend_factory(demo_models / "sentiment_v2", batch_size=8)
    reviews = make_reviews(24, seed=55).tokens
    expected = paddle_inference(demo_models / "sentiment_v2", reviews)
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda i: served_probs(backend, reviews[i : i + 1]), range(24)))
    np.testing.assert_allclose(np.vstack(results), expected, atol=1e-5, rtol=0)
    backend.stop()
