"""Turn a `paddle.jit.save` prefix into a Paddle Serving model bundle.

`python -m paddle_serving_client.convert` would do this, but it imports `paddle.fluid`, which
Paddle 2.6 removed; so the serving configs are written here with Paddle Serving's own protobuf
module, from what `paddle.static.load_inference_model` reports about the graph.

An integer feed's valid value range goes into the bundle's metadata when it is known: given
to `export_bundle` (`value_ranges`), or read from the graph when the feed is the ids of an
embedding lookup (`0 <= id < the table's row count`, which Paddle enforces inside inference).
"""

from __future__ import annotations

import operator
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from serving.bundle import (
    BUNDLE_META,
    CLIENT_CONF,
    INTEGER_DTYPES,
    MODEL_FILE,
    PARAMS_FILE,
    SERVER_CONF,
    SERVING_TYPE_CODES,
    BundleError,
    BundleMeta,
    TensorSpec,
)


def check_prefix(prefix: Path) -> None:
    """Fail early, naming the fix, when `prefix` is not a loadable Paddle 2.x inference model."""
    model = prefix.with_name(prefix.name + ".pdmodel")
    params = prefix.with_name(prefix.name + ".pdiparams")
    pir_program = prefix.with_name(prefix.name + ".json")
    if not model.exists() and pir_program.exists():
        raise BundleError(
            f"{pir_program}: this is a Paddle 3 PIR program, "
            "which Paddle Serving 0.9.0 cannot load. "
            "Re-export with Paddle 2.6, or with Paddle 3 and FLAGS_enable_pir_api=0 set, "
            "so that paddle.jit.save writes a .pdmodel file."
        )
    if not model.exists():
        raise BundleError(
            f"{model}: not found. --model takes the prefix given to paddle.jit.save "
            "(e.g. out/sentiment for out/sentiment.pdmodel + out/sentiment.pdiparams)."
        )
    if not params.exists():
        raise BundleError(f"{params}: not found; paddle.jit.save writes it beside {model.name}.")


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).replace("paddle.", "").replace("VarType.", "").lower()
    if name == "fp32":
        name = "float32"
    if name not in SERVING_TYPE_CODES:
        raise BundleError(f"dtype {dtype} has no Paddle Serving type code")
    return name


def _tensor_spec(
    block: Any, var_name: str, alias: str, value_range: Optional[tuple[int, int]] = None
) -> TensorSpec:
    var = block.var(var_name)
    return TensorSpec(
        name=alias,
        var=var_name,
        dtype=_dtype_name(var.dtype),
        shape=tuple(int(d) for d in var.shape),
        value_range=value_range,
    )


# Paddle's embedding lookups; both refuse an id outside [0, rows of W) (phi embedding kernels).
_LOOKUP_OPS = ("lookup_table_v2", "lookup_table")


def embedding_ranges(block: Any, feed_vars: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Feed var -> `(0, rows)` for each feed that is the ids of an embedding lookup in `block`.

    Only the global block's ops, which run on every request, and local tables count; a feed
    that indexes several tables gets the smallest.
    """
    ranges: dict[str, tuple[int, int]] = {}
    for op in block.ops:
        if op.type not in _LOOKUP_OPS or (
            op.has_attr("is_distributed") and op.attr("is_distributed")
        ):
            continue
        (ids,) = op.input("Ids")
        (table,) = op.input("W")
        rows = int(block.var(table).shape[0])
        if ids in feed_vars and rows > 0:
            ranges[ids] = (0, min(rows, ranges.get(ids, (0, rows))[1]))
    return ranges


def _value_range(
    block: Any,
    feed: str,
    given: Optional[tuple[int, int]],
    from_graph: Optional[tuple[int, int]],
) -> Optional[tuple[int, int]]:
    """The range to record for `feed`: `given` if any (checked), else the graph's."""
    if given is None:
        return from_graph
    dtype = _dtype_name(block.var(feed).dtype)
    if dtype not in INTEGER_DTYPES:
        raise BundleError(f"value range for feed '{feed}': it is {dtype}; only integer feeds")
    try:
        low, high = (operator.index(bound) for bound in given)
    except (TypeError, ValueError):
        low, high = 0, 0
    if low >= high:
        raise BundleError(
            f"value range for feed '{feed}': {given!r}; expected (low, high), two integers "
            "with low < high (low <= value < high)"
        )
    if from_graph is not None and (low < from_graph[0] or high > from_graph[1]):
        raise BundleError(
            f"value range for feed '{feed}': {low} <= {feed} < {high} lets through ids that the "
            f"model's embedding table ({from_graph[1]} rows) refuses; "
            f"give a range within {from_graph[0]} <= {feed} < {from_graph[1]}"
        )
    return (low, high)


def _write_serving_conf(meta: BundleMeta, path: Path) -> None:
    from google.protobuf import text_format
    from paddle_serving_client.proto import general_model_config_pb2 as model_conf

    config = model_conf.GeneralModelConfig()
    for spec in meta.feeds:
        feed = config.feed_var.add()
        # LocalPredictor looks feeds up by alias and passes them to the graph by name: keep equal.
        feed.name = spec.var
        feed.alias_name = spec.var
        feed.is_lod_tensor = False
        feed.feed_type = SERVING_TYPE_CODES[spec.dtype]
        feed.shape.extend(d for d in spec.shape if d >= 0)
    for spec in meta.fetches:
        fetch = config.fetch_var.add()
        fetch.name = spec.var
        fetch.alias_name = spec.name
        fetch.is_lod_tensor = False
        fetch.fetch_type = SERVING_TYPE_CODES[spec.dtype]
        fetch.shape.extend(d for d in spec.shape if d >= 0)
    path.write_text(text_format.MessageToString(config))


def export_bundle(
    prefix: Path,
    out_dir: Path,
    *,
    name: Optional[str] = None,
    version: str = "1",
    fetch_names: Optional[Sequence[str]] = None,
    value_ranges: Optional[Mapping[str, tuple[int, int]]] = None,
) -> BundleMeta:
    """Export the model at `prefix` into `out_dir` and return the bundle's metadata.

    `name` is the Paddle Serving service name (the URL is `/<name>/prediction`); it defaults to
    the prefix's file name. `fetch_names` renames the model's outputs, in order, for clients.
    `value_ranges` maps integer feeds to `(low, high)`, the values the model takes
    (`low <= value < high`; token ids: `(0, vocab_size)`); the serving op answers any other
    value as bad input. A feed that is the ids of an embedding lookup gets `(0, rows)` from the
    graph unless given (a given range must lie within it).
    """
    import paddle

    check_prefix(prefix)
    service_name = name or prefix.name
    if not service_name.replace("_", "").replace("-", "").isalnum():
        raise BundleError(f"--name {service_name!r}: use letters, digits, '-' and '_' only")

    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        executor = paddle.static.Executor(paddle.CPUPlace())
        program, feed_vars, fetch_targets = paddle.static.load_inference_model(
            str(prefix), executor
        )
        block = program.global_block()
        fetch_vars = [target.name for target in fetch_targets]
        aliases = list(fetch_names) if fetch_names else fetch_vars
        if len(aliases) != len(fetch_vars):
            raise BundleError(
                f"--fetch-names has {len(aliases)} names but the model has {len(fetch_vars)} "
                f"outputs ({', '.join(fetch_vars)})"
            )
        given = dict(value_ranges or {})
        unknown = sorted(set(given) - set(feed_vars))
        if unknown:
            raise BundleError(
                f"value ranges for unknown feed(s) {unknown}; the model takes {list(feed_vars)}"
            )
        from_graph = embedding_ranges(block, feed_vars)
        feeds = tuple(
            _tensor_spec(
                block, var, var, _value_range(block, var, given.get(var), from_graph.get(var))
            )
            for var in feed_vars
        )
        meta = BundleMeta(
            name=service_name,
            version=version,
            feeds=feeds,
            fetches=tuple(_tensor_spec(block, var, a) for var, a in zip(fetch_vars, aliases)),
            paddle_version=paddle.__version__,
        )
    finally:
        if was_dynamic:
            paddle.disable_static()

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(prefix.with_name(prefix.name + ".pdmodel"), out_dir / MODEL_FILE)
    shutil.copyfile(prefix.with_name(prefix.name + ".pdiparams"), out_dir / PARAMS_FILE)
    _write_serving_conf(meta, out_dir / SERVER_CONF)
    shutil.copyfile(out_dir / SERVER_CONF, out_dir / CLIENT_CONF)
    (out_dir / BUNDLE_META).write_text(meta.to_json())
    return meta
