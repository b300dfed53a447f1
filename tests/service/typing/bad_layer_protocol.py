"""A layer for another protocol in an HTTP stack: must fail."""

from __future__ import annotations

from monolake.proto.http1 import Headers, Request, Response
from monolake.service import Factory, Layer, Service, Stack


class Hello:
    async def __call__(self, req: Request) -> Response:
        return Response(200, Headers([]), b"hello")


class HelloFactory(Factory[Hello]):
    def make(self, old: Hello | None) -> Hello:
        return Hello()


class BytesLayer(Layer[bytes, bytes]):
    def layer(self, inner: Service[bytes, bytes]) -> Service[bytes, bytes]:
        return inner


stack: Stack[Request, Response] = Stack([BytesLayer()], HelloFactory())  # E: list-item
