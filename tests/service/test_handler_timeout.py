"""A service's own deadline is not an upstream's: 503 and "timed out" naming the server.

A real HTTP server (``HttpServerApp`` on a 127.0.0.1 socket) runs a user service
under a short ``TimeoutLayer``; httpx talks HTTP/1.1 and HTTP/2 to it. The proxy's
deadline (``gateway=True``) and a timeout raised inside the service stay 504.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from monolake.config import Server
from monolake.errors import DeadlineExceeded, ReadTimeout, Source
from monolake.proto.http1 import Headers, Request, Response
from monolake.server import HttpServerApp, error_response
from monolake.service import Factory, Layer, Stack
from monolake.service.layers import CatchPanicLayer, TimeoutLayer


class Handler:
    """/slow never answers, /inner-timeout fails with its own (upstream) read timeout."""

    def __init__(self) -> None:
        self.never = asyncio.Event()

    async def __call__(self, req: Request) -> Response:
        if req.path == b"/slow":
            await self.never.wait()
        if req.path == b"/inner-timeout":
            raise ReadTimeout("backend sent nothing for 5s")
        return Response(200, Headers([(b"Content-Type", b"text/plain")]), b"fast\n")


class HandlerFactory(Factory[Handler]):
    def make(self, old: Handler | None) -> Handler:
        return Handler()


def _panic(req: Request, exc: BaseException) -> Response:
    return error_response(500)


@pytest.fixture(params=[False, True], ids=["handler", "gateway"])
def gateway(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
async def base_url(gateway: bool) -> AsyncIterator[str]:
    layers: list[Layer[Request, Response]] = [CatchPanicLayer(_panic), TimeoutLayer(0.3, gateway=gateway)]
    service = Stack(layers, HandlerFactory(), provided=("peer", "server", "start")).build()
    app = HttpServerApp("handlers", Server(listener="127.0.0.1:0"), service)
    server = await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        app.close()
        await server.wait_closed()


def failure_lines(caplog: pytest.LogCaptureFixture, path: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "monolake.server" and f" {path} " in r.getMessage()]


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2"])
async def test_deadline_status_and_log_line(
    base_url: str, gateway: bool, http2: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="monolake.server")
    async with httpx.AsyncClient(http1=not http2, http2=http2, timeout=30, trust_env=False) as client:
        slow = await client.get(base_url + "/slow")
        fast = await client.get(base_url + "/fast")
    assert slow.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert fast.status_code == 200 and fast.text == "fast\n"
    [line] = failure_lines(caplog, "/slow")
    if gateway:  # a proxy: its deadline bounds the upstream's answer
        assert slow.status_code == 504
        assert "server=handlers (upstream error: DeadlineExceeded: request timeout of 0.3s exceeded)" in line
    else:
        assert slow.status_code == 503
        assert line.startswith("503 for GET /slow ")
        assert "server=handlers (internal error: DeadlineExceeded: service timed out" in line
        assert "upstream" not in line


@pytest.mark.parametrize("gateway", [False], ids=["handler"], indirect=True)
async def test_a_timeout_inside_the_service_is_its_own(base_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="monolake.server")
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        r = await client.get(base_url + "/inner-timeout")
    assert r.status_code == 504  # the service's backend timed out, not the service's deadline
    [line] = failure_lines(caplog, "/inner-timeout")
    assert "upstream error: ReadTimeout: backend sent nothing" in line


def test_deadline_exceeded_defaults() -> None:
    exc = DeadlineExceeded("x")
    assert (exc.status_hint, exc.source, exc.retry_safe) == (503, Source.INTERNAL, False)
    proxy = DeadlineExceeded("x", source=Source.UPSTREAM, status_hint=504)
    assert (proxy.status_hint, proxy.source) == (504, Source.UPSTREAM)


def test_grpc_status_of_a_services_own_deadline_blames_no_upstream() -> None:
    from monolake.proxy._grpc import DEADLINE_EXCEEDED, status_of

    assert status_of(DeadlineExceeded("t")) == (DEADLINE_EXCEEDED, "monolake: service deadline exceeded")
    gateway = DeadlineExceeded("t", source=Source.UPSTREAM, status_hint=504)
    assert status_of(gateway) == (DEADLINE_EXCEEDED, "monolake: upstream deadline exceeded")
    assert status_of(ReadTimeout("t")) == (DEADLINE_EXCEEDED, "monolake: upstream deadline exceeded")
