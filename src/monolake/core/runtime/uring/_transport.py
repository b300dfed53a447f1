"""The io_uring socket transport.

Reading is one multishot recv per connection drawing from the ring's provided
buffers: the kernel keeps receiving without a new submission per chunk, and each
completion arrives here as ``_on_recv(res, data, more)`` straight from the ring's
dispatch (no Handle, no future). ``pause_reading`` cancels the recv; chunks that
were already in flight when it was paused are held in ``_pending`` and delivered,
in order, after ``resume_reading``.

Writing queues a send SQE at once when nothing is in flight; writes made while a
send is in flight are gathered and go out as one sendmsg when it completes, so a
response's head and body become one submission. The write buffer size the flow
control sees is in-flight plus queued bytes. A short send resubmits the rest.

Descriptors are closed through the ring (``close_fd``), after every SQE queued
before, so a number reused by a concurrent accept is never written to.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from asyncio import BufferedProtocol, Protocol, constants, transports, trsock
from asyncio.log import logger
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, cast

from ..._buffered import feed
from .._uring import POLLOUT, Ring

if TYPE_CHECKING:
    from asyncio import BaseProtocol, Future, Server

# Final module constants: mypyc inlines them or keeps them in C statics, where a plain
# module global is a dict lookup at every use.
_MAX_IOV: Final = 1024
_QUIET_ERRORS: Final = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_QUIET_ERRNOS: Final = (errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED)
_CLOSED: Final = Protocol()
"""The protocol of a transport whose connection_lost ran (its own is let go)."""


def _set_result_unless_cancelled(fut: Future[None]) -> None:
    if not fut.cancelled():
        fut.set_result(None)


class UringSocketTransport(transports.Transport):
    """A stream socket transport driven by io_uring completions."""

    def __init__(
        self,
        loop: Any,
        ring: Ring,
        sock: socket.socket,
        protocol: BaseProtocol,
        waiter: Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        server: Server | None = None,
    ) -> None:
        super().__init__(extra)
        self._extra: dict[str, Any] = dict(extra) if extra else {}
        self._high_water = 64 * 1024
        self._low_water = 16 * 1024
        self._protocol_paused = False
        self._loop: Any = loop
        self._ring = ring
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._extra["socket"] = trsock.TransportSocket(sock)
        self._protocol: BaseProtocol = protocol
        self._buffered = isinstance(protocol, BufferedProtocol)
        self._plain = not self._buffered  # data goes to data_received (the cached bound method)
        self._data_received: Any = getattr(protocol, "data_received", None) if self._plain else None
        self._server = server
        self._closing = False
        self._conn_lost = 0
        self._paused = False
        self._eof = False  # EOF received
        self._eof_written = False  # write_eof() asked
        self._recv_token: int | None = None
        self._pending: list[bytes] = []  # chunks (b"" = EOF) held while paused
        self._send_token: int | None = None
        self._inflight: tuple[bytes, ...] = ()
        self._inflight_size = 0
        self._wbuf: list[bytes] = []
        self._wbuf_size = 0
        if sock.gettimeout() == 0.0:
            # io_uring answers EAGAIN on an O_NONBLOCK socket where it would otherwise
            # wait for readiness itself; accepted sockets arrive blocking already.
            sock.setblocking(True)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop._transports[self._fd] = self
        if server is not None:
            server._attach()  # type: ignore[attr-defined]
        loop.call_soon(self._protocol.connection_made, self)
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter)

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else ("closing" if self._closing else "open")
        return f"<UringSocketTransport fd={self._fd} {state}>"

    # -- extra info ------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._extra:
            return self._extra[name]
        if name in ("peername", "sockname") and self._sock is not None:
            # Multishot accept does not return addresses: ask once, on demand.
            try:
                value = self._sock.getpeername() if name == "peername" else self._sock.getsockname()
            except OSError:
                value = None
            self._extra[name] = value
            return value
        return default

    # -- protocol ----------------------------------------------------------------------

    def set_protocol(self, protocol: BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, BufferedProtocol)
        self._plain = not self._buffered
        self._data_received = getattr(protocol, "data_received", None) if self._plain else None

    def get_protocol(self) -> BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    # -- reading -----------------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def _start_reading(self) -> None:
        if self._recv_token is None and not self._paused and not self._closing and not self._eof:
            self._recv_token = self._ring.recv_multishot(self._fd, self._on_recv)

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        if self._recv_token is not None:
            self._ring.cancel(self._recv_token)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._pending:
            self._loop.call_soon(self._drain_pending)
        else:
            self._start_reading()

    def _drain_pending(self) -> None:
        while self._pending and not self._paused and not self._closing:
            data = self._pending.pop(0)
            if data:
                self._deliver(data)
            else:
                self._on_eof()
        if not self._pending:
            self._start_reading()

    def _on_recv(self, res: int, data: bytes | None, more: bool) -> None:
        # The hot path: one call per received chunk, straight from the ring's dispatch.
        if more and res > 0 and self._plain and not self._paused and not self._pending and not self._closing:
            try:
                self._data_received(data)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            return
        if not more:
            self._recv_token = None
        if self._closing:
            return
        if res > 0:
            assert data is not None
            if self._paused or self._pending:
                self._pending.append(data)
            else:
                self._deliver(data)
        elif res == 0:
            if self._paused or self._pending:
                self._pending.append(b"")
            else:
                self._on_eof()
            return
        elif res not in (-errno.ECANCELED, -errno.ENOBUFS, -errno.EAGAIN):
            self._fatal_error(OSError(-res, os.strerror(-res)), "Fatal read error on io_uring transport")
            return
        if not more:
            self._start_reading()  # the kernel ended the multishot recv (or we cancelled it)

    def _deliver(self, data: bytes) -> None:
        try:
            if self._buffered:
                feed(cast(BufferedProtocol, self._protocol), data)
            else:
                cast(Protocol, self._protocol).data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _on_eof(self) -> None:
        self._eof = True
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    # -- writing -----------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes):
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
            data = bytes(data)
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._conn_lost:
            self._warn_lost()
            return
        if self._send_token is None:
            self._inflight = (data,)
            self._inflight_size = n = len(data)
            self._send_token = self._ring.send(self._fd, data, self._on_send)
            if n > self._high_water:
                self._maybe_pause_protocol()
        else:
            self._wbuf.append(data)
            self._wbuf_size += len(data)
            self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        if self._eof_written:
            raise RuntimeError("Cannot call writelines() after write_eof()")
        if self._conn_lost:
            self._warn_lost()
            return
        for data in list_of_data:
            if data:
                b = data if isinstance(data, bytes) else bytes(data)
                self._wbuf.append(b)
                self._wbuf_size += len(b)
        if self._send_token is None:
            self._flush()
        self._maybe_pause_protocol()

    def _warn_lost(self) -> None:
        if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
            logger.warning("socket.send() raised exception.")
        self._conn_lost += 1

    def _submit(self, bufs: tuple[bytes, ...], size: int) -> None:
        self._inflight = bufs
        self._inflight_size = size
        if len(bufs) == 1:
            self._send_token = self._ring.send(self._fd, bufs[0], self._on_send)
        else:
            self._send_token = self._ring.sendmsg(self._fd, bufs, self._on_send)

    def _flush(self) -> None:
        """Send what is queued (nothing is in flight)."""
        if not self._wbuf:
            return
        if len(self._wbuf) <= _MAX_IOV:
            bufs, self._wbuf = tuple(self._wbuf), []
            size, self._wbuf_size = self._wbuf_size, 0
        else:
            bufs, self._wbuf = tuple(self._wbuf[:_MAX_IOV]), self._wbuf[_MAX_IOV:]
            size = sum(map(len, bufs))
            self._wbuf_size -= size
        self._submit(bufs, size)

    def _on_send(self, res: int, _data: None, _more: bool) -> None:
        self._send_token = None
        if res == self._inflight_size and not self._wbuf and not self._protocol_paused:
            # The common case: all of it went, nothing is queued, no one is waiting.
            self._inflight, self._inflight_size = (), 0
            if self._closing or self._eof_written:
                self._after_flush()
            return
        if self._conn_lost:
            return
        if res == -errno.EAGAIN:  # not expected on a blocking socket; wait for room, then resend
            self._wbuf[:0] = self._inflight
            self._wbuf_size += self._inflight_size
            self._inflight, self._inflight_size = (), 0
            self._send_token = self._ring.poll(self._fd, POLLOUT, False, self._on_writable)
            return
        if res < 0:
            self._inflight, self._inflight_size = (), 0
            if res != -errno.ECANCELED:
                self._fatal_error(OSError(-res, os.strerror(-res)), "Fatal write error on io_uring transport")
            return
        if res < self._inflight_size:  # short send: the rest goes first
            rest: list[bytes] = []
            skip = res
            for b in self._inflight:
                if skip >= len(b):
                    skip -= len(b)
                    continue
                rest.append(b[skip:] if skip else b)
                skip = 0
            self._wbuf[:0] = rest
            self._wbuf_size += self._inflight_size - res
        self._inflight, self._inflight_size = (), 0
        if self._wbuf:
            self._flush()
        self._maybe_resume_protocol()
        if not self._sending():
            self._after_flush()

    def _sending(self) -> bool:
        # A method, not ``self._send_token is None`` inline: after ``self._send_token = None``
        # mypy narrows the attribute to None for the rest of the function, calls that set it
        # (``_flush``, the protocol's ``resume_writing``) notwithstanding, and mypyc then
        # rejects the int it reads ("None object expected").
        return self._send_token is not None

    def _after_flush(self) -> None:
        if self._conn_lost:
            return
        if self._closing:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)
        elif self._eof_written:
            self._shutdown_write()

    def _on_writable(self, res: int, _data: None, _more: bool) -> None:
        self._send_token = None
        if self._conn_lost:
            return
        if res < 0 and res != -errno.ECANCELED:
            self._fatal_error(OSError(-res, os.strerror(-res)), "Fatal write error on io_uring transport")
            return
        self._flush()
        if not self._sending():
            self._on_send(0, None, False)  # nothing was queued: finish a pending close or EOF

    def get_write_buffer_size(self) -> int:
        return self._inflight_size + self._wbuf_size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low
        self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low_water, self._high_water)

    def _maybe_pause_protocol(self) -> None:
        if self._protocol_paused or self.get_write_buffer_size() <= self._high_water:
            return
        self._protocol_paused = True
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._flow_error("protocol.pause_writing() failed", exc)

    def _maybe_resume_protocol(self) -> None:
        if not self._protocol_paused or self.get_write_buffer_size() > self._low_water:
            return
        self._protocol_paused = False
        try:
            self._protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._flow_error("protocol.resume_writing() failed", exc)

    def _flow_error(self, message: str, exc: BaseException) -> None:
        context = {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        self._loop.call_exception_handler(context)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        if self._send_token is None:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._recv_token is not None:
            self._ring.cancel(self._recv_token)
        if self._send_token is None:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if isinstance(exc, OSError) and (isinstance(exc, _QUIET_ERRORS) or exc.errno in _QUIET_ERRNOS):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
            )
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        self._wbuf.clear()
        self._wbuf_size = 0
        self._pending.clear()
        self._closing = True
        if self._recv_token is not None:
            self._ring.cancel(self._recv_token)
        if self._send_token is not None:
            self._ring.cancel(self._send_token)
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            sock, self._sock = self._sock, None
            if sock is not None:
                fd = sock.detach()
                if fd >= 0:
                    if self._ring.closed:
                        os.close(fd)
                    else:
                        self._ring.close_fd(fd)
            server, self._server = self._server, None
            if server is not None:
                server._detach()  # type: ignore[attr-defined]
            # As asyncio's transports do: the protocol usually holds this transport, and a cycle
            # would keep both (and the connection's buffers) until a full collection.
            self._protocol = _CLOSED
            self._data_received = _CLOSED.data_received
