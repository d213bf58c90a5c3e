"""Raw HTTP/1.1 over a socket, for what a client library would not send or would hide: a
request cut anywhere, pipelined, never finished; an answer read (or not) byte by byte."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from tests.router.harness import DEMO_BODY

BODY = json.dumps(DEMO_BODY).encode()
ROUTE = b"/sentiment/prediction"


def post(body: bytes = BODY, target: bytes = ROUTE, *headers: bytes) -> bytes:
    lines = [b"POST " + target + b" HTTP/1.1", b"Host: router", b"X-User-Id: u-1", *headers]
    if not any(h.lower().startswith(b"transfer-encoding") for h in headers):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Answer:
    def __init__(self, head: bytes, body: bytes) -> None:
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> Any:
        return self.json()["code"]


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = 5.0) -> Answer:
        head = (await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout))[:-4]
        answer = Answer(head, b"")
        if answer.status < 200:  # 100 Continue
            return answer
        if "transfer-encoding" in answer.headers:  # aiohttp may chunk its own answers
            chunks = []
            while (size := int(await self.reader.readline(), 16)) > 0:
                chunks.append(await self.reader.readexactly(size + 2))
            await self.reader.readline()
            answer.body = b"".join(c[:-2] for c in chunks)
        else:
            answer.body = await self.reader.readexactly(int(answer.headers["content-length"]))
        return answer

    async def closed(self, timeout: float = 5.0) -> bool:
        return await asyncio.wait_for(self.reader.read(), timeout) == b""

    def close(self) -> None:
        self.writer.close()

    async def aclose(self) -> None:
        """Close and wait until the socket is gone (none left for the garbage collector)."""
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
