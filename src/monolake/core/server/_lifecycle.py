"""What every server app does around its connections: track, sweep, drain, close.

HTTP, stream, L4 and Thrift apps each enforce timeouts with one timer per app (not
one per connection: ``Sweeper``) and let the runtime await "everything finished"
during a drain (``DrainSignal``). ``ConnectionServer`` is the part of the runtime's
``ServerApp`` they share: the set of open connections, connections still reading a
PROXY header, the draining flag, the loop, the sweep, the drain wait, the close and
a reload's TLS swap. ``IdleConnectionServer`` adds the idle-timeout sweep of the
byte-stream servers (L4, Thrift). Nothing here runs per request.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from ..tls import ServerTlsContexts


class Sweeper:
    """Calls ``tick`` every ``interval`` seconds once started, until stopped."""

    __slots__ = ("_handle", "_loop", "interval", "tick")

    def __init__(self, tick: Callable[[], None], interval: float) -> None:
        self.tick = tick
        self.interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle = loop.call_later(self.interval, self._run)

    def _run(self) -> None:
        self.tick()
        if self._loop is not None:
            self._handle = self._loop.call_later(self.interval, self._run)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None


class DrainSignal:
    """Lets ``wait_drained`` sleep until the app says it is done; no future until then."""

    __slots__ = ("_fut",)

    def __init__(self) -> None:
        self._fut: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        self._fut = asyncio.get_running_loop().create_future()
        await self._fut

    def set(self) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)


class Abortable(Protocol):
    def abort(self) -> None:
        """Drop the connection now."""
        ...


class IdleCheckable(Abortable, Protocol):
    def check_idle(self, now: float, idle: float) -> None:
        """Close if no byte moved for ``idle`` seconds up to ``now`` (loop time)."""
        ...


C = TypeVar("C", bound=Abortable)
I = TypeVar("I", bound=IdleCheckable)  # noqa: E741


class ConnectionServer(Generic[C]):
    """The connection bookkeeping of one server app (listener) in one worker.

    Connections add themselves to ``conns`` when made and call ``conn_done`` when gone;
    ``wait_drained`` returns once none is left. ``sweep_every`` (seconds) starts the app's
    ``_sweep`` on the loop of its first connection; None: no sweep.
    """

    def __init__(self, name: str, tls: ServerTlsContexts | None, sweep_every: float | None) -> None:
        self.name = name
        self.tls = tls
        """The listener's TLS contexts; the runtime serves TLS with ``ssl_context``."""
        self.conns: set[C] = set()
        self.pending: set[Abortable] = set()
        """Connections not handed to the app yet (reading a PROXY header): aborted on drain."""
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._drained = DrainSignal()
        self._sweeper = Sweeper(self._sweep, sweep_every) if sweep_every is not None else None

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.ssl_context if self.tls is not None else None

    def _serving(self) -> None:
        """Called by ``protocol_factory``: the first call finds the worker's loop and starts the sweep."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            if self._sweeper is not None:
                self._sweeper.start(self.loop)

    def _sweep(self) -> None:
        """One periodic look at every connection (apps with a sweep define it)."""

    def conn_done(self, conn: C) -> None:
        """A connection closed."""
        self.conns.discard(conn)
        if not self.conns:
            self._drained.set()

    def _adopt_tls(self, new: ServerTlsContexts | None, logger: logging.Logger) -> None:
        """A reload's new certificates, for new handshakes; turning TLS on or off needs a new listener."""
        if self.tls is not None and new is not None:
            self.tls.adopt(new)
        elif (self.tls is None) != (new is None):
            logger.warning(
                "servers.%s.tls: turning TLS on or off takes effect on a new listener (restart or change the address)",
                self.name,
            )

    def start_draining(self) -> None:
        """Connections waiting for a PROXY header close; apps tell the others what draining means."""
        self.draining = True
        for reader in list(self.pending):
            reader.abort()

    async def wait_drained(self) -> None:
        """Return once every connection is closed."""
        if self.conns:
            await self._drained.wait()

    def close(self) -> None:
        """Stop the sweep and drop every connection now."""
        if self._sweeper is not None:
            self._sweeper.stop()
        for reader in list(self.pending):
            reader.abort()
        for conn in list(self.conns):
            conn.abort()


def idle_sweep_interval(idle_timeout: float) -> float:
    """Sweep often enough to close an idle connection within ~1/4 of its timeout past it."""
    return max(0.05, min(1.0, idle_timeout / 4))


class IdleConnectionServer(ConnectionServer[I]):
    """A byte-stream server: its sweep closes connections idle for ``idle_timeout`` seconds."""

    def __init__(self, name: str, tls: ServerTlsContexts | None, idle_timeout: float) -> None:
        super().__init__(name, tls, idle_sweep_interval(idle_timeout))
        self.idle_timeout = idle_timeout

    def _set_idle_timeout(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        if self._sweeper is not None:
            self._sweeper.interval = idle_sweep_interval(idle_timeout)

    def _sweep(self) -> None:
        assert self.loop is not None
        now = self.loop.time()
        idle = self.idle_timeout
        for conn in list(self.conns):
            conn.check_idle(now, idle)
