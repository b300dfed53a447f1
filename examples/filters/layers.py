"""Layers from config: ``servers.NAME.layers`` inserts these into the server's stack
around the proxy (inside the catch-all, ``request_timeout`` and ``max_concurrency``
layers), outermost first::

    [servers.web]
    layers = [
        { use = "examples.filters.layers:Maintenance", args = { path = "/down" } },
        { use = "examples.filters.layers:ResponseHeader", args = { name = "X-Layer", value = "on" } },
    ]

A layer is a ``monolake.service.Layer``: ``layer(inner)`` returns a service, an object
with ``async def __call__(req) -> Response`` that exposes what it wraps as ``inner``
(a reload then finds the proxy under it and keeps its upstream state). Unlike a filter,
a layer sees the whole exchange as one await, so it can time, retry or answer it.
"""

from __future__ import annotations

from typing import Any

from monolake.proto.http1 import Headers, Request, Response
from monolake.service import Layer


class _AddHeader:
    __slots__ = ("inner", "name", "value")

    def __init__(self, inner: Any, name: bytes, value: bytes) -> None:
        self.inner = inner
        self.name = name
        self.value = value

    async def __call__(self, req: Request) -> Response:
        resp: Response = await self.inner(req)
        resp.headers.add(self.name, self.value)
        return resp


class ResponseHeader(Layer):
    """Adds a header to every response the layers inside it return."""

    def __init__(self, name: str = "X-Layer", value: str = "on") -> None:
        self.header = name.encode("latin-1")  # (``name`` is the Layer's own, shown in stack errors)
        self.value = value.encode("latin-1")

    def layer(self, inner: Any) -> _AddHeader:
        return _AddHeader(inner, self.header, self.value)


class _Maintenance:
    __slots__ = ("inner", "path")

    def __init__(self, inner: Any, path: bytes) -> None:
        self.inner = inner
        self.path = path

    async def __call__(self, req: Request) -> Response:
        if req.path.startswith(self.path):
            return Response(503, Headers([(b"Content-Type", b"text/plain"), (b"Retry-After", b"60")]), b"down\n")
        return await self.inner(req)  # type: ignore[no-any-return]


class Maintenance(Layer):
    """Answers 503 itself, without calling the proxy, for paths under ``path``."""

    def __init__(self, path: str = "/down") -> None:
        self.path = path.encode()

    def layer(self, inner: Any) -> _Maintenance:
        return _Maintenance(inner, self.path)
