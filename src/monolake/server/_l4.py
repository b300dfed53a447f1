"""The L4 (TCP/Unix) relay server, and the PROXY header reader listeners share.

Theory of operation. Each accepted connection is an ``L4Connection``. It picks an
endpoint with the cluster's balancer (keyed by the client IP), connects within the
cluster's ``connect_timeout`` (on failure: one log line naming server, client and
endpoint, and the client connection is closed), optionally sends a PROXY header
upstream, then relays bytes both ways until both directions have ended. Bytes the
client sends while we connect are kept (up to a limit; then its reading pauses)
and written first.

Two relay engines move the bytes:

- the loop path (always available): upstream and downstream are asyncio
  transports, ``data_received`` of one is ``write`` on the other. Backpressure:
  when one transport's write buffer passes its high-water mark it calls
  ``pause_writing``, and we ``pause_reading`` on the other side until
  ``resume_writing``. Half-close: EOF from one side is ``write_eof`` on the other
  (``eof_received`` returns True to keep our write half open); once both
  directions have seen EOF both transports close, after their buffers flush.
- the splice path (Linux, ``splice = true``): once a connection has relayed
  ``splice_after`` bytes (1 MiB by default) and both write buffers are empty,
  both sockets leave their transports (each is dup'ed, then its transport
  aborted) and bytes go socket → pipe → socket with ``os.splice``, one pipe per
  direction, driven by ``loop.add_reader``/``add_writer``. The kernel moves page
  references; Python never sees the bytes. Backpressure is the pipe: a full pipe
  stops reading its source until the destination drains it. Half-close is
  ``shutdown(SHUT_WR)`` once a direction's source hit EOF and its pipe is empty.
  Why the threshold (uvloop, 2-core VM, 1 GB through one worker): splice costs
  0.14 CPU s/GB against 0.40 on the loop path, but setting a relay up and tearing
  it down costs about 140 µs more per connection (dups, two pipes, reader
  registrations: ~300 against ~160 µs for a short echo), so it pays off after
  roughly 500 KB. Short connections stay on the loop path; bulk ones move over.

Idle timeout: one sweep per server (not a timer per connection) closes
connections that moved no byte either way for ``idle_timeout`` seconds. Drain:
the runtime closes the listener; connections in flight continue until done or
until ``runtime.drain_timeout``, then ``close`` aborts them.

PROXY protocol accept (``ProxyHeaderReader``): a listener configured for it
reads the header first (within ``header_timeout``), then hands the transport,
the header and the bytes after it to the server's real protocol with
``transport.set_protocol``. A malformed or missing header is logged and the
connection closed. HTTP listeners use the same reader (see proxy/_l4_app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Literal, Protocol

from ..config import Endpoint
from ..config import Server as ServerConfig
from ..errors import ProtocolError
from ..proto.http1 import Headers
from ..proto.proxy_protocol import Address, Family, ProxyHeader, build_v1, build_v2, detect, parse
from ._lifecycle import DrainSignal, Sweeper

log = logging.getLogger("monolake.l4")

SPLICE_AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
"""os.splice and pipe resizing exist (Linux, Python >= 3.10)."""

PIPE_SIZE = 1 << 18
"""Bytes a splice pipe may hold. 1 MiB measured no faster; and an unprivileged user's
pipes count against /proc/sys/fs/pipe-user-pages-soft (64 MiB) by capacity, so 256 KiB
pipes allow ~128 spliced connections per user before new pipes are held to a page or two."""

CONNECT_BUFFER = 256 * 1024
"""Client bytes kept while the upstream connects before the client's reading pauses."""

_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED, errno.ETIMEDOUT)


class BalancerLike(Protocol):
    def pick(self, req: Any) -> Endpoint: ...

    def started(self, ep: Endpoint) -> None: ...

    def finished(self, ep: Endpoint) -> None: ...


class L4Upstream:
    """What an L4 server needs of its cluster: a balancer, a connect timeout, PROXY sending."""

    __slots__ = ("balancer", "connect_timeout", "name", "send_proxy_protocol")

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


class _PickKey:
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

    def __init__(self, mode: str, timeout: float, server: str, handoff: Handoff, pending: set[ProxyHeaderReader]):
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


class L4ServerApp:
    """One TCP/Unix relay server (listener) in one worker: the runtime's ``ServerApp``."""

    def __init__(self, name: str, cfg: ServerConfig, upstream: L4Upstream, *, splice: bool) -> None:
        self.name = name
        self.cfg = cfg
        self.upstream = upstream
        self.splice = splice and SPLICE_AVAILABLE
        self.idle_timeout = cfg.idle_timeout
        self.conns: set[L4Connection] = set()
        self.pending: set[ProxyHeaderReader] = set()
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._drained = DrainSignal()
        # Sweep often enough to close an idle connection within ~1/4 of its timeout past it.
        self._sweeper = Sweeper(self._sweep, max(0.05, min(1.0, self.idle_timeout / 4)))

    def protocol_factory(self) -> asyncio.Protocol:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self._sweeper.start(self.loop)
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

    def _sweep(self) -> None:
        assert self.loop is not None
        now = self.loop.time()
        idle = self.idle_timeout
        for conn in list(self.conns):
            conn.check_idle(now, idle)

    def conn_done(self, conn: L4Connection) -> None:
        self.conns.discard(conn)
        if not self.conns:
            self._drained.set()

    def adopt(self, new: L4ServerApp) -> None:
        """Relay new connections with ``new``'s settings and cluster (a reload's commit).

        Connections already relayed keep their endpoint and the balancer they came from.
        """
        self.cfg = new.cfg
        self.upstream = new.upstream
        self.splice = new.splice
        self.idle_timeout = new.idle_timeout
        self._sweeper.interval = new._sweeper.interval

    def start_draining(self) -> None:
        """Connections waiting for a PROXY header close; relayed ones carry on."""
        self.draining = True
        for reader in list(self.pending):
            reader.abort()

    async def wait_drained(self) -> None:
        if self.conns:
            await self._drained.wait()

    def close(self) -> None:
        self._sweeper.stop()
        for reader in list(self.pending):
            reader.abort()
        for conn in list(self.conns):
            conn.abort()

    def statistics(self) -> dict[str, int]:
        return {"connections": len(self.conns), "spliced": sum(1 for c in self.conns if c.spliced)}


class _UpstreamSide(asyncio.Protocol):
    """The upstream transport's protocol on the loop path: forwards to the client."""

    __slots__ = ("conn", "transport")

    def __init__(self, conn: L4Connection) -> None:
        self.conn = conn
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        # Only now will connection_lost be called, so only now is there a side to wait for.
        self.conn.up = self
        self.conn.up_closed = False

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.active = True
        conn.client_write(data)
        left = conn.splice_left
        if left >= 0:
            left -= len(data)
            if left < 0:
                conn.try_splice()
            else:
                conn.splice_left = left

    def eof_received(self) -> bool | None:
        self.conn.upstream_eof()
        return True

    def pause_writing(self) -> None:
        self.conn.transport.pause_reading()

    def resume_writing(self) -> None:
        self.conn.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.upstream_lost(exc)


class L4Connection(asyncio.Protocol):
    """One relayed client connection. See the module docstring."""

    def __init__(self, app: L4ServerApp, header: ProxyHeader | None) -> None:
        self.app = app
        self.header = header
        self.loop = app.loop or asyncio.get_running_loop()
        self.transport: Any = None
        self.client_write: Callable[[bytes], None] = self._unwritable
        self.peer = ""
        self.client_text = ""
        self.endpoint: Endpoint | None = None
        self.upstream = app.upstream
        """The cluster this connection was relayed to (a reload may change the app's)."""
        self.up: _UpstreamSide | None = None
        self.up_write: Callable[[bytes], None] | None = None
        self.relay: _SpliceRelay | None = None
        self.spliced = False
        self.splice_left = app.cfg.splice_after if app.splice else -1
        """Bytes to relay on the loop path before moving to splice; -1: never; 0: at the next chance."""
        self.active = True
        self.idle_since = self.loop.time()
        self._buf: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self.down_eof = False
        self.up_eof = False
        self.down_closed = False
        self.up_closed = True  # until the upstream transport exists
        self._task: asyncio.Task[None] | None = None
        self._picked = False

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

    def data_received(self, data: bytes) -> None:
        self.active = True
        w = self.up_write
        if w is not None:
            w(data)
            left = self.splice_left
            if left >= 0:
                left -= len(data)
                if left < 0:
                    self.try_splice()
                else:
                    self.splice_left = left
            return
        self._buf.append(data)
        self._buffered += len(data)
        if self._buffered >= CONNECT_BUFFER and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.down_eof:
            return True
        self.down_eof = True
        up = self.up
        if up is not None and self.up_write is not None:  # else _connect passes the EOF on
            if up.transport.can_write_eof():
                up.transport.write_eof()
            if self.up_eof:
                self._close_both()
        return True

    def pause_writing(self) -> None:
        up = self.up
        if up is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        up = self.up
        if up is not None:
            up.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.spliced:
            return  # the socket lives on in the splice relay; this was its old transport
        self.down_closed = True
        self.client_write = self._unwritable
        if self._task is not None and not self._task.done():
            self._task.cancel()
        up = self.up
        if up is not None and not self.up_closed:
            up.transport.close()  # what the client sent and we buffered still goes out
        self._maybe_done()

    @staticmethod
    def _unwritable(data: bytes) -> None:
        pass

    # -- upstream side ---------------------------------------------------------------

    async def _connect(self) -> None:
        app = self.app
        upstream = self.upstream = app.upstream
        try:
            ep = self.endpoint = upstream.balancer.pick(_PickKey(self.peer))
            upstream.balancer.started(ep)
            self._picked = True
        except Exception:
            log.exception("l4 balancer failed: server=%s client=%s", app.name, self.client_text)
            self.abort()
            return
        try:
            async with asyncio.timeout(upstream.connect_timeout):
                if ep.path:
                    await self.loop.create_unix_connection(self._upstream_side, ep.path)
                else:
                    await self.loop.create_connection(self._upstream_side, ep.host, ep.port)
        except (OSError, TimeoutError) as exc:
            why = f"timed out after {upstream.connect_timeout}s" if isinstance(exc, TimeoutError) else str(exc)
            log.warning(
                "l4 connect failed: server=%s client=%s endpoint=%s cluster=%s: %s",
                app.name,
                self.client_text,
                ep,
                upstream.name,
                why,
            )
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
        if self.down_eof and up.transport.can_write_eof():
            up.transport.write_eof()
        if self._paused:
            self._paused = False
            self.transport.resume_reading()

    def _upstream_side(self) -> _UpstreamSide:
        return _UpstreamSide(self)

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

    def upstream_eof(self) -> None:
        if self.up_eof:
            return
        self.up_eof = True
        if not self.down_closed and self.transport.can_write_eof():
            self.transport.write_eof()
        if self.down_eof:
            self._close_both()

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.spliced:
            return
        self.up_closed = True
        self.up_write = None
        if not self.down_closed:
            self.transport.close()  # after what the upstream sent is flushed to the client
        self._maybe_done()

    # -- moving to the splice path -------------------------------------------------------

    def try_splice(self) -> None:
        """Move both sockets out of their transports into a splice relay, if now is a clean moment.

        Clean: both write buffers empty (every byte read so far is in the kernel) and
        no EOF yet (a uvloop ``write_eof`` is a queued shutdown an abort would cancel).
        Otherwise it is tried again on the next chunk. Out of descriptors: never again.
        """
        up = self.up
        client = self.transport
        if up is None or self.down_eof or self.up_eof or self.down_closed or self.up_closed:
            self.splice_left = -1
            return
        if client.get_write_buffer_size() or up.transport.get_write_buffer_size():
            self.splice_left = 0
            return
        self.splice_left = -1
        pipes: _Pipes | None = None
        socks: list[socket.socket] = []
        try:
            pipes = _Pipes()
            for t in (client, up.transport):
                socks.append(socket.socket(fileno=os.dup(t.get_extra_info("socket").fileno())))
        except OSError as exc:  # out of descriptors: this connection stays on the loop path
            log.info("l4 cannot splice, relaying through the loop: server=%s: %s", self.app.name, exc)
            if pipes is not None:
                pipes.close()
            for sock in socks:
                sock.close()
            return
        # The dups keep both connections open when the transports close their descriptors.
        self.spliced = True
        self.down_closed = True
        self.up_write = None
        self.client_write = self._unwritable
        for t in (client, up.transport):
            t.pause_reading()
            t.abort()
        for sock in socks:
            sock.setblocking(False)
        self.relay = _SpliceRelay(self, socks[0], socks[1], pipes)
        self.relay.start()
        log.debug("l4 spliced: server=%s client=%s endpoint=%s", self.app.name, self.client_text, self.endpoint)

    def relay_closed(self) -> None:
        self.up_closed = True
        self._maybe_done()

    # -- closing -------------------------------------------------------------------------

    def _close_client(self) -> None:
        if not self.down_closed and self.transport is not None:
            self.transport.close()

    def _close_both(self) -> None:
        self._close_client()
        if self.up is not None and not self.up_closed:
            self.up.transport.close()

    def _maybe_done(self) -> None:
        if self.down_closed and self.up_closed:
            if self._picked:
                self._picked = False
                assert self.endpoint is not None
                self.upstream.balancer.finished(self.endpoint)
            self.app.conn_done(self)

    def check_idle(self, now: float, idle: float) -> None:
        if self.active:
            self.active = False
            self.idle_since = now
        elif now - self.idle_since >= idle:
            log.info(
                "l4 idle timeout: server=%s client=%s endpoint=%s after %.1fs",
                self.app.name,
                self.client_text,
                self.endpoint,
                idle,
            )
            self.abort()

    def abort(self) -> None:
        """Close both sides now, dropping anything unsent."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.relay is not None:
            self.relay.close()
            return
        if not self.down_closed and self.transport is not None:
            self.transport.abort()
        if self.up is not None and not self.up_closed:
            self.up.transport.abort()


class _Direction:
    """One direction of a splice relay: ``src`` socket → pipe → ``dst`` socket."""

    __slots__ = ("done", "dst", "eof", "pending", "r", "reading", "src", "w", "writing")

    def __init__(self, src: int, dst: int, r: int, w: int) -> None:
        self.src = src
        self.dst = dst
        self.r = r
        self.w = w
        self.pending = 0
        self.eof = False
        self.done = False
        self.reading = False
        self.writing = False


class _Pipes:
    """The two pipes of a splice relay, sized to PIPE_SIZE where the system allows. Raises OSError."""

    __slots__ = ("fds", "size")

    def __init__(self) -> None:
        self.fds: list[int] = []
        try:
            for _ in range(2):
                self.fds += os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            size = PIPE_SIZE
            for fd in self.fds[1::2]:
                try:
                    size = min(size, fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE))
                except OSError:  # over a lowered pipe-max-size: keep the default
                    size = min(size, fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))
            self.size = size
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


class _SpliceRelay:
    """Both directions of a spliced connection, driven by add_reader/add_writer."""

    def __init__(self, conn: L4Connection, client: socket.socket, upstream: socket.socket, pipes: _Pipes) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.client = client
        self.upstream = upstream
        self.pipes = pipes
        self.size = pipes.size
        self.closed = False
        a, b = client.fileno(), upstream.fileno()
        r1, w1, r2, w2 = pipes.fds
        self.up = _Direction(a, b, r1, w1)
        self.down = _Direction(b, a, r2, w2)

    def start(self) -> None:
        self._want_read(self.up)
        self._want_read(self.down)

    def _want_read(self, d: _Direction) -> None:
        if not d.reading and not d.eof:
            d.reading = True
            self.loop.add_reader(d.src, self._readable, d)

    def _readable(self, d: _Direction) -> None:
        try:
            n = os.splice(d.src, d.w, self.size - d.pending, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        if n == 0:
            self._src_eof(d)
            return
        self.conn.active = True
        d.pending += n
        self._flush(d)

    def _writable(self, d: _Direction) -> None:
        self._flush(d)

    def _flush(self, d: _Direction) -> None:
        try:
            d.pending -= os.splice(d.r, d.dst, d.pending, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            pass
        except OSError as exc:
            self._fail(exc)
            return
        if d.pending:
            if not d.writing:
                d.writing = True
                self.loop.add_writer(d.dst, self._writable, d)
            if d.pending >= self.size and d.reading:
                d.reading = False
                self.loop.remove_reader(d.src)
            return
        if d.writing:
            d.writing = False
            self.loop.remove_writer(d.dst)
        if d.eof:
            self._shut(d)
        else:
            self._want_read(d)

    def _src_eof(self, d: _Direction) -> None:
        d.eof = True
        if d.reading:
            d.reading = False
            self.loop.remove_reader(d.src)
        if not d.pending:
            self._shut(d)

    def _shut(self, d: _Direction) -> None:
        if d.done:
            return
        d.done = True
        try:
            sock = self.upstream if d is self.up else self.client
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno not in _GONE:
                log.info("l4 shutdown failed: %s", exc)
        if self.up.done and self.down.done:
            self.close()

    def _fail(self, exc: OSError) -> None:
        if exc.errno not in _GONE:
            log.info(
                "l4 relay error: server=%s client=%s endpoint=%s: %s",
                self.conn.app.name,
                self.conn.client_text,
                self.conn.endpoint,
                exc,
            )
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for d in (self.up, self.down):
            if d.reading:
                self.loop.remove_reader(d.src)
            if d.writing:
                self.loop.remove_writer(d.dst)
            d.reading = d.writing = False
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.close()
        self.pipes.close()
        self.conn.relay_closed()
