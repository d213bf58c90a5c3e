"""Real Paddle Serving pipeline servers on the exported demo bundles."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.bundle import MODEL_FILE, PARAMS_FILE
from serving.launcher import post_json
from serving.synthetic import make_reviews
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


def test_an_error_inside_paddle_inference_keeps_paddle_servings_own_err_no(
    paddle_backends: dict[str, Backend],
) -> None:
    """A token id past the vocabulary fits the feed's shape and dtype; Paddle itself refuses
    it. The op does not know the vocabulary, so this is not marked as bad input: it counts as
    the backend's error (docs/router.md, "Errors")."""
    from serving.pipeline_service import BAD_INPUT_ERR_NO

    reply = predict(
        paddle_backends["sentiment-v2"], {"key": ["x"], "value": [json.dumps([[10**6] * 128])]}
    )
    assert reply["err_no"] not in (0, BAD_INPUT_ERR_NO), reply


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
