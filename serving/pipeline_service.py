"""One official Paddle Serving pipeline server (WebService, local_predictor) for any bundle.

The generic op decodes each feed named in the bundle's metadata from the pipeline request
(`{"key": [...], "value": ["<JSON array>", ...]}`), checks its shape, casts it to the feed's
dtype, and returns every fetch as JSON text.

Input the model cannot take (an unknown or missing feed name, a shape, dtype or batch size that
does not fit the bundle's metadata, a value that is not a JSON array of numbers, a value outside
a feed's recorded `value_range`, such as a token id past the model's vocabulary) is answered
with `err_no` BAD_INPUT_ERR_NO (51) and the reason in `err_msg`: `preprocess` returns it as
Paddle Serving's product error code, which becomes the reply's `err_no`/`err_msg` as it is.
The router reads 51 as "the client's input is invalid" (router.proxy.upstreams keeps the same
constant; a test checks they agree) and, when control says so too, answers 400 `bad_input`
without counting it against any arm (docs/router.md, "Errors"). Every other failure (an error
inside Paddle inference) keeps Paddle Serving's own code, 10000 or another of its
ChannelDataErrcode values, and counts as the backend's. A bundle exported before value ranges
were recorded has none, so its out-of-vocabulary ids still fail inside Paddle (re-export it).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from serving.bundle import BundleMeta, read_bundle

log = logging.getLogger("serving")

OP_NAME = "bundle"
# The reply's `err_no` for input the model cannot take. Paddle Serving leaves 51-99 to products
# (pipeline/error_catch.py: ProductErrCode) and uses 0, 50 and 3000-10000 itself, so 51 is never
# one of its own errors. The router's copy: router.proxy.upstreams.BAD_INPUT_ERR_NO.
BAD_INPUT_ERR_NO = 51


@dataclass(frozen=True)
class ServeOptions:
    bundle_dir: Path
    http_port: int
    rpc_port: int
    device: str = "cpu"  # cpu | gpu:N
    concurrency: int = 1
    batch_size: int = 1
    batch_timeout_ms: int = 2
    cpu_threads: int = 1
    rpc_threads: int = 32


def parse_device(device: str) -> tuple[int, str]:
    """`cpu` or `gpu:N` -> Paddle Serving's (device_type, devices)."""
    if device == "cpu":
        return 0, ""
    kind, _, index = device.partition(":")
    if kind == "gpu" and index.isdigit():
        return 1, index
    raise ValueError(f"--device {device!r}: expected cpu or gpu:N (e.g. gpu:0)")


def pipeline_config(options: ServeOptions, meta: BundleMeta) -> dict[str, Any]:
    device_type, devices = parse_device(options.device)
    return {
        "rpc_port": options.rpc_port,
        "http_port": options.http_port,
        # The gRPC thread pool: with 1, requests are handled one at a time and never batched.
        "worker_num": options.rpc_threads,
        "dag": {"is_thread_op": True, "retry": 1, "tracer": {"interval_s": -1}},
        "op": {
            OP_NAME: {
                "concurrency": options.concurrency,
                "batch_size": options.batch_size,
                "auto_batching_timeout": options.batch_timeout_ms,
                "local_service_conf": {
                    "model_config": str(options.bundle_dir.resolve()),
                    "client_type": "local_predictor",
                    "device_type": device_type,
                    "devices": devices,
                    "fetch_list": [spec.name for spec in meta.fetches],
                    "thread_num": options.cpu_threads,
                    "ir_optim": False,
                },
            }
        },
    }


# PipelineClient's default packing of an ndarray (or a list) is its `repr`:
# `array([[1, 2]], dtype=int64)`, over several lines when long, with `nan` and `inf`.
_NUMPY_REPR = re.compile(r"\s*array\((.*?)(?:,\s*dtype=([A-Za-z0-9_]+))?\)\s*", re.DOTALL)
_REPR_TOKEN = re.compile(
    r"\s*(?:(\[)|(\])|(,)|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
    r"|True|False))"
)
MAX_REPR_DEPTH = 32


def parse_numpy_repr(text: str) -> np.ndarray:
    """The array `repr(ndarray)` wrote, without `eval`; raises ValueError."""
    match = _NUMPY_REPR.fullmatch(text)
    if match is None:
        raise ValueError("not a JSON array nor the repr of a numpy array")
    body, dtype = match.group(1), match.group(2)
    stack: list[list[Any]] = [[]]
    position = 0
    while position < len(body):
        token = _REPR_TOKEN.match(body, position)
        if token is None:
            if body[position:].strip() == "":
                break
            raise ValueError(f"unexpected {body[position : position + 20]!r} in a numpy repr")
        position = token.end()
        opening, closing, comma, number = token.groups()
        if opening:
            if len(stack) > MAX_REPR_DEPTH:
                raise ValueError("numpy repr nested too deep")
            stack.append([])
        elif closing:
            if len(stack) < 2:
                raise ValueError("unbalanced ']' in a numpy repr")
            done = stack.pop()
            stack[-1].append(done)
        elif comma:
            continue
        else:
            stack[-1].append(_repr_number(number or token.group(0).strip()))
    if len(stack) != 1 or len(stack[0]) != 1:
        raise ValueError("not one value in a numpy repr")
    try:
        return np.asarray(stack[0][0], dtype=np.dtype(dtype) if dtype else None)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"numpy repr: {exc}") from None


def _repr_number(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    if any(c in text for c in ".eEna"):  # nan, inf and floats
        return float(text)
    return int(text)


def feed_value(raw: Any) -> Any:
    """A feed's value as the op gets it: JSON text, the repr of a numpy array (PipelineClient's
    default), or an array already (PipelineClient's `pack_tensor_format=True`: Paddle Serving
    unpacks the request's tensors into numpy arrays before `preprocess`). Raises ValueError."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except RecursionError as exc:  # nested too deep
        raise ValueError(f"not a JSON array ({exc})") from exc
    except ValueError as exc:
        if raw.lstrip().startswith("array("):
            return parse_numpy_repr(raw)
        raise ValueError(f"not a JSON array nor the repr of a numpy array ({exc})") from exc


def decode_feeds(meta: BundleMeta, request: dict[str, Any]) -> dict[str, np.ndarray]:
    """Pipeline request fields -> checked, typed arrays, one per feed. Raises ValueError.

    The shape and the value range (numpy min/max) are checked on the array as decoded, before
    the cast to the feed's dtype, so a value the cast would wrap is caught too.
    """
    expected = {spec.name for spec in meta.feeds}
    unknown = sorted(set(request) - expected)
    if unknown:
        raise ValueError(f"unknown feed(s) {unknown}; this model takes {sorted(expected)}")
    feeds: dict[str, np.ndarray] = {}
    for spec in meta.feeds:
        if spec.name not in request:
            raise ValueError(f"missing feed '{spec.name}' ({spec.dtype}, shape {list(spec.shape)})")
        try:
            value = feed_value(request[spec.name])
        except ValueError as exc:
            raise ValueError(f"feed '{spec.name}': {exc}") from exc
        try:
            array = np.asarray(value)
        except ValueError:  # ragged nesting
            array = np.asarray(None, dtype=object)
        if array.size and (array.dtype == object or array.dtype.kind not in "biuf"):
            raise ValueError(
                f"feed '{spec.name}': expected a rectangular array of numbers ({spec.dtype}), "
                f"got {array.dtype.name} values"
            )
        if array.size and np.dtype(spec.dtype).kind in "iu" and array.dtype.kind == "f":
            raise ValueError(f"feed '{spec.name}': expected integers ({spec.dtype}), got floats")
        spec.check(array)
        feeds[spec.var] = array.astype(spec.dtype)
    batch_sizes = {array.shape[0] for array in feeds.values()}
    if len(batch_sizes) > 1:
        raise ValueError(f"feeds disagree on the batch size: {sorted(batch_sizes)}")
    return feeds


def encode_fetches(meta: BundleMeta, fetch_map: dict[str, Any]) -> dict[str, str]:
    return {
        spec.name: json.dumps(np.asarray(fetch_map[spec.name]).tolist()) for spec in meta.fetches
    }


def build_service(options: ServeOptions) -> Any:
    """The WebService, ready for `run_service()`; imports Paddle Serving only here."""
    from paddle_serving_server.web_service import Op, WebService

    meta = read_bundle(options.bundle_dir)

    class BundleOp(Op):  # type: ignore[misc]
        def preprocess(
            self, input_dicts: dict[str, Any], data_id: int, log_id: int
        ) -> tuple[Optional[dict[str, np.ndarray]], bool, Optional[int], str]:
            ((_, request),) = input_dicts.items()
            try:
                return decode_feeds(meta, request), False, None, ""
            except ValueError as exc:
                # A product error code, not an exception: Paddle Serving would report an
                # exception as its own error 10000, which nobody could tell from a broken model.
                return None, False, BAD_INPUT_ERR_NO, str(exc)

        def postprocess(
            self, input_dicts: dict[str, Any], fetch_dict: dict[str, Any], data_id: int, log_id: int
        ) -> tuple[dict[str, str], None, str]:
            return encode_fetches(meta, fetch_dict), None, ""

    class BundleService(WebService):  # type: ignore[misc]
        def get_pipeline_response(self, read_op: Any) -> Any:
            return BundleOp(name=OP_NAME, input_ops=[read_op])

    service = BundleService(name=meta.name)
    service.prepare_pipeline_config(yml_dict=pipeline_config(options, meta))
    return service
