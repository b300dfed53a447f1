"""The proxy's HTTP/1.1 fast path (issue 12): with an idle pooled connection, ``HttpProxy`` awaits
the upstream's future itself (``UpstreamCluster.send_h1``) instead of a coroutine of the
cluster's, and hands a failure to ``recover_h1``. What ``forward`` did must still happen: a stale
pooled connection is retried once on a fresh one (idempotent, no body), a cancelled request (the
server's request_timeout) closes its upstream connection, a read timeout is a logged 504.

The proxy built in-process from a config (``build_apps``), a scripted origin; both on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from monolake.apps.config import parse_config
from monolake.apps.proxy import build_apps
from monolake.apps.proxy._app import Shared
from monolake.apps.proxy._upstream import UpstreamCluster
from monolake.core.client import Pool

TIMEOUT = 10.0


class Origin:
    """Answers 200 with the connection's number and the request's index on it as the body.
    ``drop_second``: a connection's second request is read, then the connection closed without
    an answer (a keep-alive connection the origin closed as it was reused). ``hold``: never
    answers; ``closed`` is set when the proxy closes such a connection."""

    def __init__(self) -> None:
        self.drop_second = False
        self.hold = False
        self.connections = 0
        self.closed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        me = self.connections
        try:
            for i in range(1, 1000):
                await r.readuntil(b"\r\n\r\n")
                if self.hold:
                    await r.read()  # EOF: the proxy closed the connection
                    self.closed.set()
                    return
                if self.drop_second and i == 2:
                    return
                body = b"%d.%d" % (me, i)
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    o = Origin()
    await o.start()
    yield o
    assert o.server is not None
    o.server.close()


async def proxy(port: int, server: dict[str, Any], upstream: dict[str, Any]) -> tuple[Any, asyncio.Server, Pool]:
    cfg = parse_config(
        {
            "servers": {"web": {"listener": "127.0.0.1:0", "routes": [{"path": "/", "upstream": "o"}], **server}},
            "upstreams": {"o": {"endpoints": [{"endpoint": f"http://127.0.0.1:{port}"}], **upstream}},
        }
    )
    pool = Pool()
    clusters = {n: UpstreamCluster.from_config(n, c, pool) for n, c in cfg.upstreams.items()}
    assert clusters["o"].plain_h1
    app = build_apps(cfg, shared=Shared(pool=pool, clusters=clusters, access_log=None))["web"]
    server = await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0)
    return app, server, pool


@pytest.fixture
async def running(origin: Origin, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Origin, int]]:
    assert origin.server is not None
    server_cfg, upstream_cfg = getattr(request, "param", ({}, {}))
    app, server, pool = await proxy(origin.server.sockets[0].getsockname()[1], server_cfg, upstream_cfg)
    yield origin, server.sockets[0].getsockname()[1]
    server.close()
    app.close()
    pool.close()
    await server.wait_closed()


async def get(port: int, method: str = "GET", body: bytes = b"") -> tuple[int, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(
            f"{method} /x HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), TIMEOUT)
        return int(head.split(b" ", 2)[1]), await asyncio.wait_for(r.read(), TIMEOUT)
    finally:
        w.close()


async def test_requests_reuse_the_pooled_connection(running: tuple[Origin, int]) -> None:
    origin, port = running
    assert [await get(port) for _ in range(3)] == [(200, b"1.1"), (200, b"1.2"), (200, b"1.3")]
    assert origin.connections == 1


async def test_a_stale_pooled_connection_is_retried_on_a_fresh_one(
    running: tuple[Origin, int], caplog: pytest.LogCaptureFixture
) -> None:
    origin, port = running
    origin.drop_second = True
    assert await get(port) == (200, b"1.1")
    with caplog.at_level(logging.INFO, logger="monolake.apps.proxy"):
        assert await get(port) == (200, b"2.1")  # connection 1 dropped the request; retried on 2
    assert origin.connections == 2
    assert any("stale pooled connection" in rec.getMessage() for rec in caplog.records)
    assert await get(port) == (200, b"3.1")  # connection 2's second request: dropped, retried
    # Not idempotent (or with a body): not retried, the client gets the failure.
    assert (await get(port, "POST", b"x"))[0] == 502
    assert origin.connections == 3


@pytest.mark.parametrize("running", [({"request_timeout": 0.3}, {})], indirect=True)
async def test_a_cancelled_request_closes_its_upstream_connection(running: tuple[Origin, int]) -> None:
    origin, port = running
    assert await get(port) == (200, b"1.1")  # the connection is pooled, then reused below
    origin.hold = True
    assert (await get(port))[0] == 504  # the server's request_timeout cancelled the request
    await asyncio.wait_for(origin.closed.wait(), TIMEOUT)


@pytest.mark.parametrize("running", [({}, {"read_timeout": 0.3})], indirect=True)
async def test_a_read_timeout_is_a_logged_504(running: tuple[Origin, int], caplog: pytest.LogCaptureFixture) -> None:
    origin, port = running
    assert await get(port) == (200, b"1.1")
    origin.hold = True
    with caplog.at_level(logging.WARNING, logger="monolake.apps.proxy"):
        assert (await get(port))[0] == 504  # the cluster's read_timeout
    assert any("upstream timeout: cluster=o" in rec.getMessage() for rec in caplog.records)
    await asyncio.wait_for(origin.closed.wait(), TIMEOUT)
