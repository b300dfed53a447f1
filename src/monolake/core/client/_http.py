"""The HTTP/1.1 client driver: one ``UpstreamConnection`` per upstream socket.

One request at a time per connection (no upstream pipelining: a failure would take
every queued request with it). ``request`` writes the head, pipes the request body
if any, and returns a future that resolves with the response head; the response
body is a ``Body`` this connection feeds, which the server pipes to the client.

A connection goes back to its pool only when both directions finished cleanly and
the upstream did not ask to close; anything else (error, ``Connection: close``, a
consumer that went away mid-body) closes it. A reused connection that dies before
the first response byte raises ``ReadError`` with ``retry_safe=True``: the request
may have never reached the upstream (the stale keep-alive race). One that dies while
the request body is still being sent raises ``WriteError`` (not retry safe: the body
is spent).

The read timeout is lazy: one timer per request that re-arms itself from the time
of the last read, instead of a cancel/re-arm on every chunk.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from .._body import Body
from ..errors import ProtocolError, ReadError, ReadTimeout, Source, UpstreamError, WriteError
from ..proto.http1 import Response
from ..proto.http1._parse import ResponseReader
from ..proto.http1._serialize import LAST_CHUNK, chunk


class Pool(Protocol):
    """What a connection uses of its ``_pool.Pool`` (typed here so this module need not import it)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def release(self, conn: UpstreamConnection) -> None: ...

    def lost(self, conn: UpstreamConnection) -> None: ...

    def forget(self, conn: UpstreamConnection) -> None: ...


class ResponseTarget(Protocol):
    """Who takes a response by callback instead of a future (``UpstreamConnection.request_to``):
    exactly one of the two is called, from the connection's own callbacks."""

    def response(self, resp: Response, /) -> None:
        """The response head (its body a ``Body`` still arriving, or the whole body as bytes)."""

    def error(self, exc: BaseException, /) -> None:
        """The exchange failed: what the future of ``request`` would raise."""


class _RequestSink:
    """Writes a request body to the upstream; aborting fails the exchange."""

    __slots__ = ("chunked", "conn", "transport")

    def __init__(self, conn: UpstreamConnection, chunked: bool) -> None:
        self.conn = conn
        self.transport = conn.transport
        self.chunked = chunked

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.chunked:
            self.transport.writelines(chunk(data))
        else:
            self.transport.write(data)

    def end(self) -> None:
        if self.chunked:
            self.transport.write(LAST_CHUNK)
        self.conn.request_sent()

    def abort(self, exc: BaseException) -> None:
        self.conn.fail(exc)


class UpstreamConnection(ResponseReader, asyncio.Protocol):
    """One upstream connection; see the module docstring."""

    def __init__(self, pool: Pool, key: tuple[str, str, int, str]) -> None:
        self.pool = pool
        # Any, not the tuple type: compiled, a fixed-length tuple attribute is kept unboxed
        # and every read of it (the pool's dict lookups, per request) would build a new tuple.
        self.key: Any = key
        self.loop = pool.loop
        self.reader_init()
        self.transport: Any = None
        self.reused = False
        self.counted = False
        """Counted in the pool's ``open`` (made by ``Pool.connect``); uncounted by connection_lost."""
        self.idle_since = 0.0
        self.connect_time = 0.0
        """Seconds its connect (and TLS handshake) took, when the pool measures them (``time_connects``)."""
        self.idle_timeout = 60.0
        self.max_idle = 64
        self._fut: asyncio.Future[Response] | None = None
        self._target: ResponseTarget | None = None
        """Takes the response instead of ``_fut`` (``request_to``); cleared when told."""
        self._bodiless: Response | None = None
        """A response without a body for ``_target``, held until ``response_complete``."""
        self._write_paused = False
        """The transport asked us to stop writing (told once): a body piped meanwhile is paused."""
        self._rbody: Body | None = None
        self._pending: Response | None = None
        self._eof_ends = False
        self._paused = False
        self._chunks: list[bytes] = []
        self._qbody: Body | None = None
        self._sent = True
        self._resp_done = True
        self._upstream_keep_alive = True
        self._got_bytes = False
        self._closed = False
        self._error: BaseException | None = None
        self._read_timeout = 60.0
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        """When ``_timer`` fires (a float compare per request instead of a ``when()`` call)."""
        self._tail = b""

    @property
    def usable(self) -> bool:
        return not self._closed and self._error is None

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        self._got_bytes = True
        try:
            self.feed(data)
        except ProtocolError as exc:
            self.fail(exc)
            return
        if self._pending is not None:
            self._hand_over_stream()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.pool.forget(self)
        if self.counted:
            self.counted = False
            self.pool.lost(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._eof_ends and not self._resp_done and exc is None and self._error is None:
            self._upstream_keep_alive = False
            self.response_complete()
            return
        if not self._resp_done or not self._sent:
            err: BaseException
            if self._error is not None:
                err = self._error
            elif self._awaited() and not self._sent:
                # The request body was still going out: the upstream will not read it.
                err = WriteError(
                    "upstream closed the connection while the request body was being sent" + (f": {exc}" if exc else "")
                )
            elif self._awaited():
                err = ReadError(
                    "upstream closed the connection before responding" + (f": {exc}" if exc else ""),
                    retry_safe=self.reused and not self._got_bytes,
                )
            else:
                err = UpstreamError("upstream closed the connection mid-response")
            self._finish_with(err)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._qbody is not None:
            self._qbody.pause()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._qbody is not None:
            self._qbody.resume()

    # -- Body producer (response body) -------------------------------------------

    def pause_body(self) -> None:
        if not self._closed and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_body(self) -> None:
        if not self._closed and self._paused:
            self._paused = False
            self.transport.resume_reading()

    def cancel_body(self) -> None:
        self._upstream_keep_alive = False
        self.close()

    def _awaited(self) -> bool:
        """Someone still waits for the response head."""
        fut = self._fut
        return self._target is not None or (fut is not None and not fut.done())

    # -- exchange -----------------------------------------------------------------

    def request(
        self, head: bytes, body: Body | None, *, chunked: bool, head_only: bool, read_timeout: float
    ) -> asyncio.Future[Response]:
        """Send one request; the future resolves with the response head.

        Raises (through the future) ReadError, ReadTimeout, UpstreamError, or the
        request body's own error if the client failed mid-upload.
        """
        fut = self._fut = self.loop.create_future()
        self._send_request(head, body, chunked, head_only, read_timeout)
        return fut

    def request_to(
        self,
        target: ResponseTarget,
        head: bytes,
        body: Body | None,
        *,
        chunked: bool,
        head_only: bool,
        read_timeout: float,
    ) -> None:
        """``request`` for a caller that takes the response by callback: ``target.response(resp)``
        or ``target.error(exc)`` (the future's result or exception), called once from this
        connection's callbacks, with no future and no task wake-up in between. A whole response
        is told after the connection went back to the pool, so the target may reuse it at once."""
        self._target = target
        self._send_request(head, body, chunked, head_only, read_timeout)

    def _send_request(
        self, head: bytes, body: Body | None, chunked: bool, head_only: bool, read_timeout: float
    ) -> None:
        self.expect_no_body = head_only
        self._resp_done = False
        self._got_bytes = False
        self._read_timeout = read_timeout
        self._last_read = now = self.loop.time()
        deadline = now + read_timeout
        timer = self._timer
        if timer is None or self._timer_at > deadline:
            # Clusters sharing an endpoint share its pooled connections, and with them
            # this timer: a shorter timeout than the armed one re-arms it.
            if timer is not None:
                timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._check_timeout)
        if body is None:
            self._sent = True
            self.transport.write(head)
        else:
            self._sent = False
            self._qbody = body
            pending = body.take()
            if pending:
                parts = [head]
                for piece in pending:
                    if chunked:
                        parts += chunk(piece)
                    elif piece:
                        parts.append(piece)
                self.transport.writelines(parts)
            else:
                self.transport.write(head)
            body.pipe(_RequestSink(self, chunked))
            # Still sending (not ``self._qbody is body``: right after ``self._qbody = body`` the
            # compiled read takes the attribute to be a Body, and one sent meanwhile is None).
            if self._write_paused and not self._sent:
                body.pause()  # the head and the body's first bytes filled the buffer: pipe() resumed it

    def request_sent(self) -> None:
        self._sent = True
        qbody = self._qbody
        self._qbody = None
        if qbody is not None:
            # The last piece may have filled our socket buffer and paused the client;
            # its body is complete, so the client's next request must be read.
            qbody.resume()
        if self._resp_done:
            self._release()

    def _check_timeout(self) -> None:
        # Lazy: armed once when an exchange starts and the connection had no timer;
        # re-armed from the last read while an exchange is in progress, dropped when idle.
        self._timer = None
        if self._resp_done or self._closed:
            return
        deadline = self._last_read + self._read_timeout
        if self.loop.time() >= deadline - 0.001:
            self.fail(ReadTimeout(f"no data from upstream for {self._read_timeout:g}s"))
        else:
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._check_timeout)

    # -- parser hooks -------------------------------------------------------------

    def response_received(self, resp: Response, has_body: bool) -> None:
        self._upstream_keep_alive = resp.keep_alive
        resp.keep_alive = True
        # No Content-Length and not chunked: the body ends when the upstream closes.
        self._eof_ends = has_body and resp.content_length is None and not self._chunked
        if has_body:
            # Hold the head until the end of this read: a small response that arrives
            # whole is handed over with a bytes body, without a stream (see data_received).
            self._pending = resp
            self._chunks = []
            return
        if self._target is not None:
            self._bodiless = resp  # told by response_complete, which follows, once pooled again
            return
        self._tell(resp)

    def body_received(self, data: bytes) -> None:
        if self._pending is not None:
            self._chunks.append(data)
            return
        rbody = self._rbody
        if rbody is not None:
            rbody.feed(data)

    def _hand_over_stream(self) -> None:
        """The head arrived but not the whole body: hand the response over as a stream."""
        resp = self._pending
        assert resp is not None
        self._pending = None
        rbody = self._rbody = Body(self, resp.content_length)
        for piece in self._chunks:
            rbody.feed(piece)
        self._chunks = []
        resp.body = rbody
        self._tell(resp)

    def _tell(self, resp: Response) -> None:
        target = self._target
        if target is not None:
            self._target = None
            target.response(resp)
            return
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(resp)

    def response_complete(self) -> None:
        self._resp_done = True
        resp = self._pending
        if resp is not None:
            self._pending = None
            chunks = self._chunks
            self._chunks = []
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            resp.body = body
            resp.content_length = len(body)
        else:
            resp = self._bodiless
            self._bodiless = None
        if resp is not None:
            target = self._target
            if target is not None:
                # Told last, with this connection back in the pool: the target's next request
                # (a pipelined one, answered from within this call) may take it at once.
                self._target = None
                self._fut = None
                if self._sent:
                    self._release()
                target.response(resp)
                return
            fut = self._fut
            if fut is not None and not fut.done():
                fut.set_result(resp)
        rbody = self._rbody
        self._rbody = None
        self._fut = None
        if self._sent:
            self._release()
        if rbody is not None:
            rbody.feed_eof()

    def _release(self) -> None:
        if self._paused:
            # Paused for a slow consumer of the body that has now been fully read; an
            # idle pooled connection must be read (to notice the upstream closing it).
            self.resume_body()
        if self._upstream_keep_alive and self.usable:
            self.pool.release(self)
        else:
            self.close()

    # -- protocol switch (101) ---------------------------------------------------------

    def protocol_switched(self, rest: bytes) -> None:
        """The upstream answered 101 (asked for with ``expect_switch``): stop reading
        until ``detach`` hands the transport to a tunnel."""
        self._tail = rest
        self._resp_done = True
        self._fut = None
        self._paused = True
        self.transport.pause_reading()

    def detach(self) -> tuple[Any, bytes] | None:
        """After a 101: the transport (reading paused) and the bytes that followed the
        head, for a tunnel to take over; None if the upstream closed meanwhile. The
        connection leaves the pool's accounting and is never used again."""
        if self._closed:
            return None
        self._closed = True
        self.pool.forget(self)
        if self.counted:
            self.counted = False
            self.pool.lost(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return self.transport, self._tail

    # -- failure --------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """The exchange failed: close, then report ``exc`` to whoever waits (a callback target
        then finds the connection closed, not in the pool)."""
        if self._error is None:
            self._error = exc
        self.close()
        self._finish_with(self._error)

    def _finish_with(self, exc: BaseException) -> None:
        self._pending = None
        self._bodiless = None
        self._chunks = []
        fut = self._fut
        self._fut = None
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        target = self._target
        self._target = None
        rbody = self._rbody
        self._rbody = None
        if rbody is not None:
            rbody.feed_error(
                exc if not isinstance(exc, ProtocolError) or exc.source is Source.UPSTREAM else UpstreamError(str(exc))
            )
        qbody = self._qbody
        self._qbody = None
        if qbody is not None:
            qbody.detach()
        self._resp_done = True
        self._sent = True
        if target is not None:
            target.error(exc)

    def close(self) -> None:
        if not self._closed and self.transport is not None:
            self._closed = True
            self.pool.forget(self)
            self.transport.close()
