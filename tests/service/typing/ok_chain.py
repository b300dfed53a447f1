"""A correct chain: must type-check under mypy --strict."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from monolake.config import Server
from monolake.proto.http1 import Headers, Request, Response
from monolake.server import HttpServerApp
from monolake.service import Context, ContextSlot, Factory, Layer, Service, Stack
from monolake.service.layers import CatchPanicLayer, ConcurrencyLimitLayer, Timeout, TimeoutLayer

USER_ID = ContextSlot("user_id", str)


class Hello:
    async def __call__(self, req: Request) -> Response:
        return Response(200, Headers([]), b"hello")


class HelloFactory(Factory[Hello]):
    service_type = Hello

    def make(self, old: Hello | None) -> Hello:
        return old or Hello()


class AddHeader:
    def __init__(self, inner: Service[Request, Response]) -> None:
        self.inner = inner

    async def __call__(self, req: Request) -> Response:
        resp = await self.inner(req)
        resp.headers.add(b"X-Layer", b"1")
        return resp


class AddHeaderLayer(Layer[Request, Response]):
    provides = (USER_ID,)
    requires = ("peer",)

    def layer(self, inner: Service[Request, Response]) -> AddHeader:
        return AddHeader(inner)


R = TypeVar("R")
S = TypeVar("S")


class Counted(Generic[R, S]):
    def __init__(self, inner: Service[R, S]) -> None:
        self.inner = inner
        self.calls = 0

    async def __call__(self, req: R) -> S:
        self.calls += 1
        return await self.inner(req)


class CountLayer(Layer[Any, Any]):
    """A layer for any protocol: its ``layer`` keeps the types it is given."""

    def layer(self, inner: Service[R, S]) -> Counted[R, S]:
        return Counted(inner)


def _panic(req: Request, exc: BaseException) -> Response:
    return Response(500, Headers([]), b"")


def build() -> HttpServerApp:
    stack = Stack(
        [CatchPanicLayer(_panic), TimeoutLayer(1.0), ConcurrencyLimitLayer(10), CountLayer(), AddHeaderLayer()],
        HelloFactory(),
        provided=("peer", "server", "start"),
    )
    typed: Stack[Request, Response] = stack
    return HttpServerApp("web", Server(listener="127.0.0.1:0"), typed.build())


async def direct(req: Request) -> Response:
    svc: Timeout[Request, Response] = TimeoutLayer(1.0).layer(Hello())
    counted: Counted[Request, Response] = CountLayer().layer(svc)
    return await counted(req)


def slots(ctx: Context) -> str:
    USER_ID.set(ctx, "alice")
    maybe: str | None = USER_ID.get(ctx, None)
    route: Any = ctx.route
    del maybe, route
    return USER_ID.get(ctx)
