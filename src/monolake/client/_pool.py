"""The per-worker upstream connection pool, keyed by (scheme, host, port, unix path).

An https endpoint's scheme in the key carries its TLS settings' fingerprint, so
endpoints with different TLS settings never share a connection.

Idle connections are kept LIFO per key (the most recently used one is the least
likely to have been closed by the upstream), at most ``max_idle`` per key, and
closed after ``idle_timeout`` by one sweep timer per pool. A connection that the
upstream closes while idle leaves the pool at once (``forget`` from
``connection_lost``). ``acquire`` decides first (reuse or connect) and then does I/O.

State carried across a rebuild: the pool is owned by the worker, not by a chain,
so a reloaded chain that names the same endpoint finds its warm connections.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import Endpoint
from ..errors import ConnectError, ConnectTimeout
from ._http import UpstreamConnection

if TYPE_CHECKING:
    from ._h2 import H2Pool

P = TypeVar("P", bound=asyncio.Protocol)


async def open_transport(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], P],
    ep: Endpoint,
    connect_timeout: float,
    errors: dict[str, int],
    handshake: Callable[[asyncio.Transport, P], Awaitable[None]] | None = None,
) -> tuple[asyncio.Transport, P]:
    """Connect to ``ep`` (TCP, TLS or unix), then run ``handshake`` (a protocol's own greeting)
    within the same ``connect_timeout``; TCP_NODELAY is set. Raises ConnectError or
    ConnectTimeout, counted in ``errors`` by endpoint; the transport is closed on failure."""
    try:
        async with asyncio.timeout(connect_timeout):
            transport: Any
            if ep.path:
                transport, proto = await loop.create_unix_connection(factory, ep.path)
            elif ep.tls is not None:
                tls = ep.tls
                transport, proto = await loop.create_connection(
                    factory, ep.host, ep.port, ssl=tls.context, server_hostname=tls.sni or ep.host
                )
            else:
                transport, proto = await loop.create_connection(factory, ep.host, ep.port)
            if handshake is not None:
                try:
                    await handshake(transport, proto)
                except BaseException:
                    transport.close()
                    raise
    except ConnectError:
        errors[str(ep)] = errors.get(str(ep), 0) + 1
        raise
    except TimeoutError:
        errors[str(ep)] = errors.get(str(ep), 0) + 1
        raise ConnectTimeout(f"connect to {ep} timed out after {connect_timeout:g}s") from None
    except ssl.SSLCertVerificationError as exc:
        errors[str(ep)] = errors.get(str(ep), 0) + 1
        name = ep.tls.sni or ep.host if ep.tls is not None else ep.host
        raise ConnectError(
            f"TLS handshake with {ep} (server name {name!r}) failed: certificate verify failed: "
            f"{exc.verify_message or exc.reason}"
        ) from None
    except ssl.SSLError as exc:
        errors[str(ep)] = errors.get(str(ep), 0) + 1
        raise ConnectError(f"TLS handshake with {ep} failed: {exc.reason or exc}") from None
    except OSError as exc:
        errors[str(ep)] = errors.get(str(ep), 0) + 1
        raise ConnectError(f"connect to {ep} failed: {exc.strerror or exc}") from None
    sock: Any = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return transport, proto


class Pool:
    """Idle upstream connections of one worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._idle: dict[tuple[str, str, int, str], list[UpstreamConnection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_every = 1.0
        self.connects = 0
        self.reuses = 0
        self.connect_errors: dict[str, int] = {}
        """Failed connects (refused, unreachable, timed out) per endpoint, for metrics."""
        self.open: dict[tuple[str, str, int, str], int] = {}
        """Open connections per key, idle or busy (for circuit breakers)."""
        self._h2: H2Pool | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The worker's loop, taken on first use (a pool may be built before it runs)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def h2(self) -> H2Pool:
        """The worker's HTTP/2 upstream connections (made on first use)."""
        h2 = self._h2
        if h2 is None:
            from ._h2 import H2Pool

            h2 = self._h2 = H2Pool(self._loop, connect_errors=self.connect_errors)
        return h2

    def take_idle(self, ep: Endpoint, idle_timeout: float, max_idle: int) -> UpstreamConnection | None:
        """An idle, usable connection to ``ep``, or None. No I/O: the hot path reuses a
        connection without creating a coroutine."""
        idle = self._idle.get(ep.key)
        while idle:
            conn = idle.pop()
            if conn.usable:
                conn.reused = True
                conn.idle_timeout = idle_timeout
                conn.max_idle = max_idle
                self.reuses += 1
                return conn
        return None

    async def acquire(
        self, ep: Endpoint, *, connect_timeout: float, idle_timeout: float, max_idle: int
    ) -> UpstreamConnection:
        """An idle connection to ``ep`` if one is usable, else a new one.

        Raises ConnectError or ConnectTimeout (both retry-safe).
        """
        idle = self._idle.get(ep.key)
        while idle:
            conn = idle.pop()
            if conn.usable:
                conn.reused = True
                conn.idle_timeout = idle_timeout
                conn.max_idle = max_idle
                self.reuses += 1
                return conn
        conn = await self.connect(ep, connect_timeout=connect_timeout)
        conn.idle_timeout = idle_timeout
        conn.max_idle = max_idle
        return conn

    async def connect(self, ep: Endpoint, *, connect_timeout: float) -> UpstreamConnection:
        """A fresh connection to ``ep``. Raises ConnectError or ConnectTimeout."""
        loop = self.loop
        key = ep.key

        def factory() -> UpstreamConnection:
            return UpstreamConnection(self, key)

        _, proto = await open_transport(loop, factory, ep, connect_timeout, self.connect_errors)
        self.connects += 1
        proto.counted = True
        self.open[key] = self.open.get(key, 0) + 1
        return proto

    def release(self, conn: UpstreamConnection) -> None:
        """Take back a connection whose exchange finished cleanly."""
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        if len(idle) >= conn.max_idle:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweep_every = min(1.0, conn.idle_timeout / 2)
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    def lost(self, conn: UpstreamConnection) -> None:
        """A connection made by ``connect`` closed (called once, from its connection_lost)."""
        n = self.open.get(conn.key, 0)
        if n > 1:
            self.open[conn.key] = n - 1
        else:
            self.open.pop(conn.key, None)

    def forget(self, conn: UpstreamConnection) -> None:
        """Drop a connection that closed (called from its connection_lost)."""
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.loop.time()
        remaining = 0
        for idle in self._idle.values():
            expired = [c for c in idle if now - c.idle_since >= c.idle_timeout]
            for conn in expired:
                idle.remove(conn)
                conn.close()
            remaining += len(idle)
        if remaining:
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    def statistics(self) -> dict[str, int]:
        return {
            "idle": sum(len(v) for v in self._idle.values()),
            "connects": self.connects,
            "reuses": self.reuses,
        }

    def close(self) -> None:
        if self._h2 is not None:
            self._h2.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in list(idle):
                conn.close()
        self._idle.clear()
