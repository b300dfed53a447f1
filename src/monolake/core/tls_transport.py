"""TLS on listeners driven by monolake over the loop's plain socket transport.

The loops' own TLS layers (uvloop's and asyncio's SSL protocol, io_uring reuses asyncio's)
cost ~5 µs (OpenSSL) to ~8 µs (rustls) per request above the record layer: Python-level
``SSLObject`` wrapper frames (read, pending, write), write backlogs, flow-control checks and
per-read buffer bookkeeping (bench/results/https-tlsx-2026-12-07.md). ``TlsServer`` replaces
them on listeners: it is the socket transport's protocol and the app protocol's transport.
Once the handshake is done, a read is one ``incoming.write`` and one C ``read`` per record on
OpenSSL (``_ssl._SSLSocket``, no stdlib frame) or one rustls ``decrypt_incoming`` call on
rustls (rtls' Rust connection, without its Python ``TLSObject`` and its locked ``MemoryBIO``);
a write is one encrypt and one socket write.

The handshake runs through the listener's SSL object as before (``tls._ListenerObject``,
``rtls_impl.ServerObject``), so SNI certificate selection, certificate reload, ALPN and
client authentication are unchanged, and a failed handshake's ``HandshakeRefused`` is
logged (``tls.report_refusal``) with its alert written before the socket closes.

Kept from the loops' layers: the handshake timeout, ``get_extra_info`` ("ssl_object",
"sslcontext", "peercert", "cipher", "compression", else the socket transport's: "peername",
"socket", ...), close_notify on ``close()``, the peer's close_notify or FIN as
``eof_received`` (as there, a TLS transport has no half-close: ``can_write_eof()`` is
False and the connection closes unless the protocol keeps it), flow control both ways
(``pause_reading`` leaves undelivered records in place until ``resume_reading``; the socket
transport's ``pause_writing`` reaches the protocol), ``set_protocol``, BufferedProtocol apps.

Chosen per listener by ``ServerTls.transport`` ("monolake", the default, or "loop").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any, Final

from ._buffered import feed
from .tls import HandshakeRefused, report_refusal
from .tls_settings import READ_MAX

log = logging.getLogger("monolake.core.tls")

HANDSHAKE_TIMEOUT = 60.0
"""Seconds a client has to complete the handshake (the loops' default ``ssl_handshake_timeout``)."""

_HANDSHAKE = 0
_OPEN = 1
_CLOSING = 2
_CLOSED = 3


_GONE: Final = asyncio.Protocol()
"""A closed connection's app: the real one is let go of (see ``connection_lost``)."""


def _drop(data: bytes) -> None:
    """Where a closed connection's plaintext goes: nowhere (its app was let go of)."""


class TlsServer(asyncio.Protocol, asyncio.Transport):
    """One TLS connection of a listener: the socket transport's protocol, the app's transport.
    Subclasses drive the record layer after the handshake (``_records``, ``write``, ``_shutdown``)."""

    def __init__(self, context: ssl.SSLContext, app: asyncio.BaseProtocol, handshake_timeout: float) -> None:
        self._context = context
        self._app = app
        self._timeout = handshake_timeout
        self._raw: Any = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._state = _HANDSHAKE
        self._paused = False  # the app paused reading
        self._connected = False  # the app's connection_made ran (so its connection_lost is due)
        self._writes_paused = False  # the app was told pause_writing
        self._eof_due = False  # the peer's FIN came while records were still held (paused reading)
        self._eof_told = False  # the app had its eof_received
        self._error: Exception | None = None
        self._extra: dict[str, Any] = {}
        self._deliver: Callable[[bytes], None] = self._deliver_to(app)

    def _deliver_to(self, app: asyncio.BaseProtocol) -> Callable[[bytes], None]:
        if isinstance(app, asyncio.BufferedProtocol):
            return lambda data: feed(app, data)
        return app.data_received  # type: ignore[attr-defined,no-any-return]

    # -- the socket transport's protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport
        # kept after the connection is gone, as the loops' transports keep theirs
        self._extra = {n: transport.get_extra_info(n) for n in ("peername", "sockname", "socket")}
        self._obj = self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        # Subclasses serve the open state themselves (one frame less per read) and call this otherwise.
        state = self._state
        if state == _OPEN:
            self._records(data)
        elif state == _HANDSHAKE:
            self._incoming.write(data)
            self._handshake()
        # closing or closed: what the peer sends after our close_notify is dropped

    def eof_received(self) -> bool | None:
        if self._state == _OPEN:
            if self._paused or self._has_buffered():
                # A loop whose read was under way when reading paused (io_uring) can see the FIN
                # before the app took the records held: the end is told after them, on resume.
                self._eof_due = True
                return True
            self._peer_eof()
            return True  # closed by _peer_eof unless the app keeps the connection
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._state = _CLOSED
        if self._connected:
            self._connected = False
            self._raw = None
            self._app.connection_lost(exc if exc is not None else self._error)
        self._raw = None
        # The app keeps its transport (this object): let go of it, so the pair is freed by reference
        # counting when the connection closes, not by a later cyclic GC.
        self._app = _GONE
        self._deliver = _drop

    def pause_writing(self) -> None:
        if self._connected and not self._writes_paused:
            self._writes_paused = True
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._writes_paused:
            self._writes_paused = False
            if self._connected:
                self._app.resume_writing()

    # -- the handshake -----------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except HandshakeRefused as exc:
            self._refused(exc)
            return
        except Exception as exc:  # SSLError on a context that is not a listener's, OSError
            log.debug("tls handshake failed from %s: %r", self._extra.get("peername"), exc)
            self._flush()
            self._state = _CLOSED
            self._raw.close()
            return
        self._flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._state = _OPEN
        self._opened()
        self._connected = True
        self._app.connection_made(self)
        if self._state == _OPEN and not self._paused:
            self._records(b"")  # what came with the last handshake flight

    def _refused(self, exc: HandshakeRefused) -> None:
        raw = self._raw
        self._state = _CLOSED
        if exc.alert:
            raw.write(exc.alert)
        raw.close()
        report_refusal(asyncio.get_running_loop(), exc, self._extra.get("peername"))

    def _timed_out(self) -> None:
        self._timer = None
        if self._state == _HANDSHAKE and self._raw is not None:
            log.debug("tls handshake from %s timed out", self._extra.get("peername"))
            self._state = _CLOSED
            self._raw.abort()

    def _flush(self) -> None:
        out = self._outgoing
        if out.pending:
            self._raw.write(out.read())

    # -- the record layer (subclasses) ---------------------------------------------------

    def _opened(self) -> None:
        """The handshake is done: take what the fast path needs from the SSL object."""

    def _records(self, data: bytes) -> None:
        """Decrypt ``data`` (b"": what is buffered) and hand the plaintext to the app."""
        raise NotImplementedError

    def _has_buffered(self) -> bool:
        raise NotImplementedError

    def _shutdown(self) -> None:
        """Put our close_notify on the wire."""
        raise NotImplementedError

    def _peer_eof(self) -> None:
        if self._eof_told:  # close_notify, then the FIN
            return
        self._eof_told = True
        if self._app.eof_received():  # type: ignore[attr-defined]
            return
        self.close()

    def _fatal(self, exc: Exception) -> None:
        log.debug("tls error from %s: %r", self._extra.get("peername"), exc)
        self._error = exc  # the app's connection_lost gets it
        self._flush()  # the alert
        self._state = _CLOSING
        self._raw.close()

    # -- the app's transport ---------------------------------------------------------

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a TLS connection has no half-close")

    def close(self) -> None:
        if self._state != _OPEN:
            return
        self._state = _CLOSING
        try:
            self._shutdown()
        except Exception as exc:  # a broken connection cannot say goodbye
            log.debug("tls close_notify not sent: %r", exc)
        self._raw.close()

    def abort(self) -> None:
        if self._state == _CLOSED or self._raw is None:
            return
        self._state = _CLOSING
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._state != _OPEN or self._raw is None or bool(self._raw.is_closing())

    def pause_reading(self) -> None:
        if self._paused:
            return
        self._paused = True
        if self._raw is not None:
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._raw is None or self._state != _OPEN:
            return
        self._raw.resume_reading()
        # Always look again (resuming is rare): besides records held, the library may hold the
        # peer's close_notify, read together with the last record the app took before it paused.
        asyncio.get_running_loop().call_soon(self._resume_records)

    def _resume_records(self) -> None:
        if self._state == _OPEN and not self._paused:
            self._records(b"")
            if self._eof_due and self._state == _OPEN and not self._paused and not self._has_buffered():
                self._eof_due = False
                self._peer_eof()

    def is_reading(self) -> bool:
        return not self._paused and self._raw is not None and not self._raw.is_closing()

    def get_write_buffer_size(self) -> int:
        return int(self._raw.get_write_buffer_size()) if self._raw is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()  # type: ignore[no-any-return]

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = protocol
        self._deliver = self._deliver_to(protocol)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        obj = self._obj
        if name == "ssl_object":
            return obj
        if name == "sslcontext":
            return self._context
        if name == "peercert":
            return obj.getpeercert() if obj is not None and self._state != _HANDSHAKE else default
        if name == "cipher":
            return obj.cipher() if obj is not None else default
        if name == "compression":
            return obj.compression() if obj is not None else default
        if name in self._extra:
            return self._extra[name]
        raw = self._raw
        return raw.get_extra_info(name, default) if raw is not None else default


class OpenSslServer(TlsServer):
    """The OpenSSL record layer: the C ``_ssl._SSLSocket`` under ``ssl.SSLObject``, called directly."""

    _c: Any = None

    def _opened(self) -> None:
        self._c = self._obj._sslobj

    def _records(self, data: bytes) -> None:
        self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self._state != _OPEN:
            TlsServer.data_received(self, data)
            return
        incoming = self._incoming
        if data:
            incoming.write(data)
            if self._paused:  # a read already under way when reading was paused (io_uring): kept
                return
        c = self._c
        while True:
            try:
                plain = c.read(READ_MAX)
            except ssl.SSLWantReadError:
                break  # a record not yet whole
            except ssl.SSLZeroReturnError:
                plain = b""
            except ssl.SSLError as exc:
                self._fatal(exc)
                return
            if not plain:  # the peer's close_notify
                self._flush()
                self._peer_eof()
                return
            self._deliver(plain)
            if self._state != _OPEN or self._paused:
                return
            if not incoming.pending and not c.pending():
                break
        if self._outgoing.pending:  # e.g. a KeyUpdate's answer
            self._raw.write(self._outgoing.read())

    def _has_buffered(self) -> bool:
        return bool(self._incoming.pending or (self._c is not None and self._c.pending()))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != _OPEN or not data:
            return
        try:
            self._c.write(data)  # a memory BIO takes it all
        except ssl.SSLError as exc:
            self._fatal(exc)
            return
        self._raw.write(self._outgoing.read())

    def _shutdown(self) -> None:
        with contextlib.suppress(ssl.SSLError):  # want-read: ours is out, the peer's not awaited
            self._c.shutdown()
        self._flush()


class RustlsServer(TlsServer):
    """The rustls record layer: rtls' Rust connection object, without its Python ``TLSObject``."""

    _conn: Any = None
    _rest = b""  # ciphertext rustls did not take yet (its plaintext buffer was full)

    def _opened(self) -> None:
        self._conn = self._obj._conn
        self._rest = self._incoming.read()  # what came after the handshake's last record

    def _records(self, data: bytes) -> None:
        self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self._state != _OPEN:
            TlsServer.data_received(self, data)
            return
        conn = self._conn
        rest = self._rest
        if rest:
            data = rest + data
            self._rest = b""
        if self._paused:  # a read already under way when reading was paused (io_uring): kept
            self._rest = data
            return
        while True:
            try:
                if data:
                    plain, data = conn.decrypt_incoming(data, READ_MAX)
                else:
                    plain = conn.read_plaintext(READ_MAX)
            except ssl.SSLError as exc:
                self._flush_conn()
                self._fatal(exc)
                return
            if conn.wants_write():  # alerts, KeyUpdate answers
                self._flush_conn()
            if plain:
                self._deliver(plain)
                if self._state != _OPEN or self._paused:
                    if data:
                        self._rest = bytes(data)
                    return
                if data or conn.pending():
                    continue
            elif data:
                self._rest = bytes(data)  # a record not yet whole
                return
            if not conn.wants_read() and not conn.pending():  # the peer's close_notify
                self._peer_eof()
            return

    def _has_buffered(self) -> bool:
        return bool(self._rest or (self._conn is not None and self._conn.pending()))

    def _flush_conn(self) -> None:
        conn = self._conn
        out = b""
        while conn.wants_write():
            chunk = conn.write_tls()
            if not chunk:
                break
            out += chunk
        if out and self._raw is not None:
            self._raw.write(out)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != _OPEN or not data:
            return
        conn = self._conn
        if type(data) is not bytes:
            data = bytes(data)
        try:
            n = conn.write_plaintext(data)
            while True:
                out = conn.write_tls()
                while conn.wants_write():
                    out += conn.write_tls()
                self._raw.write(out)
                if n >= len(data):
                    return
                data = data[n:]  # rustls' buffer limit took a part
                n = conn.write_plaintext(data)
        except ssl.SSLError as exc:
            self._fatal(exc)

    def _shutdown(self) -> None:
        self._conn.send_close_notify()
        self._flush_conn()


def server_factory(
    context: ssl.SSLContext | None,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> Callable[[], asyncio.BaseProtocol] | None:
    """The protocol factory serving ``protocol_factory``'s protocols over TLS with ``context``
    (create the server without ``ssl``), or None when ``context`` wants the loop's TLS layer
    (one not built by ``tls.ServerTlsContexts`` with ``transport = "monolake"``)."""
    kind = getattr(context, "monolake_transport", None) if context is not None else None
    if kind is None or context is None:
        return None
    cls: type[TlsServer] = RustlsServer if kind == "rustls" else OpenSslServer
    ctx = context

    def factory() -> asyncio.BaseProtocol:
        return cls(ctx, protocol_factory(), handshake_timeout)

    return factory
