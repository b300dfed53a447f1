"""Example filters: name them in a server's ``filters`` list as ``"module:Class"``.

Filter modules are looked up in the config file's directory first, then on
``sys.path`` and in the working directory, so from the repository root these are
``examples.filters.add_header:AddHeader`` and so on::

    [servers.web]
    filters = [
        { use = "examples.filters.add_header:AddHeader", args = { name = "X-Served-By", value = "edge-1" } },
        { use = "examples.filters.add_header:DenyPath", args = { prefix = "/admin" } },
    ]

These filter methods are plain calls on the request path: they must not block.
A phase that needs I/O is ``async def`` (see ``auth.py``). Only the phases a class
overrides are called.
"""

from __future__ import annotations

from monolake.proto.http1 import Headers, Request, Response
from monolake.proxy import HttpFilter
from monolake.service import Context


class AddHeader(HttpFilter):
    """Adds one header to every response (response_filter phase)."""

    def __init__(self, name: str = "X-Served-By", value: str = "monolake") -> None:
        self.name = name.encode("latin-1")
        self.value = value.encode("latin-1")

    def response_filter(self, resp: Response, ctx: Context) -> None:
        resp.headers.add(self.name, self.value)


class DenyPath(HttpFilter):
    """Answers 403 itself, before routing, for paths under ``prefix`` (request_filter phase)."""

    def __init__(self, prefix: str = "/admin") -> None:
        self.prefix = prefix.encode()

    def request_filter(self, req: Request, ctx: Context) -> Response | None:
        if req.path.startswith(self.prefix):
            return Response(403, Headers([(b"Content-Type", b"text/plain")]), b"forbidden\n")
        return None


class TagUpstreamRequest(HttpFilter):
    """Tells the origin which route matched (upstream_request_filter phase, after routing)."""

    def upstream_request_filter(self, req: Request, ctx: Context) -> None:
        req.headers.set(b"X-Matched-Route", str(ctx.route.name).encode())


class FailOnPath(HttpFilter):
    """A broken filter, for demonstrating (and testing) failure handling: it raises for
    paths under ``prefix``. The request is answered 500, the error is logged, the
    worker keeps serving."""

    def __init__(self, prefix: str = "/boom") -> None:
        self.prefix = prefix.encode()

    def request_filter(self, req: Request, ctx: Context) -> Response | None:
        if req.path.startswith(self.prefix):
            raise RuntimeError(f"FailOnPath: refusing {req.path.decode('latin-1')}")
        return None
