"""A service that answers by callback: no task and no future per request where none is needed.

    python examples/services/lane.py --listen 127.0.0.1:8080
    curl -i http://127.0.0.1:8080/now      # answered at once, from dispatch
    curl -i http://127.0.0.1:8080/later    # taken on the lane, answered by a timer's callback
    curl -i http://127.0.0.1:8080/other    # the slow path: dispatch hands back a coroutine

A ``LaneService`` is a ``Service`` (``async __call__``, its meaning) with a plain
``dispatch(req, replier)`` that answers at once, takes the request and calls
``replier`` back once, or hands back an awaitable for the driver to await. The HTTP/1.1
driver looks for ``dispatch`` when the service is installed (under an outermost
``CatchPanic``, as here); a layer that wraps the service hides it, and then ``__call__``
is awaited as usual.
"""

from __future__ import annotations

import argparse
import asyncio

from monolake import Headers, Replier, Request, Response, Taken
from monolake.apps.config import Server, parse_listener
from monolake.core.server import HttpServerApp, error_response
from monolake.core.service import Factory, Stack
from monolake.core.service.layers import CatchPanicLayer

DELAY = 0.01
"""Seconds /later waits before its answer."""


def text(body: bytes) -> Response:
    return Response(200, Headers([(b"Content-Type", b"text/plain")]), body)


class _Timer(Taken):
    """What ``dispatch`` gives for a request it took: the driver cancels it if the client goes away."""

    __slots__ = ("clock", "handle")

    def __init__(self, clock: Clock, handle: asyncio.TimerHandle) -> None:
        self.clock = clock
        self.handle = handle

    def cancel(self) -> None:
        self.handle.cancel()  # no reply will be wanted: do not make one
        self.clock.cancelled += 1


class Clock:
    """``/now`` answers at once, ``/later`` after ``DELAY`` from a timer's callback, anything
    else through the coroutine. ``__call__`` answers alike, for drivers without the lane."""

    def __init__(self) -> None:
        self.cancelled = 0

    async def __call__(self, req: Request) -> Response:
        if req.path == b"/later":
            await asyncio.sleep(DELAY)
            return text(b"later\n")
        if req.path == b"/now":
            return text(b"now\n")
        await asyncio.sleep(0)  # something that waits
        return text(b"other\n")

    def dispatch(
        self, req: Request, replier: Replier[Request, Response]
    ) -> Response | asyncio.Future[Response] | Taken:
        if req.path == b"/now":
            return text(b"now\n")
        if req.path == b"/later":
            loop = asyncio.get_running_loop()
            return _Timer(self, loop.call_later(DELAY, replier.reply, req, text(b"later\n")))
        return asyncio.ensure_future(self(req))  # any awaitable will do; a coroutine is cheaper


class ClockFactory(Factory[Clock]):
    def make(self, old: Clock | None) -> Clock:
        return old if old is not None else Clock()


def _panic(req: Request, exc: BaseException) -> Response:
    return error_response(500)


def app(listen: str = "127.0.0.1:0") -> HttpServerApp:
    """An HTTP/1.1 server app of ``Clock`` behind ``CatchPanic`` (the lane is found under it)."""
    service = Stack([CatchPanicLayer(_panic)], ClockFactory(), provided=("peer", "server", "start")).build()
    return HttpServerApp("clock", Server(listener=listen), service)


async def run(listen: str) -> None:
    a = app(listen)
    addr = parse_listener(listen)
    server = await asyncio.get_running_loop().create_server(a.protocol_factory, addr.host, addr.port)
    print("listening on", server.sockets[0].getsockname(), flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:8080")
    args = p.parse_args()
    asyncio.run(run(args.listen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
