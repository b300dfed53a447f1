"""Byte relays between two connections: the L4 server's and the HTTP tunnels'.

Theory of operation. A ``Relay`` is the protocol of the client's transport; its
peer's transport (the upstream) gets a ``_PeerSide`` protocol that calls back into
it. Two engines move the bytes:

- the loop path (always available): ``data_received`` of one side is ``write`` on
  the other. Backpressure: when one transport's write buffer passes its high-water
  mark it calls ``pause_writing``, and we ``pause_reading`` on the other side until
  ``resume_writing``. Half-close: EOF from one side is ``write_eof`` on the other
  (``eof_received`` returns True to keep our write half open); once both
  directions have seen EOF both transports close, after their buffers flush.
- the splice path (Linux, plain TCP/Unix sockets only): once a connection has
  relayed ``splice_after`` bytes and both write buffers are empty, both sockets
  leave their transports (each is dup'ed, then its transport aborted) and bytes go
  socket → pipe → socket with ``os.splice``, one pipe per direction, driven by
  ``loop.add_reader``/``add_writer``. The kernel moves page references; Python
  never sees the bytes. Backpressure is the pipe: a full pipe stops reading its
  source until the destination drains it. Half-close is ``shutdown(SHUT_WR)`` once
  a direction's source hit EOF and its pipe is empty. Why a threshold (uvloop,
  2-core VM, 1 GB through one worker): splice costs 0.14 CPU s/GB against 0.40 on
  the loop path, but setting a relay up and tearing it down costs about 140 µs
  more per connection, so it pays off after roughly 500 KB.

Idle timeout: the owner's periodic sweep calls ``check_idle``; a relay that moved
no byte either way for the timeout is aborted. Bytes are counted each way
(``sent_up``: client → upstream, ``sent_down``: upstream → client) for logs.

The L4 server's ``L4Connection`` (``_l4.py``) is a Relay that first connects its
upstream. A ``Tunnel`` is a Relay over two transports that already exist: an HTTP
connection after a 101 (Upgrade) or a 200 to CONNECT, and the upstream connection
that answered it, handed over as a ``Switched``. A tunnel splices like an L4
connection only when neither side is TLS (a TLS socket carries ciphertext).
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
from typing import Any

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


def _unwritable(data: bytes) -> None:
    pass


class _PeerSide(asyncio.Protocol):
    """The upstream transport's protocol on the loop path: forwards to the client."""

    __slots__ = ("conn", "transport")

    def __init__(self, conn: Relay) -> None:
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
        conn.sent_down += len(data)
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
        # A TLS transport has no half-close: it closes itself, and warns about a True.
        return True if self.transport.can_write_eof() else None

    def pause_writing(self) -> None:
        self.conn.transport.pause_reading()

    def resume_writing(self) -> None:
        self.conn.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.upstream_lost(exc)


class Relay(asyncio.Protocol):
    """The client side of a relay, and the relay's state. See the module docstring.

    Subclasses set ``up``/``up_write`` once the upstream transport exists and
    implement ``relay_done`` (both sides closed; called once).
    """

    kind = "l4"
    """Prefix of this relay's log lines."""
    log = logging.getLogger("monolake.l4")

    def __init__(self, loop: asyncio.AbstractEventLoop, server_name: str, splice_after: int) -> None:
        self.loop = loop
        self.server_name = server_name
        self.transport: Any = None
        self.client_write: Callable[[bytes], None] = _unwritable
        self.client_text = ""
        self.endpoint: object = None
        """What the upstream side is, for log lines."""
        self.up: _PeerSide | None = None
        self.up_write: Callable[[bytes], None] | None = None
        self.relay: _SpliceRelay | None = None
        self.spliced = False
        # A loop whose transports read ahead of the protocol (io_uring's multishot recv)
        # cannot hand a socket over without losing what it already received: no splice.
        self.splice_left = splice_after if getattr(loop, "can_hand_over_sockets", True) else -1
        """Bytes to relay on the loop path before moving to splice; -1: never; 0: at the next chance."""
        self.active = True
        self.idle_since = loop.time()
        self.opened = self.idle_since
        self.sent_up = 0
        self.sent_down = 0
        self._buf: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self.down_eof = False
        self.up_eof = False
        self.down_closed = False
        self.up_closed = True  # until the upstream transport exists
        self._task: asyncio.Task[None] | None = None

    def relay_done(self) -> None:
        raise NotImplementedError

    # -- client side (asyncio.Protocol) ---------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.active = True
        self.sent_up += len(data)
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
        keep = True if self.transport.can_write_eof() else None  # as in _PeerSide
        if self.down_eof:
            return keep
        self.down_eof = True
        up = self.up
        if up is not None and self.up_write is not None:  # else the connect step passes the EOF on
            if up.transport.can_write_eof():
                up.transport.write_eof()
            if self.up_eof:
                self._close_both()
        return keep

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
        self.client_write = _unwritable
        if self._task is not None and not self._task.done():
            self._task.cancel()
        up = self.up
        if up is not None and not self.up_closed:
            up.transport.close()  # what the client sent and we buffered still goes out
        self._maybe_done()

    # -- upstream side ---------------------------------------------------------------

    def _upstream_side(self) -> _PeerSide:
        return _PeerSide(self)

    def upstream_eof(self) -> None:
        if self.up_eof:
            return
        self.up_eof = True
        if not self.down_closed:
            if not self.transport.can_write_eof():
                # A TLS client connection has no half-close: the upstream is done, so is the
                # tunnel (what it sent is flushed first). TCP and Unix sockets always have one.
                self._close_both()
                return
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
            self.log.info(
                "%s cannot splice, relaying through the loop: server=%s: %s", self.kind, self.server_name, exc
            )
            if pipes is not None:
                pipes.close()
            for sock in socks:
                sock.close()
            return
        # The dups keep both connections open when the transports close their descriptors.
        self.spliced = True
        self.down_closed = True
        self.up_write = None
        self.client_write = _unwritable
        for t in (client, up.transport):
            t.pause_reading()
            t.abort()
        for sock in socks:
            sock.setblocking(False)
        self.relay = _SpliceRelay(self, socks[0], socks[1], pipes)
        self.relay.start()
        self.log.debug(
            "%s spliced: server=%s client=%s endpoint=%s", self.kind, self.server_name, self.client_text, self.endpoint
        )

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
            self.relay_done()

    def check_idle(self, now: float, idle: float) -> None:
        if self.active:
            self.active = False
            self.idle_since = now
        elif now - self.idle_since >= idle:
            self.log.info(
                "%s idle timeout: server=%s client=%s endpoint=%s after %.1fs",
                self.kind,
                self.server_name,
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


# -- HTTP tunnels ---------------------------------------------------------------------------


class Switched:
    """The upstream half of a tunnel, handed from the proxy to the server driver as a
    response's ``body`` (a 101 to an Upgrade request, a 2xx to CONNECT).

    ``transport`` is open with its reading paused; ``tail`` is what the upstream sent
    after its response head (already the new protocol's bytes); ``upgrade`` is the
    upstream's Upgrade header value (for a 101); ``target`` names the peer in logs.
    Whoever receives it must attach it to a tunnel or ``close`` it. When the tunnel
    ends, ``tunnel_up`` is the number of bytes it relayed from the client (the access
    log's ``$bytes_received``).
    """

    __slots__ = ("tail", "target", "transport", "tunnel_up", "upgrade")

    def __init__(self, transport: Any, tail: bytes, target: str, upgrade: bytes | None = None) -> None:
        self.transport = transport
        self.tail = tail
        self.target = target
        self.upgrade = upgrade
        self.tunnel_up: int | None = None

    def close(self) -> None:
        self.transport.close()

    def __repr__(self) -> str:
        return f"<Switched to {self.target}>"


class Tunnel(Relay):
    """A relay between an HTTP client connection and an upstream that switched protocols."""

    kind = "tunnel"
    log = logging.getLogger("monolake.tunnel")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, server_name: str, client_text: str, on_done: Callable[[Tunnel], None]
    ) -> None:
        super().__init__(loop, server_name, -1)
        self.client_text = client_text
        self.on_done = on_done
        self.started = loop.time()
        self.switched: Switched | None = None
        self._done = False

    def attach(self, client: Any, upstream: Switched, to_upstream: bytes, splice_after: int = -1) -> None:
        """Take over both transports (both paused) and start relaying.

        ``to_upstream``: what the client sent after its request head, written first;
        ``upstream.tail`` goes to the client first. ``splice_after``: bytes relayed
        before moving to splice (-1: never); ignored when either side is TLS.
        """
        self.endpoint = upstream.target
        self.switched = upstream
        self.transport = client
        if (
            splice_after >= 0
            and SPLICE_AVAILABLE
            and getattr(self.loop, "can_hand_over_sockets", True)
            and client.get_extra_info("sslcontext") is None
            and upstream.transport.get_extra_info("sslcontext") is None
        ):
            self.splice_left = splice_after
        self.client_write = client.write
        client.set_protocol(self)
        side = _PeerSide(self)
        up = upstream.transport
        up.set_protocol(side)
        side.connection_made(up)
        self.up_write = up.write
        if to_upstream:
            self.sent_up += len(to_upstream)
            up.write(to_upstream)
        if upstream.tail:
            self.sent_down += len(upstream.tail)
            client.write(upstream.tail)
        client.resume_reading()
        up.resume_reading()

    def relay_done(self) -> None:
        if not self._done:
            self._done = True
            if self.switched is not None:
                self.switched.tunnel_up = self.sent_up
            self.on_done(self)


# -- the splice path -------------------------------------------------------------------------


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

    def __init__(self, conn: Relay, client: socket.socket, upstream: socket.socket, pipes: _Pipes) -> None:
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
        conn = self.conn
        conn.active = True
        if d is self.up:
            conn.sent_up += n
        else:
            conn.sent_down += n
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
                self.conn.log.info("%s shutdown failed: %s", self.conn.kind, exc)
        if self.up.done and self.down.done:
            self.close()

    def _fail(self, exc: OSError) -> None:
        if exc.errno not in _GONE:
            self.conn.log.info(
                "%s relay error: server=%s client=%s endpoint=%s: %s",
                self.conn.kind,
                self.conn.server_name,
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
