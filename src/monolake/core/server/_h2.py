"""The HTTP/2 server driver: one ``H2Connection`` per client connection that speaks h2.

An ``HttpConnection`` hands its transport over when the first bytes are the client
preface (h2c by prior knowledge) or when TLS negotiated "h2" by ALPN; from then on
this protocol owns the transport and a codec (``proto.http2.new_codec``: native
libnghttp2 when built, else the ``h2`` reference) turns bytes into events.

Each stream becomes the same ``Request`` an HTTP/1.1 connection would produce
(``version=b"2"``, ``:authority`` as the Host header) and runs the server's
service chain in its own task, so routing, filters, upstreams and the access log
do not know which protocol the client spoke. Responses are translated back:
names lowercased, connection-specific fields dropped (RFC 9113 §8.2.2).

Flow control is end to end. A request body is a ``Body`` whose producer is the
stream: DATA bytes are handed to it at once, but their window goes back to the
client (``codec.consumed``) only while the consumer keeps up; when the upstream
connection's buffer fills, the window is withheld and the client stops. A
response body is piped into the stream, which queues it in the codec and pauses
the upstream reader once ``buffered`` reaches the stream's share of
``http2.max_buffered_bytes`` (or the client's transport buffer fills), resuming on
``DRAINED``.

Slow readers are bounded: what waits in the codecs for a client's window is
counted per stream, per connection and per worker; a stream pauses its upstream
once it holds its share, or after one more chunk once its connection is over its
cap, so a stalled stream holds at most its share plus one upstream read. Over the
worker's cap, a stream whose bytes would wait for window is reset (load shedding). A stream whose
queued bytes make no progress for ``http2.send_timeout`` seconds is reset
(RST_STREAM CANCEL: the stream is no longer needed, RFC 9113 §7; the client broke
no rule, so not FLOW_CONTROL_ERROR) and its upstream exchange cancelled, which
closes that upstream connection rather than pooling it mid-body. A client's EOF
closes the connection and cancels its streams at once.

Writes are batched: bytes the codec produces while reading are written once per
``data_received``; those produced by other connections' callbacks (response
bodies, completed responses) once per loop iteration.

Defenses: the codec bounds streams, frame and header-list sizes and CONTINUATION
runs; this driver refuses streams beyond ``max_concurrent_streams`` (REFUSED_STREAM),
and counts stream resets (the client's and its refusals) per 10 s, answering more
than ``max_resets_per_10s`` with GOAWAY(ENHANCE_YOUR_CALM) ("rapid reset",
CVE-2023-44487). A connection without streams for ``keepalive_timeout`` is closed
with GOAWAY(NO_ERROR), as is every connection on drain once its streams finish.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, cast

from .._body import HIGH_WATER, Body
from ..errors import RemoteProtocolError, Source
from ..proto.http1 import Headers, Request, Response
from ..proto.http2 import DATA, DRAINED, GOAWAY, HEADERS, RESET, H2ConnectionError, HeaderList, new_codec
from ..proto.http2._codec import CANCEL, ENHANCE_YOUR_CALM, INTERNAL_ERROR, NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM
from ..service import Context
from ._answers import error_response, failure_response
from ._http_app import HttpAppBase

log = logging.getLogger("monolake.core.server")

RESET_WINDOW: Final = 10.0
"""Seconds over which stream resets are counted (``http2.max_resets_per_10s``)."""

MIN_STREAM_BUFFER: Final = 16384
"""Floor of a stream's share of ``http2.max_buffered_bytes`` (one full DATA frame)."""


class _WorkerQueued:
    """Response bytes queued in this worker's HTTP/2 server codecs (a worker is a process)."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


_WORKER: Final = _WorkerQueued()


def worker_buffered_bytes() -> int:
    """Response bytes this worker holds for HTTP/2 clients whose flow-control window is closed."""
    return _WORKER.bytes


# Final module constants: mypyc inlines them or keeps them in C statics; a plain module
# global is a dict lookup at every use.
_OUT_BUFFERED: Final = 1
_OUT_TRANSPORT: Final = 2

_NOT_FORWARDED: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"te",
        b"trailer",
        b"http2-settings",
    }
)
"""Fields never sent on an HTTP/2 stream (RFC 9113 §8.2.2); Content-Length is rebuilt from the body."""

_SCHEME: Final = 0
_METHOD: Final = 1
_PATH: Final = 2
_AUTHORITY: Final = 3
_COOKIE: Final = 4
_CONN_SPECIFIC: Final = 5
_CONTENT_LENGTH: Final = 6
_TE: Final = 7
_HOST: Final = 8
_EXPECT: Final = 9
_SPECIAL_IN: Final = {
    b":scheme": _SCHEME,
    b":protocol": _SCHEME,
    b":method": _METHOD,
    b":path": _PATH,
    b":authority": _AUTHORITY,
    b"cookie": _COOKIE,
    # Connection-specific fields make an HTTP/2 request malformed (RFC 9113 §8.2.2).
    b"connection": _CONN_SPECIFIC,
    b"keep-alive": _CONN_SPECIFIC,
    b"proxy-connection": _CONN_SPECIFIC,
    b"transfer-encoding": _CONN_SPECIFIC,
    b"upgrade": _CONN_SPECIFIC,
    b"content-length": _CONTENT_LENGTH,
    b"te": _TE,
    b"host": _HOST,
    b"expect": _EXPECT,
}
"""Request fields that are not copied as they are: one dict lookup sorts every field."""

_Boxed = list[tuple[bytes, ...]]
"""A header list as compiled code must see it to pass its tuples on as they are. Typed as
``HeaderList`` (fixed-length tuples), mypyc unboxes each field it reads into a C struct and
builds a new tuple when it stores the field again (an append to another list)."""

_STATUS: Final[dict[int, tuple[bytes, ...]]] = {code: (b":status", b"%d" % code) for code in range(100, 600)}
"""Each status's ``:status`` field, built once (variable-length typed: stays the one tuple)."""


def _trailer_fields(trailers: list[tuple[bytes, bytes]]) -> HeaderList:
    """Trailer fields for an HTTP/2 stream: names lowercased, connection-specific ones dropped."""
    for n, _ in trailers:
        if not n.islower() or n in _NOT_FORWARDED:
            break
    else:
        return trailers  # the usual case (gRPC's, from an HTTP/2 upstream): sent as they are
    return [(lname, v) for n, v in trailers if (lname := n.lower()) not in _NOT_FORWARDED]


def _no_pseudo(headers: HeaderList) -> HeaderList:
    """Trailers without pseudo-header fields: the list itself when it has none (the codecs
    refuse those already; this is the driver's own check, without a copy)."""
    for n, _ in headers:
        if n.startswith(b":"):
            return [(n, v) for n, v in headers if not n.startswith(b":")]
    return headers


def host_only(authority: bytes) -> bytes:
    """Lowercased host without port: b"Example.com:8443" -> b"example.com", b"[::1]:80" -> b"[::1]"."""
    if authority.startswith(b"["):
        close = authority.find(b"]")
        return authority[: close + 1].lower() if close > 0 else authority.lower()
    colon = authority.rfind(b":")
    return (authority[:colon] if colon >= 0 else authority).lower()


class _Stream:
    """One request/response exchange: the request body's producer and the response body's sink."""

    __slots__ = (
        "body",
        "conn",
        "hold",
        "inbound",
        "out",
        "out_paused",
        "paused",
        "queued",
        "req",
        "resp",
        "sent",
        "sid",
        "since",
        "task",
    )

    def __init__(self, conn: H2Connection, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.req: Request | None = None
        self.body: Body | None = None
        """The request body while DATA still arrives."""
        self.inbound = False
        """The client has not ended its side yet."""
        self.task: asyncio.Task[None] | None = None
        self.resp: Response | None = None
        self.out: Body | None = None
        """The response body being piped to the client."""
        self.sent = 0
        self.hold = 0
        """DATA bytes received but not yet returned as window (the consumer is paused)."""
        self.paused = False
        self.out_paused = 0
        self.queued = 0
        """Bytes of the response queued in the codec (waiting for the client's window), as last seen."""
        self.since = 0.0
        """When ``queued`` last went down (or became non-zero): the send timeout's start."""

    # -- Producer of the request body ------------------------------------------------

    def pause_body(self) -> None:
        self.paused = True

    def resume_body(self) -> None:
        if self.paused:
            self.paused = False
            if self.hold:
                n, self.hold = self.hold, 0
                conn = self.conn
                conn.codec.consumed(self.sid, n)
                conn.want_flush()

    def cancel_body(self) -> None:
        # The consumer is gone; the stream is reset (NO_ERROR) once the response is out.
        return None

    def send_continue(self) -> None:
        conn = self.conn
        if self.resp is None and not conn.closed:
            conn.codec.send_headers(self.sid, [(b":status", b"100")], False)
            conn.want_flush()

    # -- Sink of the response body ---------------------------------------------------

    def write(self, data: bytes) -> None:
        if not data:
            return
        conn = self.conn
        codec = conn.codec
        self.sent += len(data)
        codec.send_data(self.sid, data, False)
        queued = codec.buffered(self.sid)
        if queued or self.queued:
            conn.account(self, queued)
            if queued:
                if _WORKER.bytes > conn.max_worker_queued:
                    # Load shedding: the worker holds too much for slow readers.
                    self.pause_out(_OUT_BUFFERED)
                    conn.loop.call_soon(conn.shed, self)
                elif queued >= conn.stream_buffer or conn.queued >= conn.max_queued:
                    self.pause_out(_OUT_BUFFERED)
        conn.want_flush()

    def end(self) -> None:
        conn = self.conn
        out = self.out
        trailers = out.trailers if out is not None else None
        if trailers:
            conn.codec.send_headers(self.sid, _trailer_fields(trailers), True)
        else:
            conn.codec.send_data(self.sid, b"", True)
        conn.want_flush()
        conn.response_done(self)

    def abort(self, exc: BaseException) -> None:
        conn = self.conn
        req = self.req
        assert req is not None
        log.warning(
            "upstream body failed mid-response: %s %s peer=%s error=%s",
            req.method.decode(),
            req.original_target.decode("latin-1"),
            conn.peer,
            exc,
        )
        conn.codec.reset(self.sid, INTERNAL_ERROR)
        conn.account(self, 0)
        conn.want_flush()
        conn.response_done(self)

    def pause_out(self, reason: int) -> None:
        if not self.out_paused and self.out is not None:
            self.out.pause()
        self.out_paused |= reason

    def resume_out(self, reason: int) -> None:
        if self.out_paused & reason:
            self.out_paused &= ~reason
            if not self.out_paused and self.out is not None:
                self.out.resume()


class H2Connection(asyncio.Protocol):
    """One HTTP/2 client connection. See the module docstring."""

    def __init__(self, app: HttpAppBase[Any], transport: Any, peer: str) -> None:
        self.app = app
        cfg = app.cfg
        h2 = cfg.http2
        self.codec = new_codec(
            False,
            max_concurrent_streams=h2.max_concurrent_streams,
            initial_window_size=h2.initial_window_size,
            max_frame_size=h2.max_frame_size,
            max_header_list_size=h2.max_header_list_size,
        )
        self.transport = transport
        self.peer = peer
        self.loop = app.loop or asyncio.get_running_loop()
        self.max_streams = h2.max_concurrent_streams
        self.max_resets = h2.max_resets_per_10s
        self.max_header_list = h2.max_header_list_size
        self.max_headers = cfg.limits.max_headers
        self.max_body = cfg.limits.max_body_bytes
        self.max_queued = h2.max_buffered_bytes
        self.max_worker_queued = h2.max_worker_buffered_bytes
        self.stream_buffer = max(MIN_STREAM_BUFFER, min(HIGH_WATER, h2.max_buffered_bytes // h2.max_concurrent_streams))
        """A stream pauses its upstream once this much of its response waits for window."""
        self.send_timeout = h2.send_timeout
        self.queued = 0
        """Response bytes waiting in the codec for the client's window, all streams."""
        self.stalled: dict[int, _Stream] = {}
        """Streams with bytes queued, finished ones included (their tail still waits)."""
        self.streams: dict[int, _Stream] = {}
        self.closed = False
        self._closing = False
        """No new streams (GOAWAY sent or received, or EOF); close once the streams finish."""
        self._dead = False
        self._reading = False
        self._flush_handle: asyncio.Handle | None = None
        self._write_paused = False
        now = self.loop.time()
        self._idle_since = now
        self._resets = 0
        self._reset_start = now
        self._authority = b""
        self._host = b""

    def start(self, data: bytes) -> None:
        """Take over the connection: send SETTINGS, then process ``data`` (the bytes read so far)."""
        self.app.conns.add(self)
        self.codec.initiate()
        if data:
            self.data_received(data)
        else:
            self._flush()
        if self.app.draining:
            self.drain()

    # -- asyncio.Protocol ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        try:
            events = self.codec.feed(data)
        except H2ConnectionError as exc:
            log.info(
                "HTTP/2 connection error from %s on %s: %s (code %d)", self.peer, self.app.name, exc, exc.error_code
            )
            self._flush()
            self._kill(ConnectionResetError(f"HTTP/2 connection error: {exc}"))
            return
        except Exception:
            log.exception("internal error in the HTTP/2 codec (peer %s)", self.peer)
            self._kill(ConnectionResetError("internal error"), abort=True)
            return
        self._reading = True
        try:
            for ev in events:
                kind = ev[0]
                if kind == DATA:
                    self._on_data(ev[1], ev[2], ev[3])
                elif kind == HEADERS:
                    self._on_headers(ev[1], ev[2], ev[3])
                elif kind == RESET:
                    self._on_reset(ev[1], ev[2])
                elif kind == DRAINED:
                    st = self.stalled.get(ev[1])
                    if st is not None:
                        self.account(st, 0)
                        st.resume_out(_OUT_BUFFERED)
                        if st.inbound and self.streams.get(st.sid) is not st:
                            # Answered while the client still sent its body: now stop it.
                            st.inbound = False
                            self.codec.reset(st.sid, NO_ERROR)
                elif kind == GOAWAY:
                    self._closing = True
                if self._dead:
                    return
        except Exception:
            log.exception("internal error in the HTTP/2 driver (peer %s)", self.peer)
            self.codec.goaway(INTERNAL_ERROR)
            self._flush()
            self._kill(ConnectionResetError("internal error"))
            return
        finally:
            self._reading = False
        if self.stalled:
            self._recount()
        self._flush()
        if self._closing and not self.streams:
            self._close()

    def eof_received(self) -> bool | None:
        # The client will send nothing more, not even the WINDOW_UPDATEs a stalled stream
        # waits for: the transport closes (None) and connection_lost cancels every stream
        # and its upstream exchange at once. Never True: TLS transports ignore it with a
        # warning, and a half-open connection would hold stalled upstreams until read_timeout.
        self._closing = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._dead = True
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._flush_handle = None
        self.app.conn_done(self)
        _WORKER.bytes -= self.queued
        self.queued = 0
        self.stalled.clear()
        self._drop_all(ConnectionResetError("client closed the connection"))

    # -- slow readers ---------------------------------------------------------------

    def account(self, st: _Stream, queued: int) -> None:
        """``st`` now has ``queued`` bytes waiting in the codec: update the counts and the
        send timeout's start (progress is when the queue goes down)."""
        delta = queued - st.queued
        if not delta:
            return
        st.queued = queued
        self.queued += delta
        _WORKER.bytes += delta
        if not queued:
            self.stalled.pop(st.sid, None)
        elif delta < 0 or st.sid not in self.stalled:
            st.since = self.loop.time()
            self.stalled[st.sid] = st

    def _recount(self) -> None:
        """Read the queues again after a read: WINDOW_UPDATEs may have let bytes out."""
        buffered = self.codec.buffered
        for st in list(self.stalled.values()):
            self.account(st, buffered(st.sid))

    def _expire_stalled(self, now: float) -> None:
        """Reset the streams whose queued bytes made no progress for ``send_timeout``."""
        self._recount()
        limit = self.send_timeout
        for st in [st for st in self.stalled.values() if now - st.since >= limit]:
            self._reset_stalled(st, f"opened no window for {limit:g} s")
        self.want_flush()

    def _queued_whole(self, st: _Stream, queued: int) -> None:
        """A response queued at once (no pipe) whose tail waits for window: counted, timed
        out and shed like a piped one."""
        self.account(st, queued)
        if _WORKER.bytes > self.max_worker_queued:
            self.loop.call_soon(self.shed, st)

    def shed(self, st: _Stream) -> None:
        """Reset ``st`` if its bytes still wait for window while the worker is over
        ``max_worker_buffered_bytes`` (called soon after the write that went over)."""
        if self.stalled.get(st.sid) is st and _WORKER.bytes > self.max_worker_queued and not self.closed:
            self._reset_stalled(st, f"worker holds over {self.max_worker_queued} bytes for slow readers")
            self.want_flush()

    def _reset_stalled(self, st: _Stream, why: str) -> None:
        log.info(
            "HTTP/2 client %s on %s %s: stream %d reset (CANCEL), %d bytes dropped",
            self.peer,
            self.app.name,
            why,
            st.sid,
            st.queued,
        )
        self.account(st, 0)
        self.codec.reset(st.sid, CANCEL)
        if self.streams.get(st.sid) is st:
            # Cancelling the upstream body closes its connection (never pooled mid-body).
            out = st.out
            st.out = None
            if out is not None:
                out.cancel()
            body = st.body
            if body is not None:
                st.body = None
                body.feed_error(TimeoutError("HTTP/2 stream reset: the client's window stayed closed"))
            st.inbound = False
            self.response_done(st)

    def pause_writing(self) -> None:
        self._write_paused = True
        for st in self.streams.values():
            st.pause_out(_OUT_TRANSPORT)

    def resume_writing(self) -> None:
        self._write_paused = False
        for st in list(self.streams.values()):
            st.resume_out(_OUT_TRANSPORT)

    # -- writing ------------------------------------------------------------------

    def want_flush(self) -> None:
        """Write the codec's output soon (once per loop iteration), unless a read is about to."""
        if self._flush_handle is None and not self._reading and not self.closed:
            self._flush_handle = self.loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        self._flush()
        if self._closing and not self.streams:
            self._close()

    def _flush(self) -> None:
        data = self.codec.pending()
        if data and not self.closed:
            self.transport.write(data)

    # -- events -------------------------------------------------------------------

    def _on_data(self, sid: int, data: bytes, end: bool) -> None:
        st = self.streams.get(sid)
        n = len(data)
        if st is None or st.body is None:
            # A stream we reset, answered, or failed the body of: only the window matters.
            if n:
                self.codec.consumed(sid, n)
            if end:
                if st is None:
                    st = self.stalled.get(sid)  # answered; its tail waits to be sent
                if st is not None:
                    st.inbound = False
            return
        body = st.body
        if end:
            st.inbound = False
        total = body.received + n
        limit = body.length
        if (limit is not None and total > limit) or (self.max_body and total > self.max_body):
            st.body = None
            self.codec.consumed(sid, n)
            if limit is not None and total > limit:
                err = RemoteProtocolError("request body longer than its content-length", source=Source.DOWNSTREAM)
            else:
                err = RemoteProtocolError("request body too large", status_hint=413, source=Source.DOWNSTREAM)
            body.feed_error(err)
            return
        if n:
            body.feed(data)
            if st.paused:
                st.hold += n
            else:
                self.codec.consumed(sid, n)
        if end:
            st.body = None
            if limit is not None and body.received != limit:
                body.feed_error(
                    RemoteProtocolError("request body shorter than its content-length", source=Source.DOWNSTREAM)
                )
            else:
                body.feed_eof()

    def _on_headers(self, sid: int, headers: HeaderList, end: bool) -> None:
        st = self.streams.get(sid)
        if st is not None:
            body = st.body
            st.inbound = False  # trailers (the codec checks END_STREAM)
            if body is not None:
                st.body = None
                body.trailers = _no_pseudo(headers)
                body.feed_eof()
            return
        if self._closing or len(self.streams) >= self.max_streams:
            self.codec.reset(sid, REFUSED_STREAM)
            self._count_reset()
            return
        self._open(sid, headers, end)

    def _on_reset(self, sid: int, code: int) -> None:
        tail = self.stalled.get(sid)  # the codec dropped what it queued for the stream
        if tail is not None:
            self.account(tail, 0)
        st = self.streams.pop(sid, None)
        if st is not None:
            self._drop(st, ConnectionResetError(f"client reset the stream (error code {code})"))
            if not self.streams:
                self._idle_since = self.loop.time()
        self._count_reset()

    def _count_reset(self) -> None:
        now = self.loop.time()
        if now - self._reset_start >= RESET_WINDOW:
            self._reset_start = now
            self._resets = 0
        self._resets += 1
        if self._resets > self.max_resets:
            log.warning(
                "HTTP/2 client %s on %s reset more than %d streams in %g s: GOAWAY(ENHANCE_YOUR_CALM)",
                self.peer,
                self.app.name,
                self.max_resets,
                RESET_WINDOW,
            )
            self.codec.goaway(ENHANCE_YOUR_CALM)
            self._flush()
            self._kill(ConnectionResetError("connection closed: too many stream resets"))

    # -- requests -----------------------------------------------------------------

    def _open(self, sid: int, headers: HeaderList, end: bool) -> None:
        method = path = authority = None
        raw: list[Any] = []  # a HeaderList for Headers; Any: the codec's tuples go in as they are
        lower: list[bytes] = []
        cookies: list[bytes] | None = None
        host: bytes | None = None
        length: int | None = None
        expect = False
        size = 32 * len(headers)
        bad: tuple[int, str] | None = None
        for field in cast(_Boxed, headers):
            name = field[0]
            value = field[1]
            size += len(name) + len(value)
            kind = _SPECIAL_IN.get(name)  # not a bound .get: mypyc makes this a direct dict lookup
            if kind is None:
                if name[:1] == b":":
                    bad = (400, f"unknown pseudo-header {name.decode('latin-1')}")
                else:
                    raw.append(field)  # the codec's tuple as it is: no new one per field
                    lower.append(name)
            elif kind == _METHOD:
                method = value
            elif kind == _PATH:
                path = value
            elif kind == _AUTHORITY:
                authority = value
            elif kind == _COOKIE:
                # RFC 9113 §8.2.3: crumbs are joined again for an HTTP/1.1 hop.
                if cookies is None:
                    cookies = [value]
                else:
                    cookies.append(value)
            elif kind == _CONN_SPECIFIC:
                bad = (400, f"connection-specific field {name.decode('latin-1')} in an HTTP/2 request")
            elif kind == _CONTENT_LENGTH:
                try:
                    length = int(value)
                except ValueError:
                    bad = (400, "malformed content-length")
            elif kind == _TE:
                if value.strip().lower() != b"trailers":
                    bad = (400, "TE other than 'trailers' in an HTTP/2 request")
                else:  # kept for an HTTP/2 upstream (gRPC servers require it)
                    raw.append((b"te", b"trailers"))
                    lower.append(b"te")
            elif kind == _HOST:
                host = value
            elif kind == _EXPECT:
                expect = value.strip().lower() == b"100-continue"
        if cookies is not None:
            raw.append((b"cookie", b"; ".join(cookies)))
            lower.append(b"cookie")
        if authority is None:
            authority = host
        elif host is not None and host != authority:
            # RFC 9113 §8.3.1: malformed, a stream error (what the h2 codec does itself; the
            # native one leaves it to us). Compared as bytes, as h2 does, so both codecs agree.
            log.info("malformed HTTP/2 request from %s on %s: host differs from :authority", self.peer, self.app.name)
            self.codec.reset(sid, PROTOCOL_ERROR)
            self._count_reset()
            return
        if authority is not None:
            raw.insert(0, (b"host", authority))
            lower.insert(0, b"host")
        st = _Stream(self, sid)
        if method is None or (path is None and method != b"CONNECT"):
            bad = (400, "missing :method or :path")
        elif method == b"CONNECT":
            bad = (405, "CONNECT over HTTP/2 is not enabled")
        elif size > self.max_header_list:
            bad = (431, "request header list too large")
        elif len(raw) > self.max_headers:
            bad = (431, "too many headers")
        elif length is not None and self.max_body and length > self.max_body:
            bad = (413, "request body too large")
        req = Request(
            method or b"GET",
            path or b"/",
            Headers(raw, lower=lower),
            version=b"2",
            host=self._host_of(authority) if authority else b"",
            raw_host=authority,
        )
        st.req = req
        self.streams[sid] = st
        self.app.in_flight += 1
        if not end:
            st.inbound = True
            body = Body(st, length, st.send_continue if expect else None)
            req.body = st.body = body
        elif length:
            bad = bad or (400, "content-length on a request without a body")
        req.ctx = Context(self.peer, self.app.name, self.loop.time())
        if bad is not None:
            status, why = bad
            log.info("bad HTTP/2 request from %s on %s: %d %s", self.peer, self.app.name, status, why)
            self._respond(st, error_response(status))
            return
        st.task = self.loop.create_task(self._run(st, req))

    def _host_of(self, authority: bytes) -> bytes:
        """``host_only``, remembered for the connection's last authority (a client
        rarely changes it between streams)."""
        if authority == self._authority:
            return self._host
        host = self._host = host_only(authority)
        self._authority = authority
        return host

    async def _run(self, st: _Stream, req: Request) -> None:
        try:
            resp = await self.app.service(req)  # per request: a reload reaches open connections
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            resp = failure_response(req, exc, self.peer, self.app.name)
        st.task = None
        if self.streams.get(st.sid) is not st:
            # The client reset the stream meanwhile (or the send timeout did).
            if isinstance(resp.body, Body):
                resp.body.cancel()
            return
        try:
            self._respond(st, resp)
        except Exception:
            log.exception("internal error while sending an HTTP/2 response to %s", self.peer)
            self.codec.reset(st.sid, INTERNAL_ERROR)
            self.account(st, 0)
            self.want_flush()
            self.response_done(st)

    def _respond(self, st: _Stream, resp: Response) -> None:
        req = st.req
        assert req is not None
        st.resp = resp
        status = resp.status
        fields: list[Any] = [_STATUS.get(status) or (b":status", b"%d" % status)]  # passed as a HeaderList
        h = resp.headers
        block = h.block
        if block is not None:
            # Untouched fields from an HTTP/1.1 upstream: read the wire block directly
            # (llhttp validated it; hop-by-hop lines are gone already).
            for line in block.split(b"\r\n"):
                if line:
                    name, _, value = line.partition(b":")
                    lname = name.lower()
                    if lname not in _NOT_FORWARDED:
                        fields.append((lname, value.strip(b" \t")))
        else:
            # Indexed, not zip(strict=True): mypyc compiles this loop, not that call.
            names = h.names()
            pairs = cast(_Boxed, h.pairs())
            for i in range(len(names)):
                lname = names[i]
                if lname not in _NOT_FORWARDED:
                    pair = pairs[i]
                    # From an HTTP/2 upstream the name is lowercase already: reuse its tuple.
                    fields.append(pair if pair[0] is lname else (lname, pair[1]))
        body = resp.body
        codec = self.codec
        sid = st.sid
        if req.method == b"HEAD" or status < 200 or status in (204, 304):
            if resp.content_length is not None and req.method == b"HEAD":
                fields.append((b"content-length", b"%d" % resp.content_length))
            codec.send_headers(sid, fields, True)
            if isinstance(body, Body):
                body.cancel()
        elif isinstance(body, Body):
            if resp.content_length is not None:
                fields.append((b"content-length", b"%d" % resp.content_length))
            pending = body.take()
            if body.complete:
                # All there already (a small response, a unary gRPC answer with its
                # trailers): head, body and trailers in one codec call, no pipe.
                data = pending[0] if len(pending) == 1 else b"".join(pending)
                trailers = body.trailers
                queued = codec.send_response(sid, fields, data, _trailer_fields(trailers) if trailers else None)
                st.sent = len(data)
                if queued:
                    self._queued_whole(st, queued)
            else:
                codec.send_headers(sid, fields, False)
                st.out = body
                for piece in pending:
                    st.write(piece)
                self.want_flush()
                body.pipe(st)  # may finish right here (end -> response_done)
                if st.out is body:
                    # pipe() resumes the producer as it hands over: pause again if
                    # the codec's queue or the transport is already full.
                    if self._write_paused:
                        st.out_paused |= _OUT_TRANSPORT
                    if st.out_paused:
                        body.pause()
                return
        elif body:
            fields.append((b"content-length", b"%d" % len(body)))
            queued = codec.send_response(sid, fields, body, None)
            st.sent = len(body)
            if queued:
                self._queued_whole(st, queued)
        else:
            fields.append((b"content-length", b"0"))
            codec.send_headers(sid, fields, True)
        self.want_flush()
        self.response_done(st)

    def response_done(self, st: _Stream) -> None:
        """The response on ``st`` is complete (or was reset): log it and forget the stream."""
        if self.streams.get(st.sid) is not st:
            return
        del self.streams[st.sid]
        self.app.request_done()
        st.out = None
        req = st.req
        assert req is not None
        if st.inbound:
            # Answered before the request body ended: stop the client sending it
            # (RFC 9113 §8.1) and let the body's consumer go.
            st.inbound = False
            body = st.body
            if body is not None:
                st.body = None
                body.detach()
            if queued := self.codec.buffered(st.sid):
                # Not before the response is out: a reset drops what the codec still queues.
                self.account(st, queued)
                st.inbound = True  # reset on DRAINED (or by the send timeout)
            else:
                self.codec.reset(st.sid, NO_ERROR)
                self.want_flush()
        if not self.streams:
            self._idle_since = self.loop.time()
        cb = self.app.on_complete
        resp = st.resp
        if cb is not None and resp is not None:
            try:
                cb(req, resp, st.sent)
            except Exception:
                log.exception("logging phase failed")
        # The request body's producer is this stream: without this the stream, the request
        # and its body form a cycle that only the garbage collector frees.
        req.body = None

    # -- closing ------------------------------------------------------------------

    def _drop(self, st: _Stream, exc: BaseException) -> None:
        """Abandon a stream the client reset or a connection that is gone."""
        self.app.request_done()
        body = st.body
        if body is not None:
            st.body = None
            body.feed_error(exc)
        task = st.task
        if task is not None and not task.done():
            task.cancel()
        out = st.out
        if out is not None:
            st.out = None
            out.cancel()

    def _drop_all(self, exc: BaseException) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for st in streams:
            self._drop(st, exc)

    def _kill(self, exc: BaseException, *, abort: bool = False) -> None:
        """Stop at once (after a connection error): abandon every stream and close."""
        self._dead = True
        self._drop_all(exc)
        if abort:
            self.abort()
        else:
            self._close()

    def drain(self) -> None:
        """GOAWAY(NO_ERROR): streams in flight finish, new ones are refused; close when none is left."""
        if self.closed or self._dead:
            return
        if not self._closing:
            self._closing = True
            self.codec.goaway(NO_ERROR)
            self._flush()
        if not self.streams:
            self._close()

    def check_timeouts(self, now: float, keepalive: float, header: float) -> None:
        if self.closed:
            return
        if self.stalled:
            self._expire_stalled(now)
        if self.streams:
            return
        if now - self._idle_since > keepalive:
            if not self._closing:
                self.codec.goaway(NO_ERROR)
                self._flush()
            self._close()

    def _close(self) -> None:
        if not self.closed:
            self._flush()
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()
