"""Small async filters showing how the phases behave (the tests use them too).

- ``Stamp`` (plain) and ``AsyncStamp`` (async) append their name to ``X-Order`` on the
  request to the origin and on the response: listed in any mix, they run in config
  order, the async ones awaited and the plain ones called.
- ``AsyncDeny`` answers 403 itself, after an await (a lookup, say), for paths under
  ``prefix``.
- ``AsyncFail`` raises after an await for paths under ``prefix``: answered 500, the
  error logged naming the filter, the worker serving on.
- ``AsyncAccessLog`` has an async ``logging`` phase: it runs as a task once the
  response was written (it never delays it) and logs one line per request.
"""

from __future__ import annotations

import asyncio
import logging

from monolake.proto.http1 import Headers, Request, Response
from monolake.proxy import HttpFilter
from monolake.service import Context

log = logging.getLogger("examples.filters")


def _append(headers: Headers, name: str) -> None:
    current = headers.get(b"x-order")
    headers.set(b"X-Order", name.encode() if current is None else current + b"," + name.encode())


class Stamp(HttpFilter):
    def __init__(self, name: str) -> None:
        self.name = name

    def upstream_request_filter(self, req: Request, ctx: Context) -> None:
        _append(req.headers, self.name)

    def response_filter(self, resp: Response, ctx: Context) -> None:
        _append(resp.headers, self.name)


class AsyncStamp(HttpFilter):
    def __init__(self, name: str) -> None:
        self.name = name

    async def upstream_request_filter(self, req: Request, ctx: Context) -> None:
        await asyncio.sleep(0)
        _append(req.headers, self.name)

    async def response_filter(self, resp: Response, ctx: Context) -> None:
        await asyncio.sleep(0)
        _append(resp.headers, self.name)


class AsyncDeny(HttpFilter):
    def __init__(self, prefix: str = "/private") -> None:
        self.prefix = prefix.encode()

    async def request_filter(self, req: Request, ctx: Context) -> Response | None:
        await asyncio.sleep(0)
        if req.path.startswith(self.prefix):
            return Response(403, Headers([(b"Content-Type", b"text/plain")]), b"denied after a lookup\n")
        return None


class AsyncFail(HttpFilter):
    def __init__(self, prefix: str = "/async-boom") -> None:
        self.prefix = prefix.encode()

    async def request_filter(self, req: Request, ctx: Context) -> Response | None:
        await asyncio.sleep(0)
        if req.path.startswith(self.prefix):
            raise RuntimeError(f"AsyncFail: refusing {req.path.decode('latin-1')}")
        return None


class AsyncAccessLog(HttpFilter):
    async def logging(self, req: Request, resp: Response, ctx: Context) -> None:
        await asyncio.sleep(0)
        log.info("async-log %s %s %d", req.method.decode(), req.original_target.decode("latin-1"), resp.status)
