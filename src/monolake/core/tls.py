"""TLS for listeners and upstreams on two backends: stdlib ``ssl`` (OpenSSL) and ``rtls`` (rustls).

``backend = "openssl" | "rustls"`` is chosen per listener and per upstream cluster so
that a defect in one library can be answered by switching config. Both backends hand
the event loop an ``ssl.SSLContext`` (rtls' contexts subclass it), which asyncio's and
uvloop's SSL protocol layers drive through memory BIOs; ``rtls_impl`` has the rustls
specifics and the list of what that backend cannot do.

A TLS listener is served with one base context that hands each handshake the
context of the certificate that serves the requested name (an exact name first, then
a "*.suffix" wildcard, else the first certificate): on OpenSSL from its SNI
callback, on rustls from the ClientHello read before the connection is built. The
same step re-reads the certificate files, at most once a second, when their
modification times change: new handshakes get the new certificate, established
connections keep theirs. A change that cannot be loaded (a half-written file) is
logged and retried; the previous certificate stays in use meanwhile.

ALPN: a listener offers ``ServerTls.alpn`` and an upstream ``UpstreamTls.alpn`` (both
default ["http/1.1"] for HTTP, nothing for tcp and thrift); ``negotiated_protocol(transport)``
says what was agreed.

A failed handshake on a listener (a client without an acceptable certificate where
``client_auth = "required"``, plaintext on a TLS port, a client that rejects our
certificate) is logged as one line with the peer and the reason, rate-limited, and
the alert the TLS library wrote goes out. Neither happens by itself: the loops' SSL layers
(asyncio's, uvloop's) treat a handshake ``SSLError`` as an ``OSError``, log it only in
debug mode and close the socket with the alert still in their memory BIO (the
client saw "Empty reply from server" or a reset). So the listener's SSL object
(``_ListenerObject``; ``rtls_impl.ServerObject`` on rustls) turns a failed handshake into
``HandshakeRefused``, which is not an ``OSError``: every loop
(uvloop, asyncio, io_uring) closes the connection and hands it to the loop's exception
handler together with the socket transport, which knows the peer. ``_RefusalHandler``,
installed on the loop at the first refusal and deferring everything else to the
handler it replaced, writes the alert to the socket and the line to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import msgspec

from ._ratelimit import RateLimitedLog
from .errors import ConfigError, MonolakeError, Source
from .tls_settings import READ_MAX, Certificate, ServerTls, UpstreamTls

log = logging.getLogger("monolake.core.tls")

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
HTTP_ALPN = ("http/1.1",)
"""ALPN offered where ``alpn`` is not set, on http servers and to HTTP upstreams (tcp and thrift: none)."""
RELOAD_CHECK_INTERVAL = 1.0
"""Seconds between checks of the certificate files' modification times."""


def _module(backend: str) -> ModuleType:
    if backend == "openssl":
        return ssl
    import rtls

    return rtls


def negotiated_protocol(transport: Any) -> str | None:
    """The ALPN protocol agreed on a TLS ``transport`` ("h2", "http/1.1"); None without TLS or
    when the peer offered none of ours."""
    obj = transport.get_extra_info("ssl_object")
    return obj.selected_alpn_protocol() if obj is not None else None


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0


class ServerTlsContexts:
    """The SSL contexts of one TLS listener (see the module docstring)."""

    def __init__(self, path: str, cfg: ServerTls, default_alpn: tuple[str, ...] = HTTP_ALPN) -> None:
        self.path = path
        self.cfg = cfg
        self.alpn = list(default_alpn) if cfg.alpn is None else cfg.alpn
        """What ALPN offers: ``cfg.alpn``, else the server kind's default."""
        files = [f for c in cfg.certificates for f in (c.chain, c.key)]
        if cfg.client_ca:
            files.append(cfg.client_ca)
        self._files = files
        self._stamp = [_mtime(f) for f in files]
        self._checked = time.monotonic()
        self.reloads = 0
        self._contexts = self._load_all()
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}
        self._index()
        self.ssl_context: ssl.SSLContext
        """The context the listener is created with; it picks each handshake's certificate."""
        if cfg.backend == "rustls":
            from .rtls_impl import ListenerContext

            self.ssl_context = ListenerContext(self)
        else:
            self.ssl_context = self._new_context(cfg.certificates[0], f"{path}.certificates[0]", listener=True)
            self.ssl_context.sni_callback = self._on_sni
        if cfg.transport == "monolake":
            # read by tls_transport.server_factory: serve this listener with monolake's TLS transport
            self.ssl_context.monolake_transport = cfg.backend  # type: ignore[attr-defined]

    def _new_context(self, cert: Certificate, where: str, *, listener: bool = False) -> ssl.SSLContext:
        cfg = self.cfg
        rustls = cfg.backend == "rustls"
        m = _module(cfg.backend)
        ctx: ssl.SSLContext
        if listener:
            ctx = _ListenerContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.listener_path = self.path
        else:
            ctx = m.SSLContext(m.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = VERSIONS[cfg.min_version]
        ctx.maximum_version = VERSIONS[cfg.max_version]
        if cfg.ciphers:
            try:
                if rustls:
                    from .rtls_impl import set_tls12_ciphers

                    set_tls12_ciphers(ctx, cfg.ciphers)
                else:
                    ctx.set_ciphers(cfg.ciphers)
            except ssl.SSLError:
                raise ConfigError(f"{self.path}.ciphers", f"no cipher matches {cfg.ciphers!r}") from None
        if self.alpn:
            ctx.set_alpn_protocols(self.alpn)
        if cfg.session_tickets is False and not rustls:  # rustls: see rtls_impl
            ctx.options |= ssl.OP_NO_TICKET
            ctx.num_tickets = 0
        if cfg.client_ca:
            try:
                ctx.load_verify_locations(cafile=cfg.client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"{self.path}.client_ca", f"cannot load {cfg.client_ca}: {exc}") from None
        ctx.verify_mode = _CLIENT_AUTH[cfg.client_auth]
        try:
            ctx.load_cert_chain(cert.chain, cert.key)
            if rustls:
                from .rtls_impl import check_server_context

                check_server_context(ctx)
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise ConfigError(where, f"cannot load {cert.chain} with key {cert.key}: {exc}") from None
        return ctx

    def _load_all(self) -> list[ssl.SSLContext]:
        return [self._new_context(c, f"{self.path}.certificates[{i}]") for i, c in enumerate(self.cfg.certificates)]

    def _index(self) -> None:
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        for c, ctx in zip(self.cfg.certificates, self._contexts, strict=True):
            for name in c.server_names:
                name = name.lower()
                if name.startswith("*."):
                    wildcard.setdefault(name[1:], ctx)
                else:
                    exact.setdefault(name, ctx)
        self.exact, self.wildcard = exact, wildcard

    def select(self, server_name: str | None) -> ssl.SSLContext:
        """The context serving ``server_name``: exact, then wildcard, then the default (first)."""
        if server_name:
            name = server_name.lower().rstrip(".")
            ctx = self.exact.get(name)
            if ctx is not None:
                return ctx
            dot = name.find(".")
            if dot > 0:
                ctx = self.wildcard.get(name[dot:])
                if ctx is not None:
                    return ctx
        return self._contexts[0]

    @property
    def by_name(self) -> bool:
        """Whether any certificate is chosen by server name (else every handshake gets the first)."""
        return bool(self.exact or self.wildcard)

    def for_handshake(self, server_name: str | None) -> ssl.SSLContext:
        """``select(server_name)`` after ``check_files()``: the rustls listener's per-handshake step."""
        try:
            self.check_files()
        except Exception:  # a failed check must not fail the handshake
            log.exception("%s: checking the certificate files failed", self.path)
        return self.select(server_name)

    def check_files(self, now: float | None = None) -> bool:
        """Reload the certificates if their files changed (at most once per ``RELOAD_CHECK_INTERVAL``).
        Returns True when new contexts were loaded."""
        now = time.monotonic() if now is None else now
        if now - self._checked < RELOAD_CHECK_INTERVAL:
            return False
        self._checked = now
        stamp = [_mtime(f) for f in self._files]
        if stamp == self._stamp:
            return False
        try:
            contexts = self._load_all()
        except ConfigError as exc:
            log.warning("%s: certificate files changed but cannot be loaded (kept the old ones): %s", self.path, exc)
            return False
        self._stamp = stamp
        self._contexts = contexts
        self._index()
        self.reloads += 1
        log.info("%s: certificates reloaded", self.path)
        return True

    def adopt(self, new: ServerTlsContexts) -> None:
        """Serve ``new``'s certificates from the next handshake (a reload). The listener's
        other settings (versions, ciphers, client authentication) stay until it is re-created on
        OpenSSL; on rustls they come with the certificates. A changed backend is refused (logged)."""
        if new.cfg.backend != self.cfg.backend:
            log.warning(
                "%s.backend: switching %r to %r takes effect on a new listener (restart or change the address)",
                self.path,
                self.cfg.backend,
                new.cfg.backend,
            )
            return
        self.cfg = new.cfg
        self._files, self._stamp, self._checked = new._files, new._stamp, new._checked
        self._contexts, self.exact, self.wildcard = new._contexts, new.exact, new.wildcard

    def refused(self, exc: ssl.SSLError, alert: bytes) -> HandshakeRefused:
        """``handshake_refused`` for this listener (what its rustls SSL objects raise)."""
        return handshake_refused(self.path, exc, alert)

    def _on_sni(self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        try:
            self.check_files()
            sock.context = self.select(server_name)
        except Exception:  # an exception here would abort the handshake with an opaque alert
            log.exception("%s: selecting a certificate for %r failed", self.path, server_name)


# -- failed handshakes on listeners ---------------------------------------------------------

_CLIENT_CERT_REASONS = frozenset({"PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED"})
_PLAIN_REASONS = {
    "HTTP_REQUEST": "plain HTTP sent to a TLS port",
    "WRONG_VERSION_NUMBER": "not TLS (wrong version number)",
}
_refusals = RateLimitedLog(log, "tls: refused client certificates", level=logging.WARNING)
_failures = RateLimitedLog(log, "tls: failed handshakes", level=logging.INFO)


class HandshakeRefused(MonolakeError):
    """A TLS listener's handshake failed (raised out of the loop's SSL layer, see the module
    docstring). ``alert`` is what the TLS library wrote for the peer; ``client_cert`` says the
    client's certificate (missing or not trusted) was the reason."""

    source = Source.DOWNSTREAM

    def __init__(self, listener: str, reason: str, alert: bytes, *, client_cert: bool) -> None:
        super().__init__(f"{listener}: tls handshake refused: {reason}")
        self.listener = listener
        self.reason = reason
        self.alert = alert
        self.client_cert = client_cert


def handshake_refused(listener: str, exc: ssl.SSLError, alert: bytes) -> HandshakeRefused:
    """``exc`` (a failed handshake's error) as ``HandshakeRefused`` carrying ``alert`` (what the
    TLS library wrote for the peer); installs the reporting handler on the running loop first
    (without a running loop the caller gets the exception and nothing is logged)."""
    with contextlib.suppress(RuntimeError):
        _install(asyncio.get_running_loop())
    code = exc.reason or ""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        reason = f"certificate verify failed: {exc.verify_message}"
    elif code in _PLAIN_REASONS:
        reason = _PLAIN_REASONS[code]
    elif code:
        reason = code.lower().replace("_", " ")
    else:
        reason = str(exc)
    return HandshakeRefused(listener, reason, alert, client_cert=code in _CLIENT_CERT_REASONS)


class _CappedObject(ssl.SSLObject):
    """An OpenSSL SSL object whose buffer-less ``read`` asks for at most ``READ_MAX`` bytes.

    uvloop's SSL layer reads for a ``data_received`` protocol with ``read(256 KiB)``: OpenSSL
    allocates a bytes object of the size asked and shrinks it to what it got, and 256 KiB is
    above glibc's mmap threshold, so every read paid mmap, a page fault, mremap and munmap
    (~12 µs against ~1.7 µs at 64 KiB, measured). A record carries at most 16 KiB and the
    layer reads again while data is pending, so the cap loses nothing."""

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        # Straight to the C object, as SSLObject.read does: no frame added per read.
        sslobj = self._sslobj  # type: ignore[attr-defined]
        if buffer is not None:
            return sslobj.read(len, buffer)
        return sslobj.read(len if len < READ_MAX else READ_MAX)


class _ListenerObject(_CappedObject):
    """The SSL object of an OpenSSL listener's connection: a failed handshake raises
    ``HandshakeRefused`` instead of ``ssl.SSLError``. The loop calls ``do_handshake`` a few
    times per connection; the happy path costs one extra call."""

    listener_path = "?"
    outgoing: ssl.MemoryBIO

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            raise handshake_refused(self.listener_path, exc, self.outgoing.read()) from None


class _ListenerContext(ssl.SSLContext):
    """An OpenSSL listener's context: its SSL objects are ``_ListenerObject``."""

    listener_path = "?"
    sslobject_class = _ListenerObject

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> _ListenerObject:
        obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        assert isinstance(obj, _ListenerObject)
        obj.listener_path = self.listener_path
        obj.outgoing = outgoing
        return obj


_Handler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class _RefusalHandler:
    """A loop exception handler that reports ``HandshakeRefused`` and passes anything else on."""

    def __init__(self, previous: _Handler | None) -> None:
        self.previous = previous

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not isinstance(exc, HandshakeRefused):
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        transport = context.get("transport")
        peer = transport.get_extra_info("peername") if transport is not None else None
        if exc.alert and transport is not None and not transport.get_write_buffer_size():
            # The transport is closing (its buffer is dropped) but its socket is still open
            # until the next loop iteration: the alert goes straight to the socket (nothing is
            # queued before it: checked above).
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    os.write(sock.fileno(), exc.alert)
        report_refusal(loop, exc, peer)


_flushing = False


def report_refusal(loop: asyncio.AbstractEventLoop, exc: HandshakeRefused, peer: Any) -> None:
    """The rate-limited log line of a refused handshake from ``peer`` (its alert is the caller's)."""
    global _flushing
    lines = _refusals if exc.client_cert else _failures
    verb = "refused" if exc.client_cert else "failed"
    if (
        not lines.log("tls handshake %s from %s: %s (%s)", verb, _peer_text(peer), exc.reason, exc.listener)
        and not _flushing
    ):
        # a flood that stops still gets its "N more suppressed" line, about a window later
        _flushing = True
        loop.call_later(lines.interval, _flush_refusals)


def _flush_refusals() -> None:
    global _flushing
    _flushing = False
    _refusals.flush()
    _failures.flush()


def _install(loop: asyncio.AbstractEventLoop) -> None:
    current = loop.get_exception_handler()
    if not isinstance(current, _RefusalHandler):
        loop.set_exception_handler(_RefusalHandler(current))


def _peer_text(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
    return str(addr) if addr else "?"


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How the pool wraps connections to an https endpoint."""

    context: ssl.SSLContext
    sni: str | None
    """Server name to send and verify; None: the endpoint's host."""
    fingerprint: str
    """Identifies the settings (part of the pool key: different settings never share a connection)."""


def client_tls(path: str, cfg: UpstreamTls | None, default_alpn: tuple[str, ...] = HTTP_ALPN) -> ClientTls:
    """The client context of ``cfg`` (None: system roots, verification on); ALPN offers
    ``cfg.alpn``, else ``default_alpn`` (none for tcp and thrift upstreams). Raises ConfigError."""
    if cfg is None:
        cfg = UpstreamTls()
    if cfg.alpn is None:
        cfg = msgspec.structs.replace(cfg, alpn=list(default_alpn))
    try:
        if cfg.backend == "rustls":
            from .rtls_impl import upstream_context

            ctx = upstream_context(cfg.ca)
        else:
            ctx = ssl.create_default_context(cafile=cfg.ca)
            ctx.sslobject_class = _CappedObject
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise ConfigError(f"{path}.ca", f"cannot load {cfg.ca}: {exc}") from None
    if cfg.min_version is not None:
        ctx.minimum_version = VERSIONS[cfg.min_version]
    if cfg.max_version is not None:
        ctx.maximum_version = VERSIONS[cfg.max_version]
    if cfg.alpn:
        ctx.set_alpn_protocols(cfg.alpn)
    if not cfg.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        log.warning("%s.verify = false: upstream certificates and host names are NOT verified", path)
    if cfg.client_cert:
        try:
            ctx.load_cert_chain(cfg.client_cert, cfg.client_key)
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise ConfigError(f"{path}.client_cert", f"cannot load {cfg.client_cert}: {exc}") from None
    fingerprint = hashlib.sha1(msgspec.json.encode(cfg), usedforsecurity=False).hexdigest()[:12]
    return ClientTls(ctx, cfg.sni, fingerprint)
