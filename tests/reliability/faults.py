"""An in-process backend that misbehaves at the HTTP level, for fault injection only.

Real failures of real servers (killed, stopped, restarted) use real Paddle Serving processes;
this fake covers what a real server does rarely and on no cue: answering garbage, resetting
the connection mid-request, promising more bytes than it sends, hanging.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Literal

from aiohttp import web
from aiohttp.test_utils import TestServer

Misbehaviour = Literal["garbage", "reset", "truncated", "hang", "html_500"]
ALL: tuple[Misbehaviour, ...] = ("garbage", "reset", "truncated", "hang", "html_500")
HANG_S = 2.0  # longer than any timeout_ms the tests give it; bounded, so shutdown is quick


class BadBackend:
    """Answers every request with the next misbehaviour of `modes`, round and round."""

    def __init__(self, modes: tuple[Misbehaviour, ...] = ALL) -> None:
        self._modes = itertools.cycle(modes)
        self.received = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.received += 1
        mode = next(self._modes)
        if mode == "garbage":
            return web.Response(body=b"\x00\xff{not json", content_type="application/json")
        if mode == "html_500":
            return web.Response(status=500, text="<html>oops</html>", content_type="text/html")
        if mode == "hang":
            await asyncio.sleep(HANG_S)
        transport = request.transport
        assert transport is not None
        if mode == "truncated":
            transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"err_no": 0, "key": ['
            )
        transport.close()  # "reset" closes without a word
        return web.Response()

    async def start(self) -> TestServer:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        return server
