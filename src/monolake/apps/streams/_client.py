"""Message stream clients: a plain connection, an RPC connection, and a pool over endpoints.

``connect`` opens a ``MessageConnection`` (TCP, Unix or TLS with either backend)
through the core's connector (``open_transport``: one connect timeout, errors
translated to ``ConnectError``/``ConnectTimeout``, TCP_NODELAY).

``RpcConnection`` is protosocket-rpc's client on one connection: ``call(request)``
stamps a fresh id on the request, sends it and waits for the reply with that id;
``stream(request)`` yields every reply until the server's end (or cancel) message.
Thousands of calls share the connection; replies are matched by id as they come,
in any order. A caller whose task is cancelled (a timeout, a dropped request)
sends ``cancelled(id)``, so the server aborts the handler; a stream the caller stops
iterating does the same. Replies of streams wait in the stream until taken; past
``max_buffered`` of them on the connection, reading pauses (backpressure to the
server). If the connection fails, every call on it raises ConnectionClosed.

``RpcPool`` spreads calls over endpoints (power of two choices by calls in flight,
``LeastRequestBalancer``) and over ``connections`` connections per endpoint, opening
them on first use and replacing one that closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Sequence
from typing import Any, Generic, TypeVar, cast

from ...core.address import Endpoint, parse_endpoint
from ...core.client._connect import open_transport
from ...core.errors import ConfigError
from ._codec import Codec
from ._conn import ConnectionClosed, Framed
from ._messages import END, RpcMessages

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

MAX_BUFFERED = 4096
"""Stream replies held (not yet taken) on one RPC connection before reading pauses."""


def endpoint(address: str | Endpoint, tls: Any = None) -> Endpoint:
    """``address`` ("host:port" or "unix:/path") as an Endpoint; ``tls``: a
    ``monolake.apps.config.UpstreamTls`` (``backend = "openssl" | "rustls"``), a
    ``monolake.core.tls.ClientTls``, or None. Raises ConfigError."""
    if isinstance(address, Endpoint):
        ep = address
    else:
        try:
            ep = parse_endpoint(address)
        except ValueError as exc:
            raise ConfigError("address", str(exc)) from None
    if tls is None:
        return ep
    from ...core.tls import ClientTls, client_tls

    ctls = tls if isinstance(tls, ClientTls) else client_tls("tls", tls, default_alpn=())
    return Endpoint(scheme="https", host=ep.host, port=ep.port, path=ep.path, weight=ep.weight, tls=ctls)


class _Stream:
    __slots__ = ("done", "items", "waiter")

    def __init__(self) -> None:
        self.items: deque[Any] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.done = False


class RpcConnection(Framed[Resp], Generic[Req, Resp]):
    """protosocket-rpc's client on one connection (see the module docstring)."""

    def __init__(
        self,
        codec: Codec[Resp],
        requests: RpcMessages[Req],
        responses: RpcMessages[Resp],
        *,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        super().__init__(codec, label="streams client")
        self._requests = requests
        self._responses = responses
        self._ids = itertools.count(1)
        self._unary: dict[int, asyncio.Future[Resp]] = {}
        self._streams: dict[int, _Stream] = {}
        self._buffered = 0
        self._max_buffered = max_buffered

    @property
    def in_flight(self) -> int:
        return len(self._unary) + len(self._streams)

    async def call(self, request: Req) -> Resp:
        """Send ``request`` (its id is set here) and return the reply. Raises ConnectionClosed,
        or CallCancelled when the server cancels the call. On cancellation, tells the server."""
        if self.closed:
            raise ConnectionClosed(f"connection to {self.peer} closed: {self.error or 'closed'}")
        if self._w_paused:
            await self.wait_writable()  # the server reads slowly: callers wait, buffers do not grow
        mid = next(self._ids)
        self._requests.set_message_id(request, mid)
        assert self._loop is not None
        fut: asyncio.Future[Resp] = self._loop.create_future()
        self._unary[mid] = fut
        self.send(request)
        try:
            return await fut
        except asyncio.CancelledError:
            if self._unary.pop(mid, None) is not None and not self.closed:
                self.send(self._requests.cancelled(mid))
            raise

    def stream(self, request: Req) -> RpcStream[Req, Resp]:
        """Send ``request`` (at the first ``anext``) and yield the server's replies until its end
        message. Raises ConnectionClosed, or CallCancelled when the server cancels. Leaving the
        iteration early (``aclose()``, or a ``break`` once the iterator is dropped) or being
        cancelled cancels the call on the server."""
        return RpcStream(self, request)

    # -- Framed -------------------------------------------------------------------------

    def _deliver(self, messages: list[Resp]) -> None:
        rs = self._responses
        for m in messages:
            mid = rs.message_id(m)
            code = rs.control_code(m)
            fut = self._unary.pop(mid, None)
            if fut is not None:
                if fut.done():
                    continue
                if code == 0:
                    fut.set_result(m)
                else:
                    fut.set_exception(CallCancelled(f"call {mid} was cancelled by the server"))
                continue
            st = self._streams.get(mid)
            if st is None:
                continue  # a reply to a call the caller gave up on
            if code == 0:
                st.items.append(m)
                self._buffered += 1
            elif code == END:
                st.done = True
            else:
                st.done = True
                self._streams.pop(mid, None)
                self._buffered -= len(st.items)
                st.items.clear()
                st.items.append(_CANCELLED)
            w = st.waiter
            if w is not None and not w.done():
                w.set_result(None)
        if self._buffered >= self._max_buffered and not self._full:
            self._set_full(True)

    def _on_lost(self) -> None:
        err = ConnectionClosed(f"connection to {self.peer} closed" + (f": {self.error}" if self.error else ""))
        for fut in self._unary.values():
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # retrieved here too: a caller may already be gone
        self._unary.clear()
        for st in self._streams.values():
            w = st.waiter
            if w is not None and not w.done():
                w.set_result(None)

    def _busy(self) -> bool:
        return bool(self._unary or self._streams)


class CallCancelled(ConnectionClosed):
    """The server answered the call with a cancel (its handler failed or was aborted)."""


class _CancelledMarker:
    pass


_CANCELLED: Any = _CancelledMarker()


async def open_rpc(
    ep: Endpoint,
    codec: Codec[Resp],
    requests: RpcMessages[Req],
    responses: RpcMessages[Resp],
    connect_timeout: float,
) -> RpcConnection[Req, Resp]:
    """An ``RpcConnection`` to ``ep`` (``connect_rpc``'s work, and the pool's). Raises ConnectError
    or ConnectTimeout."""
    factory: Any = lambda: RpcConnection(codec, requests, responses)  # noqa: E731
    _, conn = await open_transport(asyncio.get_running_loop(), factory, ep, connect_timeout, {})
    return cast(RpcConnection[Req, Resp], conn)


class RpcPool(Generic[Req, Resp]):
    """Calls balanced over ``endpoints`` and ``connections`` connections to each (see the
    module docstring). ``close()`` closes them all."""

    def __init__(
        self,
        endpoints: Sequence[str | Endpoint],
        codec: Codec[Resp],
        requests: RpcMessages[Req],
        responses: RpcMessages[Resp],
        *,
        connections: int = 1,
        tls: Any = None,
        connect_timeout: float = 10.0,
    ) -> None:
        from ..proxy._balancer import LeastRequestBalancer

        if not endpoints:
            raise ConfigError("endpoints", "an RpcPool needs at least one endpoint")
        self.endpoints = [endpoint(e, tls) for e in endpoints]
        self._balancer = LeastRequestBalancer(self.endpoints)
        self._codec = codec
        self._requests = requests
        self._responses = responses
        self._n = max(1, connections)
        self._connect_timeout = connect_timeout
        self._conns: dict[int, list[RpcConnection[Req, Resp] | None]] = {
            id(e): [None] * self._n for e in self.endpoints
        }
        self._opening: dict[tuple[int, int], asyncio.Future[RpcConnection[Req, Resp]]] = {}
        self._next = 0

    async def _conn(self, ep: Endpoint) -> RpcConnection[Req, Resp]:
        slots = self._conns[id(ep)]
        self._next = i = (self._next + 1) % self._n
        c = slots[i]
        if c is not None and not c.closed:
            return c
        key = (id(ep), i)
        pending = self._opening.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[RpcConnection[Req, Resp]] = asyncio.get_running_loop().create_future()
        self._opening[key] = fut
        try:
            c = await open_rpc(ep, self._codec, self._requests, self._responses, self._connect_timeout)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()
            raise
        finally:
            self._opening.pop(key, None)
        slots[i] = c
        fut.set_result(c)
        return c

    async def call(self, request: Req) -> Resp:
        """One unary call on a balanced connection. Raises ConnectError, ConnectionClosed, CallCancelled."""
        ep = self._balancer.pick(cast(Any, None))
        self._balancer.started(ep)
        try:
            conn = await self._conn(ep)
            return await conn.call(request)
        finally:
            self._balancer.finished(ep)

    def stream(self, request: Req) -> PoolStream[Req, Resp]:
        """One server-streaming call on a balanced connection (see ``RpcConnection.stream``)."""
        return PoolStream(self, request)

    def close(self) -> None:
        """Close every connection (calls in flight on them fail with ConnectionClosed)."""
        for slots in self._conns.values():
            for c in slots:
                if c is not None:
                    c.close()

    async def aclose(self) -> None:
        """``close()``, then wait until every connection (and socket) is closed."""
        self.close()
        for slots in self._conns.values():
            for c in slots:
                if c is not None:
                    await c.wait_closed()


class RpcStream(Generic[Req, Resp]):
    """The replies of one server-streaming call (``RpcConnection.stream``): an async iterator,
    written as a class (not an async generator) so that mypyc compiles it. The call is sent at
    the first ``anext``; ending early (``aclose``, a cancel, or the iterator dropped unfinished)
    sends the server ``cancelled(id)``."""

    def __init__(self, conn: RpcConnection[Req, Resp], request: Req) -> None:
        self._conn = conn
        self._request = request
        self._mid = 0
        self._st: _Stream | None = None
        self._over = False

    def __aiter__(self) -> RpcStream[Req, Resp]:
        return self

    async def __anext__(self) -> Resp:
        if self._over:
            raise StopAsyncIteration
        conn = self._conn
        try:
            st = self._st
            if st is None:
                st = await self._start()
            while True:
                items = st.items
                if items:
                    item = items.popleft()
                    if item is _CANCELLED:
                        raise CallCancelled(f"call {self._mid} was cancelled by the server")
                    conn._buffered -= 1
                    if conn._full and conn._buffered <= conn._max_buffered // 2:
                        conn._set_full(False)
                    return cast(Resp, item)
                if st.done:
                    break
                if conn.closed:
                    raise ConnectionClosed(f"connection to {conn.peer} closed: {conn.error or 'closed'}")
                assert conn._loop is not None
                st.waiter = conn._loop.create_future()
                try:
                    await st.waiter
                finally:
                    st.waiter = None
        except BaseException:  # a cancel, CallCancelled, ConnectionClosed: the stream is over
            self._finish()
            raise
        self._finish()
        raise StopAsyncIteration

    async def _start(self) -> _Stream:
        conn = self._conn
        if conn.closed:
            raise ConnectionClosed(f"connection to {conn.peer} closed: {conn.error or 'closed'}")
        if conn._w_paused:
            await conn.wait_writable()
        self._mid = mid = next(conn._ids)
        conn._requests.set_message_id(self._request, mid)
        self._st = st = _Stream()
        conn._streams[mid] = st
        conn.send(self._request)
        return st

    def _finish(self) -> None:
        """The stream is over: forget it; cancel it on the server if it did not end there."""
        if self._over:
            return
        self._over = True
        st = self._st
        if st is None:
            return
        conn = self._conn
        if conn._streams.pop(self._mid, None) is not None and not st.done and not conn.closed:
            conn._buffered -= len(st.items)
            conn.send(conn._requests.cancelled(self._mid))

    async def aclose(self) -> None:
        """Stop iterating: the server is told to cancel the call if it has not ended it."""
        self._finish()

    def __del__(self) -> None:
        # What an async generator's finalizer does after a ``break``: the call ends on the server.
        if not self._over and self._st is not None:
            with contextlib.suppress(Exception):  # the loop is gone (interpreter exit): nothing to tell
                self._finish()


class PoolStream(Generic[Req, Resp]):
    """One server-streaming call of an ``RpcPool``: the endpoint is picked and its connection
    opened at the first ``anext``; it counts as in flight on that endpoint until the stream ends."""

    def __init__(self, pool: RpcPool[Req, Resp], request: Req) -> None:
        self._pool = pool
        self._request = request
        self._ep: Endpoint | None = None
        self._inner: RpcStream[Req, Resp] | None = None
        self._over = False

    def __aiter__(self) -> PoolStream[Req, Resp]:
        return self

    async def __anext__(self) -> Resp:
        if self._over:
            raise StopAsyncIteration
        try:
            inner = self._inner
            if inner is None:
                pool = self._pool
                self._ep = ep = pool._balancer.pick(cast(Any, None))
                pool._balancer.started(ep)
                conn = await pool._conn(ep)
                self._inner = inner = conn.stream(self._request)
            return await inner.__anext__()
        except BaseException:  # StopAsyncIteration included: the stream is over
            self._finish()
            raise

    def _finish(self) -> None:
        if self._over:
            return
        self._over = True
        if self._ep is not None:
            self._pool._balancer.finished(self._ep)
        if self._inner is not None:
            self._inner._finish()

    async def aclose(self) -> None:
        self._finish()

    def __del__(self) -> None:
        if not self._over and self._ep is not None:
            with contextlib.suppress(Exception):
                self._finish()
