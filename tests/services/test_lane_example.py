"""examples/services/lane.py, shown by the "Answering by callback" guide: a user's ``LaneService``
under ``CatchPanic`` on an ``HttpServerApp`` answers at once, from a timer's callback, or through
its coroutine, on one keep-alive connection; a client that goes away while its request is taken
has the request's ``Taken`` cancelled. In-process, on 127.0.0.1, on each loop backend."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest

from monolake import Headers, Replier, Request, Response, Taken
from monolake.apps.config import Server
from monolake.core.runtime._loops import new_event_loop
from monolake.core.server import HttpServerApp
from monolake.core.server._http import HttpConnection
from monolake.core.server._service_app import build_http_app
from monolake.core.service import TAKEN

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "services" / "lane.py"
TIMEOUT = 10.0


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lane_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["lane_example"] = mod
    spec.loader.exec_module(mod)
    return mod


async def answer(r: asyncio.StreamReader) -> bytes:
    head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = next(int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length"))
    return await r.readexactly(length)


def test_the_three_ways_to_answer_and_a_cancel(loop_kind: str) -> None:
    lane = example()
    loop = new_event_loop(loop_kind)

    async def main() -> None:
        app = lane.app()
        assert app.lane is not None  # Clock.dispatch, found under CatchPanic
        server = await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            for path, body in ((b"/now", b"now\n"), (b"/later", b"later\n")):
                w.write(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)
                assert await answer(r) == body
            (conn,) = app.conns
            assert isinstance(conn, HttpConnection) and conn._task is None  # neither needed a task
            w.write(b"GET /other HTTP/1.1\r\nHost: t\r\n\r\n")
            assert await answer(r) == b"other\n"
            # Pipelined: answered in order, the lane's and the coroutine's alike.
            w.write(b"GET /later HTTP/1.1\r\nHost: t\r\n\r\nGET /now HTTP/1.1\r\nHost: t\r\n\r\n")
            assert [await answer(r), await answer(r)] == [b"later\n", b"now\n"]
            clock = app.inner
            lane.DELAY = 60.0  # /later now waits: the client goes away meanwhile (a reset)
            w.write(b"GET /later HTTP/1.1\r\nHost: t\r\n\r\n")
            while not app.in_flight:
                await asyncio.sleep(0.01)
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
            while app.conns:
                await asyncio.sleep(0.01)
            assert clock.cancelled == 1 and app.in_flight == 0
        finally:
            server.close()
            app.close()
            lane.DELAY = 0.01

    try:
        loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
    finally:
        loop.close()


def test_served_as_a_user_app_the_guard_passes_the_lane_on() -> None:
    """Built as ``monolake.serve`` builds an ``HttpApp`` (``HandlerGuard`` outermost): the lane is
    still found, and a reply is checked as ``__call__``'s result is."""
    lane = example()
    loop = new_event_loop("asyncio")

    async def main() -> None:
        app = build_http_app("clock", Server(listener="127.0.0.1:0"), lane.ClockFactory())
        assert app.lane is not None
        server = await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            for path, body in ((b"/now", b"now\n"), (b"/later", b"later\n"), (b"/other", b"other\n")):
                w.write(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)
                assert await answer(r) == body
            w.close()
            await w.wait_closed()
        finally:
            server.close()
            app.close()

    try:
        loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
    finally:
        loop.close()
    # With a request deadline the guard awaits the chain within it, as before.
    guarded = build_http_app("clock", Server(listener="127.0.0.1:0", request_timeout=5.0), lane.ClockFactory())
    assert guarded.lane is None


class _Eager:
    """A LaneService whose ``dispatch`` raises (``/boom``) or replies from within itself before
    returning its ``Taken`` (anything else): both leave the driver's lane request answered
    during the call, which the driver must notice without reading it back as a Request."""

    async def __call__(self, req: Request) -> Response:  # pragma: no cover - the lane is taken
        raise AssertionError("the lane should answer")

    def dispatch(self, req: Request, replier: Replier[Request, Response]) -> Response | Taken:
        if req.path == b"/boom":
            raise ValueError("boom")
        replier.reply(req, Response(200, Headers([(b"Content-Length", b"3")]), b"ok\n"))
        return TAKEN


def test_a_dispatch_that_raises_or_replies_within_itself_is_answered_once(
    loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    loop = new_event_loop(loop_kind)

    async def main() -> None:
        app = HttpServerApp("eager", Server(listener="127.0.0.1:0"), _Eager())
        assert app.lane is not None
        server = await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
            assert [await answer(r), await answer(r)] == [b"ok\n", b"ok\n"]
            w.write(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 500 "), head
            length = next(
                int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")
            )
            await r.readexactly(length)
            w.write(b"GET /c HTTP/1.1\r\nHost: t\r\n\r\n")
            assert await answer(r) == b"ok\n"  # one answer each: nothing else was written meanwhile
            w.close()
        finally:
            server.close()
            app.close()

    with caplog.at_level(logging.ERROR, logger="monolake"):
        try:
            loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
        finally:
            loop.close()
    # The service's failure logged once, as the driver logs any service's; no driver error besides.
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if m.startswith("500 for GET /boom")] != [], caplog.text
    assert not [m for m in messages if "internal error while" in m], caplog.text
