"""User filters and a layer for tests/edge/test_route_filters.py (imported from the config's base_dir)."""

from __future__ import annotations

from monolake.apps.proxy import HttpFilter
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.service import Context, Layer, Service

LOGGED: list[tuple[str, bytes]] = []


class Mark(HttpFilter):
    """Appends its ``name`` to X-Order upstream and to X-Order on the response."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()

    def upstream_request_filter(self, req: Request, ctx: Context) -> None:
        old = req.headers.get(b"x-order")
        req.headers.set(b"X-Order", old + b"," + self.name if old else self.name)

    def response_filter(self, resp: Response, ctx: Context) -> None:
        old = resp.headers.get(b"x-order")
        resp.headers.set(b"X-Order", old + b"," + self.name if old else self.name)

    def logging(self, req: Request, resp: Response, ctx: Context) -> None:
        LOGGED.append((self.name.decode(), req.path))


class AsyncDeny(HttpFilter):
    """Answers 403 itself for paths ending in /deny (an async request_filter)."""

    async def request_filter(self, req: Request, ctx: Context) -> Response | None:
        if req.path.endswith(b"/deny"):
            return Response(403, Headers([(b"Content-Type", b"text/plain")]), b"denied\n")
        return None


class Stamp(Layer[Request, Response]):
    """Adds ``X-Layer: <name>`` to the response."""

    def __init__(self, name: str = "layer") -> None:
        self.value = name.encode()

    def layer(self, inner: Service[Request, Response]) -> Service[Request, Response]:
        value = self.value

        class Stamped:
            def __init__(self) -> None:
                self.inner = inner

            async def __call__(self, req: Request) -> Response:
                resp = await inner(req)
                resp.headers.add(b"X-Layer", value)
                return resp

        return Stamped()
