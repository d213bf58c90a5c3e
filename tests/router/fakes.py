"""In-process backends for fault injection: they speak the pipeline JSON and fail on demand."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from aiohttp.test_utils import TestServer

Mode = Literal["ok", "err_no", "slow", "not_json", "http_500", "json_array"]


@dataclass
class Received:
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass
class FakePipeline:
    """Answers like a Paddle Serving pipeline; the answer carries a digest of the body received."""

    name: str
    mode: Mode = "ok"
    delay_s: float = 0.0
    padding: int = 0  # bytes of filler in each good answer, for answers of any size
    received: list[Received] = field(default_factory=list)
    # Set on every request; create the fake inside the running loop (Python 3.9 binds it).
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(Received(request.path, body, dict(request.headers)))
        self.arrived.set()
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)
        if self.mode == "not_json":
            return web.Response(text="<html>bad gateway</html>", content_type="text/html")
        if self.mode == "http_500":
            return web.Response(status=500, text="internal error")
        if self.mode == "json_array":
            return web.json_response([1, 2])
        if self.mode == "err_no":
            reply: dict[str, Any] = {
                "err_no": 10000,
                "err_msg": "feed x: bad shape",
                "key": [],
                "value": [],
            }
        else:
            digest = hashlib.sha256(body).hexdigest()
            reply = {
                "err_no": 0,
                "err_msg": "",
                "key": ["prob", "served_by", "body_sha256"],
                "value": ["[[0.1, 0.9]]", self.name, digest],
                "tensors": [],
            }
            if self.padding:
                reply["key"].append("padding")
                reply["value"].append("x" * self.padding)
        return web.Response(text=json.dumps(reply), content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        return app


async def start_fake(name: str) -> tuple[FakePipeline, TestServer]:
    fake = FakePipeline(name)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    return fake, server


def url_of(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def closed_port_url() -> str:
    """A URL on which nothing listens (bound, then closed: refused for a while)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# Started fakes by name, with their servers (the `fakes` fixture of tests/router/conftest.py).
Fakes = dict[str, tuple[FakePipeline, TestServer]]
