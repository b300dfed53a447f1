"""The per-worker upstream connection pool, keyed by (scheme, host, port, unix path).

An https endpoint's scheme in the key carries its TLS settings' fingerprint, so
endpoints with different TLS settings never share a connection.

Idle connections are kept LIFO per key (the most recently used one is the least
likely to have been closed by the upstream), at most ``max_idle`` per key, and
closed after ``idle_timeout`` by one sweep timer per pool. A connection that the
upstream closes while idle leaves the pool at once (``forget`` from
``connection_lost``). ``acquire`` decides first (reuse or connect) and then does I/O.

``acquire_limited`` (what ``Client.send`` uses) adds a connection limit per key: at
the limit, callers wait in a FIFO queue. A released connection is handed to the first
waiter instead of going idle; a connection that closes (or a connect that fails)
hands its slot to the first waiter, counted as a connect in progress for it, so a
newcomer cannot jump the queue. A waiter still waiting after ``pool_timeout`` gets
``PoolTimeout``. The request path of the proxy's clusters (``take_idle``/``connect``)
has no limit; ``release`` and ``lost`` only test one dict for emptiness for it.

State carried across a rebuild: the pool is owned by the worker, not by a chain,
so a reloaded chain that names the same endpoint finds its warm connections.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

from .._compiled import WeakReferable
from ..address import Endpoint
from ..errors import ConnectError, PoolTimeout
from ._connect import open_transport
from ._http import UpstreamConnection

if TYPE_CHECKING:
    from ._h2 import H2Pool

P = TypeVar("P", bound=asyncio.Protocol)

Key = tuple[str, str, int, str]


class Pool(WeakReferable):  # WeakReferable: the metrics sample pools weakly
    """Idle upstream connections of one worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._idle: dict[tuple[str, str, int, str], list[UpstreamConnection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_every = 1.0
        self.connects = 0
        self.reuses = 0
        self.time_connects = False
        """Measure each connect into the connection's ``connect_time`` (the access log asks)."""
        self.connect_errors: dict[str, int] = {}
        """Failed connects (refused, unreachable, timed out) per endpoint, for metrics."""
        self.open: dict[tuple[str, str, int, str], int] = {}
        """Open connections per key, idle or busy (for circuit breakers)."""
        self._h2: H2Pool | None = None
        self._waiters: dict[Key, deque[asyncio.Future[UpstreamConnection | None]]] = {}
        """Callers of ``acquire_limited`` waiting for a connection, by key (no empty deques)."""
        self._connecting: dict[Key, int] = {}
        """Connects in progress (or slots promised to a woken waiter) of ``acquire_limited``."""
        self._limit: dict[Key, int] = {}
        """Each limited key's ``max_connections``, as its last ``acquire_limited`` gave it."""
        self._users: dict[Key, int] = {}
        """Clusters naming each key (``use``/``unuse``), so a key no cluster names any more drains."""
        self._draining: set[Key] = set()
        """Keys no cluster names: a connection released to one closes instead of going idle."""

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
        # getattr: compiled, a typed ``ep.key`` is unboxed into a C struct and boxed again (a
        # new tuple) for the lookup; as Any it stays the one tuple the endpoint holds.
        idle = self._idle.get(getattr(ep, "key"))  # noqa: B009
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

    async def acquire_limited(
        self,
        ep: Endpoint,
        *,
        max_connections: int,
        pool_timeout: float,
        connect_timeout: float,
        idle_timeout: float,
        max_idle: int,
    ) -> UpstreamConnection:
        """``acquire`` with at most ``max_connections`` open to ``ep``'s key (idle, busy or
        connecting); beyond that, wait in FIFO order for one to be released or to close.

        Raises PoolTimeout after ``pool_timeout`` seconds of waiting, ConnectError or
        ConnectTimeout (all retry safe: nothing was sent). Cancelled while waiting, the
        caller leaves the queue and whatever it was handed goes to the next waiter.
        """
        key = ep.key
        self._limit[key] = max_connections
        deadline = 0.0
        while True:
            conn = self.take_idle(ep, idle_timeout, max_idle)
            if conn is not None:
                return conn
            # Decide: a free slot (and nobody queued before us) means connect; else queue.
            if key not in self._waiters and self.open.get(key, 0) + self._connecting.get(key, 0) < max_connections:
                self._connecting[key] = self._connecting.get(key, 0) + 1
            else:
                if not deadline:
                    deadline = self.loop.time() + pool_timeout
                got = await self._wait(key, deadline - self.loop.time(), pool_timeout, ep)
                if got is not None:
                    if not got.usable:
                        continue  # closed between its release and now: decide again
                    got.idle_timeout = idle_timeout
                    got.max_idle = max_idle
                    return got
                # None: a slot was promised to us (counted in _connecting).
            try:
                conn = await self.connect(ep, connect_timeout=connect_timeout)
            except BaseException:
                self._unreserve(key)
                raise
            self._unreserve(key, wake=False)  # counted in ``open`` now
            conn.idle_timeout = idle_timeout
            conn.max_idle = max_idle
            return conn

    async def _wait(self, key: Key, left: float, pool_timeout: float, ep: Endpoint) -> UpstreamConnection | None:
        """Queue for ``key``: a handed-over connection, or None for a promised slot."""
        fut: asyncio.Future[UpstreamConnection | None] = self.loop.create_future()
        queue = self._waiters.get(key)
        if queue is None:
            queue = self._waiters[key] = deque()
        queue.append(fut)
        try:
            async with asyncio.timeout(left):
                return await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                return fut.result()  # handed over in the same loop iteration as the timeout
            raise PoolTimeout(
                f"no connection to {ep} free within {pool_timeout:g}s "
                f"(max_connections {self._limit.get(key, 0)}, all busy)"
            ) from None
        except BaseException:
            # Cancelled just as we were handed something: pass it on.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                got = fut.result()
                if got is None:
                    self._unreserve(key)
                else:
                    self.release(got)
            raise
        finally:
            if not fut.done():
                fut.cancel()
            q = self._waiters.get(key)
            if q is not None:
                if fut in q:
                    q.remove(fut)
                if not q:
                    del self._waiters[key]

    def _next_waiter(self, key: Key) -> asyncio.Future[UpstreamConnection | None] | None:
        q = self._waiters.get(key)
        while q:
            fut = q.popleft()
            if not fut.done():
                if not q:
                    del self._waiters[key]
                return fut
        self._waiters.pop(key, None)
        return None

    def _unreserve(self, key: Key, *, wake: bool = True) -> None:
        """A promised slot or a connect in progress ended; with ``wake``, the slot is free."""
        n = self._connecting.get(key, 0)
        if n > 1:
            self._connecting[key] = n - 1
        else:
            self._connecting.pop(key, None)
        if wake:
            self._slot_freed(key)

    def _slot_freed(self, key: Key) -> None:
        """A connection of ``key`` closed: promise its slot to the first waiter, if any."""
        if key not in self._waiters:
            return
        if self.open.get(key, 0) + self._connecting.get(key, 0) >= self._limit.get(key, 0):
            return
        fut = self._next_waiter(key)
        if fut is not None:
            self._connecting[key] = self._connecting.get(key, 0) + 1
            fut.set_result(None)

    async def connect(self, ep: Endpoint, *, connect_timeout: float) -> UpstreamConnection:
        """A fresh connection to ``ep``. Raises ConnectError or ConnectTimeout."""
        loop = self.loop
        key = ep.key

        def factory() -> UpstreamConnection:
            return UpstreamConnection(self, key)

        t0 = loop.time() if self.time_connects else 0.0
        _, proto = await open_transport(loop, factory, ep, connect_timeout, self.connect_errors)
        if t0:
            proto.connect_time = loop.time() - t0
        self.connects += 1
        proto.counted = True
        self.open[key] = self.open.get(key, 0) + 1
        return proto

    def release(self, conn: UpstreamConnection) -> None:
        """Take back a connection whose exchange finished cleanly."""
        if self._draining and conn.key in self._draining:
            conn.close()  # its endpoint left every cluster: the request it served was the last
            return
        if self._waiters and conn.key in self._waiters:
            fut = self._next_waiter(conn.key)
            if fut is not None:
                conn.reused = True
                self.reuses += 1
                fut.set_result(conn)
                return
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
        if self._waiters:
            self._slot_freed(conn.key)

    def forget(self, conn: UpstreamConnection) -> None:
        """Drop a connection that closed (called from its connection_lost)."""
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def use(self, keys: Iterable[Key]) -> None:
        """A cluster names ``keys`` (its endpoints): they are not draining."""
        for key in keys:
            self._users[key] = self._users.get(key, 0) + 1
            self._draining.discard(key)

    def unuse(self, keys: Iterable[Key]) -> None:
        """A cluster no longer names ``keys``. A key that no cluster names any more drains: its
        idle connections close now, busy ones when their exchange ends (HTTP/2 connections
        take no new streams from a cluster that does not pick them and close when idle).

        A cluster built but never used (an aborted reload) never calls this, so its keys
        stay counted: they then go idle and expire as usual, never drain early.
        """
        for key in keys:
            n = self._users.get(key, 0) - 1
            if n > 0:
                self._users[key] = n
                continue
            self._users.pop(key, None)
            self._draining.add(key)
            for conn in self._idle.pop(key, ()):
                conn.close()

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
        for q in self._waiters.values():
            for fut in q:
                if not fut.done():
                    fut.set_exception(ConnectError("the connection pool closed"))
        self._waiters.clear()
        if self._h2 is not None:
            self._h2.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in list(idle):
                conn.close()
        self._idle.clear()
