"""A tiny demo origin, so the quickstart shows a proxied response with one curl.

Not part of the proxy: a plain asyncio server with httptools. Paths:
``/`` and anything else: a JSON echo of method, path, headers and body size;
``/bytes/N``: N bytes; ``/status/N``: that status; ``/delay/S``: answer after S seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
from http import HTTPStatus

import httptools


def _reason(status: int) -> str:
    """The standard reason phrase; a status without one (e.g. 299) still needs a non-empty token."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _OriginProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: list[tuple[str, str]] = []
        self.url = b""
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.headers, self.url, self.size = [], b"", 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.size += len(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        path = self.url.decode("latin-1")
        keep = self.parser.should_keep_alive()
        parts = path.split("?")[0].strip("/").split("/")
        status, body = 200, b""
        if len(parts) == 2 and parts[0] == "bytes" and parts[1].isdigit():
            body = b"x" * int(parts[1])
        elif len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
            status = int(parts[1])
            if not 200 <= status <= 599:  # a 1xx is not a final answer; other numbers are not statuses
                status, body = 400, b"/status/N takes 200 to 599\n"
        elif len(parts) == 2 and parts[0] == "delay":
            try:
                delay = float(parts[1])
            except ValueError:
                delay = -1.0
            if 0 <= delay <= 3600:
                asyncio.get_running_loop().call_later(delay, self._answer, 200, b"delayed\n", keep)
                return
            status, body = 400, b"/delay/S takes 0 to 3600 seconds\n"
        if not body:
            info = {
                "origin_pid": os.getpid(),
                "method": method,
                "path": path,
                "headers": dict(self.headers),
                "body_bytes": self.size,
            }
            body = json.dumps(info, indent=1).encode() + b"\n"
        self._answer(status, body, keep)

    def _answer(self, status: int, body: bytes, keep: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        no_body = status in (204, 304)
        head = f"HTTP/1.1 {status} {_reason(status)}\r\n"
        head += "Content-Type: application/json\r\nServer: monolake-demo-origin\r\n"
        if not no_body:
            head += f"Content-Length: {len(body)}\r\n"
        if not keep:
            head += "Connection: close\r\n"
        t.write(head.encode() + b"\r\n" + (b"" if no_body else body))
        if not keep:
            t.close()


async def serve_origin(host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(_OriginProtocol, host, port, reuse_address=True)


def run_origin(host: str, port: int) -> None:
    """Serve until interrupted."""

    async def main() -> None:
        server = await serve_origin(host, port)
        addr = server.sockets[0].getsockname()
        print(f"demo origin listening on http://{addr[0]}:{addr[1]}", flush=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return
