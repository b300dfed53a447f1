"""The HTTP/1.1 server driver: one ``HttpConnection`` protocol per client connection.

Bytes arrive in ``data_received`` and go straight into the llhttp parser (through
``RequestReader``); each complete head becomes a ``Request`` handed to the service
chain in the connection's task (one per keep-alive connection, not one per request: ``_serve``).
Requests are answered strictly in order (pipelining): later heads wait in a queue, and the
connection stops reading when the queue is full.

Bodies are streamed, never held whole: a request body is a ``Body`` fed by this
connection and piped by the proxy into the upstream connection; a response body
from upstream is piped into ``_ResponseSink``, which frames it (Content-Length,
chunked, or close-delimited for HTTP/1.0) and pauses the upstream's reading when
this transport's buffer is full.

Errors never escape: a malformed request is answered with the status its
``ProtocolError`` carries (400, 413, 431, 501) and the connection closed; a failing
service is answered 5xx; both are logged, lines a client causes at a bounded rate
(``observe.RateLimitedLog``). Keep-alive, header and body timeouts are enforced by
one periodic sweep per server, not by a timer per request. The header timeout is a
deadline for the whole head from its first byte (the reader stamps ``head_since``
with the read's time), so a client trickling a byte at a time is answered 408 when
it passes, as nginx's client_header_timeout; the body timeout bounds the time
between two reads of a body being received (408 if no response started yet, else
the connection closes).

Reload and drain: a connection looks up ``app.service`` for every request, so a
reload that swaps the app's chain (``adopt``) reaches open keep-alive connections
at their next request while requests in flight finish on the chain they started
on. Draining answers each connection's next response with ``Connection: close``;
an idle connection is closed only once it has been idle for ``DRAIN_IDLE``, so a
client that is about to send its next request is answered instead of finding the
connection closed under it (the race RFC 9112 §9.3.1 otherwise leaves to client
retries); ``wait_drained`` returns when no connection is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Final

import httptools

from .._body import Body
from ..errors import (
    MonolakeError,
    ProtocolError,
    RemoteProtocolError,
    Source,
)
from ..proto.http1 import Request, Response
from ..proto.http1._parse import RequestReader
from ..proto.http1._serialize import (
    CHUNKED_LINE,
    CLOSE_LINE,
    CONTINUE_100,
    KEEP_ALIVE_LINE,
    LAST_CHUNK,
    chunk,
    content_length_line,
    response_head,
)
from ..proto.http2 import PREFACE
from ..service import TAKEN, Context, Taken
from ..service._lane import Dispatch
from ..service.layers._catch_panic import CatchPanic
from ._answers import bad_request_log, error_response, failure_response, log
from ._http_app import HttpAppBase
from ._http_app import OnComplete as OnComplete
from ._relay import Switched, Tunnel

if TYPE_CHECKING:
    from ._h2 import H2Connection  # noqa: F401  (named in a string in HttpServerApp's base class)

"""Lines about malformed or refused requests: a client chooses how many it causes."""

_PAUSE_BODY: Final = 1
_PAUSE_PIPELINE: Final = 2
_PAUSE_ERROR: Final = 4
_PAUSE_SWITCH: Final = 8

_RELEASED_PARSER: Final = httptools.HttpRequestParser(object())
"""Stands in for a closed connection's parser: its own holds bound methods of the connection, a
cycle that only a full garbage collection (rare in an idle worker) would free."""


def _discard(parts: Iterable[bytes]) -> None:
    """A closed connection's ``_writelines`` (see ``connection_lost``)."""


TASK_LINGER: Final = 1.0
"""Seconds an idle keep-alive connection keeps its task waiting for the next request (then the
sweep ends it: a connection idle longer pays one task for its next request)."""

DRAIN_IDLE: Final = 1.0
"""Seconds a connection must have been idle before a drain closes it without a response."""


class HttpServerApp(HttpAppBase["HttpConnection | H2Connection"]):
    """One HTTP server (listener) in one worker: the runtime's ``ServerApp`` (its chain,
    settings and requests in flight are ``HttpAppBase``'s, which ``_h2`` shares)."""

    def protocol_factory(self) -> HttpConnection:
        self._serving()
        return HttpConnection(self)

    def adopt(self, new: HttpServerApp) -> None:
        """Serve with ``new``'s chain and settings from now on (a reload's commit).

        Open connections use the new chain from their next request; the requests in
        flight finish on the old one; limits apply to connections accepted from now on.
        New handshakes use ``new``'s certificates; turning TLS on or off needs a new listener.
        """
        self.cfg = new.cfg
        self.install(new.service)
        self.on_complete = new.on_complete
        self.on_close = new.on_close
        self._adopt_tls(new.tls, log)

    def _sweep(self) -> None:
        assert self.loop is not None
        now = self.loop.time()
        keepalive = min(self.cfg.keepalive_timeout, DRAIN_IDLE) if self.draining else self.cfg.keepalive_timeout
        header = self.cfg.header_timeout
        for conn in list(self.conns):
            conn.check_timeouts(now, keepalive, header)
        bad_request_log.flush()

    def start_draining(self) -> None:
        """Stop keep-alive: busy connections close after their response, idle ones once idle for DRAIN_IDLE."""
        super().start_draining()
        for conn in list(self.conns):
            conn.drain()

    def close(self) -> None:
        super().close()
        if self.on_close is not None:
            self.on_close()

    def statistics(self) -> dict[str, int]:
        return {"connections": len(self.conns), "in_flight": self.in_flight}


def _sink_of(conn: HttpConnection) -> _ResponseSink | None:
    """``conn._sink`` read as its declared type. Right after ``conn._sink = sink``, mypy (and so
    mypyc) takes the attribute to be ``sink``'s type: the compiled read of a sink that finished
    meanwhile (None again) would fail its cast."""
    return conn._sink


class _ResponseSink:
    """Writes a streamed response body to the client, framing it as chosen."""

    __slots__ = ("body", "chunked", "conn", "keep_alive", "req", "resp", "sent", "transport")

    def __init__(
        self, conn: HttpConnection, req: Request, resp: Response, body: Body, chunked: bool, keep_alive: bool
    ) -> None:
        self.conn = conn
        self.transport = conn.transport
        self.req = req
        self.resp = resp
        self.body = body
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.sent = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.sent += len(data)
        if self.chunked:
            self.conn._writelines(chunk(data))
        else:
            self.transport.write(data)

    def end(self) -> None:
        if self.chunked:
            self.transport.write(LAST_CHUNK)
        self.conn.response_done(self.req, self.resp, self.sent, self.keep_alive)

    def abort(self, exc: BaseException) -> None:
        # Headers are out; the only honest signal left is closing the connection.
        internal = isinstance(exc, MonolakeError) and exc.source is Source.INTERNAL  # a handler's own body
        log.warning(
            "%s body failed mid-response: %s %s peer=%s error=%s",
            "response" if internal else "upstream",
            self.req.method.decode(),
            self.req.original_target.decode("latin-1"),
            self.req.ctx.peer,
            exc,
        )
        self.conn.response_done(self.req, self.resp, self.sent, False)


class HttpConnection(RequestReader, asyncio.Protocol):
    """One client connection. See the module docstring.

    Upgrade and CONNECT requests (``tunnels``): reading stops after such a head and
    what follows is held until the answer: a response carrying a ``Switched`` (a 101,
    or a 2xx to CONNECT, from ``proxy._tunnel``) turns the connection into a
    ``Tunnel``, which relays bytes until both sides close and is logged then; any
    other answer is sent as usual and the held bytes are parsed as HTTP/1.1.
    """

    tunnels = True

    def __init__(self, app: HttpServerApp) -> None:
        self.app = app
        limits = app.cfg.limits
        self.max_header_bytes = limits.max_header_bytes
        self.max_request_line_bytes = limits.max_request_line_bytes
        self.max_headers = limits.max_headers
        self.max_body_bytes = limits.max_body_bytes
        self.max_pipelined = limits.max_pipelined
        self.loop = app.loop or asyncio.get_running_loop()
        self.reader_init()
        self.transport: Any = None
        self.peer = ""
        # Pipelined heads waiting (at most max_pipelined): a list, as an idle connection's empty
        # deque would hold a 64-slot block (~600 bytes) per connection.
        self._queue: list[Request] = []
        self._current: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[Request | None] | None = None
        """What the connection's task awaits between requests (None while it serves one)."""
        self._lane_req: Request | None = None
        """The request taken on the service's callback lane (``app.lane``), until its reply."""
        self._taken: Taken | None = None
        """What the lane's ``dispatch`` gave for ``_lane_req``: cancelled if the client goes away."""
        self._rest: Awaitable[Response] | None = None
        """What the task awaits for its next request instead of the service (the lane's slow path)."""
        self._dispatching = False
        self._redo = False
        """A request started while ``_dispatch`` ran: its loop takes it (no recursion per request)."""
        self._write_paused = False
        """The transport asked us to stop writing (told once): a sink made meanwhile starts paused."""
        self._rbody: Body | None = None
        self._sink: _ResponseSink | None = None
        self._paused = 0
        self._closing = False
        self._closed = False
        self._pending_error: ProtocolError | None = None
        self._last = self.loop.time()
        self._held_for: Request | None = None
        self._held = b""
        self._tunnel: Tunnel | None = None
        self._eof = False
        self._h2_probe = app.cfg.http2.enabled
        self._upload_open = False  # a response started while the upload still streams upstream
        self._continue_due = False  # the body's sender waits for our 100 Continue (not timed meanwhile)
        self._close_after_upload = False
        # Plain transports send writelines in one writev; a TLS transport makes a record of each
        # piece, so there one joined write (one record) is cheaper. Chosen in connection_made.
        self._writelines: Callable[[Iterable[bytes]], None] = self._write_joined
        """Until the first bytes: whether they may be the HTTP/2 client preface (h2c prior knowledge)."""
        self._h2_held = b""

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.app.tls is None:
            self._writelines = transport.writelines  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else "unix"
        self.app.conns.add(self)
        if self.app.draining:
            self._closing = True
        if self._h2_probe and self.app.tls is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self._to_h2(b"")

    def _write_joined(self, parts: Iterable[bytes]) -> None:
        self.transport.write(b"".join(parts))

    def data_received(self, data: bytes) -> None:
        self._last = now = self.loop.time()
        if self._h2_probe and self._probe_h2(data):
            return
        try:
            self.feed(data, now)
        except ProtocolError as exc:
            self._protocol_error(exc)
        except Exception as exc:  # a bug of ours must not take the worker down
            log.exception("internal error while parsing a request from %s", self.peer)
            self._protocol_error(ProtocolError(str(exc), status_hint=500, source=Source.INTERNAL))

    def _probe_h2(self, data: bytes) -> bool:
        """First bytes of a connection: hand it to HTTP/2 if they are the client preface
        (RFC 9113 §3.3). True when the bytes were taken (handed over, or a preface prefix kept)."""
        held = self._h2_held
        if held:
            data = held + data
            self._h2_held = b""
        if data.startswith(PREFACE):
            self._to_h2(data)
            return True
        if len(data) < len(PREFACE) and PREFACE.startswith(data):
            self._h2_held = data  # the preface split across reads
            return True
        self._h2_probe = False
        if held:
            self.data_received(data)
            return True
        return False

    def _to_h2(self, data: bytes) -> None:
        from ._h2 import H2Connection  # imported on first use: HTTP/1.1-only servers never load it

        self._h2_probe = False
        try:
            conn = H2Connection(self.app, self.transport, self.peer)
        except Exception:  # e.g. MONOLAKE_H2_CODEC=native where it is not built
            log.exception("cannot serve HTTP/2 to %s on %s", self.peer, self.app.name)
            self.abort()
            return
        self.app.conns.discard(self)  # not conn_done(): the connection lives on as ``conn``
        self._closed = True
        self.transport.set_protocol(conn)
        conn.start(data)

    def eof_received(self) -> bool | None:
        # The client half-closed: answer what is in flight, then close. A TLS transport has
        # no half-close (it closes itself whatever we return, and warns about a True).
        self._closing = True
        self._eof = True
        if self._current is None:
            self._close()
        return True if self.transport.can_write_eof() else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.app.conn_done(self)
        if self._rbody is not None:
            self._rbody.feed_error(ConnectionResetError("client closed the connection"))
            self._rbody = None
        self._lane_req = None
        taken = self._taken
        if taken is not None:  # on the lane: what a task's cancellation does on the coroutine path
            self._taken = None
            try:
                taken.cancel()
            except Exception:
                log.exception("internal error while cancelling a request of %s", self.peer)
        rest = self._rest
        if rest is not None:  # handed to a task that never ran
            self._rest = None
            if isinstance(rest, Coroutine):
                rest.close()
        self._end_task()
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink.body.cancel()
        if self._current is not None:
            self._current = None
            self.app.request_done()
        self._queue.clear()
        # Freed now by refcount, not at the next full collection: the parser holds bound methods
        # of this connection, and so does _writelines on TLS (self._write_joined).
        self._parser = _RELEASED_PARSER
        self._writelines = _discard

    def pause_writing(self) -> None:
        self._write_paused = True
        sink = self._sink
        if sink is not None:
            sink.body.pause()

    def resume_writing(self) -> None:
        self._write_paused = False
        sink = self._sink
        if sink is not None:
            sink.body.resume()

    # -- flow control (Body producer) ---------------------------------------------

    def _pause(self, reason: int) -> None:
        if not self._paused and self.transport is not None and not self._closed:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self._closed:
                self.transport.resume_reading()
                self._last = self.loop.time()  # the body timeout counts from here, not from the pause

    def pause_body(self) -> None:
        self._pause(_PAUSE_BODY)

    def resume_body(self) -> None:
        self._resume(_PAUSE_BODY)

    def cancel_body(self) -> None:
        self._closing = True

    # -- parser hooks -------------------------------------------------------------

    def request_received(self, req: Request, has_body: bool, content_length: int | None) -> None:
        req.ctx = Context(self.peer, self.app.name, self._last)
        if has_body:
            expect = self._continue_due = req.expect_continue
            body = Body(self, content_length, self._send_continue if expect else None)
            req.body = self._rbody = body
        else:
            self._rbody = None
        if self._current is None:
            self._start(req)
        else:
            self._queue.append(req)
            if len(self._queue) >= self.max_pipelined:
                self._pause(_PAUSE_PIPELINE)

    def body_received(self, data: bytes) -> None:
        rbody = self._rbody
        if rbody is not None:
            rbody.feed(data)

    def request_complete(self) -> None:
        rbody = self._rbody
        if rbody is not None:
            self._rbody = None
            rbody.feed_eof()
        self._upload_open = False
        if self._close_after_upload:
            self._close()

    # -- request lifecycle ----------------------------------------------------------

    def _start(self, req: Request) -> None:
        self._current = req
        self.app.in_flight += 1
        lane = self.app.lane
        # The lane when the service has one and no task is serving (none, or one waiting for a
        # request); a held Upgrade/CONNECT request keeps the task's path.
        if lane is not None and self._held_for is not req and (self._task is None or self._waiter is not None):
            if self._dispatching:
                self._redo = True
            else:
                self._dispatch(req, lane)
            return
        self._to_task(req, None)

    def _to_task(self, req: Request, rest: Awaitable[Response] | None) -> None:
        """Serve ``req`` in the connection's task (awaiting ``rest`` if given, else the service)."""
        self._rest = rest
        waiter = self._waiter
        if waiter is not None:  # the connection's task waits for its next request
            self._waiter = None
            if not waiter.done():  # (done: cancelled with its task, by a loop shutting down)
                waiter.set_result(req)
                return
            self._task = None
        if self._task is None:
            self._task = self.loop.create_task(self._serve(req))
        # else: started from within the task (its response's response_done, or the bytes held
        # for a switch that was answered as HTTP/1.1): it takes ``_current`` when it loops.

    def _dispatch(self, req: Request, lane: Dispatch) -> None:
        """Hand ``req`` to the service's callback lane: no task, no future. An answer given at
        once is sent here, and the next request (pipelined) taken in this loop, not by recursion."""
        self._dispatching = True
        try:
            while True:
                self._redo = False
                self._lane_req = req
                try:
                    out = lane(req, self)
                except Exception as exc:
                    self.reply_error(req, exc)
                    out = TAKEN
                if isinstance(out, Taken):
                    if self._awaits(req):  # else replied already (from within dispatch)
                        self._taken = out
                elif out is None:  # not one of the three answers: a bug of the service's
                    self.reply_error(req, TypeError(f"{type(self.app.inner).__name__}.dispatch returned None"))
                elif isinstance(out, Response):
                    if self._awaits(req):
                        self._lane_req = None
                        self._answer(req, out)
                else:  # an awaitable: the rest waits in the task
                    self._lane_req = None
                    self._to_task(req, out)
                    return
                nxt = self._current
                if not self._redo or nxt is None or nxt is req:
                    return
                req = nxt
        finally:
            self._dispatching = False

    def _awaits(self, req: Request) -> bool:
        """``req`` is on the lane and not answered yet. A method, not ``self._lane_req is req``
        inline: right after ``self._lane_req = req`` mypy (and so mypyc) takes the attribute to
        be a Request, and the compiled read of one replied meanwhile (None) would fail its cast."""
        return self._lane_req is req

    def _answer(self, req: Request, resp: Response) -> None:
        if self._current is req and not self._closed:
            try:
                self._send(req, resp)
            except Exception:
                log.exception("internal error while sending a response to %s", self.peer)
                self._close()

    def _answer_for(self, req: Request, exc: BaseException) -> Response:
        """The response for a service's failure: CatchPanic's (outermost, done by the driver), else the driver's."""
        panic = self.app.panic
        return self._failure(req, exc) if panic is None else self._panicked(panic, req, exc)

    # -- the callback lane's replies (``Replier``) -------------------------------------

    def reply(self, req: Request, resp: Response) -> None:
        """The lane's answer to ``req`` (ignored when not awaited: the client went away)."""
        if self._lane_req is not req:
            return
        self._lane_req = None
        self._taken = None
        self._answer(req, resp)

    def reply_error(self, req: Request, exc: BaseException) -> None:
        """``req`` failed on the lane: answered as the task would answer the exception."""
        if self._lane_req is not req:
            return
        self._lane_req = None
        self._taken = None
        try:
            resp = self._answer_for(req, exc)
        except BaseException:  # on_panic raised CancelledError: no answer to give
            log.exception("internal error while answering a failed request of %s", self.peer)
            self._close()
            return
        self._answer(req, resp)

    def reply_later(self, req: Request, rest: Awaitable[Response]) -> None:
        """``req`` left the lane: its task awaits ``rest`` for the answer."""
        if self._lane_req is not req:
            if isinstance(rest, Coroutine):
                rest.close()
            return
        self._lane_req = None
        self._taken = None
        self._to_task(req, rest)

    async def _serve(self, req: Request) -> None:
        """The connection's task: serves ``req``, then each next request, one at a time. It lives
        across keep-alive requests (a future per request instead of a Task: no task creation,
        registration and teardown per request) and ends once the connection has been idle for
        ``TASK_LINGER`` (the sweep), so an idle connection holds no task. A keep-alive
        connection's requests thus share one task and its contextvars context, as a streams
        connection's calls share their worker's."""
        me = asyncio.current_task()
        try:
            while True:
                app = self.app  # per request: a reload reaches keep-alive connections
                # An outermost CatchPanic (the proxy's stacks) is done here (``app.panic``, resolved
                # at install): its inner service is awaited directly, one coroutine level less.
                panic = app.panic
                rest = self._rest
                try:
                    if rest is not None:  # the lane's slow path for ``req``
                        self._rest = None
                        resp = await rest
                    else:
                        resp = await app.inner(req)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    resp = self._failure(req, exc) if panic is None else self._panicked(panic, req, exc)
                if self._held_for is req:
                    self._switch(req, resp)
                elif self._current is req and not self._closed:
                    try:
                        self._send(req, resp)
                    except Exception:
                        log.exception("internal error while sending a response to %s", self.peer)
                        self._close()
                nxt = self._current
                if nxt is not None and nxt is not req:
                    req = nxt  # started while this one was answered (pipelined, or held bytes)
                    continue
                if self._closed or self._tunnel is not None or self._task is not me:
                    return
                waiter: asyncio.Future[Request | None] = self.loop.create_future()
                self._waiter = waiter
                got = await waiter
                if got is None:  # idle past TASK_LINGER, or closed: a new task serves what comes next
                    return
                req = got
        finally:
            if self._task is me:  # ended by an error: the next request gets a new task
                self._task = None
                self._waiter = None

    def _end_task(self) -> None:
        """End the connection's task: at once if it waits for a request, else by cancelling what it serves."""
        task = self._task
        if task is None:
            return
        self._task = None
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        elif not task.done():
            task.cancel()

    def _failure(self, req: Request, exc: BaseException) -> Response:
        return failure_response(req, exc, self.peer, self.app.name)

    def _panicked(self, panic: CatchPanic[Request, Response], req: Request, exc: BaseException) -> Response:
        """What ``panic`` (the outermost layer, awaited through) would have made of ``exc``."""
        if isinstance(exc, Exception) and not isinstance(exc, MonolakeError):
            try:
                return panic.panicked(req, exc)
            except asyncio.CancelledError:
                raise
            except BaseException as again:  # raised by on_panic: the driver's answer, as before
                exc = again
        return self._failure(req, exc)

    def _send_continue(self) -> None:
        self._continue_due = False
        self._last = self.loop.time()  # the body timeout runs from the client's go-ahead
        if not self._closed and self._sink is None:
            self.transport.write(CONTINUE_100)

    def _send(self, req: Request, resp: Response) -> None:
        keep_alive = req.keep_alive and resp.keep_alive and not self._closing
        rbody = req.body
        if isinstance(rbody, Body) and not rbody.done:
            # The body was not (fully) read: we cannot find the next request in it.
            keep_alive = False
            if rbody.piped:
                # Full duplex: the upstream answers while it still takes the upload. Keep
                # relaying it; the connection closes once both directions are done.
                self._upload_open = True
            else:
                rbody.detach()
        status = resp.status
        body = resp.body
        no_body = req.method == b"HEAD" or status < 200 or status in (204, 304)
        chunked = False
        if no_body:
            framing = (
                content_length_line(resp.content_length)
                if resp.content_length is not None and req.method == b"HEAD"
                else b""
            )
        elif body is None:
            framing = b"Content-Length: 0\r\n"
        elif isinstance(body, bytes):
            framing = content_length_line(len(body))
        elif resp.content_length is not None:
            framing = content_length_line(resp.content_length)
        elif req.version == b"1.1":
            framing = CHUNKED_LINE
            chunked = True
        else:
            framing = b""
            keep_alive = False
        if not keep_alive:
            framing += CLOSE_LINE
        elif req.version == b"1.0":
            framing += KEEP_ALIVE_LINE
        head = response_head(status, resp.headers, framing, resp.reason)
        transport = self.transport
        if isinstance(body, Body):
            if no_body:
                transport.write(head)
                body.cancel()
                self.response_done(req, resp, 0, keep_alive and body.done)
                return
            # Send the head with whatever body already arrived in one syscall; a small
            # response that is complete is finished right here, without a sink.
            pending = body.take()
            sent = 0
            if pending:
                parts = [head]
                for piece in pending:
                    if not piece:
                        continue
                    sent += len(piece)
                    if chunked:
                        parts += chunk(piece)
                    else:
                        parts.append(piece)
                if body.complete:
                    if chunked:
                        parts.append(LAST_CHUNK)
                    self._writelines(parts)
                    self.response_done(req, resp, sent, keep_alive)
                    return
                self._writelines(parts)
            else:
                transport.write(head)
            sink = self._sink = _ResponseSink(self, req, resp, body, chunked, keep_alive)
            sink.sent = sent
            body.pipe(sink)
            if self._write_paused and _sink_of(self) is sink:
                # The head and the body's first bytes filled the buffer before the sink existed:
                # that pause_writing is not told again, so the body is paused here.
                body.pause()
        elif no_body or not body:
            transport.write(head)
            self.response_done(req, resp, 0, keep_alive)
        else:
            self._writelines((head, body))
            self.response_done(req, resp, len(body), keep_alive)

    def response_done(self, req: Request, resp: Response, sent: int, keep_alive: bool) -> None:
        """The response to ``req`` is fully written: log it, then serve the next one."""
        self._sink = None
        if self._current is req:
            self._current = None
            self.app.request_done()
        cb = self.app.on_complete
        if cb is not None:
            try:
                cb(req, resp, sent)
            except Exception:
                log.exception("logging phase failed")
        if self._closed:
            return
        if not keep_alive or self._closing:
            if self._upload_open:
                self._close_after_upload = True
            else:
                self._close()
            return
        if self._queue:
            nxt = self._queue.pop(0)
            self._resume(_PAUSE_PIPELINE)
            self._start(nxt)
        elif self._pending_error is not None:
            self._answer_error(self._pending_error)
        else:
            # Idle now: keepalive_timeout counts from here, not from the request's last read
            # (else a response slower than the timeout was followed by an immediate close).
            self._last = self.loop.time()

    # -- protocol switches (Upgrade, CONNECT) ------------------------------------------

    def switch_held(self, req: Request, rest: bytes) -> None:
        self._held_for = req
        self._held = rest
        self._pause(_PAUSE_SWITCH)

    def _switch(self, req: Request, resp: Response) -> None:
        """Answer a held request: tunnel if the answer switched, else go on as HTTP/1.1."""
        self._held_for = None
        held, self._held = self._held, b""
        up = resp.body
        if isinstance(up, Switched):
            if self._current is not req or self._closed:
                up.close()
                return
            framing = b"Connection: upgrade\r\nUpgrade: %s\r\n" % up.upgrade if up.upgrade else b""
            self.transport.write(response_head(resp.status, resp.headers, framing, resp.reason))
            tunnel = self._tunnel = Tunnel(
                self.loop, self.app.name, self.peer, lambda t: self._tunnel_done(t, req, resp)
            )
            cfg = self.app.cfg
            tunnel.attach(self.transport, up, held, cfg.splice_after if cfg.splice else -1)
            if self._eof:  # the client half-closed while its request was held: pass it on
                tunnel.eof_received()
            return
        if self._current is not req or self._closed:
            return
        try:
            self._send(req, resp)
        except Exception:
            log.exception("internal error while sending a response to %s", self.peer)
            self._close()
            return
        self._resume(_PAUSE_SWITCH)
        if held and not self.transport.is_closing():
            self.data_received(held)

    def _tunnel_done(self, tunnel: Tunnel, req: Request, resp: Response) -> None:
        self._tunnel = None
        self._closed = True
        self.app.conn_done(self)
        if self._current is req:
            self._current = None
            self._task = None
            self.app.request_done()
        log.info(
            "tunnel closed: server=%s client=%s %s %s up=%d down=%d duration=%.3fs",
            self.app.name,
            self.peer,
            req.method.decode(),
            tunnel.endpoint,
            tunnel.sent_up,
            tunnel.sent_down,
            self.loop.time() - tunnel.started,
        )
        cb = self.app.on_complete
        if cb is not None:
            try:
                cb(req, resp, tunnel.sent_down)
            except Exception:
                log.exception("logging phase failed")

    # -- errors and closing ---------------------------------------------------------

    def _protocol_error(self, exc: ProtocolError) -> None:
        bad_request_log.log("bad request from %s on %s: %d %s", self.peer, self.app.name, exc.status_hint, exc)
        self._pause(_PAUSE_ERROR)
        rbody = self._rbody
        if rbody is not None:
            # The error is in a body being received: the request it belongs to fails
            # with it (its service sees the error), and the connection closes after.
            self._rbody = None
            rbody.feed_error(exc)
            self._closing = True
            if self._current is None:
                self._close()
            return
        if self._current is None and not self._queue:
            self._answer_error(exc)
        else:
            self._pending_error = exc

    def _answer_error(self, exc: ProtocolError) -> None:
        resp = error_response(exc.status_hint, close=True)
        head = response_head(resp.status, resp.headers, content_length_line(len(resp.body)) + CLOSE_LINE)
        self.transport.writelines((head, resp.body))
        self._close()

    def drain(self) -> None:
        self._closing = True
        self._queue.clear()
        if self._current is None and self.loop.time() - self._last >= DRAIN_IDLE:
            self._close()

    def check_timeouts(self, now: float, keepalive: float, header: float) -> None:
        """The sweep's look at this connection (once a second): keep-alive idle time, the head's
        deadline from its first byte, and body progress."""
        if self._closed:
            return
        rbody = self._rbody
        if rbody is not None:
            # A body is being received. Not timed while we paused reading (the upstream is
            # slow, or requests queue) nor while the client waits for a 100 Continue that we
            # have not sent (and it has not sent anyway): it cannot make progress then.
            if (
                not self._paused
                and not (self._continue_due and not rbody.received)
                and now - self._last > self.app.cfg.body_timeout
            ):
                self._body_timeout()
            return
        if self._current is not None:
            if self._tunnel is not None:
                self._tunnel.check_idle(now, self.app.cfg.idle_timeout)
            return
        if self._in_head and self._head_bytes:
            if now - self.head_since > header:
                bad_request_log.log("request head timeout: %s on %s: 408", self.peer, self.app.name)
                self._answer_error(ProtocolError("request head timeout", status_hint=408))
        elif now - self._last > keepalive:
            self._close()
        elif self._waiter is not None and now - self._last > TASK_LINGER:
            self._end_task()

    def _body_timeout(self) -> None:
        """No body bytes for ``body_timeout``: the request fails with 408 (its service sees the
        error) if no response started; once one has, closing is the only signal left."""
        if self._sink is not None or self._upload_open:
            bad_request_log.log("request body timeout: %s on %s: closed", self.peer, self.app.name)
            self._close()  # connection_lost fails the body, so the upstream side stops too
            return
        self._protocol_error(RemoteProtocolError("request body timeout", status_hint=408, source=Source.DOWNSTREAM))

    def _close(self) -> None:
        if not self._closed and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self._tunnel is not None:
            self._tunnel.abort()
        elif not self._closed and self.transport is not None:
            self.transport.abort()
