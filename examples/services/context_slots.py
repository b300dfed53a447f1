"""Context slots: a typed per-request value a layer sets and a service reads, checked at build.

    python examples/services/context_slots.py --listen 127.0.0.1:8080
    curl -H 'X-Tenant: acme' http://127.0.0.1:8080/      # hello, acme
    curl http://127.0.0.1:8080/                          # 400: X-Tenant required
    python examples/services/context_slots.py --without-layer   # refused before serving

``TENANT`` is declared once, at module level. ``TenantLayer`` says it ``provides``
it and sets it from the ``X-Tenant`` header; ``GreeterFactory`` says its service
``requires`` it. Building the stack checks that every slot a stage requires is
provided by a stage outside it, so without the layer ``serve`` raises ``ConfigError``
naming the factory and the slot before any socket is bound.
"""

from __future__ import annotations

import argparse
import sys

from monolake import Factory, Headers, HttpApp, HttpService, Layer, Request, Response, serve
from monolake.core.errors import ConfigError
from monolake.core.service import ContextSlot

TENANT = ContextSlot("tenant", str, "the tenant a request is for, from its X-Tenant header")


class Tenanted:
    """The service ``TenantLayer`` builds around ``inner``: sets TENANT, or answers 400 itself."""

    __slots__ = ("inner",)

    def __init__(self, inner: HttpService) -> None:
        self.inner = inner  # a reload finds the leaf service through ``inner``

    async def __call__(self, req: Request) -> Response:
        tenant = req.headers.get(b"x-tenant")
        if not tenant:
            return Response(400, Headers([(b"Content-Type", b"text/plain")]), b"X-Tenant required\n")
        TENANT.set(req.ctx, tenant.decode("latin-1"))
        return await self.inner(req)


class TenantLayer(Layer[Request, Response]):
    provides = (TENANT,)

    def layer(self, inner: HttpService) -> Tenanted:
        return Tenanted(inner)


class Greeter:
    async def __call__(self, req: Request) -> Response:
        tenant = TENANT.get(req.ctx)  # a str; UnsetSlotError if no stage set it
        return Response(200, Headers([(b"Content-Type", b"text/plain")]), f"hello, {tenant}\n".encode())


class GreeterFactory(Factory[Greeter]):
    requires = (TENANT,)

    def make(self, old: Greeter | None) -> Greeter:
        return old if old is not None else Greeter()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:8080")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio", "io_uring", "auto"])
    p.add_argument("--without-layer", action="store_true", help="leave TenantLayer out: the build fails")
    args = p.parse_args()
    layers = [] if args.without_layer else [TenantLayer()]
    app = HttpApp(name="tenants", listen=args.listen, factory=GreeterFactory(), layers=layers)
    try:
        return serve(app, workers=args.workers, loop=args.loop)
    except ConfigError as exc:
        print(f"context_slots: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
