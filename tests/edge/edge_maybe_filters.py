"""``@may_await`` filters for tests/edge/test_may_await.py (imported from the config's base_dir).

``Maybe`` answers each phase directly, except on paths under ``/wait`` where it returns a
coroutine that yields to the loop first; ``/wait/deny`` is refused after the await,
``/wait/fail`` raises after it and ``/wait/slow`` outlives the server's request_timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from monolake.apps.proxy import HttpFilter, may_await
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.service import Context

LOGGED: list[tuple[str, bytes]] = []


def _mark(headers: Headers, name: bytes) -> None:
    old = headers.get(b"x-order")
    headers.set(b"X-Order", old + b"," + name if old else name)


class Maybe(HttpFilter):
    def __init__(self, name: str) -> None:
        self.name = name.encode()

    @may_await
    def request_filter(self, req: Request, ctx: Context) -> Response | Awaitable[Response | None] | None:
        if req.path.startswith(b"/wait/"):
            return self._request_later(req)
        return None

    async def _request_later(self, req: Request) -> Response | None:
        await asyncio.sleep(0)
        if req.path == b"/wait/deny":
            return Response(403, Headers([(b"Content-Type", b"text/plain")]), b"denied after a wait\n")
        if req.path == b"/wait/fail":
            raise RuntimeError("the store is down")
        if req.path == b"/wait/slow":
            await asyncio.sleep(30)
        req.headers.set(b"X-Waited-" + self.name, b"1")
        return None

    @may_await
    def upstream_request_filter(self, req: Request, ctx: Context) -> Awaitable[None] | None:
        if req.path.startswith(b"/wait/"):
            return self._mark_later(req.headers, self.name + b"~")
        _mark(req.headers, self.name)
        return None

    @may_await
    def response_filter(self, resp: Response, ctx: Context) -> Awaitable[None] | None:
        if resp.headers.get(b"x-wait") is not None:
            return self._mark_later(resp.headers, self.name + b"~")
        _mark(resp.headers, self.name)
        return None

    async def _mark_later(self, headers: Headers, name: bytes) -> None:
        await asyncio.sleep(0)
        _mark(headers, name)

    @may_await
    def logging(self, req: Request, resp: Response, ctx: Context) -> Awaitable[None] | None:
        if req.path.startswith(b"/wait/"):
            return self._log_later(req.path)
        LOGGED.append((self.name.decode(), req.path))
        return None

    async def _log_later(self, path: bytes) -> None:
        await asyncio.sleep(0)
        LOGGED.append((self.name.decode() + "~", path))


class Plain(HttpFilter):
    """A plain filter listed among the Maybe ones: config order holds."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()

    def upstream_request_filter(self, req: Request, ctx: Context) -> None:
        _mark(req.headers, self.name)

    def response_filter(self, resp: Response, ctx: Context) -> None:
        _mark(resp.headers, self.name)
