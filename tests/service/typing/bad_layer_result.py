"""A layer that turns an HTTP service into one answering something else: must fail."""

from __future__ import annotations

from monolake.proto.http1 import Request, Response
from monolake.service import Layer, Service


class ToText:
    def __init__(self, inner: Service[Request, Response]) -> None:
        self.inner = inner

    async def __call__(self, req: Request) -> str:
        return repr(await self.inner(req))


class ToTextLayer(Layer[Request, Response]):
    def layer(self, inner: Service[Request, Response]) -> Service[Request, Response]:
        return ToText(inner)  # E: return-value
