"""Serving a user's own byte-stream service over TCP, Unix or TLS listeners.

A stream service is a ``Service[Connection, None]``: called once per accepted
connection, in a task of its own, with a ``Connection``; the connection is closed
when the call returns (or raises: one log line naming the server and the handler,
the worker serves on). The ``Connection`` is a small ``asyncio.Protocol`` adapter:

- ``await conn.read()`` returns the next bytes received, ``b""`` at EOF;
  received bytes are buffered up to ``HIGH_WATER`` and reading from the socket
  pauses beyond that, so a service that reads slowly bounds what it holds;
- ``conn.write(data)`` queues bytes on the transport; ``await conn.drain()``
  returns once the transport's buffer is below its high-water mark (raises
  ``ConnectionResetError`` if the peer went away), as ``StreamWriter.drain``;
- ``conn.write_eof()`` half-closes where the transport can (not TLS: there, the
  client's EOF also ends the connection once what is queued is sent);
- ``conn.close()`` closes after what is queued is sent; ``conn.peer`` is the
  client's "ip:port" (or "unix"); ``conn.tls`` is the TLS object of the
  connection (``ssl.SSLObject``-like: ``version()``, ``selected_alpn_protocol()``)
  or None.

It runs on every loop backend, since it uses only the Protocol/Transport API.
Drain: the runtime stops accepting; a connection's service runs on until it
returns or ``runtime.drain_timeout`` passes, when ``close`` aborts the transport
and cancels the task. Idle timeouts are the service's business (a stream can be
silent for hours on purpose): wrap a read in ``asyncio.timeout`` where one applies.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..service import Factory, Layer, Service, Stack
from ._lifecycle import ConnectionServer
from ._settings import TlsListenerSettings as ServerConfig

if TYPE_CHECKING:
    from ..tls import ServerTlsContexts

log = logging.getLogger("monolake.handler")

HIGH_WATER = 256 * 1024
"""Bytes buffered for ``read`` before the socket's reading pauses."""


class Connection(asyncio.Protocol):
    """One accepted connection as a stream service sees it (see the module docstring)."""

    def __init__(self, app: StreamServerApp) -> None:
        self._app = app
        self._service = app.service
        self._transport: asyncio.Transport | None = None
        self._buf: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._lost: Exception | None = None
        self._closed = False
        self._read_paused = False
        self._write_paused = False
        self._reader: asyncio.Future[None] | None = None
        self._drainers: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self.peer = ""
        """The client's "ip:port" ("[ip]:port" for IPv6), or "unix"."""

    # -- the service's side -----------------------------------------------------------

    @property
    def tls(self) -> Any:
        """The connection's TLS object (``ssl.SSLObject``-like), or None on a plain listener."""
        return self._transport.get_extra_info("ssl_object") if self._transport is not None else None

    @property
    def server(self) -> str:
        """The name of the server (listener) that accepted the connection."""
        return self._app.name

    async def read(self) -> bytes:
        """The next bytes received, or b"" once the peer closed its side (or the connection
        is gone). Never returns more than one receive's worth."""
        while not self._buf:
            if self._eof or self._closed:
                return b""
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        data = self._buf.popleft()
        self._size -= len(data)
        if self._read_paused and self._size < HIGH_WATER // 2 and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending; a write after close or loss is dropped."""
        t = self._transport
        if t is not None and not self._closed and not t.is_closing():
            t.write(data)

    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark. Raises
        ConnectionResetError once the connection is lost."""
        if self._lost is not None or (self._closed and self._transport is None):
            raise ConnectionResetError("connection lost")
        if not self._write_paused:
            return
        fut = asyncio.get_running_loop().create_future()
        self._drainers.append(fut)
        await fut

    def write_eof(self) -> None:
        """Half-close: no more bytes from us (where the transport can; TLS cannot)."""
        t = self._transport
        if t is not None and not t.is_closing() and t.can_write_eof():
            t.write_eof()

    def close(self) -> None:
        """Close once what was written is sent."""
        t = self._transport
        if t is not None and not t.is_closing():
            t.close()

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's and io_uring's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        name = transport.get_extra_info("peername")
        if isinstance(name, tuple) and len(name) >= 2:
            host = str(name[0])
            self.peer = f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
        else:
            self.peer = "unix"
        app = self._app
        app.conns.add(self)
        self._task = (app.loop or asyncio.get_running_loop()).create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self._buf.append(data)
        self._size += len(data)
        if self._size >= HIGH_WATER and not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        # Keep our side open (the service may still answer) where a half-close exists; a TLS
        # transport has none and would log a warning for True.
        t = self._transport
        return True if t is not None and t.can_write_eof() else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._lost = exc if exc is not None else ConnectionResetError("connection closed")
        self._wake()
        for fut in self._drainers:
            if not fut.done():
                fut.set_exception(ConnectionResetError("connection lost"))
                fut.exception()  # retrieved: a writer that never drains must not warn
        self._drainers.clear()
        self._app.conn_done(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for fut in self._drainers:
            if not fut.done():
                fut.set_result(None)
        self._drainers.clear()

    # -- internals -------------------------------------------------------------------

    def _wake(self) -> None:
        r = self._reader
        if r is not None and not r.done():
            r.set_result(None)

    async def _serve(self) -> None:
        try:
            await self._service(self)
        except asyncio.CancelledError:
            raise
        except ConnectionError as exc:
            app = self._app
            log.info("server=%s handler=%s peer=%s: connection lost: %s", app.name, app.handler, self.peer, exc)
        except Exception as exc:
            log.error(
                "server=%s handler=%s peer=%s failed: %s: %s",
                self._app.name,
                self._app.handler,
                self.peer,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            self.abort()
            return
        self.close()

    def abort(self) -> None:
        """Drop the connection now (unsent bytes are lost) and cancel the service's task."""
        t = self._transport
        if t is not None:
            t.abort()
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()


class StreamServerApp(ConnectionServer["Connection"]):
    """One stream server (listener) in one worker: the runtime's ``ServerApp``.

    ``service`` is called once per connection; a reload's ``adopt`` swaps it for the
    connections accepted from then on (open ones finish on the service they started with).
    """

    def __init__(
        self, name: str, service: Service[Connection, None], *, handler: str = "", tls: ServerTlsContexts | None = None
    ) -> None:
        super().__init__(name, tls, None)
        self.service = service
        self.handler = handler or type(service).__qualname__

    def protocol_factory(self) -> Connection:
        self._serving()
        return Connection(self)

    def adopt(self, new: StreamServerApp) -> None:
        """Serve new connections with ``new``'s service (a reload's commit)."""
        self.service = new.service
        self.handler = new.handler
        self._adopt_tls(new.tls, log)

    # start_draining: nothing to tell the services, they end their connections themselves.

    def statistics(self) -> dict[str, int]:
        return {"connections": len(self.conns)}


class StreamService(Protocol):
    """A user's stream service, a ``Service[Connection, None]``: anything with
    ``async def __call__(self, conn: Connection) -> None``, called once per connection."""

    async def __call__(self, conn: Connection, /) -> None: ...


STREAM_PROVIDES = ("peer", "server")
"""Context slots a stream server provides (as ``Connection.peer`` and ``.server``)."""


def build_stream_app(
    name: str,
    server: ServerConfig,
    factory: Factory[Any],
    layers: Sequence[Layer[Connection, None]] = (),
    old: object = None,
    *,
    handler: str = "",
) -> StreamServerApp:
    """A ``StreamServerApp`` for ``server`` (its name and ``tls``) running ``layers`` over
    ``factory``'s service.

    ``old`` is the app this one replaces (a reload): its service is handed to
    ``factory.make`` through ``Stack.build``, so state is kept. Raises ConfigError.
    """
    from ..tls import ServerTlsContexts

    prev = old.service if isinstance(old, StreamServerApp) else None
    service = Stack(layers, factory, provided=STREAM_PROVIDES).build(prev)
    tls = ServerTlsContexts(f"servers.{name}.tls", server.tls, default_alpn=()) if server.tls is not None else None
    return StreamServerApp(name, service, handler=handler or _name_of(factory), tls=tls)


def _name_of(obj: object) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"
