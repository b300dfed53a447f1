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
import itertools
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any, Generic, TypeVar, cast

from ...core.address import Endpoint, parse_endpoint
from ...core.client._connect import open_transport
from ...core.errors import ConfigError
from ._codec import Codec
from ._conn import ConnectionClosed, Framed, MessageConnection
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


async def connect(
    address: str | Endpoint,
    codec: Codec[T],
    *,
    tls: Any = None,
    connect_timeout: float = 10.0,
    idle_timeout: float | None = None,
    max_queued: int = 1024,
) -> MessageConnection[T]:
    """A message connection to ``address`` (see ``endpoint`` for ``tls``). Raises ConnectError
    or ConnectTimeout."""
    ep = endpoint(address, tls)
    loop = asyncio.get_running_loop()
    # open_transport is typed for asyncio.Protocol; a BufferedProtocol goes through the same calls.
    factory: Any = lambda: MessageConnection(codec, idle_timeout=idle_timeout, max_queued=max_queued)  # noqa: E731
    _, conn = await open_transport(loop, factory, ep, connect_timeout, {})
    return cast(MessageConnection[T], conn)


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

    async def stream(self, request: Req) -> AsyncIterator[Resp]:
        """Send ``request`` and yield the server's replies until its end message. Raises
        ConnectionClosed, or CallCancelled when the server cancels. Leaving the iteration
        early (or being cancelled) cancels the call on the server."""
        if self.closed:
            raise ConnectionClosed(f"connection to {self.peer} closed: {self.error or 'closed'}")
        if self._w_paused:
            await self.wait_writable()
        mid = next(self._ids)
        self._requests.set_message_id(request, mid)
        st = _Stream()
        self._streams[mid] = st
        self.send(request)
        assert self._loop is not None
        try:
            while True:
                items = st.items
                while items:
                    item = items.popleft()
                    if item is _CANCELLED:
                        raise CallCancelled(f"call {mid} was cancelled by the server")
                    self._buffered -= 1
                    if self._full and self._buffered <= self._max_buffered // 2:
                        self._set_full(False)
                    yield item
                if st.done:
                    break
                if self.closed:
                    raise ConnectionClosed(f"connection to {self.peer} closed: {self.error or 'closed'}")
                st.waiter = self._loop.create_future()
                try:
                    await st.waiter
                finally:
                    st.waiter = None
        finally:
            if self._streams.pop(mid, None) is not None and not st.done and not self.closed:
                self._buffered -= len(st.items)
                self.send(self._requests.cancelled(mid))

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


async def connect_rpc(
    address: str | Endpoint,
    codec: Codec[Resp],
    requests: RpcMessages[Req],
    responses: RpcMessages[Resp],
    *,
    tls: Any = None,
    connect_timeout: float = 10.0,
) -> RpcConnection[Req, Resp]:
    """An ``RpcConnection`` to ``address``. Raises ConnectError or ConnectTimeout."""
    ep = endpoint(address, tls)
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
            c = await connect_rpc(
                ep, self._codec, self._requests, self._responses, connect_timeout=self._connect_timeout
            )
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

    async def stream(self, request: Req) -> AsyncIterator[Resp]:
        """One server-streaming call on a balanced connection."""
        ep = self._balancer.pick(cast(Any, None))
        self._balancer.started(ep)
        try:
            conn = await self._conn(ep)
            async for item in conn.stream(request):
                yield item
        finally:
            self._balancer.finished(ep)

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
