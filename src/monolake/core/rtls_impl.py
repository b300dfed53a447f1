"""The rustls TLS backend, through ``rtls`` (a drop-in ``ssl`` replacement backed by rustls).

Theory of operation. ``rtls.SSLContext`` subclasses ``ssl.SSLContext`` and its
``wrap_bio`` returns a sans-I/O object with the ``ssl.SSLObject`` interface, so both
asyncio's and uvloop's SSL protocol layers (``create_server(ssl=...)``,
``create_connection(ssl=...)``) drive it unchanged: the event loop moves bytes
between the socket and the memory BIOs, rustls does the TLS. Upstream (client)
contexts need nothing more than ``ssl``'s calls on the ``rtls`` module.

Listeners need one addition. rtls builds a whole rustls ``ServerConfig`` for every
connection, from one certificate, when ``wrap_bio`` is called, and never calls
``sni_callback``. ``ListenerContext.wrap_bio`` therefore returns a ``ServerObject``
that defers building its connection to the first ``do_handshake``: it reads the
ClientHello from the incoming BIO (``proto.tls_hello``), asks the listener's
``ServerTlsContexts`` for the certificate's context (which also notices changed
certificate files), puts the bytes back and builds the connection from that context.
A listener with a single certificate skips reading the name. Its ``read`` also reports the
client's close_notify as the end of the stream, which rtls' own ``read`` does not.

What rtls (checked with 2026.9.21, rustls 0.23) cannot do on the server side, and the
config therefore refuses for ``backend = "rustls"`` (config/_load.py): verify client
certificates (its ServerConfig is built ``with_no_client_auth``) and resume sessions
(a fresh ServerConfig per connection has a fresh session cache; rustls still sends
TLS 1.3 tickets that no later connection can redeem). ``ServerObject`` uses rtls'
private ``TLSObject`` attributes ``_conn``, ``_context``, ``_incoming`` and
``_init_connection``; tests/e2e/test_tls.py runs every listener test on this backend,
so an rtls release that changes them fails there first.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any, Protocol

import rtls
from rtls._object import TLSObject

from .proto.tls_hello import server_name
from .tls_settings import READ_MAX


class ServerTlsContexts(Protocol):
    """What a rustls listener asks of ``tls.ServerTlsContexts`` (typed here so this module, which
    ``tls`` loads lazily, need not import it back)."""

    @property
    def by_name(self) -> bool: ...

    def for_handshake(self, server_name: str | None) -> ssl.SSLContext: ...

    def refused(self, exc: ssl.SSLError, alert: bytes) -> Exception: ...


TLS13_SUITES = ["TLS13_AES_128_GCM_SHA256", "TLS13_AES_256_GCM_SHA384", "TLS13_CHACHA20_POLY1305_SHA256"]
"""rustls' TLS 1.3 suites; ``ciphers`` restricts TLS 1.2 only, as with OpenSSL."""


def set_tls12_ciphers(ctx: Any, ciphers: str) -> None:
    """Restrict TLS 1.2 to the suites of the OpenSSL cipher string ``ciphers``; TLS 1.3 keeps
    all of rustls' suites. Raises ``ssl.SSLError`` when no suite matches."""
    from rtls._ciphers import parse_cipher_string

    chosen = [name for name in parse_cipher_string(ciphers) if not name.startswith("TLS13_")]
    if not chosen:
        raise rtls.SSLError(1, f"no TLS 1.2 cipher suite rustls supports matches {ciphers!r}")
    ctx._get_builder().set_cipher_suites(chosen + TLS13_SUITES)


def check_server_context(ctx: ssl.SSLContext) -> None:
    """Build a connection from ``ctx`` once, as a handshake would: rtls checks that the
    key matches the certificate only then. Raises ``ssl.SSLError``."""
    ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)


class ListenerContext(rtls.SSLContext):
    """The context a rustls listener is created with: it chooses each handshake's certificate."""

    def __new__(cls, owner: ServerTlsContexts) -> ListenerContext:
        return super().__new__(cls, rtls.PROTOCOL_TLS_SERVER)  # type: ignore[return-value]

    def __init__(self, owner: ServerTlsContexts) -> None:
        super().__init__(rtls.PROTOCOL_TLS_SERVER)
        self.owner = owner

    def wrap_bio(  # type: ignore[override]
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> ServerObject:
        if not server_side:
            raise ValueError("a listener context serves the server side only")
        return ServerObject(self, incoming, outgoing)


class ServerObject(TLSObject):
    """A server-side rtls object whose connection is built once the ClientHello has arrived."""

    def __init__(self, listener: ListenerContext, incoming: Any, outgoing: Any) -> None:
        self._listener = listener
        self._hello = b""
        self._eof_read = False
        super().__init__(listener, incoming, outgoing, server_side=True)

    def _init_connection(self) -> None:
        """Deferred to ``do_handshake`` (the certificate depends on the ClientHello)."""

    def do_handshake(self) -> None:
        """As rtls' ``do_handshake``; a failed handshake raises ``tls.HandshakeRefused`` (logged
        with the peer and its alert sent, see ``tls``), as on OpenSSL listeners."""
        try:
            if self._conn is None:
                self._start()
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            with contextlib.suppress(Exception):  # rustls may still hold the alert
                self._flush_outgoing()
            raise self._listener.owner.refused(exc, self._outgoing.read()) from None

    def _peer_closed(self) -> bool:
        """The client's close_notify has been read (after it rustls no longer wants to read)."""
        conn = self._conn
        return conn is not None and not conn.is_handshaking() and not conn.wants_read() and not conn.pending()

    def read(self, n: int = -1, buffer: bytearray | None = None) -> bytes | int:
        """As rtls' ``read``, but the client's close_notify reads as the end of the stream (b"" or
        0, as with ``ssl.SSLObject``), where rtls says "want read" forever. The loop's TLS layer
        then calls ``eof_received`` and shuts down. A read without a buffer asks for at most
        ``tls_settings.READ_MAX`` (uvloop asks for 256 KiB, which rtls allocates before decrypting)."""
        try:
            return super().read(n if buffer is not None or 0 < n <= READ_MAX else READ_MAX, buffer)
        except rtls.SSLWantReadError:
            if self._peer_closed():
                self._eof_read = True
                return 0 if buffer is not None else b""
            raise

    def pending(self) -> int:
        """As rtls' ``pending``, plus 1 while a close_notify has not been read as the end of the
        stream: rtls decrypts a close_notify together with the data before it, and uvloop reads
        only while the incoming BIO or ``pending()`` says there is more."""
        n: int = super().pending()
        if n or self._eof_read or not self._peer_closed():
            return n
        return 1

    def _start(self) -> None:
        owner = self._listener.owner
        name = None
        if owner.by_name:
            self._hello += self._incoming.read()
            complete, name = server_name(self._hello)
            if not complete:
                if self._incoming.eof:
                    raise rtls.SSLEOFError("EOF before a complete ClientHello")
                raise rtls.SSLWantReadError(rtls.SSL_ERROR_WANT_READ, "the ClientHello is incomplete")
            self._incoming.write(self._hello)
            self._hello = b""
        ctx: Any = owner.for_handshake(name)
        self._context = ctx
        self._conn = ctx._get_builder().build_server_connection()


# -- upstreams --------------------------------------------------------------------------


class ClientObject(TLSObject):
    """A client-side rtls object that reads the server's close_notify as the end of the stream,
    as ``ServerObject`` does the client's. Without it the relay sees the end only at the TCP
    FIN, which a server waiting for our close_notify in turn sends late (asyncio: after its
    30 s ``ssl_shutdown_timeout``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._eof_read = False
        super().__init__(*args, **kwargs)

    def _peer_closed(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.is_handshaking() and not conn.wants_read() and not conn.pending()

    def read(self, n: int = -1, buffer: bytearray | None = None) -> bytes | int:
        try:
            return super().read(n if buffer is not None or 0 < n <= READ_MAX else READ_MAX, buffer)
        except rtls.SSLWantReadError:
            if self._peer_closed():
                self._eof_read = True
                return 0 if buffer is not None else b""
            raise

    def pending(self) -> int:
        n: int = super().pending()
        if n or self._eof_read or not self._peer_closed():
            return n
        return 1


class UpstreamContext(rtls.SSLContext):
    """rtls' client context, with ``ClientObject`` connections."""

    def wrap_bio(  # type: ignore[override]
        self, incoming: Any, outgoing: Any, server_side: bool = False, server_hostname: str | None = None
    ) -> ClientObject:
        return ClientObject(self, incoming, outgoing, server_side=server_side, server_hostname=server_hostname)


def upstream_context(cafile: str | None) -> ssl.SSLContext:
    """As ``rtls.create_default_context(cafile=cafile)``, built as an ``UpstreamContext``.
    Raises as ``load_verify_locations`` does."""
    ctx = UpstreamContext(rtls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    if cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.load_default_certs()
    return ctx
