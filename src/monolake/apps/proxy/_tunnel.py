"""Upgrade (WebSocket) and CONNECT requests: the proxy's half of a tunnel.

The HTTP/1.1 server holds the connection of an Upgrade or CONNECT request (reading
stops after its head, ``req.upgrade`` is set; see ``RequestReader.tunnels``) and
runs the chain as usual; ``HttpProxy`` sends such a request here instead of to
``forward``, after the request filters and rewrites.

Upgrade: the request goes to an endpoint of the route's cluster on a fresh
connection (never a pooled one, and never pooled afterwards) with ``Connection:
upgrade`` and ``Upgrade`` put back (the parser drops them as hop-by-hop). A 101
comes back as a Response whose body is a ``Switched``: the upstream transport,
reading paused, and what the upstream sent after the 101. The server writes the
101 and relays bytes both ways (``server._relay.Tunnel``). Any other answer is an
ordinary response, and the client connection goes on as HTTP/1.1.

CONNECT (RFC 9110 §9.3.6): answered 405 unless the matched route enables it; the
target (authority-form host:port) must be on one of the route's ports (else 403);
the proxy connects to it and answers 200, or 502 when the connect fails.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Protocol

from ...core.errors import ConnectError, ConnectTimeout, ReadTimeout, RemoteProtocolError, Source, UpstreamError
from ...core.proto.http1 import Headers, Request, Response
from ...core.proto.http1._serialize import request_head
from ...core.server import error_response
from ...core.server._relay import Switched
from ...core.service import Service
from ..config._schema import Connect, Route
from ._retry import RetryingCluster
from ._upstream import UpstreamCluster


class RouteRuntime(Protocol):
    """What a tunnel reads of ``_proxy.RouteRuntime`` (typed here so this module need not import it)."""

    @property
    def name(self) -> str: ...

    @property
    def cluster(self) -> UpstreamCluster | RetryingCluster | None: ...

    @property
    def handler(self) -> Service[Request, Response] | None: ...

    @property
    def timeout(self) -> float | None: ...

    @property
    def host(self) -> bytes | None: ...

    @property
    def connect(self) -> Connect | None: ...


log = logging.getLogger("monolake.apps.proxy")

_CONNECTED = b"Connection Established"


def connect_settings(r: Route) -> Connect | None:
    """The route's CONNECT settings, None when CONNECT is off."""
    if isinstance(r.connect, bool):
        return Connect() if r.connect else None
    return r.connect


async def connect_only(req: Request) -> Response:
    """The handler of a route that has no upstream, only CONNECT: other requests get 405."""
    resp = error_response(405)
    resp.headers.add(b"Allow", b"CONNECT")
    return resp


async def switch(req: Request, route: RouteRuntime) -> Response:
    """Answer a held Upgrade or CONNECT request; a switch comes back with a ``Switched`` body.

    Raises what ``UpstreamCluster.forward`` raises, ConnectError/ConnectTimeout for a
    CONNECT target, and RemoteProtocolError (400) for a malformed CONNECT target.
    """
    if req.method == b"CONNECT":
        return await _connect(req, route)
    cluster = route.cluster
    if route.handler is not None or cluster is None:
        req.upgrade = None  # answered here, as plain HTTP
        return await route.handler(req) if route.handler is not None else error_response(502)
    if route.timeout is None:
        return await _upgrade(cluster, req, route.host)
    try:
        async with asyncio.timeout(route.timeout):
            return await _upgrade(cluster, req, route.host)
    except TimeoutError:
        raise ReadTimeout(f"route timeout of {route.timeout:g}s exceeded") from None


async def _upgrade(cluster: UpstreamCluster | RetryingCluster, req: Request, host: bytes | None) -> Response:
    c = cluster.cluster if isinstance(cluster, RetryingCluster) else cluster
    if not isinstance(c, UpstreamCluster) or c.protocol != "http1":  # HTTP/2 has no Upgrade (RFC 9113 §8.6)
        req.upgrade = None
        return await cluster.forward(req, host)
    ep = c.balancer.pick(req)
    req.ctx.endpoint = ep
    if host is None and req.raw_host is None:
        host = b""
    if host is not None:
        req.headers.set(b"Host", host or ep.authority.encode())
    upgrade = req.upgrade or b""
    head = request_head(req.method, req.target, req.headers, b"Connection: upgrade\r\nUpgrade: " + upgrade + b"\r\n")
    try:
        conn = await c.pool.connect(ep, connect_timeout=c.connect_timeout)
    except (ConnectError, ConnectTimeout) as exc:
        log.warning("upstream connect failed: cluster=%s endpoint=%s: %s", c.name, ep, exc)
        raise
    conn.max_idle = 0  # asked to switch: never pooled, whatever the answer
    conn.expect_switch = True
    try:
        resp = await conn.request(head, None, chunked=False, head_only=False, read_timeout=c.read_timeout)
    except asyncio.CancelledError:
        conn.close()
        raise
    if resp.status != 101:
        return resp
    handed = conn.detach()
    if handed is None:
        raise UpstreamError("upstream closed the connection right after its 101")
    transport, tail = handed
    resp.body = Switched(transport, tail, str(ep), conn.switch_token)
    return resp


class _Held(asyncio.Protocol):
    """A CONNECT target's transport until the tunnel takes it: reading paused at once."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.early: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.pause_reading()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.early.append(data)

    def eof_received(self) -> bool | None:
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def _authority(target: bytes) -> tuple[str, int]:
    """host and port of an authority-form target (b"example.com:443", b"[::1]:443"). Raises ValueError."""
    text = target.decode("ascii")
    if text.startswith("["):
        end = text.index("]")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError("no port")
        port = rest[1:]
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("not host:port")
    return host, int(port)


async def _connect(req: Request, route: RouteRuntime) -> Response:
    settings = route.connect
    target = req.target.decode("latin-1")
    ctx = req.ctx
    if settings is None:
        log.info("CONNECT %s refused: server=%s route=%s does not enable CONNECT", target, ctx.server, route.name)
        return error_response(405, close=True)
    try:
        host, port = _authority(req.target)
    except ValueError:
        raise RemoteProtocolError(
            f"CONNECT target {target!r} is not host:port", status_hint=400, source=Source.DOWNSTREAM
        ) from None
    if port not in settings.ports:
        log.warning(
            "CONNECT %s refused: server=%s route=%s port %d is not allowed (connect.ports = %s)",
            target,
            ctx.server,
            route.name,
            port,
            settings.ports,
        )
        return error_response(403, close=True)
    ctx.endpoint = target
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(settings.connect_timeout):
            transport, held = await loop.create_connection(_Held, host, port)
    except TimeoutError:
        raise ConnectTimeout(f"CONNECT to {target} timed out after {settings.connect_timeout:g}s") from None
    except OSError as exc:
        raise ConnectError(f"CONNECT to {target} failed: {exc.strerror or exc}") from None
    if held.lost:
        raise ConnectError(f"CONNECT to {target}: the target closed the connection at once")
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    resp = Response(200, Headers(), None, _CONNECTED)
    resp.body = Switched(transport, b"".join(held.early), target)
    return resp
