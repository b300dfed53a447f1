"""A custom Layer: wraps any HTTP service, counts the requests it sees and says so in a header.

    python examples/services/layer.py --listen 127.0.0.1:8080
    monolake run -c examples/services/layer.toml
    curl -i http://127.0.0.1:8080/     # x-request-count: 1, 2, 3...

A ``Layer`` turns a service into a service; the wrapping service exposes the one it
wraps as ``inner`` (that is how a reload finds the leaf to hand to ``make(old)``).
Layers that only look at or change headers should stay plain and cheap: one
``await`` of the inner service per request.
"""

from __future__ import annotations

import argparse
from typing import Any

from monolake import Factory, Headers, HttpApp, HttpService, Layer, Request, Response, Stack, serve


class Counted:
    """The service a ``CountLayer`` builds: adds ``x-request-count`` to every response."""

    __slots__ = ("header", "inner", "seen")

    def __init__(self, inner: HttpService, header: bytes) -> None:
        self.inner = inner
        self.header = header
        self.seen = 0

    async def __call__(self, req: Request) -> Response:
        self.seen += 1
        resp = await self.inner(req)
        resp.headers.set(self.header, b"%d" % self.seen)
        return resp


class CountLayer(Layer):
    def __init__(self, header: str = "x-request-count") -> None:
        self.header = header.encode()

    def layer(self, inner: Any) -> Counted:
        return Counted(inner, self.header)


class Hi:
    async def __call__(self, req: Request) -> Response:
        return Response(200, Headers([(b"Content-Type", b"text/plain")]), b"hi\n")


class HiFactory(Factory[Hi]):
    def make(self, old: Hi | None) -> Hi:
        return old if old is not None else Hi()


stack = Stack([CountLayer()], HiFactory())
"""For TOML: ``handler = "layer:stack"`` serves these layers over this factory."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:8080")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio", "io_uring", "auto"])
    args = p.parse_args()
    app = HttpApp(name="web", listen=args.listen, factory=HiFactory(), layers=[CountLayer()])
    return serve(app, workers=args.workers, loop=args.loop)


if __name__ == "__main__":
    raise SystemExit(main())
