"""The HTTP/1.1 driver and an outermost ``CatchPanic`` (issue 12): the driver awaits the layer's
inner service itself (one coroutine level less per request) and does what the layer did: an
unexpected exception is answered with ``on_panic``'s response and a ``monolake.panic`` log line,
a ``MonolakeError`` passes to the driver's own mapping, an ``on_panic`` that raises is answered
by the driver. A ``CatchPanic`` subclass is called as any service.

A real ``HttpServerApp`` on a 127.0.0.1 socket, raw HTTP/1.1 over asyncio streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from monolake.apps.config import Server
from monolake.core.errors import Overloaded
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.server import HttpServerApp
from monolake.core.service.layers import CatchPanic

TIMEOUT = 10.0


async def handler(req: Request) -> Response:
    await asyncio.sleep(0)  # a wait inside the request, as a proxied one has
    if req.path == b"/boom":
        raise ValueError("boom")
    if req.path == b"/shed":
        raise Overloaded("shed")
    return Response(200, Headers([(b"Content-Type", b"text/plain")]), req.path)


def on_panic(req: Request, exc: BaseException) -> Response:
    return Response(500, Headers([(b"X-Panic", type(exc).__name__.encode())]), b"panic\n")


def failing_on_panic(req: Request, exc: BaseException) -> Response:
    raise RuntimeError("on_panic failed too")


class Counting(CatchPanic[Request, Response]):
    """A subclass with its own ``__call__``: the driver must call it, not look through it."""

    calls = 0

    async def __call__(self, req: Request) -> Response:
        Counting.calls += 1
        return await super().__call__(req)


async def serve(service: Callable[[Request], object]) -> tuple[HttpServerApp, asyncio.Server, int]:
    app = HttpServerApp("chain", Server(listener="127.0.0.1:0"), service)  # type: ignore[arg-type]
    server = await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0)
    return app, server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def client() -> AsyncIterator[Callable[[object], object]]:
    started: list[tuple[HttpServerApp, asyncio.Server, asyncio.StreamWriter]] = []

    async def connect(service: object) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        app, server, port = await serve(service)  # type: ignore[arg-type]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        started.append((app, server, w))
        return r, w

    yield connect  # type: ignore[misc]
    for app, server, w in started:
        w.close()
        server.close()
        app.close()
        await server.wait_closed()


async def exchange(r: asyncio.StreamReader, w: asyncio.StreamWriter, path: str) -> tuple[int, bytes, bytes]:
    w.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), TIMEOUT)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return int(head.split(b" ", 2)[1]), head, await asyncio.wait_for(r.readexactly(length), TIMEOUT)


async def test_a_panic_is_answered_by_on_panic_and_logged(client, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    r, w = await client(CatchPanic(handler, on_panic))
    with caplog.at_level(logging.ERROR, logger="monolake.panic"):
        status, head, body = await exchange(r, w, "/boom")
    assert (status, body) == (500, b"panic\n") and b"X-Panic: ValueError" in head
    panics = [rec for rec in caplog.records if rec.name == "monolake.panic"]
    assert len(panics) == 1 and "ValueError: boom" in panics[0].getMessage() and panics[0].exc_info
    assert (await exchange(r, w, "/ok"))[::2] == (200, b"/ok")  # the connection goes on


async def test_a_monolake_error_passes_to_the_driver(client, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    r, w = await client(CatchPanic(handler, on_panic))
    status, head, _ = await exchange(r, w, "/shed")
    assert status == 503 and b"X-Panic" not in head
    assert not [rec for rec in caplog.records if rec.name == "monolake.panic"]


async def test_on_panic_raising_is_answered_by_the_driver(client, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    r, w = await client(CatchPanic(handler, failing_on_panic))
    with caplog.at_level(logging.ERROR):
        status, _, body = await exchange(r, w, "/boom")
    assert (status, body) == (500, b"500 Internal Server Error\n")
    assert [rec.name for rec in caplog.records if rec.levelno >= logging.ERROR] == [
        "monolake.panic",  # the layer's line for the handler's error
        "monolake.core.server",  # the driver's for on_panic's
    ]


async def test_a_catch_panic_subclass_is_called(client) -> None:  # type: ignore[no-untyped-def]
    Counting.calls = 0
    r, w = await client(Counting(handler, on_panic))
    assert (await exchange(r, w, "/ok"))[::2] == (200, b"/ok")
    assert (await exchange(r, w, "/boom"))[::2] == (500, b"panic\n")
    assert Counting.calls == 2
