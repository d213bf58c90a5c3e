"""A request as the router's request path takes it, and the answer it gives back.

Both HTTP servers hand requests over in this shape: the fast path (router.transport.http_server)
and aiohttp (router.proxy.handler's aiohttp route). NamedTuples: one is built per request, and
nothing is cheaper to build in CPython.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, NamedTuple


class HttpRequest(NamedTuple):
    """`headers` by lower-case name (a plain dict from the fast path) or case-insensitive
    (aiohttp's)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


class HttpAnswer(NamedTuple):
    status: int
    headers: Mapping[str, str]  # Content-Type included
    body: bytes


# Takes the answer to a request; called once.
Respond = Callable[[HttpAnswer], None]
