"""``Client``: one ``send(request, endpoint) -> Response`` over HTTP/1.1 and HTTP/2.

The client sits on a ``Pool`` (the HTTP/1 connections, and ``pool.h2`` for HTTP/2)
and keeps per-key settings (``PoolSettings``: the protocol, timeouts, idle limits,
``max_connections`` and ``pool_timeout``); the key is the pool's, so an https
endpoint's TLS settings (CA, SNI, client certificate, ALPN) are part of it and come
with the endpoint (``Endpoint.tls``). TCP, unix and TLS connects and their error
translation are ``open_transport``'s, shared with the proxy's clusters.

A send first decides which connection to use (an idle HTTP/1 connection, a free
HTTP/2 stream slot, a new connection within the key's limit, or a place in the
key's FIFO queue), then does I/O. The returned ``Response`` has its head; its body
is ``bytes`` when it arrived whole with the head, else a streaming ``Body``. An
HTTP/1 connection goes back to the pool when the response body has been read to
its end (or straight away with a bytes body); a connection that saw an error, or a
body the caller cancels, is closed, never reused.

Errors: ``PoolTimeout`` (waited ``pool_timeout`` at the limit), ``ConnectError``,
``ConnectTimeout`` (all three retry safe: nothing was sent), ``WriteError`` (the
upstream closed while the request body was going out), ``ReadError`` (closed before
answering; ``retry_safe`` for the stale keep-alive race, which ``send`` retries once
on another connection for an idempotent request with a replayable body),
``ReadTimeout``, ``UpstreamError``. On cancellation the exchange's HTTP/1
connection is closed, or its HTTP/2 stream reset.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from .._body import Body
from ..config import Endpoint
from ..errors import PoolTimeout, ReadError
from ..proto.http1 import Request, Response
from ..proto.http1._serialize import CHUNKED_LINE, content_length_line, request_head
from ._h2 import H2Connection, request_headers
from ._http import UpstreamConnection
from ._pool import Key, Pool

log = logging.getLogger("monolake.client")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSettings:
    """How a ``Client`` talks to the endpoints of one pool key. Times are seconds."""

    http2: bool = False
    """HTTP/2 (h2 over TLS, the endpoint's TLS settings offering "h2" by ALPN; else h2c with
    prior knowledge) instead of HTTP/1.1."""
    max_connections: int | None = None
    """Connections open to the key at once (idle, busy or connecting); None: no limit. At the
    limit a send waits in a FIFO queue for a connection (HTTP/2: for a stream slot)."""
    pool_timeout: float = 10.0
    """How long a send may wait in that queue before ``PoolTimeout``."""
    connect_timeout: float = 10.0
    """TCP connect, TLS handshake and (HTTP/2) the peer's preface, together."""
    read_timeout: float = 60.0
    """Inactivity of the upstream during one exchange (``send`` may override it)."""
    idle_timeout: float = 60.0
    """An idle connection is closed after this long."""
    max_idle: int = 64
    """Idle HTTP/1 connections kept for the key."""

    def __post_init__(self) -> None:
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 or None, got {self.max_connections}")
        for name in ("pool_timeout", "connect_timeout", "read_timeout", "idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_idle < 0:
            raise ValueError(f"max_idle must be >= 0, got {self.max_idle}")


class Client:
    """``send(request, endpoint)`` over the pool's HTTP/1.1 and HTTP/2 connections.

    ``pool``: the pool to share (a worker's, so the proxy's warm connections serve sends
    too); by default the client has its own, which ``close`` closes.
    """

    def __init__(
        self,
        pool: Pool | None = None,
        *,
        default: PoolSettings | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._owns_pool = pool is None
        self.pool = pool if pool is not None else Pool(loop)
        self.default = default if default is not None else PoolSettings()
        self._settings: dict[Key, PoolSettings] = {}

    def configure(self, endpoint: Endpoint, settings: PoolSettings) -> None:
        """Use ``settings`` for ``endpoint``'s pool key (every endpoint with the same key)."""
        self._settings[endpoint.key] = settings

    def settings_for(self, endpoint: Endpoint) -> PoolSettings:
        return self._settings.get(endpoint.key, self.default)

    async def send(self, request: Request, endpoint: Endpoint, *, read_timeout: float | None = None) -> Response:
        """Send ``request`` to ``endpoint`` and return the response once its head arrived.

        ``request.body`` is None, ``bytes`` or a ``Body`` (streamed, chunked on HTTP/1.1
        when its length is unknown); its framing comes from the body, so the request's
        headers should carry no Content-Length or Transfer-Encoding. A missing Host is the
        endpoint's authority. Raises what the module docstring lists.
        """
        settings = self._settings.get(endpoint.key, self.default)
        timeout = settings.read_timeout if read_timeout is None else read_timeout
        if settings.http2:
            return await self._send_h2(request, endpoint, settings, timeout)
        return await self._send_h1(request, endpoint, settings, timeout)

    async def _send_h1(self, req: Request, ep: Endpoint, s: PoolSettings, read_timeout: float) -> Response:
        headers = req.headers
        if b"host" not in headers.names():
            headers.set(b"Host", ep.authority.encode())
        body = req.body
        tail = b""
        if body is None:
            framing = b""
            chunked = False
        elif isinstance(body, bytes):
            framing = content_length_line(len(body)) if body or req.method not in (b"GET", b"HEAD") else b""
            tail = body
            body = None
            chunked = False
        elif body.length is not None:
            framing = content_length_line(body.length)
            chunked = False
        else:
            framing = CHUNKED_LINE
            chunked = True
        head = request_head(req.method, req.target, headers, framing) + tail
        head_only = req.method == b"HEAD"
        replayable = body is None and req.method in IDEMPOTENT
        for attempt in (0, 1):
            conn = await self._acquire_h1(ep, s)
            fut = conn.request(head, body, chunked=chunked, head_only=head_only, read_timeout=read_timeout)
            try:
                return await fut
            except ReadError as exc:
                if attempt or not (exc.retry_safe and replayable):
                    raise
                log.info("stale pooled connection to %s; sending %s again on another one", ep, req.method.decode())
            except asyncio.CancelledError:
                conn.close()
                raise
        raise AssertionError("unreachable: the second try returns or raises")

    async def _acquire_h1(self, ep: Endpoint, s: PoolSettings) -> UpstreamConnection:
        pool = self.pool
        if s.max_connections is None:
            return await pool.acquire(
                ep, connect_timeout=s.connect_timeout, idle_timeout=s.idle_timeout, max_idle=s.max_idle
            )
        return await pool.acquire_limited(
            ep,
            max_connections=s.max_connections,
            pool_timeout=s.pool_timeout,
            connect_timeout=s.connect_timeout,
            idle_timeout=s.idle_timeout,
            max_idle=s.max_idle,
        )

    async def _send_h2(self, req: Request, ep: Endpoint, s: PoolSettings, read_timeout: float) -> Response:
        host = req.headers.get(b"host")
        authority = host if host is not None else ep.authority.encode()
        body = req.body
        length = body.length if isinstance(body, Body) else len(body) if isinstance(body, bytes) else None
        scheme = b"https" if ep.tls is not None else b"http"
        headers = request_headers(req.method, req.target, req.headers, authority, scheme, length)
        replayable = not isinstance(body, Body) and req.method in IDEMPOTENT
        for attempt in (0, 1):
            conn = await self._acquire_h2(ep, s)
            st = conn.request(headers, body, head_only=req.method == b"HEAD", read_timeout=read_timeout)
            try:
                return await st.fut
            except ReadError as exc:
                if attempt or not (exc.retry_safe and replayable):
                    raise
                log.info("%s; sending %s again on another connection to %s", exc, req.method.decode(), ep)
            except asyncio.CancelledError:
                st.cancel()
                raise
        raise AssertionError("unreachable: the second try returns or raises")

    async def _acquire_h2(self, ep: Endpoint, s: PoolSettings) -> H2Connection:
        """A connection with a free stream slot, connecting within ``max_connections``;
        at the limit, wait (FIFO) for a stream or a connection to end. The limit is checked
        before connecting: sends that arrive during a connect share it, and if the peer's
        stream limit is below their number, ``H2Pool.acquire`` may open one more."""
        h2 = self.pool.h2
        limit = s.max_connections
        key = ep.key
        deadline = 0.0
        while True:
            conn = h2.take(ep)
            if conn is not None:
                return conn
            if limit is None or (key not in h2.waiters and h2.open.get(key, 0) < limit):
                return await h2.acquire(ep, connect_timeout=s.connect_timeout, idle_timeout=s.idle_timeout)
            loop = h2.loop
            if not deadline:
                deadline = loop.time() + s.pool_timeout
            fut: asyncio.Future[None] = loop.create_future()
            q = h2.waiters.get(key)
            if q is None:
                q = h2.waiters[key] = deque()
            q.append(fut)
            try:
                async with asyncio.timeout(deadline - loop.time()):
                    await fut
            except TimeoutError:
                if not fut.done() or fut.cancelled():
                    raise PoolTimeout(
                        f"no HTTP/2 stream to {ep} free within {s.pool_timeout:g}s "
                        f"(max_connections {limit}, all streams busy)"
                    ) from None
            except BaseException:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    h2.wake(key)  # woken as we were cancelled: the next waiter's turn
                raise
            finally:
                if not fut.done():
                    fut.cancel()
                q = h2.waiters.get(key)
                if q is not None:
                    if fut in q:
                        q.remove(fut)
                    if not q:
                        del h2.waiters[key]
            # Woken: take a stream before newcomers do (no await between here and take()).
            conn = h2.take(ep)
            if conn is not None:
                return conn
            if h2.open.get(key, 0) < limit:
                return await h2.acquire(ep, connect_timeout=s.connect_timeout, idle_timeout=s.idle_timeout)

    def close(self) -> None:
        """Close the client's own pool (a shared pool is its owner's to close)."""
        if self._owns_pool:
            self.pool.close()
