"""Calling backends (router.proxy.upstreams): what each endpoint keeps between calls."""

from __future__ import annotations

from router.proxy.upstreams import MAX_CACHED_HEADS, BackendRuntime, EndpointState
from router.registry.schema import BackendConfig
from router.transport.backend_client import Origin, request_head

PATH = "/sentiment/prediction"


def test_request_heads_are_kept_for_usual_content_types_only() -> None:
    endpoint = EndpointState("v1", "http://127.0.0.1:9")
    usual = endpoint.head("POST", PATH, "application/json")
    assert usual == request_head(Origin.parse(endpoint.url), "POST", PATH, "application/json")
    assert endpoint.heads == {("POST", PATH, "application/json"): usual}
    assert endpoint.head("POST", PATH, "application/json") is usual  # built once

    # A content type as long as a client may send: built for its call, never kept.
    huge = "application/json; profile=" + "x" * 8000
    assert huge.encode() in endpoint.head("POST", PATH, huge)
    assert list(endpoint.heads) == [("POST", PATH, "application/json")]

    # A client cycling through short ones: the cache stays small.
    for index in range(5000):
        endpoint.head("POST", PATH, f"text/x-{index}")
        assert len(endpoint.heads) <= MAX_CACHED_HEADS
    kept = sum(len(key[2] or "") + len(head) for key, head in endpoint.heads.items())
    assert kept < 8 * 1024


def test_a_retry_goes_to_another_endpoint_whatever_other_requests_picked() -> None:
    config = BackendConfig.model_validate(
        {"endpoints": ["http://127.0.0.1:1", "http://127.0.0.1:2"], "version": "v1"}
    )
    backend = BackendRuntime(
        "v1", config, [EndpointState("v1", url) for url in config.endpoints], 1.0
    )
    failed = backend.pick()
    assert failed is not None
    backend.pick()  # another request's pick: the cursor is back on `failed`
    other = backend.pick_other(failed)
    assert other is not None and other is not failed
    alone = BackendRuntime("v1", config, backend.endpoints[:1], 1.0)
    assert alone.pick_other(alone.endpoints[0]) is None
