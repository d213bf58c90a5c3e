"""HTTP/1.1 requests as raw bytes: what an HTTP client library refuses to send."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Optional

from yarl import URL

from tests.reliability.load import check_loopback


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]  # lower-case names; the last of repeated ones
    body: bytes

    def json(self) -> Optional[Any]:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def request_bytes(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if body or method == b"POST":
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def send_raw(base_url: str, data: bytes, timeout: float = 10.0) -> RawReply:
    """Send `data` as is on a new connection and read the answer until the server closes."""
    check_loopback(base_url)
    url = URL(base_url)
    assert url.host is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return RawReply(status, headers, body)
