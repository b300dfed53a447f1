"""The HTTP/1.1 driver's task per connection (issue 12): a keep-alive connection's requests are
served one after another by one task, which waits on a future between them instead of a task
being made per request; the keep-alive sweep ends it once the connection has been idle for
``TASK_LINGER``, and the next request gets a new one. A request still runs in a task
(``asyncio.current_task``, ``asyncio.timeout`` and the Timeout layer work as before).

A real ``HttpServerApp`` on a 127.0.0.1 socket, raw HTTP/1.1 over asyncio streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from monolake.apps.config import Server
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.server import HttpServerApp, error_response
from monolake.core.server._http import TASK_LINGER, HttpConnection
from monolake.core.service import Factory, Layer, Stack
from monolake.core.service.layers import CatchPanicLayer, TimeoutLayer

TIMEOUT = 10.0


class Handler:
    """Records the task each request ran in; /slow waits past the Timeout layer's deadline."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[object] | None] = []

    async def __call__(self, req: Request) -> Response:
        self.tasks.append(asyncio.current_task())
        if req.path == b"/slow":
            await asyncio.Event().wait()
        await asyncio.sleep(0)  # a wait inside the request, as a proxied one has
        return Response(200, Headers([(b"Content-Type", b"text/plain")]), req.path)


class HandlerFactory(Factory[Handler]):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def make(self, old: Handler | None) -> Handler:
        return self.handler


def _panic(req: Request, exc: BaseException) -> Response:
    return error_response(500)


@dataclass
class Served:
    app: HttpServerApp
    handler: Handler
    port: int
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        pair = await asyncio.open_connection("127.0.0.1", self.port)
        self.conns.append(pair)
        return pair

    def connection(self) -> HttpConnection:
        (conn,) = self.app.conns
        assert isinstance(conn, HttpConnection)
        return conn


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    handler = Handler()
    layers: list[Layer[Request, Response]] = [CatchPanicLayer(_panic), TimeoutLayer(0.3)]
    service = Stack(layers, HandlerFactory(handler), provided=("peer", "server", "start")).build()
    app = HttpServerApp("tasks", Server(listener="127.0.0.1:0"), service)
    server = await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0)
    s = Served(app, handler, server.sockets[0].getsockname()[1])
    try:
        yield s
    finally:
        for _, w in s.conns:
            w.close()
        server.close()
        app.close()
        await server.wait_closed()


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


async def response(r: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), TIMEOUT)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await asyncio.wait_for(r.readexactly(length), TIMEOUT)


async def test_keepalive_requests_share_one_task_until_idle(served: Served) -> None:
    r, w = await served.connect()
    for path in ("/a", "/b", "/c"):
        w.write(request(path))
        assert await response(r) == (200, path.encode())
    first = served.handler.tasks[0]
    assert first is not None and served.handler.tasks == [first] * 3
    # The sweep, once the connection has been idle past TASK_LINGER: the task ends (not cancelled).
    conn = served.connection()
    conn.check_timeouts(asyncio.get_running_loop().time() + 2 * TASK_LINGER, 3600.0, 3600.0)
    await asyncio.wait_for(first, TIMEOUT)
    assert not first.cancelled()
    w.write(request("/d"))
    assert await response(r) == (200, b"/d")
    second = served.handler.tasks[-1]
    assert second is not None and second is not first and not second.done()


async def test_pipelined_requests_are_answered_in_order_by_one_task(served: Served) -> None:
    r, w = await served.connect()
    w.write(b"".join(request(p) for p in ("/1", "/2", "/3")))
    assert [await response(r) for _ in range(3)] == [(200, b"/1"), (200, b"/2"), (200, b"/3")]
    assert len(set(served.handler.tasks)) == 1


async def test_an_idle_task_cancelled_leaves_the_connection_serving(served: Served) -> None:
    """A loop shutting down cancels every task, the idle connection's too: a request arriving
    before the connection closes is still served (by a new task)."""
    r, w = await served.connect()
    w.write(request("/a"))
    assert await response(r) == (200, b"/a")
    first = served.handler.tasks[0]
    assert first is not None
    first.cancel()
    w.write(request("/b"))  # may arrive before or after the cancellation reached the task
    assert await response(r) == (200, b"/b")
    assert first.cancelled()
    assert served.handler.tasks[-1] is not first


async def test_timeout_layer_on_a_later_request_of_the_connection(served: Served) -> None:
    """The Timeout layer's deadline (asyncio.timeout, a cancel of the connection's task) on the
    second request of a connection: 503 for it, and the task's cancel count is left balanced, so
    the requests after it are served in time as usual."""
    r, w = await served.connect()
    w.write(request("/fast"))
    assert await response(r) == (200, b"/fast")
    w.write(request("/slow"))
    status, _ = await response(r)
    assert status == 503
    r, w = await served.connect() if r.at_eof() else (r, w)
    for path in ("/after", "/again"):
        w.write(request(path))
        assert await response(r) == (200, path.encode())
    task = served.handler.tasks[-1]
    assert task is not None and task.cancelling() == 0
