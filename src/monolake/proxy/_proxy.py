"""The HTTP reverse proxy: the leaf service of an HTTP server's stack.

Per request: request filters → route → rewrites (path, Host, headers, X-Forwarded-*)
→ upstream request filters → forward → response rewrites → response filters. All
of it is plain calls except ``forward``, the single await. Everything that can be
decided from config (header bytes, prefixes, which filters run in which phase) is
decided in ``RouteRuntime.__init__`` and ``HttpProxy.__init__``, not per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..client import Pool
from ..config import Cluster, Config, Forwarded, HeaderRewrite, Route, Server
from ..errors import ReadTimeout
from ..proto.http1 import Headers, Request, Response
from ..service import Factory
from ._filters import Phases
from ._router import Router
from ._upstream import UpstreamCluster


def _pairs(d: dict[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in d.items())


class HeaderOps:
    """A header rewrite with its bytes prepared."""

    __slots__ = ("add", "remove", "set", "set_names")

    def __init__(self, rw: HeaderRewrite) -> None:
        self.add = _pairs(rw.add)
        self.set = _pairs(rw.set)
        self.remove = frozenset(n.lower().encode("latin-1") for n in rw.remove)
        self.set_names = frozenset(n.lower() for n, _ in self.set)

    def __bool__(self) -> bool:
        return bool(self.add or self.set or self.remove)

    def apply(self, headers: Headers) -> None:
        drop = self.remove | self.set_names
        raw = headers.raw
        if drop:
            raw[:] = [(n, v) for n, v in raw if n.lower() not in drop]
        raw.extend(self.set)
        raw.extend(self.add)


class RouteRuntime:
    """A route, ready to serve: its cluster and its precomputed rewrites."""

    __slots__ = (
        "cluster",
        "host",
        "index",
        "name",
        "prefix",
        "replacement",
        "request_ops",
        "response_ops",
        "timeout",
    )

    def __init__(self, index: int, r: Route, cluster: UpstreamCluster) -> None:
        self.index = index
        self.name = str(index)
        self.cluster = cluster
        self.prefix: bytes | None = None
        self.replacement = b""
        if r.path is not None and (r.strip_prefix or r.prefix_rewrite is not None):
            self.prefix = r.path.encode()
            self.replacement = (r.prefix_rewrite or "").encode()
        # None: keep the client's Host; b"": the endpoint's authority; else literal.
        self.host: bytes | None = (
            None if r.host_header == "keep" else b"" if r.host_header == "upstream" else r.host_header.encode("latin-1")
        )
        self.request_ops = HeaderOps(r.request_headers) if r.request_headers != HeaderRewrite() else None
        self.response_ops = HeaderOps(r.response_headers) if r.response_headers != HeaderRewrite() else None
        self.timeout = r.timeout

    def rewrite_path(self, req: Request) -> None:
        prefix = self.prefix
        if prefix is not None and req.path.startswith(prefix):
            rest = req.path[len(prefix) :]
            new = self.replacement + rest
            if not new.startswith(b"/"):
                new = b"/" + new
            req.set_path(new)


class _Forwarding:
    """X-Forwarded-* / Forwarded (RFC 7239) as configured."""

    __slots__ = ("forwarded", "xff", "xfh", "xfp")

    def __init__(self, f: Forwarded) -> None:
        self.xff = f.x_forwarded_for
        self.xfp = f.x_forwarded_proto
        self.xfh = f.x_forwarded_host
        self.forwarded = f.forwarded

    def __bool__(self) -> bool:
        return self.xff or self.xfp or self.xfh or self.forwarded

    def apply(self, req: Request, peer: str) -> None:
        """One pass over the headers: extend X-Forwarded-For and Forwarded, replace
        X-Forwarded-Proto/-Host. Names are lowercased only when their length fits."""
        raw = req.headers.raw
        bpeer = peer.encode()
        xff = fwd = -1
        replaced = False
        for i, (n, _) in enumerate(raw):
            ln = len(n)
            if ln == 15:
                if self.xff and n.lower() == b"x-forwarded-for":
                    xff = i
            elif ln == 17 or ln == 16:
                lname = n.lower()
                if (self.xfp and lname == b"x-forwarded-proto") or (self.xfh and lname == b"x-forwarded-host"):
                    replaced = True
            elif ln == 9 and self.forwarded and n.lower() == b"forwarded":
                fwd = i
        if replaced:
            drop = {b"x-forwarded-proto"} if self.xfp else set()
            if self.xfh:
                drop.add(b"x-forwarded-host")
            raw[:] = [(n, v) for n, v in raw if len(n) not in (16, 17) or n.lower() not in drop]
            xff = fwd = -1
            for i, (n, _) in enumerate(raw):
                if len(n) == 15 and n.lower() == b"x-forwarded-for":
                    xff = i
                elif len(n) == 9 and n.lower() == b"forwarded":
                    fwd = i
        if self.xff:
            if xff >= 0:
                n, v = raw[xff]
                raw[xff] = (n, v + b", " + bpeer)
            else:
                raw.append((b"X-Forwarded-For", bpeer))
        if self.xfp:
            raw.append((b"X-Forwarded-Proto", b"http"))
        if self.xfh and req.raw_host is not None:
            raw.append((b"X-Forwarded-Host", req.raw_host))
        if self.forwarded:
            node = b'"[' + bpeer + b']"' if b":" in bpeer else bpeer
            value = b"for=" + node + b";proto=http"
            if req.raw_host is not None:
                value += b';host="' + req.raw_host + b'"'
            if fwd >= 0:
                n, v = raw[fwd]
                raw[fwd] = (n, v + b", " + value)
            else:
                raw.append((b"Forwarded", value))


_NOT_FOUND_BODY = b"404 Not Found\n"


class HttpProxy:
    """The proxy service. Build through ``ProxyFactory``."""

    def __init__(
        self,
        router: Router[RouteRuntime],
        phases: Phases,
        forwarding: Forwarded,
        clusters: dict[str, UpstreamCluster],
    ) -> None:
        self.router = router
        self.phases = phases
        self.forwarding = _Forwarding(forwarding)
        self.clusters = clusters
        self._request_filters = phases.request_filter
        self._upstream_filters = phases.upstream_request_filter
        self._response_filters = phases.response_filter

    async def __call__(self, req: Request) -> Response:
        ctx = req.ctx
        for f in self._request_filters:
            answer = f(req, ctx)
            if answer is not None:
                return answer
        route = self.router.match(req)
        if route is None:
            return Response(404, Headers([(b"Content-Type", b"text/plain")]), _NOT_FOUND_BODY)
        ctx.route = route
        cluster = route.cluster
        ctx.cluster = cluster
        if route.prefix is not None:
            route.rewrite_path(req)
        if self.forwarding:
            self.forwarding.apply(req, ctx.peer)
        if route.request_ops is not None:
            route.request_ops.apply(req.headers)
        for g in self._upstream_filters:
            g(req, ctx)
        if route.timeout is None:
            resp = await cluster.forward(req, route.host)
        else:
            try:
                async with asyncio.timeout(route.timeout):
                    resp = await cluster.forward(req, route.host)
            except TimeoutError:
                raise ReadTimeout(f"route timeout of {route.timeout:g}s exceeded") from None
        if route.response_ops is not None:
            route.response_ops.apply(resp.headers)
        for h in self._response_filters:
            h(resp, ctx)
        return resp


class ProxyFactory(Factory[HttpProxy]):
    """Builds the proxy for one server. Clusters (and so the pool) come from the worker."""

    requires = frozenset({"peer", "server"})
    provides = frozenset({"route", "cluster", "endpoint"})
    service_type = HttpProxy

    def __init__(
        self,
        name: str,
        server: Server,
        cfg: Config,
        filters: Sequence[object],
        clusters: dict[str, UpstreamCluster],
        pool: Pool,
    ) -> None:
        self.name = name
        self.server = server
        self.cfg = cfg
        self.filters = filters
        self.clusters = clusters
        self.pool = pool

    def make(self, old: HttpProxy | None) -> HttpProxy:
        entries: list[tuple[Route, RouteRuntime]] = []
        for i, r in enumerate(self.server.routes):
            if r.upstream is not None:
                cluster = self.clusters[r.upstream]
            else:
                assert r.upstreams is not None
                c = Cluster(
                    endpoints=r.upstreams,
                    load_balancer=r.load_balancer,
                    hash_on=r.hash_on,
                    hash_algorithm=r.hash_algorithm,
                )
                cname = f"{self.name}.routes[{i}]"
                cluster = UpstreamCluster.from_config(cname, c, self.pool)
            entries.append((r, RouteRuntime(i, r, cluster)))
        return HttpProxy(Router(entries), Phases(self.filters), self.server.forwarded, self.clusters)
