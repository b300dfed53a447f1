"""The L4 (TCP/Unix) relay server, and the PROXY header reader listeners share.

Theory of operation. Each accepted connection is an ``L4Connection``. It picks an
endpoint with the cluster's balancer (keyed by the client IP), connects within the
cluster's ``connect_timeout`` (on failure: one log line naming server, client and
endpoint, and the client connection is closed), optionally sends a PROXY header
upstream, then relays bytes both ways until both directions have ended. Bytes the
client sends while we connect are kept (up to a limit; then its reading pauses)
and written first.

The bytes move through ``Relay`` (``_relay.py``): the event loop path, and the
splice path (Linux, ``splice = true``) once a connection has relayed
``splice_after`` bytes (1 MiB by default); the reasons for the threshold are there.
Short connections stay on the loop path; bulk ones move over.

Idle timeout: one sweep per server (not a timer per connection) closes
connections that moved no byte either way for ``idle_timeout`` seconds. Drain:
the runtime closes the listener; connections in flight continue until done or
until ``runtime.drain_timeout``, then ``close`` aborts them.

PROXY protocol accept (``ProxyHeaderReader``): a listener configured for it
reads the header first (within ``header_timeout``), then hands the transport,
the header and the bytes after it to the server's real protocol with
``transport.set_protocol``. A malformed or missing header is logged and the
connection closed. HTTP listeners use the same reader (see proxy/_l4_app.py).

Hooks: a server built with ``hooks`` (the proxy's tcp filters) asks ``hooks.allow`` in the
connect task before an endpoint is picked (False: the client connection is closed, outcome
"refused"), and tells ``hooks.closed`` the connection's ``ConnectionStats`` once it ended.
Without hooks neither costs anything (one ``is None`` test per connection).

TLS: a listener with ``tls`` is served by the loop's TLS transport (certificate by SNI,
``monolake.core.tls``); endpoints of a cluster with ``tls`` (or https://) are connected with
TLS, a failed handshake being a connect failure. A TLS side never splices (its socket
carries ciphertext), and has no half-close on these loops: an EOF that would be a
half-close ends the relay once what is buffered both ways is flushed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..address import Endpoint
from ..errors import Overloaded, ProtocolError
from ..proto.http1 import Headers
from ..proto.proxy_protocol import Address, Family, ProxyHeader, build_v1, build_v2, detect, parse
from ..service import Context
from ._lifecycle import Abortable, IdleConnectionServer
from ._relay import SPLICE_AVAILABLE, Relay
from ._settings import StreamSettings as ServerConfig

if TYPE_CHECKING:
    from ..tls import ServerTlsContexts

log = logging.getLogger("monolake.l4")


class BalancerLike(Protocol):
    def pick(self, req: Any) -> Endpoint: ...

    def started(self, ep: Endpoint) -> None: ...

    def finished(self, ep: Endpoint) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionStats:
    """What an ended L4 connection did (given to ``ConnectionHooks.closed``)."""

    bytes_up: int
    """Bytes read from the client (relayed upstream unless the connection never got there)."""
    bytes_down: int
    """Bytes read from the upstream (relayed to the client)."""
    duration: float
    """Seconds from accept to close."""
    endpoint: str | None
    """The endpoint it was relayed to (None: refused, or the client left first)."""
    outcome: str
    """"ok" (it reached its upstream), "connect_error", "refused" (by a hook), or "closed" (the client
    left while a hook ran)."""


class ConnectionHooks(Protocol):
    """Per-connection calls an L4 server makes when it has them (the proxy's tcp filters)."""

    async def allow(self, peer: str, ctx: Context) -> bool:
        """Whether to relay this client's connection; ``ctx`` stays with the connection."""
        ...

    def closed(self, ctx: Context, stats: ConnectionStats) -> None:
        """The connection ended (must not raise, must not block)."""
        ...


class L4Upstream:
    """What an L4 server needs of its cluster: a balancer, a connect timeout, PROXY sending."""

    __slots__ = ("balancer", "connect_timeout", "keep", "name", "send_proxy_protocol")

    def __init__(
        self,
        name: str,
        balancer: BalancerLike,
        *,
        connect_timeout: float,
        send_proxy_protocol: Literal["off", "v1", "v2"] = "off",
    ) -> None:
        self.name = name
        self.balancer = balancer
        self.connect_timeout = connect_timeout
        self.send_proxy_protocol = send_proxy_protocol
        self.keep: object = None
        """What keeps ``balancer`` current while this upstream lives (a discovery follower)."""


class PickKey:
    """Request-shaped key for ``Balancer.pick``: ``ctx.peer`` is the client IP, no headers."""

    __slots__ = ("ctx", "headers", "peer")

    _EMPTY = Headers([])

    def __init__(self, peer: str) -> None:
        self.ctx = self
        self.peer = peer
        self.headers = self._EMPTY


def _addr_text(addr: Any) -> str:
    if isinstance(addr, tuple):
        host = addr[0]
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return f"unix:{addr}" if addr else "unix"


def _as_address(addr: Any) -> Address:
    if isinstance(addr, tuple):
        return (str(addr[0]), int(addr[1]))
    if isinstance(addr, str | bytes):
        return addr.decode("utf-8", "surrogateescape") if isinstance(addr, bytes) else addr
    return None


# -- PROXY header reading (shared with HTTP listeners) ---------------------------------

Handoff = Callable[[asyncio.BaseTransport, ProxyHeader | None, bytes], None]
"""Takes over a connection once its PROXY header is read: (transport, header or None, bytes after it)."""


class ProxyHeaderReader(asyncio.Protocol):
    """The first protocol of a connection on a PROXY-protocol listener.

    ``mode`` is "v1", "v2" (that version required), or "optional" (either, or
    none: the first bytes decide). Waits at most ``timeout`` seconds for the
    header; a malformed, missing or late header is logged and the connection closed.
    """

    __slots__ = ("_buf", "_done", "_handoff", "_optional", "_pending", "_server", "_timer", "_versions", "transport")

    def __init__(self, mode: str, timeout: float, server: str, handoff: Handoff, pending: set[Abortable]):
        self._versions: tuple[int, ...] = (1,) if mode == "v1" else (2,) if mode == "v2" else (1, 2)
        self._optional = mode == "optional"
        self._server = server
        self._handoff = handoff
        self._pending = pending
        self._buf = b""
        self._done = False
        self.transport: Any = None
        self._timer = asyncio.get_running_loop().call_later(timeout, self._timed_out)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transports are no asyncio.Transport subclasses
        self._pending.add(self)

    def data_received(self, data: bytes) -> None:
        buf = self._buf = self._buf + data if self._buf else data
        try:
            if self._optional:
                kind = detect(buf)
                if kind is None:
                    return
                if kind == 0:
                    self._hand_over(None, buf)
                    return
            hdr, n = parse(buf, versions=self._versions)
        except ProtocolError as exc:
            self._reject(str(exc))
            return
        if hdr is not None:
            self._hand_over(hdr, buf[n:])

    def eof_received(self) -> bool | None:
        self._reject(f"connection closed before the PROXY header ({len(self._buf)} bytes received)")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self._timer.cancel()
        self._pending.discard(self)

    def _hand_over(self, hdr: ProxyHeader | None, rest: bytes) -> None:
        self._finish()
        assert self.transport is not None
        self._handoff(self.transport, hdr, rest)

    def _timed_out(self) -> None:
        if not self._done:
            self._reject("no PROXY header within the header timeout")

    def _reject(self, why: str) -> None:
        if self._done:
            return
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log.warning("bad PROXY header: server=%s client=%s: %s", self._server, _addr_text(peer), why)
        self._finish()
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        self._finish()
        if self.transport is not None:
            self.transport.abort()


# -- the L4 server app ------------------------------------------------------------------


class RelayStats(Protocol):
    """Where a relay server counts its connections (no-op unless one is given)."""

    def connect_failed(self, endpoint: str) -> None: ...

    def closed(self, upstream: str, outcome: str, duration: float, up: int, down: int) -> None:
        """A connection ended: ``outcome`` "ok" (it reached its upstream) or "connect_error"."""
        ...


class _NoStats:
    def connect_failed(self, endpoint: str) -> None:
        return None

    def closed(self, upstream: str, outcome: str, duration: float, up: int, down: int) -> None:
        return None


_NO_STATS = _NoStats()


class L4ServerApp(IdleConnectionServer["L4Connection"]):
    """One TCP/Unix relay server (listener) in one worker: the runtime's ``ServerApp``."""

    def __init__(
        self,
        name: str,
        cfg: ServerConfig,
        upstream: L4Upstream,
        *,
        splice: bool,
        tls: ServerTlsContexts | None = None,
        hooks: ConnectionHooks | None = None,
        stats: RelayStats | None = None,
    ) -> None:
        super().__init__(name, tls, cfg.idle_timeout)  # TLS: no splice
        self.cfg = cfg
        self.upstream = upstream
        self.hooks = hooks
        self.splice = splice and SPLICE_AVAILABLE and tls is None
        self.stats: RelayStats = stats if stats is not None else _NO_STATS
        """Counts ended connections (the proxy passes its metrics, ``apps/observe/_conn_metrics.py``)."""

    def protocol_factory(self) -> asyncio.Protocol:
        self._serving()
        if self.cfg.proxy_protocol != "off":
            return ProxyHeaderReader(
                self.cfg.proxy_protocol, self.cfg.header_timeout, self.name, self._handoff, self.pending
            )
        return L4Connection(self, None)

    def _handoff(self, transport: asyncio.BaseTransport, hdr: ProxyHeader | None, rest: bytes) -> None:
        conn = L4Connection(self, hdr)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if rest:
            conn.data_received(rest)

    def adopt(self, new: L4ServerApp) -> None:
        """Relay new connections with ``new``'s settings and cluster (a reload's commit).

        Connections already relayed keep their endpoint and the balancer they came from.
        New handshakes use ``new``'s certificates; turning TLS on or off needs a new listener.
        """
        self.cfg = new.cfg
        self.upstream = new.upstream
        self.hooks = new.hooks
        self._adopt_tls(new.tls, log)
        self.splice = new.splice and self.tls is None
        self._set_idle_timeout(new.idle_timeout)

    # start_draining: connections waiting for a PROXY header close; relayed ones carry on.

    def statistics(self) -> dict[str, int]:
        return {"connections": len(self.conns), "spliced": sum(1 for c in self.conns if c.spliced)}


class L4Connection(Relay):
    """One relayed client connection. See the module docstring."""

    def __init__(self, app: L4ServerApp, header: ProxyHeader | None) -> None:
        loop = app.loop or asyncio.get_running_loop()
        super().__init__(loop, app.name, app.cfg.splice_after if app.splice else -1)
        self.app = app
        self.header = header
        self.peer = ""
        self.endpoint: Endpoint | None = None
        self.upstream = app.upstream
        """The cluster this connection was relayed to (a reload may change the app's)."""
        self._picked = False
        self.hooks = app.hooks
        self.ctx: Context | None = None
        self.refused = False

    # -- client side (asyncio.Protocol) ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.client_write = transport.write  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        hdr = self.header
        if hdr is not None and hdr.client is not None:
            if hdr.family is Family.UNIX:
                self.peer, self.client_text = "unix", f"unix:{hdr.src_addr}"
            else:
                self.peer = hdr.src_addr
                self.client_text = _addr_text((hdr.src_addr, hdr.src_port))
        else:
            self.peer = peer[0] if isinstance(peer, tuple) else "unix"
            self.client_text = _addr_text(peer)
        self.app.conns.add(self)
        self._task = self.loop.create_task(self._connect())

    # -- upstream side ---------------------------------------------------------------

    async def _connect(self) -> None:
        app = self.app
        upstream = self.upstream = app.upstream
        hooks = self.hooks
        if hooks is not None:
            ctx = self.ctx = Context(self.peer, app.name, self.opened)
            if not await hooks.allow(self.peer, ctx):
                self.refused = True
                self._close_client()
                return
        try:
            ep = self.endpoint = upstream.balancer.pick(PickKey(self.peer))
            upstream.balancer.started(ep)
            self._picked = True
        except Overloaded as exc:  # a discovered set that is empty for now
            log.warning("l4: server=%s client=%s: %s", app.name, self.client_text, exc)
            self.abort()
            return
        except Exception:
            log.exception("l4 balancer failed: server=%s client=%s", app.name, self.client_text)
            self.abort()
            return
        try:
            async with asyncio.timeout(upstream.connect_timeout):
                if ep.path:
                    await self.loop.create_unix_connection(self._upstream_side, ep.path)
                elif ep.tls is not None:
                    self.splice_left = -1  # a TLS socket carries ciphertext
                    await self.loop.create_connection(
                        self._upstream_side, ep.host, ep.port, ssl=ep.tls.context, server_hostname=ep.tls.sni or ep.host
                    )
                else:
                    await self.loop.create_connection(self._upstream_side, ep.host, ep.port)
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                why = f"timed out after {upstream.connect_timeout}s"
            elif isinstance(exc, ssl.SSLCertVerificationError):
                why = f"TLS handshake failed: certificate verify failed: {exc.verify_message or exc.reason}"
            elif isinstance(exc, ssl.SSLError):
                why = f"TLS handshake failed: {exc.reason or exc}"
            else:
                why = str(exc)
            log.warning(
                "l4 connect failed: server=%s client=%s endpoint=%s cluster=%s: %s",
                app.name,
                self.client_text,
                ep,
                upstream.name,
                why,
            )
            app.stats.connect_failed(str(ep))
            self._close_client()
            return
        up = self.up
        if up is None or self.up_closed:
            self._close_client()
            return
        if self.down_closed:
            up.transport.close()
            return
        try:
            first = self._proxy_header()
        except ProtocolError as exc:  # an address the header cannot carry (e.g. an over-long path)
            log.warning("l4 cannot build the PROXY header: server=%s client=%s: %s", app.name, self.client_text, exc)
            self.abort()
            return
        if self._buf:
            first += b"".join(self._buf)
            self._buf = []
        if first:
            up.transport.write(first)
        self.up_write = up.transport.write
        if self.down_eof:
            if not up.transport.can_write_eof():
                self._close_both()  # a TLS upstream: see eof_received
                return
            up.transport.write_eof()
        if self._paused:
            self._paused = False
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        keep = super().eof_received()
        up = self.up
        if up is not None and self.up_write is not None and not up.transport.can_write_eof():
            # The loops' TLS transports have no half-close: with a TLS upstream the client's EOF
            # ends the relay, what is buffered both ways flushed first (nginx's proxy_half_close off).
            self._close_both()
        # A TLS client transport shuts itself down after the client's close_notify, whatever we return.
        return keep if self.transport.can_write_eof() else None

    def _proxy_header(self) -> bytes:
        version = self.upstream.send_proxy_protocol
        if version == "off":
            return b""
        hdr = self.header
        src: Address
        dst: Address
        if hdr is not None and hdr.client is not None:
            # Pass on what our own client told us: the original client and destination.
            if hdr.family is Family.UNIX:
                src, dst = hdr.src_addr, hdr.dst_addr
            else:
                src, dst = (hdr.src_addr, hdr.src_port), (hdr.dst_addr, hdr.dst_port)
        else:
            src = _as_address(self.transport.get_extra_info("peername"))
            dst = _as_address(self.transport.get_extra_info("sockname"))
        return build_v1(src, dst) if version == "v1" else build_v2(src, dst)

    def relay_done(self) -> None:
        if self._picked:
            self._picked = False
            assert self.endpoint is not None
            self.upstream.balancer.finished(self.endpoint)
        outcome = (
            "ok"
            if self.up is not None
            else "refused"
            if self.refused
            else "closed"  # the client left while a hook ran
            if self.endpoint is None
            else "connect_error"
        )
        duration = self.loop.time() - self.opened
        self.app.stats.closed(self.upstream.name, outcome, duration, self.sent_up, self.sent_down)
        if self.ctx is not None and self.hooks is not None:
            ep = None if self.endpoint is None else str(self.endpoint)
            stats = ConnectionStats(
                bytes_up=self.sent_up, bytes_down=self.sent_down, duration=duration, endpoint=ep, outcome=outcome
            )
            self.hooks.closed(self.ctx, stats)
        self.app.conn_done(self)
