"""Serving a user's own HTTP service: the guard around it, streamed bodies, SSE.

A user service is a ``Service[Request, Response]``. It runs in the same drivers
as the proxy (``HttpServerApp``: HTTP/1.1, h2c and h2), behind ``HandlerGuard``,
the outermost stage of its chain, which does what the proxy's stack does with
``CatchPanic`` and ``Timeout`` but reports the handler, not an upstream:

- an exception escaping the service is answered ``500`` with one log line naming
  the server and the handler (with the traceback);
- the server's own deadline (``request_timeout``), or a ``TimeoutLayer`` in the
  handler's chain (it raises the base ``errors.TimeoutError``; the client's
  timeouts are its subclasses), passing is answered ``503`` with "handler timed
  out": nothing upstream timed out, so ``504 Gateway Timeout`` would be a lie
  (Envoy keeps 504 for upstream timeouts too);
- a ``MonolakeError`` passes to the driver as the proxy's do: a ``ProtocolError``
  is answered with its ``status_hint``, ``Overloaded`` with 503, and an error of
  an upstream the handler called through ``monolake.core.client`` (``ReadTimeout``,
  ``ConnectError``) with 504/502: that one really is an upstream's failure.

A response body may be bytes, None, or an async iterator of bytes (or str,
encoded as UTF-8). The iterator is adapted into the drivers' ``Body`` by
``_IterProducer``, a ``Body`` producer like a connection, so the drivers need no
change: the body is chunked on HTTP/1.1 (close-delimited on 1.0, Content-Length
when the response sets ``content_length``) and DATA frames on HTTP/2; every chunk is
written when it is yielded (no buffering: SSE events arrive as sent); and when the
client's transport is full the driver pauses the body, and the iterator is not
advanced again until it resumes. The iterator is first advanced when the driver
sends the head, by a task of its own; a client that goes away cancels that task
(``aclose`` runs the generator's ``finally``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from .._body import Body
from ..errors import DeadlineExceeded, MonolakeError, Source
from ..proto.http1 import Headers, Request, Response
from ..service import Factory, Layer, Replier, Stack, Taken, lane_of
from ._answers import error_response
from ._http import HttpServerApp, OnComplete
from ._settings import ServiceSettings as ServerConfig

log = logging.getLogger("monolake.handler")


class HttpService(Protocol):
    """A user's HTTP service, a ``Service[Request, Response]``: anything with
    ``async def __call__(self, req: Request) -> Response``."""

    async def __call__(self, req: Request, /) -> Response: ...


class _IterProducer:
    """Feeds a ``Body`` from an async iterator, one chunk per step, pausing when told."""

    __slots__ = ("body", "it", "label", "paused", "task", "wake")

    def __init__(self, it: AsyncIterable[bytes | str], label: str) -> None:
        self.it = it
        self.label = label
        self.paused = False
        self.wake: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.body = Body(self, None, self.start)

    def start(self) -> None:
        # Called by the driver's first demand (when it sends the head), on its loop.
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        body = self.body
        it = self.it.__aiter__()
        try:
            while True:
                while self.paused:
                    self.wake = asyncio.get_running_loop().create_future()
                    try:
                        await self.wake
                    finally:
                        self.wake = None
                try:
                    piece = await it.__anext__()
                except StopAsyncIteration:
                    break
                if isinstance(piece, str):
                    piece = piece.encode()
                elif not isinstance(piece, bytes | bytearray | memoryview):
                    raise TypeError(f"a body iterator yielded {type(piece).__name__}, not bytes or str")
                if piece:
                    body.feed(bytes(piece))
            body.feed_eof()
        except asyncio.CancelledError:
            await _aclose(it)
            raise
        except Exception as exc:
            log.error("%s: response body failed mid-stream: %s: %s", self.label, type(exc).__name__, exc, exc_info=exc)
            await _aclose(it)
            # INTERNAL: the driver's own line says "response body", not "upstream body".
            failed = MonolakeError(f"{self.label}: {type(exc).__name__}: {exc}", source=Source.INTERNAL)
            failed.__cause__ = exc
            body.feed_error(failed)

    # -- Body producer -------------------------------------------------------------

    def pause_body(self) -> None:
        self.paused = True

    def resume_body(self) -> None:
        self.paused = False
        w = self.wake
        if w is not None and not w.done():
            w.set_result(None)

    def cancel_body(self) -> None:
        task = self.task
        if task is not None and not task.done():
            task.cancel()


async def _aclose(it: AsyncIterator[Any]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.debug("closing a body iterator failed", exc_info=True)


def stream_body(it: AsyncIterable[bytes | str], label: str = "handler") -> Body:
    """A ``Body`` the drivers stream from ``it`` (see the module docstring)."""
    return _IterProducer(it, label).body


def sse_event(data: str | bytes, *, event: str | None = None, id: str | None = None, retry: int | None = None) -> bytes:
    """One Server-Sent Event, framed (WHATWG HTML §9.2.6): a ``data:`` line per line of ``data``."""
    text = data.decode() if isinstance(data, bytes) else data
    out = []
    if event is not None:
        out.append(f"event: {event}\n")
    if id is not None:
        out.append(f"id: {id}\n")
    if retry is not None:
        out.append(f"retry: {retry}\n")
    out += [f"data: {line}\n" for line in text.split("\n")]
    out.append("\n")
    return "".join(out).encode()


async def _framed(events: AsyncIterable[bytes | str]) -> AsyncIterator[bytes]:
    async for ev in events:
        yield sse_event(ev) if isinstance(ev, str) else ev


def sse_response(
    events: AsyncIterable[bytes | str], *, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A ``text/event-stream`` response streaming ``events``: a str is one event's data
    (framed with ``sse_event``), bytes are sent as they are (already framed). Each event is
    written to the client when the iterator yields it."""
    h = Headers([(b"Content-Type", b"text/event-stream"), (b"Cache-Control", b"no-cache")])
    for name, value in (headers or {}).items():
        h.set(name, value)
    return Response(status, h, _framed(events))


def _name_of(obj: object) -> str:
    t = obj if isinstance(obj, type) else type(obj)
    return f"{t.__module__}.{t.__qualname__}"


class HandlerGuard:
    """The outermost stage of a user service's chain (see the module docstring).

    ``inner`` is the chain (user layers over the user's service); ``server`` and
    ``handler`` name them in log lines; ``timeout`` is the server's request
    deadline in seconds, None for none.
    """

    __slots__ = ("_lane", "handler", "has_lane", "inner", "label", "server", "timeout")

    def __init__(self, inner: Any, server: str, handler: str, timeout: float | None = None) -> None:
        self.inner = inner
        self.server = server
        self.handler = handler
        self.timeout = timeout
        self.label = f"server={server} handler={handler}"
        # The callback lane is passed on for a chain that offers it, without a request deadline
        # (with one, the chain is awaited within it as before).
        self._lane = lane_of(inner) if timeout is None else None
        self.has_lane = self._lane is not None

    def dispatch(self, req: Request, replier: Replier[Request, Response]) -> Response | Awaitable[Response] | Taken:
        """``__call__`` on the callback lane (``LaneService``), with the same answers: the chain's
        own ``dispatch`` with its replies checked as ``__call__`` checks its result."""
        lane = self._lane
        if lane is None:
            return self(req)
        try:
            out = lane(req, _Guarded(self, req, replier))
        except Exception as exc:
            return self._mapped(req, exc)
        if isinstance(out, Taken):
            return out
        if isinstance(out, Response):
            return self._checked(req, out)
        if isinstance(out, Awaitable):
            return self._guarded(req, out)
        return self._checked(req, out)

    async def _guarded(self, req: Request, pending: Awaitable[Any]) -> Response:
        try:
            resp = await pending
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._mapped(req, exc)
        return self._checked(req, resp)

    def _mapped(self, req: Request, exc: Exception) -> Response:
        """``__call__``'s answer to ``exc`` raised by the chain without a request deadline
        (a ``MonolakeError`` is raised on, for the driver)."""
        if isinstance(exc, MonolakeError):
            if isinstance(exc, DeadlineExceeded) and exc.source is Source.INTERNAL:
                return self._timed_out(req, str(exc))
            raise exc
        if isinstance(exc, TimeoutError):
            return self._failed(req, "failed", TimeoutError("the handler's own TimeoutError"))
        return self._failed(req, "failed", exc)

    async def __call__(self, req: Request) -> Response:
        try:
            if self.timeout is None:
                resp = await self.inner(req)
            else:
                async with asyncio.timeout(self.timeout) as scope:
                    resp = await self.inner(req)
        except asyncio.CancelledError:
            raise
        except MonolakeError as exc:
            if isinstance(exc, DeadlineExceeded) and exc.source is Source.INTERNAL:
                return self._timed_out(req, str(exc))  # a TimeoutLayer in the handler's own chain
            raise  # the driver answers it as the proxy's (see the module docstring)
        except TimeoutError:
            if self.timeout is None or not scope.expired():
                return self._failed(req, "failed", TimeoutError("the handler's own TimeoutError"))
            return self._timed_out(req, f"request_timeout {self.timeout:g}s")
        except Exception as exc:
            return self._failed(req, "failed", exc)
        return self._checked(req, resp)

    def _checked(self, req: Request, resp: Any) -> Response:
        """The chain's answer as the driver can send it (a bad one: 500 and a log line)."""
        if not isinstance(resp, Response):
            why = TypeError(f"{type(resp).__name__}, not a Response")
            return self._failed(req, "returned an invalid response", why)
        body = resp.body
        if body is not None and not isinstance(body, bytes | Body):
            if isinstance(body, bytearray | memoryview):
                resp.body = bytes(body)
                resp.content_length = len(resp.body)
            elif isinstance(body, str):
                resp.body = body.encode()
                resp.content_length = len(resp.body)
            elif isinstance(body, AsyncIterable):
                resp.body = stream_body(body, self.label)
            else:
                why = TypeError(f"body is {type(body).__name__}: give bytes, str or an async iterator of bytes")
                return self._failed(req, "returned an invalid response", why)
        return resp

    def _timed_out(self, req: Request, why: str) -> Response:
        log.warning(
            "503 for %s %s peer=%s %s: handler timed out (%s)",
            req.method.decode(),
            req.original_target.decode("latin-1"),
            _peer(req),
            self.label,
            why,
        )
        return error_response(503)

    def _failed(self, req: Request, what: str, exc: BaseException) -> Response:
        log.error(
            "500 for %s %s peer=%s %s %s: %s: %s",
            req.method.decode(),
            req.original_target.decode("latin-1"),
            _peer(req),
            self.label,
            what,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return error_response(500)


class _Guarded:
    """The chain's replier on the callback lane: its replies checked by ``HandlerGuard``."""

    __slots__ = ("guard", "replier", "req")

    def __init__(self, guard: HandlerGuard, req: Request, replier: Replier[Request, Response]) -> None:
        self.guard = guard
        self.req = req
        self.replier = replier

    def reply(self, req: Request, resp: Response) -> None:
        try:
            checked = self.guard._checked(req, resp)
        except Exception as exc:  # a bug of ours: the driver answers it
            self.replier.reply_error(req, exc)
            return
        self.replier.reply(req, checked)

    def reply_error(self, req: Request, exc: BaseException) -> None:
        if not isinstance(exc, Exception):
            self.replier.reply_error(req, exc)
            return
        try:
            resp = self.guard._mapped(req, exc)
        except Exception as again:  # a MonolakeError: the driver's answer
            self.replier.reply_error(req, again)
            return
        self.replier.reply(req, resp)

    def reply_later(self, req: Request, rest: Awaitable[Response]) -> None:
        self.replier.reply_later(req, self.guard._guarded(req, rest))


def _peer(req: Request) -> str:
    ctx = req.ctx
    return str(ctx.peer) if ctx is not None else "-"


def handler_name(obj: object) -> str:
    """``module.Qualname`` of a factory, service or class, for log lines."""
    return _name_of(obj)


HTTP_PROVIDES = ("peer", "server", "start")
"""Context slots the HTTP drivers fill before calling the chain."""


def build_http_app(
    name: str,
    server: ServerConfig,
    factory: Factory[Any],
    layers: Sequence[Layer[Request, Response]] = (),
    old: object = None,
    *,
    handler: str = "",
    on_complete: OnComplete | None = None,
    on_close: Callable[[], None] | None = None,
) -> HttpServerApp:
    """An ``HttpServerApp`` for ``server`` running ``HandlerGuard`` over ``layers`` over
    ``factory``'s service (``max_concurrency`` adds a ``ConcurrencyLimitLayer`` outermost).

    ``old`` is the app this one replaces (a reload): its chain's leaf is handed to
    ``factory.make`` through ``Stack.build``, so state is kept. Raises ConfigError.
    """
    from ..service.layers import ConcurrencyLimitLayer
    from ..tls import ServerTlsContexts

    stages = list(layers)
    if server.max_concurrency is not None:
        stages.insert(0, ConcurrencyLimitLayer(server.max_concurrency))
    prev = getattr(old, "service", None)  # an HttpServerApp, or one behind a PROXY header reader
    chain = Stack(stages, factory, provided=HTTP_PROVIDES).build(prev)
    guard = HandlerGuard(chain, name, handler or _name_of(factory), server.request_timeout)
    tls = ServerTlsContexts(f"servers.{name}.tls", server.tls) if server.tls is not None else None
    return HttpServerApp(name, server, guard, on_complete=on_complete, on_close=on_close, tls=tls)
