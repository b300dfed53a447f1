"""Build ``proxy_type = "tcp"`` servers, and PROXY-protocol listeners for HTTP servers.

A tcp server relays to one cluster: a named one (``upstream``) or inline endpoints
(``upstreams`` with the server's ``load_balancer``/``hash_on``/``hash_algorithm``
and the other cluster settings at their defaults). The balancer is keyed by the
client IP, from the PROXY header when the listener accepts one.

An HTTP server whose listener has ``proxy_protocol`` set is wrapped in
``ProxyProtocolHttpApp``: its connections start with ``ProxyHeaderReader``, which
hands the transport (and the bytes after the header) to a normal
``HttpConnection`` and sets its ``peer`` to the client the header names, so
X-Forwarded-For, Forwarded, consistent hashing and access logs all see the
original client.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence

from ...core.proto.proxy_protocol import Family, ProxyHeader
from ...core.server import HttpServerApp
from ...core.server._l4 import L4ServerApp, L4Upstream, ProxyHeaderReader
from ...core.server._lifecycle import Abortable
from ...core.tls import ServerTlsContexts, client_tls
from ..config import Cluster, Config, Endpoint, Server, parse_endpoint
from ..observe._conn_metrics import l4_stats
from ._balancer import Balancer, make_balancer
from ._filters import TcpPhases
from ._follow import Follower
from ._upstream import UpstreamCluster


def l4_upstream(
    name: str, server: Server, cfg: Config, clusters: Mapping[str, UpstreamCluster] | None = None
) -> L4Upstream:
    """The cluster a validated tcp server relays to. A named cluster with ``discovery`` (in
    ``clusters``, the worker's) starts from its discovered set and follows it."""
    if server.upstream is not None:
        cname = server.upstream
        c = cfg.upstreams[cname]
    else:
        assert server.upstreams is not None
        cname = f"{name}.upstreams"
        c = Cluster(
            endpoints=server.upstreams,
            load_balancer=server.load_balancer,
            hash_on=server.hash_on,
            hash_algorithm=server.hash_algorithm,
        )
    path = f"upstreams.{cname}" if server.upstream is not None else f"servers.{name}"
    eps = tls_endpoints(path, c)
    u = clusters.get(cname) if clusters is not None and c.discovery is not None else None
    if u is not None:

        def shape(found: list[Endpoint]) -> list[Endpoint]:
            return tls_shape(path, c, found)

        follower = Follower(cname, c.load_balancer, hash_on=c.hash_on, hash_algorithm=c.hash_algorithm, shape=shape)
        if u.source_endpoints is not None:
            eps = shape(u.source_endpoints)
        follower.keys = {ep.key: ep for ep in eps}
        up = L4Upstream(
            cname, follower.build(eps), connect_timeout=c.connect_timeout, send_proxy_protocol=c.send_proxy_protocol
        )

        def install(balancer: Balancer) -> None:
            up.balancer = balancer  # connections already relayed keep their endpoint

        follower.install = install
        up.keep = follower  # the cluster holds it weakly: it lives as long as this server's app
        u.followers.add(follower)
        return up
    # hash_on header:/cookie: keys fall back to the client IP for want of headers.
    balancer = make_balancer(c.load_balancer, eps, hash_on=c.hash_on, hash_algorithm=c.hash_algorithm)
    return L4Upstream(cname, balancer, connect_timeout=c.connect_timeout, send_proxy_protocol=c.send_proxy_protocol)


def tls_shape(path: str, c: Cluster, eps: list[Endpoint]) -> list[Endpoint]:
    """Discovered endpoints with ``c``'s client TLS when it has one or they are https://."""
    if c.tls is None and not any(ep.scheme == "https" for ep in eps):
        return eps
    tls = client_tls(f"{path}.tls", c.tls, default_alpn=())
    return [dataclasses.replace(ep, scheme="https", tls=tls) if not ep.path else ep for ep in eps]


def tls_endpoints(path: str, c: Cluster) -> list[Endpoint]:
    """``c``'s endpoints; with ``c.tls`` or https:// ones, each TCP endpoint carries its client TLS
    settings (ALPN offers nothing unless ``tls.alpn`` says so: the bytes are not HTTP)."""
    return tls_shape(path, c, [parse_endpoint(u.endpoint, u.weight) for u in c.endpoints])


def server_tls(name: str, server: Server) -> ServerTlsContexts | None:
    """The listener TLS of a tcp or thrift server (no ALPN unless ``tls.alpn`` says so)."""
    if server.tls is None:
        return None
    return ServerTlsContexts(f"servers.{name}.tls", server.tls, default_alpn=())


def build_l4_app(
    name: str,
    server: Server,
    cfg: Config,
    filters: Sequence[object] = (),
    clusters: Mapping[str, UpstreamCluster] | None = None,
) -> L4ServerApp:
    hooks = TcpPhases(name, filters) if filters else None
    return L4ServerApp(
        name,
        server,
        l4_upstream(name, server, cfg, clusters),
        splice=server.splice,
        tls=server_tls(name, server),
        hooks=hooks,
        stats=l4_stats(name),
    )


class ProxyProtocolHttpApp:
    """An HttpServerApp behind a listener that reads a PROXY header first (a ``ServerApp``)."""

    def __init__(self, inner: HttpServerApp) -> None:
        self.inner = inner
        self.name = inner.name
        self.cfg = inner.cfg
        self.pending: set[Abortable] = set()

    @property
    def service(self) -> object:
        return self.inner.service

    def protocol_factory(self) -> asyncio.Protocol:
        return ProxyHeaderReader(
            self.cfg.proxy_protocol, self.cfg.header_timeout, self.name, self._handoff, self.pending
        )

    def _handoff(self, transport: asyncio.BaseTransport, hdr: ProxyHeader | None, rest: bytes) -> None:
        conn = self.inner.protocol_factory()
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if hdr is not None:
            client = hdr.client
            if client is not None:
                conn.peer = "unix" if hdr.family is Family.UNIX else client
        if rest:
            conn.data_received(rest)

    def adopt(self, new: ProxyProtocolHttpApp) -> None:
        """Take over ``new``'s settings and chain (a reload's commit); see ``HttpServerApp.adopt``."""
        self.cfg = new.cfg
        self.inner.adopt(new.inner)

    def start_draining(self) -> None:
        for reader in list(self.pending):
            reader.abort()
        self.inner.start_draining()

    async def wait_drained(self) -> None:
        await self.inner.wait_drained()

    def close(self) -> None:
        for reader in list(self.pending):
            reader.abort()
        self.inner.close()

    def statistics(self) -> dict[str, int]:
        return {**self.inner.statistics(), "awaiting_proxy_header": len(self.pending)}


AnyApp = HttpServerApp | ProxyProtocolHttpApp | L4ServerApp
"""What ``build_apps`` returns per server."""
