"""The io_uring event loop.

A stdlib Unix selector loop whose selector is the ring. ``select(timeout)`` is
one ``Ring.run``: it submits every SQE queued since the last step and waits in a
single ``io_uring_enter``, then dispatches completions directly to their targets
(transports' ``_on_recv``/``_on_send``, listeners' ``_on_accept``), with no Handle
or future per completion. Timers, ``call_soon``, tasks and the SSL protocol layer
are the stdlib's, unchanged.

The hot path is completion-based: accept is one multishot accept per listener,
reads are multishot recvs into the ring's provided buffers, writes are send or
sendmsg SQEs (see ``_transport``). Everything readiness-based that asyncio and
monolake still need (``add_reader``/``add_writer``: the self-pipe that carries
``call_soon_threadsafe`` and signals, the worker's control channel, the L4 splice
relay, the ``sock_*`` helpers) stays on an epoll set whose descriptor the ring
polls with a multishot poll; epoll itself is only asked (``epoll_wait(0)``) when
that poll fired, and again while the last ask returned events, which keeps its
level-triggered behaviour.

A ring is created with the loop, and loops are only created in workers, after the
fork: a ring never crosses a fork (the extension refuses to run in a child). The ring
is single-issuer: run the loop in the thread that created it.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import ssl as _ssl
from asyncio import constants, sslproto, unix_events
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._uring import POLLIN, POLLOUT, Ring
from ._transport import UringSocketTransport

if TYPE_CHECKING:
    from asyncio import BaseProtocol, Future, Server
    from asyncio.events import _ProtocolFactory
    from selectors import SelectorKey


class _RingSelector(selectors.BaseSelector):
    """The loop's selector: the ring, plus an epoll set the ring polls."""

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self._ep = selectors.EpollSelector()
        self._ep_hot = False  # poll fired, or the last epoll_wait(0) returned events
        self._poll_token: int | None = None
        self._arm()

    def _arm(self) -> None:
        self._poll_token = self.ring.poll(self._ep.fileno(), POLLIN, True, self._on_poll)

    def _on_poll(self, res: int, _data: None, more: bool) -> None:
        self._ep_hot = True
        if not more:
            self._poll_token = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> SelectorKey:
        return self._ep.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> SelectorKey:
        return self._ep.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> SelectorKey:
        return self._ep.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> SelectorKey:
        return self._ep.get_key(fileobj)

    def get_map(self) -> Mapping[Any, SelectorKey]:
        return self._ep.get_map()

    def select(self, timeout: float | None = None) -> list[tuple[SelectorKey, int]]:
        if self._poll_token is None:
            self._arm()
        self.ring.run(0 if self._ep_hot else timeout)
        if not self._ep_hot:
            return []
        events = self._ep.select(0)
        self._ep_hot = bool(events)
        return events

    def close(self) -> None:
        self._ep.close()
        self.ring.close()


def _own_queue(sock: socket.socket) -> bool:
    """Whether this listener's accept queue is this process's alone (SO_REUSEPORT)."""
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
    except OSError:
        return False


class _Acceptor:
    """One listening socket's multishot accept."""

    __slots__ = ("factory", "loop", "server", "sock", "sslcontext", "stopped", "timeouts", "token")

    def __init__(
        self,
        loop: UringEventLoop,
        sock: socket.socket,
        factory: _ProtocolFactory,
        sslcontext: _ssl.SSLContext | None,
        server: Server | None,
        timeouts: tuple[float, float],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.sslcontext = sslcontext
        self.server = server
        self.timeouts = timeouts
        self.token: int | None = None
        self.stopped = False

    def start(self) -> None:
        if not self.stopped and self.token is None:
            self.token = self.loop._ring.accept_multishot(self.sock.fileno(), self._on_accept)

    def stop(self) -> None:
        self.stopped = True
        if self.token is not None:
            self.loop._ring.cancel(self.token)

    def _on_accept(self, res: int, _data: None, more: bool) -> None:
        if not more:
            self.token = None
        if res >= 0:
            if self.stopped:
                os.close(res)
                return
            try:
                self._connection(res)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.loop.call_exception_handler(
                    {"message": "Error on transport creation for incoming connection", "exception": exc}
                )
        elif res != -errno.ECANCELED and not self.stopped:
            err = -res
            error = OSError(err, os.strerror(err))
            if err in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.loop.call_exception_handler({"message": "accept out of system resource", "exception": error})
                if self.token is not None:
                    self.loop._ring.cancel(self.token)
                self.loop.call_later(constants.ACCEPT_RETRY_DELAY, self.start)
                return
            if err not in (errno.ECONNABORTED, errno.EAGAIN, errno.EINTR, errno.EPROTO):
                self.loop.call_exception_handler({"message": "accept failed", "exception": error})
        if not more and not self.stopped and res != -errno.ECANCELED:
            self.start()

    def _connection(self, fd: int) -> None:
        listener = self.sock
        conn = socket.socket(listener.family, socket.SOCK_STREAM, listener.proto, fileno=fd)
        protocol = self.factory()
        loop = self.loop
        if self.sslcontext is not None:
            loop._make_ssl_transport(
                conn,
                protocol,
                self.sslcontext,
                server_side=True,
                server=self.server,
                ssl_handshake_timeout=self.timeouts[0],
                ssl_shutdown_timeout=self.timeouts[1],
            )
        else:
            UringSocketTransport(loop, loop._ring, conn, protocol, None, None, self.server)


class _SSLProtocol(sslproto.SSLProtocol):
    max_size = 16 * 1024
    """The stdlib's 256 KiB is both each connection's ciphertext receive buffer, zero-filled so
    resident from the start (an idle TLS connection held ~280 KB), and the size of each
    plaintext read; a TLS record carries at most 16 KiB, so reads lose nothing."""


class UringEventLoop(unix_events.SelectorEventLoop):
    """An asyncio event loop over io_uring (see the module docstring)."""

    can_hand_over_sockets = False
    """A transport's multishot recv reads ahead: bytes in flight when a socket is dup'ed away
    and its transport aborted would be lost, so the L4 relay does not splice on this loop."""

    def __init__(self, *, entries: int = 256, sqpoll_idle_ms: int = 0) -> None:
        self._ring = Ring(entries, sqpoll_idle_ms)
        self._acceptors: dict[int, _Acceptor] = {}
        super().__init__(_RingSelector(self._ring))

    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: BaseProtocol,
        waiter: Future[None] | None = None,
        *,
        extra: dict[str, Any] | None = None,
        server: Server | None = None,
    ) -> UringSocketTransport:
        return UringSocketTransport(self, self._ring, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: BaseProtocol,
        sslcontext: _ssl.SSLContext,
        waiter: Future[None] | None = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: Server | None = None,
        ssl_handshake_timeout: float = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> Any:
        ssl_protocol = _SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,  # type: ignore[arg-type]  # None is fine (typeshed says Future)
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        UringSocketTransport(self, self._ring, rawsock, ssl_protocol, None, extra, server)
        return ssl_protocol._app_transport

    def _start_serving(
        self,
        protocol_factory: _ProtocolFactory,
        sock: socket.socket,
        sslcontext: _ssl.SSLContext | None = None,
        server: Server | None = None,
        backlog: int = 100,
        ssl_handshake_timeout: float = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> None:
        if not _own_queue(sock):
            # A listener shared by workers (Unix sockets, inherited): the first multishot
            # accept queued on it would take every connection, so accept on readiness, as
            # epoll loops do, and let the workers race for each one.
            super()._start_serving(  # type: ignore[misc]  # typeshed omits it
                protocol_factory, sock, sslcontext, server, backlog, ssl_handshake_timeout, ssl_shutdown_timeout
            )
            return
        fd = sock.fileno()
        old = self._acceptors.get(fd)
        if old is not None and not old.stopped:
            return
        acceptor = _Acceptor(
            self, sock, protocol_factory, sslcontext, server, (ssl_handshake_timeout, ssl_shutdown_timeout)
        )
        self._acceptors[fd] = acceptor
        acceptor.start()

    def _stop_serving(self, sock: socket.socket) -> None:
        acceptor = self._acceptors.pop(sock.fileno(), None)
        if acceptor is None:
            super()._stop_serving(sock)  # type: ignore[misc]
            return
        acceptor.stop()
        fd = sock.detach()
        if fd >= 0:
            self._ring.close_fd(fd)
        # Closed now, as close(2) would: a client connecting after Server.close() returns
        # must be refused, not queued on a listener the next iteration would close.
        self._ring.flush()

    def _sock_connect(self, fut: Future[None], sock: socket.socket, address: Any) -> None:
        try:
            sock.connect(address)
        except (BlockingIOError, InterruptedError):
            pass
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            return
        else:
            fut.set_result(None)
            return
        # In progress: one poll for writability through the ring, then SO_ERROR.
        token: list[int | None] = [None]

        def done(res: int, _data: None, more: bool) -> None:
            token[0] = None
            if fut.done():
                return
            if res < 0:
                fut.set_exception(OSError(-res, f"Connect call failed {address}"))
                return
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                fut.set_exception(OSError(err, f"Connect call failed {address}"))
            else:
                fut.set_result(None)

        def cancelled(f: Future[None]) -> None:
            if f.cancelled() and token[0] is not None and not self._ring.closed:
                self._ring.cancel(token[0])

        token[0] = self._ring.poll(sock.fileno(), POLLOUT, False, done)
        fut.add_done_callback(cancelled)

    def statistics(self) -> dict[str, int]:
        """Operations in flight in the ring (for tests and introspection)."""
        return {"ring_ops": self._ring.live, "acceptors": len(self._acceptors)}
