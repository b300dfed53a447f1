"""The HTTP/2 client driver: multiplexed upstream connections, one per key.

``H2Pool`` (one per worker) keeps the open HTTP/2 connections of each pool key
(the same key as the HTTP/1 pool's: scheme with the TLS fingerprint, host, port,
unix path). A request takes the first connection of its key that is usable and
below the peer's SETTINGS_MAX_CONCURRENT_STREAMS; only when every connection is
at that limit does the pool open another one (rather than queueing: a queue needs
its own timeout and adds latency behind slow streams, and a peer's stream limit is
usually 100 or more, so a second connection is rare). Concurrent requests that
find no connection share one connect in progress. ``Client.send`` with a
``max_connections`` queues at that limit in ``waiters``, woken as streams end.

``H2Connection`` is an ``asyncio.Protocol`` over a codec (``proto.http2``): bytes
in, events out, bytes to write after each batch. Each request is a ``_Stream``:

- the request body is piped into ``_StreamSink``, which queues it with
  ``send_data`` (the codec holds what the peer's windows do not allow yet) and
  pauses the client's body when more than ``SEND_HIGH`` bytes wait, until the
  stream's ``DRAINED`` event (or the socket's ``resume_writing``);
- the response is a ``Response`` whose ``Body`` has the stream as its producer:
  DATA bytes are returned to the peer's window (``consumed``) as soon as the Body
  took them, except while the consumer is paused, so a slow client slows the
  upstream through HTTP/2 flow control; a cancelled body resets the stream.
  Trailers are set on ``body.trailers`` before ``feed_eof``. A response that
  arrives whole in one read (and has no trailers) is handed over with a bytes body.

GOAWAY: the connection takes no new stream; streams above the peer's last stream
id fail with a retry-safe ``ReadError`` (RFC 9113 §6.8: they were not processed),
the others finish, then the connection closes. A REFUSED_STREAM reset is retry
safe for the same reason (§8.7).

Timeouts: ``read_timeout`` is a per-stream inactivity timer, re-armed lazily from
the stream's last frame in either direction (the HTTP/1 client's runs from its last
read); ``deadline`` (loop time, for gRPC's grpc-timeout) ends the stream whatever
its activity. A timed out stream is reset; before its response head the future
raises ``ReadTimeout``, after it the body fails with it, except for a gRPC stream,
whose body ends with ``grpc-status: 4`` trailers so the client sees
DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any, Final, cast

from .._body import Body
from ..address import Endpoint
from ..errors import ConnectError, ReadError, ReadTimeout, UpstreamError, WriteError
from ..proto.http1 import Headers, Response
from ..proto.http2 import (
    DATA,
    DRAINED,
    GOAWAY,
    HEADERS,
    RESET,
    SETTINGS,
    Codec,
    H2ConnectionError,
    HeaderList,
    new_codec,
)
from ..proto.http2._codec import CANCEL, NO_ERROR, REFUSED_STREAM
from ._connect import open_transport

log = logging.getLogger("monolake.core.client")

SEND_HIGH: Final = 256 * 1024
"""Queued request body bytes on one stream above which the client's body is paused."""

STREAM_WINDOW: Final = 1024 * 1024
"""Our SETTINGS_INITIAL_WINDOW_SIZE: response bytes one stream may have in flight."""

Key = tuple[str, str, int, str]

_Boxed = list[tuple[bytes, ...]]
"""A header list as compiled code must see it to pass its tuples on as they are. Typed as
``HeaderList`` (fixed-length tuples), mypyc unboxes each field it reads into a C struct and
builds a new tuple when it stores the field again (an append to another list)."""

_NOT_OVER_H2: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
        b"host",
        b"content-length",
        b"te",
    }
)
"""Connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2), Host (carried as :authority,
§8.3.1) and Content-Length (rebuilt from the body's length)."""


def request_headers(
    method: bytes,
    target: bytes,
    headers: Headers,
    authority: bytes,
    scheme: bytes,
    content_length: int | None,
) -> HeaderList:
    """An HTTP/1-shaped request head as an HTTP/2 header list: pseudo headers first, names
    lowercased, connection-specific fields dropped, ``te: trailers`` kept (gRPC needs it)."""
    if target[:1] != b"/" and target != b"*":
        # absolute-form (a forward-proxy request): :path is the path and query part
        rest = target.partition(b"://")[2]
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    out: list[Any] = [(b":method", method), (b":scheme", scheme), (b":authority", authority), (b":path", target)]
    # Indexed, not zip(strict=True): mypyc compiles this loop, not that call.
    pairs = cast(_Boxed, headers.pairs())
    names = headers.names()
    for i in range(len(names)):
        lname = names[i]
        if lname in _NOT_OVER_H2:
            if lname == b"te" and pairs[i][1].strip().lower() == b"trailers":
                out.append((b"te", b"trailers"))
            continue
        pair = pairs[i]
        # From an HTTP/2 client the name is lowercase already: reuse its tuple.
        out.append(pair if pair[0] is lname else (lname, pair[1]))
    if content_length is not None:
        out.append((b"content-length", b"%d" % content_length))
    return out


def _no_pseudo(headers: HeaderList) -> HeaderList:
    """Trailers without pseudo-header fields (RFC 9113 §8.1): the list itself when it has none."""
    for n, _ in headers:
        if n.startswith(b":"):
            return [(n, v) for n, v in headers if not n.startswith(b":")]
    return headers


_STATUS: Final = {b"%d" % code: code for code in range(100, 600)}
"""``:status`` values as ints without ``int()``."""


class _StreamSink:
    """Writes a request body into a stream; aborting resets the stream."""

    __slots__ = ("conn", "st")

    def __init__(self, st: _Stream) -> None:
        self.st = st
        self.conn = st.conn

    def write(self, data: bytes) -> None:
        st = self.st
        if not data or st.closed:
            return
        conn = self.conn
        codec = conn.codec
        codec.send_data(st.sid, data, False)
        conn.flush()
        st.last = conn.loop.time()  # a call that streams requests is active even while the upstream is silent
        if not st.send_paused and (codec.buffered(st.sid) > SEND_HIGH or conn.write_paused):
            st.send_paused = True
            qbody = st.qbody
            if qbody is not None:
                qbody.pause()

    def end(self) -> None:
        st = self.st
        qbody = st.qbody
        st.qbody = None
        if st.closed:
            return
        trailers = qbody.trailers if qbody is not None else None
        if trailers:
            st.conn.codec.send_headers(st.sid, [(n.lower(), v) for n, v in trailers], True)
        else:
            st.conn.codec.send_data(st.sid, b"", True)
        st.conn.flush()
        if qbody is not None and st.send_paused:
            st.send_paused = False
            qbody.resume()
        st.sent = True
        st.maybe_done()

    def abort(self, exc: BaseException) -> None:
        st = self.st
        st.qbody = None
        st.fail(exc, reset=CANCEL)


class _Stream:
    """One request/response exchange on an ``H2Connection``; the response Body's producer."""

    __slots__ = (
        "body",
        "chunks",
        "closed",
        "conn",
        "deadline",
        "ended",
        "fut",
        "grpc",
        "head_only",
        "last",
        "paused",
        "qbody",
        "read_timeout",
        "reads",
        "resp",
        "send_paused",
        "sent",
        "sid",
        "trailers",
        "unacked",
    )

    def __init__(
        self,
        conn: H2Connection,
        sid: int,
        *,
        head_only: bool,
        read_timeout: float,
        deadline: float | None,
        grpc: bool,
        now: float,
    ) -> None:
        self.conn = conn
        self.sid = sid
        self.fut: asyncio.Future[Response] = conn.loop.create_future()
        self.head_only = head_only
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.grpc = grpc
        self.resp: Response | None = None
        self.body: Body | None = None
        self.chunks: list[bytes] | None = None
        """Response DATA held until the end of the read that brought the head."""
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.qbody: Body | None = None
        self.sent = True
        self.send_paused = False
        self.paused = False
        self.unacked = 0
        self.closed = False
        """Reset, failed or fully exchanged: no more frames for this stream."""
        self.ended = False
        """END_STREAM arrived while the response was held (``chunks``)."""
        self.reads = conn.reads
        self.last = now

    # -- Body producer (response body) --------------------------------------------

    def pause_body(self) -> None:
        self.paused = True

    def resume_body(self) -> None:
        if self.paused:
            self.paused = False
            n = self.unacked
            if n and not self.closed:
                self.unacked = 0
                self.conn.codec.consumed(self.sid, n)
                self.conn.flush()

    def cancel_body(self) -> None:
        """The consumer went away: reset the stream (the connection stays)."""
        if not self.closed:
            self.fail(UpstreamError("response body abandoned"), reset=CANCEL)

    # -- lifecycle -------------------------------------------------------------------

    def cancel(self) -> None:
        """The requester stopped waiting (cancelled): reset the stream."""
        if not self.closed:
            self.fail(asyncio.CancelledError(), reset=CANCEL)

    def maybe_done(self) -> None:
        """Forget the stream once both directions are finished."""
        if self.sent and self.resp is not None and self.chunks is None and self.body is None and not self.closed:
            self.closed = True
            self.conn.served += 1
            self.conn.forget(self)

    def fail(self, exc: BaseException, *, reset: int | None) -> None:
        """End the exchange with ``exc``: raise it from the future or the response body."""
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        if reset is not None and not conn.closed:
            conn.codec.reset(self.sid, reset)
            conn.flush()
        fut = self.fut
        if not fut.done():
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(exc)
        self.chunks = None
        body = self.body
        self.body = None
        if body is not None:
            if self.grpc and isinstance(exc, ReadTimeout):
                body.trailers = [(b"grpc-status", b"4"), (b"grpc-message", b"monolake: upstream deadline exceeded")]
                body.feed_eof()
            else:
                body.feed_error(exc)
        qbody = self.qbody
        self.qbody = None
        if qbody is not None:
            qbody.detach()
        conn.forget(self)

    def due(self) -> float:
        """When this stream times out if nothing happens on it."""
        due = self.last + self.read_timeout
        deadline = self.deadline
        return due if deadline is None or deadline > due else deadline

    def timed_out(self) -> None:
        deadline = self.deadline
        if deadline is not None and self.conn.loop.time() >= deadline - 0.001:
            self.fail(ReadTimeout("upstream deadline exceeded"), reset=CANCEL)
        else:
            self.fail(ReadTimeout(f"no data from upstream for {self.read_timeout:g}s"), reset=CANCEL)

    # -- events --------------------------------------------------------------------

    def on_headers(self, headers: HeaderList, end_stream: bool, ready: list[_Stream]) -> None:
        if self.resp is None:
            status = 0
            clen: int | None = None
            pairs: list[Any] = []  # a HeaderList for Headers; Any: the codec's tuples go in as they are
            names: list[bytes] = []
            try:
                for field in cast(_Boxed, headers):
                    name = field[0]
                    if name[:1] == b":":
                        if name == b":status":
                            status = _STATUS.get(field[1]) or int(field[1])
                    elif name == b"content-length":
                        clen = int(field[1])
                    else:
                        pairs.append(field)
                        names.append(name)
            except ValueError:
                self.fail(UpstreamError("upstream sent a malformed :status or content-length"), reset=1)
                return
            if status < 200:
                if status == 0:
                    self.fail(UpstreamError("upstream response without :status"), reset=1)
                return  # 1xx: informational, not forwarded
            resp = self.resp = Response(status, Headers(pairs, lower=names), content_length=clen)
            if end_stream:
                resp.body = None
                if not self.head_only:
                    resp.content_length = 0
                _resolve(self.fut, resp)
                self.maybe_done()
            else:
                self.chunks = []
                ready.append(self)
            return
        # Trailers (RFC 9113 §8.1): pseudo headers are not allowed in them.
        self.trailers = _no_pseudo(headers)
        if not end_stream:
            self.fail(UpstreamError("upstream sent HEADERS mid-body without END_STREAM"), reset=1)
            return
        self.finish()

    def on_data(self, data: bytes, end_stream: bool) -> None:
        n = len(data)
        chunks = self.chunks
        if chunks is not None:
            if n:
                chunks.append(data)
                self.conn.codec.consumed(self.sid, n)
        else:
            body = self.body
            if body is not None and n:
                body.feed(data)
                if self.paused:
                    self.unacked += n
                elif not self.closed:
                    self.conn.codec.consumed(self.sid, n)
        if end_stream:
            self.finish()

    def finish(self) -> None:
        """The response ended (END_STREAM)."""
        if self.chunks is not None:
            self.ended = True  # handed over, complete, at the end of the read (``deliver``)
            return
        body = self.body
        self.body = None
        if body is not None:
            body.trailers = self.trailers
            body.feed_eof()
        self.maybe_done()

    def deliver(self) -> None:
        """End of the read that brought the response head: hand the response over."""
        chunks = self.chunks
        resp = self.resp
        if chunks is None or resp is None or self.closed:
            return
        self.chunks = None
        complete = self.ended
        if complete and self.trailers is None:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            resp.body = data
            if not self.head_only:
                resp.content_length = len(data)
            _resolve(self.fut, resp)
            self.maybe_done()
            return
        # A body complete already needs no producer: with the stream as its producer,
        # the stream, the response and the body would form a cycle for the collector.
        body = Body(_DONE if complete else self, resp.content_length)
        for piece in chunks:
            body.feed(piece)
        resp.body = body
        if complete:
            body.trailers = self.trailers
            body.feed_eof()
        else:
            self.body = body
        _resolve(self.fut, resp)
        if complete:
            self.maybe_done()


class _Done:
    """The producer of a response body that arrived whole: nothing to pause, resume or cancel."""

    __slots__ = ()

    def pause_body(self) -> None:
        return None

    def resume_body(self) -> None:
        return None

    def cancel_body(self) -> None:
        return None


_DONE: Final = _Done()


def _resolve(fut: asyncio.Future[Response], resp: Response) -> None:
    # The requester may have been cancelled (a route timeout) and not yet reset the stream.
    if not fut.done():
        fut.set_result(resp)


class H2Connection(asyncio.Protocol):
    """One upstream HTTP/2 connection; see the module docstring."""

    def __init__(self, pool: H2Pool, key: Key, codec: Codec) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.codec = codec
        self.transport: Any = None
        self.streams: dict[int, _Stream] = {}
        self.max_streams = 100
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §6.5.2's suggested floor until it says)."""
        self.going_away = False
        self.closed = False
        self.write_paused = False
        self.idle_timeout = 60.0
        self.idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._flush_soon = False
        self.ready: asyncio.Future[None] = self.loop.create_future()
        """Resolved by the peer's first SETTINGS (its preface): the connection speaks HTTP/2."""
        self.served = 0
        """Streams that completed."""
        self.reads = 0
        """Reads so far: a stream opened after the last read that dies with the connection
        was never answered (a retry-safe failure on a reused connection)."""

    @property
    def available(self) -> bool:
        """Can take one more stream now."""
        return not self.going_away and not self.closed and len(self.streams) < self.max_streams

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.codec.initiate()
        self._write()

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        try:
            events = self.codec.feed(data)
        except H2ConnectionError as exc:
            self.flush()
            if not self.ready.done():
                self.ready.set_exception(ConnectError(f"upstream does not speak HTTP/2 ({exc})"))
            self._lost(UpstreamError(f"HTTP/2 connection error from upstream: {exc}"))
            self.close()
            return
        streams = self.streams
        ready: list[_Stream] = []
        now = self.loop.time()
        for ev in events:
            kind = ev[0]
            if kind == DATA:
                st = streams.get(ev[1])
                if st is not None:
                    st.last = now
                    st.on_data(ev[2], ev[3])
                elif ev[2]:
                    self.codec.consumed(ev[1], len(ev[2]))  # a reset stream's data still counts
            elif kind == HEADERS:
                st = streams.get(ev[1])
                if st is not None:
                    st.last = now
                    st.on_headers(ev[2], ev[3], ready)
            elif kind == DRAINED:
                st = streams.get(ev[1])
                if st is not None and st.send_paused and not self.write_paused:
                    st.send_paused = False
                    if st.qbody is not None:
                        st.qbody.resume()
            elif kind == RESET:
                self._on_reset(ev[1], ev[2])
            elif kind == SETTINGS:
                self.max_streams = self.codec.remote_max_streams()
                if not self.ready.done():
                    self.ready.set_result(None)
            elif kind == GOAWAY:
                self._on_goaway(ev[1], ev[2])
        for st in ready:
            st.deliver()
        self.flush()
        if self.going_away and not self.streams:
            self.close()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectError("upstream closed the connection before its HTTP/2 preface"))
        self.pool.lost(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.streams:
            why = f": {exc}" if exc else ""
            self._lost(None, why)

    def pause_writing(self) -> None:
        self.write_paused = True
        for st in self.streams.values():
            if st.qbody is not None and not st.send_paused:
                st.send_paused = True
                st.qbody.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        codec = self.codec
        for st in self.streams.values():
            if st.send_paused and st.qbody is not None and codec.buffered(st.sid) <= SEND_HIGH:
                st.send_paused = False
                st.qbody.resume()

    # -- streams -------------------------------------------------------------------

    def request(
        self,
        headers: HeaderList,
        body: Body | bytes | None,
        *,
        head_only: bool,
        read_timeout: float,
        deadline: float | None = None,
        grpc: bool = False,
    ) -> _Stream:
        """Open a stream for one request; ``stream.fut`` resolves with the response head.

        The future raises ReadError (retry_safe when the upstream did not process the
        stream: GOAWAY, REFUSED_STREAM, a connection that died before answering),
        ReadTimeout, or UpstreamError. The caller calls ``stream.cancel()`` if it stops
        waiting.
        """
        codec = self.codec
        if isinstance(body, Body) and body.complete and not body.trailers:
            # All there already (a unary gRPC call, a small upload the client sent with its
            # head): the stream goes out as bytes would, without a sink and a pipe.
            pending = body.take()
            body.detach()
            body = pending[0] if len(pending) == 1 else b"".join(pending)
        try:
            # A whole request (no body, or bytes): one codec call, one serialization.
            sid = codec.request(headers, False) if isinstance(body, Body) else codec.send_request(headers, body, None)
        except Exception as exc:  # the codec's refusal (stream limit, going away): nothing was sent
            raise ReadError(f"cannot open a stream to the upstream: {exc}", retry_safe=True) from None
        now = self.loop.time()
        st = _Stream(self, sid, head_only=head_only, read_timeout=read_timeout, deadline=deadline, grpc=grpc, now=now)
        self.streams[sid] = st
        due = now + read_timeout
        if deadline is not None and deadline < due:
            due = deadline
        timer = self._timer
        if timer is None or due < self._timer_at:
            if timer is not None:
                timer.cancel()
            self._timer_at = due
            self._timer = self.loop.call_at(due, self._check_timeouts)
        if isinstance(body, Body):
            st.sent = False
            st.qbody = body
            self.flush()
            body.pipe(_StreamSink(st))
        else:
            self.flush()
        return st

    def forget(self, st: _Stream) -> None:
        """A stream finished or failed: drop it; an idle connection starts its idle clock."""
        if self.streams.pop(st.sid, None) is None:
            return
        if self.pool.waiters:
            self.pool.wake(self.key)  # a stream slot is free for a Client waiting at its limit
        if not self.streams:
            if self.going_away:
                if not self.closed:
                    self.loop.call_soon(self.close)
                return
            self.idle_since = self.loop.time()
            if self._idle_timer is None and not self.closed:
                self._idle_timer = self.loop.call_at(self.idle_since + self.idle_timeout, self._check_idle)

    def _check_timeouts(self) -> None:
        """One timer per connection, not per stream: armed at the earliest possible timeout
        and, when it fires, failing the streams that are due and re-arming for the others
        (streams that were active meanwhile are simply due later)."""
        self._timer = None
        if self.closed:
            return
        now = self.loop.time()
        soonest = 0.0
        for st in list(self.streams.values()):
            due = st.due()
            if now >= due - 0.001:
                st.timed_out()
            elif not soonest or due < soonest:
                soonest = due
        if soonest and not self.closed:
            self._timer_at = soonest
            self._timer = self.loop.call_at(soonest, self._check_timeouts)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self.closed or self.streams:
            return
        due = self.idle_since + self.idle_timeout
        if self.loop.time() >= due - 0.001:
            self.going_away = True
            self.pool.retire(self)
            self.codec.goaway(NO_ERROR)
            self.flush()
            self.close()
        else:
            self._idle_timer = self.loop.call_at(due, self._check_idle)

    def _on_reset(self, sid: int, code: int) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        if code == NO_ERROR and st.resp is not None and st.body is None and st.chunks is None:
            # The response is complete; the peer does not want the rest of the request (§8.1).
            qbody = st.qbody
            st.qbody = None
            if qbody is not None:
                qbody.detach()
            st.sent = True
            st.maybe_done()
            return
        if code == REFUSED_STREAM:
            st.fail(ReadError("upstream refused the stream (REFUSED_STREAM)", retry_safe=True), reset=None)
        elif st.resp is None:
            st.fail(ReadError(f"upstream reset the stream before responding (error code {code})"), reset=None)
        else:
            st.fail(UpstreamError(f"upstream reset the stream mid-response (error code {code})"), reset=None)

    def _on_goaway(self, last_sid: int, code: int) -> None:
        if not self.going_away:
            self.going_away = True
            self.pool.retire(self)
            log.info("upstream %s sent GOAWAY (last stream %d, error code %d)", self.key[1:], last_sid, code)
        for sid in [s for s in self.streams if s > last_sid]:
            self.streams[sid].fail(
                ReadError("upstream sent GOAWAY before processing the stream", retry_safe=True), reset=None
            )

    def _lost(self, exc: BaseException | None, why: str = "") -> None:
        """The connection is gone: fail every stream still open."""
        for st in list(self.streams.values()):
            if exc is not None:
                err = exc
            elif st.resp is None and not st.sent:
                err = WriteError("upstream closed the connection while the request body was being sent" + why)
            elif st.resp is None:
                # Nothing read since the stream opened on a connection that had served
                # others: the stale-connection race, the request was not processed.
                err = ReadError(
                    "upstream closed the connection before responding" + why,
                    retry_safe=st.reads == self.reads and self.served > 0,
                )
            else:
                err = UpstreamError("upstream closed the connection mid-response" + why)
            st.fail(err, reset=None)

    def flush(self) -> None:
        """Write what the codec queued, once per loop iteration: a request's HEADERS, DATA and
        END_STREAM, the requests other tasks start meanwhile, and a read's window updates go
        out in one ``write`` (a syscall each was a third of the proxy's time on gRPC calls)."""
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self._write)

    def _write(self) -> None:
        self._flush_soon = False
        if not self.closed:
            data = self.codec.pending()
            if data:
                self.transport.write(data)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self._write()  # what is queued (a GOAWAY, resets) goes before the FIN
            self.closed = True
            self.pool.retire(self)
            self.transport.close()


class H2Pool:
    """The HTTP/2 upstream connections of one worker, by pool key."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        codec_kind: str | None = None,
        connect_errors: dict[str, int] | None = None,
    ) -> None:
        self._loop = loop
        self.codec_kind = codec_kind
        """``new_codec``'s kind (None: the native codec when built, or $MONOLAKE_H2_CODEC)."""
        self._conns: dict[Key, list[H2Connection]] = {}
        self._connecting: dict[Key, asyncio.Task[H2Connection]] = {}
        self.connects = 0
        self.reuses = 0
        self.connect_errors = connect_errors if connect_errors is not None else {}
        """Failed connects per endpoint (shared with the HTTP/1 pool's, for metrics)."""
        self.open: dict[Key, int] = {}
        """Open connections per key (busy, idle or going away)."""
        self.waiters: dict[Key, deque[asyncio.Future[None]]] = {}
        """``Client.send`` callers waiting for a stream slot at their key's connection limit."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def take(self, ep: Endpoint) -> H2Connection | None:
        """A connection to ``ep`` with a free stream slot, or None. No I/O."""
        # getattr: compiled, a typed ``ep.key`` is unboxed into a C struct and boxed again (a
        # new tuple) for the lookup; as Any it stays the one tuple the endpoint holds.
        conns = self._conns.get(getattr(ep, "key"))  # noqa: B009
        if conns:
            for conn in conns:
                if conn.available:
                    self.reuses += 1
                    return conn
        return None

    async def acquire(self, ep: Endpoint, *, connect_timeout: float, idle_timeout: float) -> H2Connection:
        """A connection to ``ep`` with a free stream slot, connecting when none has one.

        Concurrent callers share one connect. Raises ConnectError or ConnectTimeout.
        Cancelling a caller does not cancel the shared connect.
        """
        key = ep.key
        while True:
            conn = self.take(ep)
            if conn is not None:
                return conn
            task = self._connecting.get(key)
            if task is None:
                task = self.loop.create_task(self._connect(ep, connect_timeout, idle_timeout))
                self._connecting[key] = task
                task.add_done_callback(self._connected)
            conn = await asyncio.shield(task)
            if conn.available:
                return conn
            if conn.max_streams == 0:
                # Connecting again would loop: the peer takes no streams at all for now.
                raise ConnectError(f"upstream {ep} allows no concurrent streams (SETTINGS_MAX_CONCURRENT_STREAMS 0)")

    def _connected(self, task: asyncio.Task[H2Connection]) -> None:
        for key, t in list(self._connecting.items()):
            if t is task:
                del self._connecting[key]
        if not task.cancelled():
            task.exception()  # retrieved: a connect nobody waits for any more must not warn

    async def _connect(self, ep: Endpoint, connect_timeout: float, idle_timeout: float) -> H2Connection:
        loop = self.loop
        key = ep.key
        codec = new_codec(
            True,
            max_concurrent_streams=100,
            initial_window_size=STREAM_WINDOW,
            max_frame_size=16384,
            max_header_list_size=65536,
            kind=self.codec_kind,
        )

        def factory() -> H2Connection:
            return H2Connection(self, key, codec)

        async def handshake(transport: asyncio.Transport, proto: H2Connection) -> None:
            if ep.tls is not None:
                sslobj = transport.get_extra_info("ssl_object")
                alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
                if alpn != "h2":
                    raise ConnectError(f"upstream {ep} did not select h2 by ALPN (selected {alpn!r})")
            # The peer's SETTINGS: it speaks HTTP/2, and its stream limit is known before a
            # burst of requests could exceed it.
            await proto.ready

        _, proto = await open_transport(loop, factory, ep, connect_timeout, self.connect_errors, handshake)
        self.connects += 1
        proto.idle_timeout = idle_timeout
        self._conns.setdefault(key, []).append(proto)
        self.open[key] = self.open.get(key, 0) + 1
        return proto

    def retire(self, conn: H2Connection) -> None:
        """``conn`` takes no new streams (GOAWAY, idle close, closing)."""
        conns = self._conns.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[conn.key]

    def drain(self, keys: Iterable[Key]) -> None:
        """Discovery dropped these endpoints: their connections take no new streams and close
        (with a GOAWAY) once their streams in flight end."""
        for key in keys:
            for conn in list(self._conns.get(key, ())):
                conn.going_away = True
                self.retire(conn)
                if not conn.streams and not conn.closed:
                    conn.codec.goaway(NO_ERROR)
                    conn.close()

    def lost(self, conn: H2Connection) -> None:
        """``conn`` closed (from its connection_lost)."""
        self.retire(conn)
        n = self.open.get(conn.key, 0)
        if n > 1:
            self.open[conn.key] = n - 1
        else:
            self.open.pop(conn.key, None)
        if self.waiters:
            self.wake(conn.key)

    def wake(self, key: Key) -> None:
        """A stream slot or a connection of ``key`` was freed: the first waiter decides again."""
        q = self.waiters.get(key)
        while q:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        if not q:
            self.waiters.pop(key, None)

    def statistics(self) -> dict[str, int]:
        return {
            "connections": sum(self.open.values()),
            "streams": sum(len(c.streams) for cs in self._conns.values() for c in cs),
            "connects": self.connects,
            "reuses": self.reuses,
        }

    def close(self) -> None:
        for q in self.waiters.values():
            for fut in q:
                if not fut.done():
                    fut.set_exception(ConnectError("the connection pool closed"))
        self.waiters.clear()
        for task in self._connecting.values():
            task.cancel()
        for conns in list(self._conns.values()):
            for conn in list(conns):
                conn.going_away = True
                conn.codec.goaway(NO_ERROR)
                conn.flush()
                conn.close()
        self._conns.clear()
