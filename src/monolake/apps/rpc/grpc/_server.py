"""A gRPC server as an HTTP service: ``GrpcServer`` is the ``Factory`` of a ``GrpcService``
that the HTTP/2 driver (``core/server/_h2.py``, native nghttp2 codec) runs per stream.

A servicer is an object with one method per RPC, named as in the ``.proto``, as
grpcio's asyncio servicers are: ``async def M(self, request, context) -> Reply``;
a server-streaming method is an async generator (or calls ``await context.write``);
a client-streaming one takes an async iterator of requests; bidi both. A plain ``def``
(or generator) is allowed for CPU-only work: it runs on the loop, so it must not block.

Per call: the path picks the method (a dict lookup, routes built at ``make``);
``grpc-timeout`` becomes a deadline the handler sees (``context.time_remaining()``)
and passing it ends the call with DEADLINE_EXCEEDED; metadata comes in with ``-bin``
values decoded; messages are length-prefixed (gzip when the client says so), bounded by
``max_receive_message_bytes`` (RESOURCE_EXHAUSTED past it). A unary answer goes out in one
piece (HEADERS, DATA, trailers queued together); a streaming one through a ``Body`` whose
producer is the handler's task, paused while the client's window is closed. Errors end
the call with trailers (a Trailers-Only response when nothing was sent): ``RpcError`` as
given, an invalid request message INTERNAL (logged), any other exception UNKNOWN
(logged with its traceback); the worker never sees them.

Nothing here is per request that can be done at ``make``: no deadline scope without
``grpc-timeout``, no compression without ``grpc-encoding``.
"""

from __future__ import annotations

import asyncio
import contextvars
import gzip
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, NoReturn

from google.protobuf.message import DecodeError, Message

from ....core._body import Body
from ....core.proto.grpc import parse_timeout
from ....core.proto.http1 import Headers, Request, Response
from ....core.service import Factory
from . import _metainfo
from ._protos import MethodInfo, Protos, builtin_protos
from ._status import Metadata, RpcError, StatusCode, metadata_in, metadata_out, status_fields

log = logging.getLogger("monolake.grpc")

DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024
"""grpcio's default bound on one received message (bytes)."""

UNKNOWN_METHOD = "-unknown-"
"""The method an unknown path is counted as (``on_call``)."""

CALL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("monolake_grpc_deadline", default=None)
"""The deadline (loop time) of the server call this task serves: a ``GrpcClient`` call made from
the handler ends by it too (the caller's deadline propagates down the chain)."""

DRAIN_CAP = 64 * 1024 * 1024
"""Most request bytes read and dropped after a unary call failed early (see ``_Requests.drain``)."""

UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI = range(4)
_KIND_NAMES = ("unary", "server_stream", "client_stream", "bidi_stream")


class ServicerContext:
    """What a handler knows about its call, and how it shapes the answer (grpcio's names)."""

    __slots__ = (
        "_call",
        "_code",
        "_details",
        "_fields",
        "_initial",
        "_message",
        "_trailers",
        "deadline",
        "metadata",
        "method",
        "peer_addr",
    )

    def __init__(self, method: str, fields: list[tuple[bytes, bytes]], deadline: float | None, peer: str) -> None:
        self.method = method
        """The full method path, "/package.Service/Method"."""
        self._fields = fields
        self.metadata: list[tuple[str, str | bytes]] | None = None
        self.deadline = deadline
        """The loop time (``asyncio.get_running_loop().time()``) the call must end by, or None."""
        self.peer_addr = peer
        self._trailers: Metadata = ()
        self._initial: Metadata = ()
        self._code: StatusCode | None = None
        self._message = ""
        self._details: bytes | None = None
        self._call: _StreamCall | None = None

    def invocation_metadata(self) -> list[tuple[str, str | bytes]]:
        """The client's metadata: (key, value), ``-bin`` values as bytes (decoded on first use)."""
        md = self.metadata
        if md is None:
            md = self.metadata = metadata_in(self._fields)
        return md

    def peer(self) -> str:
        return self.peer_addr

    def time_remaining(self) -> float | None:
        """Seconds left before the client's deadline, None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    def set_trailing_metadata(self, md: Metadata) -> None:
        metadata_out(md)  # reject reserved keys here, where the handler can see why
        self._trailers = tuple(md)

    async def send_initial_metadata(self, md: Metadata) -> None:
        """Metadata for the response headers; a streaming call sends them at once."""
        metadata_out(md)
        self._initial = tuple(md)
        call = self._call
        if call is not None:
            call.ready()

    def set_code(self, code: StatusCode | int) -> None:
        """The status the call ends with when the handler returns normally."""
        self._code = StatusCode(code)

    def set_details(self, message: str) -> None:
        self._message = message

    def abort(self, code: StatusCode | int, message: str = "", details: bytes | None = None) -> NoReturn:
        """End the call now with ``code`` (raises ``RpcError``)."""
        raise RpcError(code, message, details, self._trailers)

    async def write(self, message: Message) -> None:
        """Send one message of a server-streaming or bidi call (instead of yielding it)."""
        call = self._call
        if call is None:
            raise RuntimeError("context.write() is for streaming responses")
        await call.send(message)

    def cancelled(self) -> bool:
        call = self._call
        return call is not None and call.cancelled


class _Route:
    """One method as served: its info, the bound handler and how to call it."""

    __slots__ = ("fn", "info", "is_gen", "is_sync", "is_sync_gen", "kind", "path")

    def __init__(self, info: MethodInfo, fn: Callable[..., Any]) -> None:
        self.info = info
        self.fn = fn
        self.path = info.path
        cs, ss = info.client_streaming, info.server_streaming
        self.kind = BIDI if cs and ss else CLIENT_STREAM if cs else SERVER_STREAM if ss else UNARY
        self.is_gen = inspect.isasyncgenfunction(fn)
        self.is_sync_gen = inspect.isgeneratorfunction(fn)
        self.is_sync = not (self.is_gen or self.is_sync_gen or inspect.iscoroutinefunction(fn))
        """A plain ``def`` (CPU-only work): called on the loop, its result used as is."""


def _frame(payload: bytes, compress: bool) -> bytes:
    if compress:
        payload = gzip.compress(payload, 1)
        return b"\x01" + len(payload).to_bytes(4, "big") + payload
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class _Requests:
    """The request messages of one call, read from its body as they arrive."""

    __slots__ = ("body", "buf", "cls", "gzip", "limit", "route")

    def __init__(self, body: Body | None, cls: type[Message], limit: int, gzip_in: bool, route: str) -> None:
        self.body = body
        self.buf = bytearray()
        self.cls = cls
        self.limit = limit
        self.gzip = gzip_in
        self.route = route

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Message:
        msg = await self.next()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def next(self) -> Message | None:
        buf = self.buf
        while True:
            if len(buf) >= 5:
                n = int.from_bytes(buf[1:5], "big")
                if n > self.limit:
                    raise RpcError(
                        StatusCode.RESOURCE_EXHAUSTED, f"received message larger than max ({n} vs. {self.limit})"
                    )
                if len(buf) >= 5 + n:
                    flag = buf[0]
                    payload = bytes(buf[5 : 5 + n])
                    del buf[: 5 + n]
                    return self._decode(flag, payload)
            body = self.body
            chunk = await body.read() if body is not None else b""
            if not chunk:
                if buf:
                    raise RpcError(StatusCode.INTERNAL, "the request ended inside a message")
                return None
            if not buf and len(chunk) >= 5:
                # The usual chunk (a stream's DATA frame) is one whole message: decoded from it, not copied.
                n = int.from_bytes(chunk[1:5], "big")
                if len(chunk) == 5 + n and n <= self.limit:
                    return self._decode(chunk[0], chunk[5:])
            buf += chunk

    def _decode(self, flag: int, payload: bytes) -> Message:
        if flag:
            if flag != 1 or not self.gzip:
                raise RpcError(StatusCode.INTERNAL, "compressed message without a known grpc-encoding")
            try:
                payload = gzip.decompress(payload)
            except (OSError, EOFError) as exc:
                raise RpcError(StatusCode.INTERNAL, f"cannot decompress the request: {exc}") from None
            if len(payload) > self.limit:
                raise RpcError(StatusCode.RESOURCE_EXHAUSTED, "decompressed message larger than max")
        try:
            return self.cls.FromString(payload)
        except DecodeError as exc:
            log.warning("grpc %s: invalid request message: %s", self.route, exc)
            raise RpcError(StatusCode.INTERNAL, "invalid request message (protobuf parse error)") from None

    async def drain(self, cap: int) -> None:
        """Read and drop the rest of the request (see ``drain_body``)."""
        self.buf.clear()
        await drain_body(self.body, cap)

    async def one(self) -> Message:
        body = self.body
        if body is not None and body.done and not self.buf:
            # The whole request came with its headers (the usual unary call): no awaiting.
            self.buf += b"".join(body.take())
            if body.complete:
                self.body = None
        msg = await self.next()
        if msg is None:
            raise RpcError(StatusCode.INTERNAL, "no request message on a unary call")
        if await self.next() is not None:
            raise RpcError(StatusCode.INTERNAL, "more than one request message on a unary call")
        return msg


async def drain_body(body: Body | None, cap: int = 0, seconds: float = 1.0) -> None:
    """Read and drop what is left of a request body, at most ``cap`` bytes (``DRAIN_CAP``) and
    ``seconds``: a call answered while the client still sends is reset (NO_ERROR) after the
    answer, and grpcio and h2 clients can take that reset for the call's outcome when it comes
    while they are mid-message."""
    if body is None or body.done:
        return
    cap = cap or DRAIN_CAP
    seen = 0
    try:
        async with asyncio.timeout(seconds):
            while seen < cap:
                chunk = await body.read()
                if not chunk:
                    return
                seen += len(chunk)
    except Exception:  # a timeout, or the client's reset: nothing more to drop
        return


class _Silent:
    """The producer of a body that is complete when handed over (nothing to pause)."""

    def pause_body(self) -> None:
        return None

    def resume_body(self) -> None:
        return None

    def cancel_body(self) -> None:
        return None


_SILENT = _Silent()


class _StreamCall:
    """A streaming response: the handler's task produces the body's messages."""

    __slots__ = (
        "body",
        "cancelled",
        "compress",
        "head",
        "limit",
        "paused",
        "sent",
        "status",
        "task",
        "wake",
    )

    def __init__(self, compress: bool, limit: int) -> None:
        self.body = Body(self, None)
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.paused = False
        self.wake: asyncio.Future[None] | None = None
        self.cancelled = False
        self.compress = compress
        self.limit = limit
        self.sent = 0
        self.status: tuple[int, str, bytes | None, Metadata] | None = None

    def ready(self) -> None:
        if not self.head.done():
            self.head.set_result(None)

    async def send(self, message: Message) -> None:
        while self.paused:
            self.wake = asyncio.get_running_loop().create_future()
            try:
                await self.wake
            finally:
                self.wake = None
        payload = message.SerializeToString()
        if len(payload) > self.limit:
            raise RpcError(StatusCode.RESOURCE_EXHAUSTED, f"response message larger than max ({len(payload)})")
        self.sent += 1
        self.body.feed(_frame(payload, self.compress))
        self.ready()

    # -- Body producer -------------------------------------------------------------

    def pause_body(self) -> None:
        self.paused = True

    def resume_body(self) -> None:
        self.paused = False
        w = self.wake
        if w is not None and not w.done():
            w.set_result(None)

    def cancel_body(self) -> None:
        self.cancelled = True
        task = self.task
        if task is not None and not task.done():
            task.cancel()


def _backward() -> list[tuple[bytes, bytes]]:
    """Metainfo the handler sends back to its caller (rpc-backward-*), if any."""
    mi = _metainfo.peek()
    return _metainfo.backward_fields(mi) if mi is not None and mi.backward else []


def _trailers_only(code: int, message: str, details: bytes | None, trailers: Metadata, extra: list[Any]) -> Response:
    fields = [(b"content-type", b"application/grpc"), *extra, *status_fields(code, message, details, trailers)]
    fields += _backward()
    return Response(200, Headers(fields), None)


class GrpcService:
    """The per-worker service answering gRPC calls (built by ``GrpcServer.make``)."""

    __slots__ = (
        "accept",
        "compression",
        "health",
        "max_receive",
        "max_send",
        "on_call",
        "protos",
        "routes",
        "servicers",
    )

    def __init__(
        self,
        routes: dict[bytes, _Route],
        *,
        servicers: dict[str, Any],
        protos: list[Protos],
        max_receive: int,
        max_send: int,
        compression: str | None,
        health: HealthServicer | None,
        on_call: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.routes = routes
        self.servicers = servicers
        self.protos = protos
        self.max_receive = max_receive
        self.max_send = max_send
        self.compression = compression
        self.accept = [(b"grpc-accept-encoding", b"identity,gzip")]
        self.health = health
        self.on_call = on_call

    async def __call__(self, req: Request) -> Response:
        if req.method != b"POST":
            return Response(405, Headers([(b"allow", b"POST")]), b"gRPC calls are POSTs\n")
        h = req.headers
        ctype = h.get(b"content-type")
        if ctype is None or ctype[:16].lower() != b"application/grpc":
            return Response(415, Headers([(b"content-type", b"text/plain")]), b"not a gRPC request\n")
        if req.version != b"2":  # the status travels in trailers, which HTTP/1.1 answers cannot carry here
            return Response(505, Headers([(b"content-type", b"text/plain")]), b"gRPC needs HTTP/2\n")
        start = time.monotonic()
        route = self.routes.get(req.path)
        if route is None:
            path = req.path.decode("latin-1")
            self._done(req, UNKNOWN_METHOD, StatusCode.UNIMPLEMENTED, start)  # bounded labels: paths are the client's
            await drain_body(req.body)
            return _trailers_only(StatusCode.UNIMPLEMENTED, f"unknown method {path}", None, (), [])
        enc = h.get(b"grpc-encoding")
        gzip_in = False
        if enc is not None and enc != b"identity":
            if enc != b"gzip":
                msg = f"grpc-encoding {enc.decode('latin-1')} is not supported"
                self._done(req, route.path, StatusCode.UNIMPLEMENTED, start)
                await drain_body(req.body)
                return _trailers_only(StatusCode.UNIMPLEMENTED, msg, None, (), self.accept)
            gzip_in = True
        compress = False
        if self.compression is not None:
            acc = h.get(b"grpc-accept-encoding")
            compress = acc is not None and b"gzip" in acc
        deadline = None
        t = h.get(b"grpc-timeout")
        if t is not None:
            seconds = parse_timeout(t.strip())
            if seconds is not None:
                deadline = asyncio.get_running_loop().time() + seconds
                CALL_DEADLINE.set(deadline)
        ctx = req.ctx
        pairs = h.pairs()
        ctx_ = ServicerContext(route.path, pairs, deadline, str(ctx.peer) if ctx is not None else "")
        _metainfo.from_request(pairs)
        reqs = _Requests(req.body, route.info.request, self.max_receive, gzip_in, route.path)
        if route.kind == UNARY or route.kind == CLIENT_STREAM:
            return await self._unary(req, route, reqs, ctx_, compress, start)
        return await self._streaming(req, route, reqs, ctx_, compress, start)

    def _extra(self, ctx: ServicerContext) -> list[tuple[bytes, bytes]]:
        """Fields of a Trailers-Only answer beside the status: the initial metadata the handler sent."""
        return self.accept + metadata_out(ctx._initial) if ctx._initial else self.accept

    def _head(self, ctx: ServicerContext, compress: bool) -> Headers:
        fields = [(b"content-type", b"application/grpc")]
        if compress:
            fields.append((b"grpc-encoding", b"gzip"))
        fields += self.accept
        if ctx._initial:
            fields += metadata_out(ctx._initial)
        return Headers(fields)

    async def _unary(
        self, req: Request, route: _Route, reqs: _Requests, ctx: ServicerContext, compress: bool, start: float
    ) -> Response:
        try:
            if ctx.deadline is None:
                reply = await self._invoke(route, reqs, ctx)
            else:
                async with asyncio.timeout_at(ctx.deadline):
                    reply = await self._invoke(route, reqs, ctx)
            if not isinstance(reply, route.info.response):
                raise TypeError(f"returned {type(reply).__name__}, not {route.info.response.__name__}")
            payload = reply.SerializeToString()
            if len(payload) > self.max_send:
                raise RpcError(StatusCode.RESOURCE_EXHAUSTED, f"response message larger than max ({len(payload)})")
        except asyncio.CancelledError:
            self._done(req, route.path, StatusCode.CANCELLED, start)
            raise
        except BaseException as exc:
            code, message, details, trailers = self._status_of(exc, route, ctx)
            if route.kind == UNARY:
                await reqs.drain(DRAIN_CAP)
            self._done(req, route.path, code, start)
            return _trailers_only(code, message, details, trailers, self._extra(ctx))
        code = ctx._code if ctx._code is not None else StatusCode.OK
        if code != StatusCode.OK:
            self._done(req, route.path, code, start)
            return _trailers_only(code, ctx._message, ctx._details, ctx._trailers, self._extra(ctx))
        body = Body(_SILENT, None)
        body.feed(_frame(payload, compress))
        body.trailers = status_fields(0, "", None, ctx._trailers) + _backward()
        body.feed_eof()
        self._done(req, route.path, StatusCode.OK, start)
        return Response(200, self._head(ctx, compress), body)

    async def _invoke(self, route: _Route, reqs: _Requests, ctx: ServicerContext) -> Any:
        arg = reqs if route.kind == CLIENT_STREAM else await reqs.one()
        if route.is_sync:
            return route.fn(arg, ctx)
        return await route.fn(arg, ctx)

    def _status_of(
        self, exc: BaseException, route: _Route, ctx: ServicerContext
    ) -> tuple[int, str, bytes | None, Metadata]:
        if isinstance(exc, RpcError):
            return exc.code, exc.message, exc.details, exc.trailers or ctx._trailers
        deadline = ctx.deadline
        if isinstance(exc, TimeoutError) and deadline is not None and asyncio.get_running_loop().time() >= deadline:
            return StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", None, ctx._trailers
        log.error(
            "grpc %s peer=%s: handler failed: %s: %s", route.path, ctx.peer_addr, type(exc).__name__, exc, exc_info=exc
        )
        return StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}", None, ctx._trailers

    async def _streaming(
        self, req: Request, route: _Route, reqs: _Requests, ctx: ServicerContext, compress: bool, start: float
    ) -> Response:
        call = _StreamCall(compress, self.max_send)
        ctx._call = call
        task = call.task = asyncio.get_running_loop().create_task(self._run_stream(req, route, reqs, ctx, call, start))
        try:
            await call.head
        except asyncio.CancelledError:
            task.cancel()
            raise
        status = call.status
        if status is not None and call.sent == 0:
            code, message, details, trailers = status
            return _trailers_only(code, message, details, trailers, self._extra(ctx))
        return Response(200, self._head(ctx, compress), call.body)

    async def _run_stream(
        self, req: Request, route: _Route, reqs: _Requests, ctx: ServicerContext, call: _StreamCall, start: float
    ) -> None:
        try:
            if ctx.deadline is None:
                await self._produce(route, reqs, ctx, call)
            else:
                async with asyncio.timeout_at(ctx.deadline):
                    await self._produce(route, reqs, ctx, call)
            code = ctx._code if ctx._code is not None else StatusCode.OK
            status: tuple[int, str, bytes | None, Metadata] = (code, ctx._message, ctx._details, ctx._trailers)
        except asyncio.CancelledError:
            self._done(req, route.path, StatusCode.CANCELLED, start)
            call.cancelled = True
            if not call.head.done():
                call.head.cancel()
            raise
        except BaseException as exc:
            status = self._status_of(exc, route, ctx)
            if route.kind == SERVER_STREAM:
                await reqs.drain(DRAIN_CAP)
        call.status = status
        self._done(req, route.path, status[0], start)
        if call.sent == 0 and not call.head.done():
            call.ready()  # Trailers-Only
            return
        call.ready()
        body = call.body
        body.trailers = status_fields(*status) + _backward()
        body.feed_eof()

    async def _produce(self, route: _Route, reqs: _Requests, ctx: ServicerContext, call: _StreamCall) -> None:
        arg = reqs if route.kind == BIDI else await reqs.one()
        if route.is_gen:
            agen: AsyncIterator[Message] = route.fn(arg, ctx)
            cls = route.info.response
            try:
                async for msg in agen:
                    if not isinstance(msg, cls):
                        raise TypeError(f"yielded {type(msg).__name__}, not {cls.__name__}")
                    await call.send(msg)
            finally:
                aclose = getattr(agen, "aclose", None)
                if aclose is not None:
                    await aclose()
        elif route.is_sync_gen:
            cls = route.info.response
            for msg in route.fn(arg, ctx):
                if not isinstance(msg, cls):
                    raise TypeError(f"yielded {type(msg).__name__}, not {cls.__name__}")
                await call.send(msg)
        elif route.is_sync:
            route.fn(arg, ctx)
        else:
            await route.fn(arg, ctx)

    def _done(self, req: Request, method: str, code: int, start: float) -> None:
        cb = self.on_call
        if cb is not None:
            cb(method, code, time.monotonic() - start)


# -- built-in servicers ------------------------------------------------------------------------

SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3


class HealthServicer:
    """grpc.health.v1.Health: "" (the server) and every served service are SERVING until
    ``set(name, status)`` says otherwise; ``Watch`` streams changes."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.statuses: dict[str, int] = {"": SERVING, **dict.fromkeys(names, SERVING)}
        self._changed: asyncio.Event | None = None
        p = builtin_protos()
        self.Response: Any = p.message("grpc.health.v1.HealthCheckResponse")

    def set(self, service: str, status: int) -> None:
        """Set ``service``'s status (1 SERVING, 2 NOT_SERVING); "" is the whole server."""
        self.statuses[service] = status
        ev = self._changed
        if ev is not None:
            self._changed = None
            ev.set()

    async def Check(self, request: Any, context: ServicerContext) -> Any:
        status = self.statuses.get(request.service)
        if status is None:
            raise RpcError(StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return self.Response(status=status)

    async def Watch(self, request: Any, context: ServicerContext) -> AsyncIterator[Message]:
        last = -1
        while True:
            status = self.statuses.get(request.service, SERVICE_UNKNOWN)
            if status != last:
                last = status
                yield self.Response(status=status)
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()


class ReflectionServicer:
    """grpc.reflection.v1 and v1alpha ServerReflection over the served files."""

    def __init__(self, service_names: Sequence[str], protos: Sequence[Protos], version: str) -> None:
        self.names = sorted(service_names)
        pools: list[Any] = []
        for p in protos:
            for fd in p.files:
                if fd.pool not in pools:
                    pools.append(fd.pool)
        self.pools = pools
        b = builtin_protos()
        pkg = f"grpc.reflection.{version}."
        self.Response: Any = b.message(pkg + "ServerReflectionResponse")
        self.FileResponse: Any = b.message(pkg + "FileDescriptorResponse")
        self.ListResponse: Any = b.message(pkg + "ListServiceResponse")
        self.ServiceResponse: Any = b.message(pkg + "ServiceResponse")
        self.ErrorResponse: Any = b.message(pkg + "ErrorResponse")
        self.ExtResponse: Any = b.message(pkg + "ExtensionNumberResponse")

    async def ServerReflectionInfo(self, requests: AsyncIterator[Any], context: ServicerContext) -> AsyncIterator[Any]:
        async for r in requests:
            yield self.answer(r)

    def answer(self, r: Any) -> Any:
        from google.protobuf import descriptor_pb2

        out = self.Response(valid_host=r.host, original_request=r)
        kind = r.WhichOneof("message_request")
        try:
            if kind == "list_services":
                out.list_services_response.CopyFrom(
                    self.ListResponse(service=[self.ServiceResponse(name=n) for n in self.names])
                )
                return out
            if kind == "file_by_filename":
                fd = self._find(lambda pool: pool.FindFileByName(r.file_by_filename))
            elif kind == "file_containing_symbol":
                fd = self._find(lambda pool: pool.FindFileContainingSymbol(r.file_containing_symbol))
            elif kind == "file_containing_extension":
                ext = r.file_containing_extension
                fd = self._find(
                    lambda pool: (
                        pool.FindExtensionByNumber(
                            pool.FindMessageTypeByName(ext.containing_type), ext.extension_number
                        ).file
                    )
                )
            elif kind == "all_extension_numbers_of_type":
                name = r.all_extension_numbers_of_type
                numbers = self._find(
                    lambda pool: [e.number for e in pool.FindAllExtensions(pool.FindMessageTypeByName(name))]
                )
                out.all_extension_numbers_response.CopyFrom(
                    self.ExtResponse(base_type_name=name, extension_number=numbers)
                )
                return out
            else:
                raise LookupError("unknown reflection request")
        except LookupError as exc:
            out.error_response.CopyFrom(self.ErrorResponse(error_code=StatusCode.NOT_FOUND, error_message=str(exc)))
            return out
        files: list[bytes] = []
        seen: set[str] = set()
        stack = [fd]
        while stack:  # the file and everything it imports, as grpcurl-style tools expect
            f = stack.pop()
            if f.name in seen:
                continue
            seen.add(f.name)
            fdp = descriptor_pb2.FileDescriptorProto()
            f.CopyToProto(fdp)
            files.append(fdp.SerializeToString())
            stack.extend(f.dependencies)
        out.file_descriptor_response.CopyFrom(self.FileResponse(file_descriptor_proto=files))
        return out

    def _find(self, fn: Callable[[Any], Any]) -> Any:
        for pool in self.pools:
            try:
                return fn(pool)
            except KeyError:
                continue
        raise LookupError("not found")


# -- the factory -------------------------------------------------------------------------------


class GrpcServer(Factory[GrpcService]):
    """Serves ``servicers`` for the services of ``protos`` (a ``Protos`` or what ``load_protos``
    takes). ``servicers``: a mapping of full service name to servicer, or one servicer (or a
    list): each serves every service of ``protos`` whose methods it defines. A servicer given
    as a class is instantiated at ``make`` (a reload keeps the instance while the class is the same).

    ``health``/``reflection`` add grpc.health.v1 and server reflection (v1 and v1alpha); ``health``
    may be a ``HealthServicer`` of yours, whose ``set`` your code calls;
    ``max_receive_message_bytes`` bounds a request message (grpcio's 4 MiB by default),
    ``max_send_message_bytes`` a response one; ``compression="gzip"`` compresses responses for
    clients that accept it. ``on_call(method, status_code, seconds)`` is called once per call.
    """

    service_type = GrpcService

    def __init__(
        self,
        protos: Protos | Sequence[Any],
        servicers: Mapping[str, Any] | Any,
        *,
        import_paths: Sequence[str] = (),
        health: bool | HealthServicer = True,
        reflection: bool = True,
        max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE,
        max_send_message_bytes: int = 2**31 - 1,
        compression: str | None = None,
        on_call: Callable[[str, int, float], None] | None = None,
    ) -> None:
        from ._protos import load_protos

        self.protos = protos if isinstance(protos, Protos) else load_protos(list(protos), import_paths)
        self.servicers = servicers
        self.health = health
        self.reflection = reflection
        self.max_receive = max_receive_message_bytes
        self.max_send = max_send_message_bytes
        if compression not in (None, "gzip"):
            raise ValueError(f"compression {compression!r}: only 'gzip' is supported")
        self.compression = compression
        self.on_call = on_call
        self._bind(None, make=False)  # fails here, before serving, when nothing matches

    def _bind(self, old: GrpcService | None, *, make: bool = True) -> dict[str, Any]:
        """Full service name -> servicer instance."""
        given = self.servicers
        bound: dict[str, Any] = {}
        if isinstance(given, Mapping):
            for name, s in given.items():
                if name not in self.protos.services:
                    raise ValueError(f"servicer for {name!r}: no such service in the protos")
                bound[name] = s
        else:
            items = list(given) if isinstance(given, list | tuple) else [given]
            for s in items:
                hit = False
                for name, svc in self.protos.services.items():
                    if any(callable(getattr(s, m.name, None)) for m in svc.methods):
                        bound.setdefault(name, s)
                        hit = True
                if not hit:
                    raise ValueError(f"{s!r} implements no method of the services in the protos")
        prev = old.servicers if old is not None else {}
        for name, s in bound.items():
            if isinstance(s, type) and make:
                was = prev.get(name)
                bound[name] = was if type(was) is s else s()
        return bound

    def make(self, old: GrpcService | None) -> GrpcService:
        bound = self._bind(old)
        routes: dict[bytes, _Route] = {}
        all_protos = [self.protos]
        for name, servicer in bound.items():
            for m in self.protos.services[name].methods:
                fn = getattr(servicer, m.name, None)
                if fn is not None:
                    info = self.protos.methods[f"/{name}/{m.name}"]
                    routes[info.path.encode()] = _Route(info, fn)
        health: HealthServicer | None = None
        extra: dict[str, Any] = {}
        if isinstance(self.health, HealthServicer):
            health = self.health  # the user's own: their code sets its statuses (per worker process)
        elif self.health:
            health = old.health if old is not None and old.health is not None else HealthServicer()
        if health is not None:
            for name in bound:
                health.statuses.setdefault(name, SERVING)
            extra["grpc.health.v1.Health"] = health
        names = [*bound, *extra]
        if self.reflection:
            all_protos.append(builtin_protos())
            for v in ("v1", "v1alpha"):
                names.append(f"grpc.reflection.{v}.ServerReflection")
            for v in ("v1", "v1alpha"):
                extra[f"grpc.reflection.{v}.ServerReflection"] = ReflectionServicer(names, all_protos, v)
        b = builtin_protos()
        for name, servicer in extra.items():
            for m in b.services[name].methods:
                info = b.methods[f"/{name}/{m.name}"]
                routes[info.path.encode()] = _Route(info, getattr(servicer, m.name))
        return GrpcService(
            routes,
            servicers=bound,
            protos=all_protos,
            max_receive=self.max_receive,
            max_send=self.max_send,
            compression=self.compression,
            health=health,
            on_call=self.on_call,
        )
