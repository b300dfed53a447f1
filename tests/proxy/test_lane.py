"""The callback lane (issue 12): a plain proxied HTTP/1.1 request is taken by ``HttpProxy.dispatch``,
sent on an idle pooled connection with a callback target (``UpstreamConnection.request_to``) and
answered from the upstream's own callback, with no task for the client connection and no future.
What the task's path did must still hold: keep-alive and pipelined requests answered in order on the
reused upstream connection, uploads (and ``Expect: 100-continue``) piped, a client that goes away
while its request is upstream closes that upstream connection. (The stale-connection retry, the
logged 504 of a read timeout and the error answers run through the lane in test_h1_fast_path.py.)

The proxy built in-process from a config (``build_apps``) on each loop backend, a scripted origin;
both on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from monolake.apps.config import parse_config
from monolake.apps.proxy import HttpFilter, build_apps
from monolake.apps.proxy._app import Shared
from monolake.apps.proxy._upstream import UpstreamCluster
from monolake.core.client import Pool
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.runtime._loops import new_event_loop
from monolake.core.server._http import HttpConnection
from monolake.core.service import Context

TIMEOUT = 10.0


class Origin:
    """Answers 200 with "connection.request" as the body (and the request body's length after a
    slash when it had one). ``hold``: a request is read, never answered; ``held`` is set then,
    ``closed`` when the proxy closes that connection."""

    def __init__(self) -> None:
        self.hold = False
        self.connections = 0
        self.held = asyncio.Event()
        self.closed = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(w)
        me = self.connections
        try:
            for i in range(1, 1000):
                head = await r.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                got = await r.readexactly(length) if length else b""
                if self.hold:
                    self.held.set()
                    await r.read()  # EOF: the proxy closed the connection
                    self.closed.set()
                    return
                body = b"%d.%d" % (me, i) + (b"/%d" % len(got) if got else b"")
                head_only = head.startswith(b"HEAD ")
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), b"" if head_only else body))
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


class Stamp(HttpFilter):
    """Sync filters, as the lane runs them: a request answered by a filter, a response stamped."""

    def request_filter(self, req: Request, ctx: Context) -> Response | None:
        return Response(403, Headers([(b"Content-Type", b"text/plain")]), b"no\n") if req.path == b"/deny" else None

    def response_filter(self, resp: Response, ctx: Context) -> None:
        resp.headers.add(b"X-Stamp", b"1")


def run_proxy(
    kind: str, main: Callable[[Origin, int, Any], Awaitable[None]], settings: dict[str, Any] | None = None
) -> None:
    """Run ``main(origin, proxy_port, app)`` on a new ``kind`` loop with an origin and the proxy
    (``settings``: more of the proxy server's)."""
    loop = new_event_loop(kind)

    async def run() -> None:
        origin = Origin()
        osrv = await asyncio.start_server(origin.serve, "127.0.0.1", 0)
        cfg = parse_config(
            {
                "servers": {
                    "web": {"listener": "127.0.0.1:0", "routes": [{"path": "/", "upstream": "o"}], **(settings or {})}
                },
                "upstreams": {
                    "o": {"endpoints": [{"endpoint": f"http://127.0.0.1:{osrv.sockets[0].getsockname()[1]}"}]}
                },
            }
        )
        pool = Pool()
        clusters = {n: UpstreamCluster.from_config(n, c, pool) for n, c in cfg.upstreams.items()}
        app = build_apps(cfg, shared=Shared(pool=pool, clusters=clusters, access_log=None))["web"]
        assert app.lane is not None  # the proxy's dispatch, found under CatchPanic when installed
        server = await loop.create_server(app.protocol_factory, "127.0.0.1", 0)
        try:
            await asyncio.wait_for(main(origin, server.sockets[0].getsockname()[1], app), TIMEOUT)
        finally:
            server.close()
            for conn in list(app.conns):
                conn.abort()
            app.close()
            pool.close()
            osrv.close()
            for w in origin.writers:
                w.close()  # its handler sees EOF and returns
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), TIMEOUT)
            for _ in range(3):  # the transports' connection_lost callbacks
                await asyncio.sleep(0)

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()


async def responses(r: asyncio.StreamReader, n: int) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(n):
        head = await r.readuntil(b"\r\n\r\n")
        length = next(int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length"))
        out.append((int(head.split(b" ", 2)[1]), await r.readexactly(length)))
    return out


def test_keep_alive_and_pipelined_requests_on_the_lane(loop_kind: str) -> None:
    async def main(origin: Origin, port: int, app: Any) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert await responses(r, 1) == [(200, b"1.1")]  # a connect (the task's path); then pooled
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(2, 5):
                w.write(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
                assert await responses(r, 1) == [(200, b"1.%d" % i)]
            # Pipelined, with an upload among them: answered in order, on the same upstream connection.
            w.write(
                b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n"
                b"POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
                b"HEAD /d HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /e HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            got = await responses(r, 2)
            head = await r.readuntil(b"\r\n\r\n")  # the HEAD's answer: no body
            assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 3" in head
            got += await responses(r, 1)
            assert got == [(200, b"1.5"), (200, b"1.6/5"), (200, b"1.8")]
            # Expect: 100-continue: the go-ahead, then the body piped upstream.
            w.write(b"PUT /f HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
            assert await r.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            w.write(b"abc")
            assert await responses(r, 1) == [(200, b"1.9/3")]
            assert origin.connections == 1
            (conn,) = app.conns
            assert isinstance(conn, HttpConnection)
            assert conn._task is None  # this connection's requests never needed a task
        finally:
            w.close()
            await w.wait_closed()

    run_proxy(loop_kind, main)


def test_a_client_gone_while_its_request_is_upstream_closes_the_upstream_connection(loop_kind: str) -> None:
    async def main(origin: Origin, port: int, app: Any) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await responses(r, 1) == [(200, b"1.1")]  # the upstream connection is pooled
        origin.hold = True
        w.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")  # taken on the lane, on that connection
        await origin.held.wait()
        # Gone (a reset, not a half-close: after a FIN the request would still be answered).
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()
        await origin.closed.wait()  # the proxy closed the upstream connection it was waiting on
        assert app.in_flight == 0
        # A new client is served on a new upstream connection.
        origin.hold = False
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await responses(r, 1) == [(200, b"2.1")]
        w.close()
        await w.wait_closed()

    run_proxy(loop_kind, main)


def test_sync_filters_and_response_rewrites_run_on_the_lane() -> None:
    async def main(origin: Origin, port: int, app: Any) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        await r.read()  # the upstream connection is pooled
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            w.write(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\nGET /deny HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"X-Stamp: 1" in head and b"X-Route: r" in head
            assert await r.readexactly(3) == b"1.2"
            head = await r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 403") and b"X-Stamp" not in head  # answered by the filter
            assert await r.readexactly(3) == b"no\n"
            (conn,) = app.conns
            assert isinstance(conn, HttpConnection) and conn._task is None
        finally:
            w.close()
            await w.wait_closed()

    server = {
        "filters": [f"{__name__}:Stamp"],
        "routes": [{"path": "/", "upstream": "o", "response_headers": {"set": {"X-Route": "r"}}}],
    }
    run_proxy("asyncio", main, server)


def test_a_request_timeout_bounds_a_request_on_the_lane(caplog: pytest.LogCaptureFixture) -> None:
    async def main(origin: Origin, port: int, app: Any) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        await r.read()  # the upstream connection is pooled
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            w.write(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
            assert await responses(r, 1) == [(200, b"1.2")]
            (conn,) = app.conns
            assert isinstance(conn, HttpConnection) and conn._task is None  # the Timeout layer has the lane too
            origin.hold = True
            w.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 504")  # as on the coroutine path
            await origin.closed.wait()  # the upstream connection it waited on is closed
            assert conn._task is None
        finally:
            w.close()
            await w.wait_closed()

    with caplog.at_level(logging.WARNING):
        run_proxy("asyncio", main, {"request_timeout": 0.3})
    assert any("request timeout of 0.3s exceeded" in rec.getMessage() for rec in caplog.records)
