"""OpenTelemetry spans for the RPC framework's servers and clients, as layers.

- ``GrpcServerTracing``: a SERVER span per gRPC call, its parent the caller's W3C ``traceparent``
  (and ``tracestate``) metadata; ``[servers.NAME.rpc_grpc.tracing]`` in TOML.
- Thrift services: ``monolake.apps.edge.tracing.RpcTracing`` (TTHeader ``RPC_TRANSIT_traceparent``);
  ``[servers.NAME.rpc_thrift.tracing]`` in TOML.
- ``GrpcClientTracing`` and ``ThriftClientTracing``: a CLIENT span per attempt (give them as the
  client's ``inner_layers``: each retry is a span of its own), whose context goes out in the call's
  ``traceparent`` metadata / TTHeader ``RPC_TRANSIT_traceparent``. Inside a traced server call the
  span is that call's child (``CURRENT_SPAN``); elsewhere it starts a trace.

The keywords of each are the tracing filter's settings (``TracingArgs``); layers with the same
settings share one export thread (``shared_tracing``). Attributes follow the RPC semantic
conventions: ``rpc.system`` (``grpc``, ``apache_thrift``), ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code``, ``server.address``/``server.port`` (client spans), ``client.address``
(server spans), ``error.type``. A gRPC server span is an error for the statuses the conventions
name (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS), a client span
for any status but OK. A gRPC server span ends with the call (a stream's last message and status
included), told by the ``GrpcService``'s ``on_call``.

Nothing of this runs unless a layer is given: a server or client without one is unchanged.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

import msgspec

from ...core._body import Body
from ...core.address import Endpoint
from ...core.proto.http1 import Request, Response
from ...core.service import Layer, Service
from ..edge.tracing import (
    _ATTRS,
    _CLIENT,
    _END,
    _ERR,
    _KIND_CLIENT,
    _KIND_SERVER,
    CURRENT_SPAN,
    RpcTracing,
    Tracing,
    TracingArgs,
    incoming,
    rpc_record,
    shared_tracing,
    tracing_args,
)
from ._metainfo import CURRENT as _METAINFO

__all__ = [
    "CURRENT_SPAN",
    "GrpcClientTracing",
    "GrpcServerTracing",
    "RpcTracing",
    "ThriftClientTracing",
    "grpc_server_tracing",
    "thrift_server_tracing",
]

_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})
"""gRPC statuses that make a server span an error (the RPC conventions' list)."""

_METHODS: dict[bytes, tuple[bytes, str, str]] = {}
"""A gRPC path -> (span name, service, method); bounded (paths are the client's)."""


def _method(path: bytes) -> tuple[bytes, str, str]:
    got = _METHODS.get(path)
    if got is None:
        text = path.decode("latin-1").lstrip("/")
        service, _, method = text.rpartition("/")
        got = (text.encode(), service, method)
        if len(_METHODS) < 1024:
            _METHODS[path] = got
    return got


def _grpc_status(resp: Response) -> int | None:
    """The call's grpc-status, when the answer carries it already (Trailers-Only, or a unary body's trailers)."""
    st = resp.headers.get(b"grpc-status")
    if st is None:
        body = resp.body
        if isinstance(body, Body) and body.trailers:
            for name, value in body.trailers:
                if name == b"grpc-status":
                    st = value
                    break
    if st is None:
        return None
    try:
        return int(st)
    except ValueError:
        return None


def _traceparent(trace: bytes, sid: bytes, sampled: bool) -> str:
    return f"00-{trace.decode()}-{sid.decode()}-{'01' if sampled else '00'}"


def _parent_of_client(t: Tracing, ids: bytes) -> tuple[bytes, bytes | None, bool, str | None]:
    """A client span's trace, parent, sampled flag and tracestate: the served call's span, else the
    transient ``traceparent`` metainfo of this context (a thrift hop without our layer), else a new trace."""
    cur = CURRENT_SPAN.get()
    if cur is not None:
        return cur[0], cur[1], cur[2], cur[3]
    mi = _METAINFO.get()
    tp = mi.get("traceparent") if mi is not None else None
    trace, parent, sampled = incoming(t, tp.encode("latin-1") if tp is not None else None, ids)
    state = mi.get("tracestate") if mi is not None and parent is not None else None
    return trace, parent, sampled, state


class GrpcServerTracing(Layer[Request, Response]):
    """A SERVER span per call of a ``GrpcServer`` (``monolake.serve``/``build_http_app`` layers, or
    ``[servers.NAME.rpc_grpc.tracing]``). Keywords: ``TracingArgs``."""

    def __init__(self, **args: Any) -> None:
        self.tracing = shared_tracing(msgspec.convert(args, TracingArgs))

    def layer(self, inner: Service[Request, Response]) -> _GrpcServerTraced:
        # The GrpcService under the layers between: its ``on_call`` (called once per call, when the
        # call ends, streams included) ends the span with the call's status.
        from .grpc._server import GrpcService

        svc: Any = inner
        while svc is not None and not isinstance(svc, GrpcService):
            svc = getattr(svc, "inner", None)
        if svc is not None and not isinstance(svc.on_call, _OnCall):
            svc.on_call = _OnCall(svc.on_call)
        return _GrpcServerTraced(inner, self.tracing, svc is not None)


_CALL: ContextVar[list[Any] | None] = ContextVar("monolake_grpc_span", default=None)
"""The traced gRPC call's span record, for ``_OnCall`` (a streaming call's task has a copy of it)."""


class _OnCall:
    """A ``GrpcService.on_call`` that ends the current call's span, then calls the one it wraps."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, method: str, code: int, seconds: float) -> None:
        r = _CALL.get()
        if r is not None and not r[_END]:
            _end_server(r, code, None)
        inner = self.inner
        if inner is not None:
            inner(method, code, seconds)


def _end_server(r: list[Any], code: int | None, error: str | None) -> None:
    """End a gRPC SERVER span record and queue it (``r[_CLIENT]`` holds its ``Tracing``)."""
    r[_END] = time.time_ns()
    attrs = r[_ATTRS]
    if code is not None:
        attrs["rpc.grpc.status_code"] = code
        if error is None and code in _SERVER_ERRORS:
            error = str(code)
    if error is not None:
        attrs["error.type"] = error
        r[_ERR] = True
    t = r[_CLIENT]
    r[_CLIENT] = None
    t._export(r)


class _GrpcServerTraced:
    __slots__ = ("hooked", "inner", "t")

    def __init__(self, inner: Service[Request, Response], t: Tracing, hooked: bool) -> None:
        self.inner = inner
        self.t = t
        self.hooked = hooked

    async def __call__(self, req: Request) -> Response:
        t = self.t
        ids = t._next_ids()
        h = req.headers
        trace, parent, sampled = incoming(t, h.get(b"traceparent"), ids)
        raw_state = h.get(b"tracestate") if parent is not None else None
        state = raw_state.decode("latin-1") if raw_state is not None else None
        sid = ids[32:48]
        token = CURRENT_SPAN.set((trace, sid, sampled, state))
        try:
            if not sampled:
                return await self.inner(req)
            name, service, method = _method(req.path)
            attrs: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
            ctx = req.ctx
            if ctx is not None and ctx.peer is not None:
                attrs["client.address"] = str(ctx.peer)
            # A record as ``rpc_record`` makes it, not ended yet; its client slot holds the Tracing until then.
            r = [trace, sid, parent, time.time_ns(), 0, name, attrs, False, t, True, None, None, None, _KIND_SERVER]
            call_token = _CALL.set(r)
            try:
                resp = await self.inner(req)
            except BaseException as exc:
                if not r[_END]:
                    _end_server(r, None, type(exc).__name__)
                raise
            finally:
                _CALL.reset(call_token)
            if not r[_END]:
                code = _grpc_status(resp)
                if code is None and self.hooked and resp.status == 200 and isinstance(resp.body, Body):
                    return resp  # a stream under way: ``_OnCall`` ends the span with its status
                _end_server(r, code, str(resp.status) if code is None and resp.status >= 500 else None)
            return resp
        finally:
            CURRENT_SPAN.reset(token)


def _endpoint_attrs(attrs: dict[str, Any], ep: Endpoint | None) -> None:
    if ep is None:
        return
    if ep.path:  # a unix socket
        attrs["server.address"] = ep.path
    else:
        attrs["server.address"] = ep.host
        attrs["server.port"] = ep.port


class GrpcClientTracing(Layer[Any, Any]):
    """A CLIENT span per attempt of a ``GrpcClient`` call (give it in ``inner_layers``), its context
    sent in ``traceparent``/``tracestate`` metadata. Keywords: ``TracingArgs``."""

    def __init__(self, **args: Any) -> None:
        self.tracing = shared_tracing(msgspec.convert(args, TracingArgs))

    def layer(self, inner: Any) -> _GrpcClientTraced:
        from .grpc._status import RpcError

        return _GrpcClientTraced(inner, self.tracing, RpcError)


class _GrpcClientTraced:
    __slots__ = ("error_cls", "inner", "t")

    def __init__(self, inner: Any, t: Tracing, error_cls: type[BaseException]) -> None:
        self.inner = inner
        self.t = t
        self.error_cls = error_cls
        """``RpcError`` (imported when a client is built: the thrift side needs no protobuf)."""

    async def __call__(self, call: Any) -> Any:
        t = self.t
        ids = t._next_ids()
        trace, parent, sampled, state = _parent_of_client(t, ids)
        sid = ids[32:48]
        md = [(k, v) for k, v in call.metadata if k != "traceparent" and k != "tracestate"]  # an earlier try's
        md.append(("traceparent", _traceparent(trace, sid, sampled)))
        if state is not None:
            md.append(("tracestate", state))
        call.metadata = md
        if not sampled:
            return await self.inner(call)
        start = time.time_ns()
        code: int | None = 0
        error: str | None = None
        try:
            return await self.inner(call)
        except BaseException as exc:
            if isinstance(exc, self.error_cls):
                code = int(exc.code)  # type: ignore[attr-defined]
                error = str(code)
            else:
                code = None
                error = type(exc).__name__
            raise
        finally:
            info = call.method
            attrs: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": info.service, "rpc.method": info.name}
            if code is not None:
                attrs["rpc.grpc.status_code"] = code
            _endpoint_attrs(attrs, call.endpoint)
            if call.attempt:
                attrs["monolake.rpc.attempt"] = call.attempt  # 0 for the first try
            if error is not None:
                attrs["error.type"] = error
            name = f"{info.service}/{info.name}".encode()
            t._export(rpc_record(trace, sid, parent, start, name, attrs, error is not None, _KIND_CLIENT))


class ThriftClientTracing(Layer[Any, Any]):
    """A CLIENT span per attempt of a ``ThriftClient`` call (give it in ``inner_layers``), its context
    sent as TTHeader ``RPC_TRANSIT_traceparent`` (framed calls carry none). ``service`` names
    ``rpc.service`` (default: the client's IDL service). Keywords: ``TracingArgs``."""

    def __init__(self, *, service: str | None = None, **args: Any) -> None:
        self.tracing = shared_tracing(msgspec.convert(args, TracingArgs))
        self.service = service

    def layer(self, inner: Any) -> _ThriftClientTraced:
        service = self.service
        if service is None:  # the client's transport (innermost) knows its service
            svc = inner
            while svc is not None and getattr(svc, "client", None) is None:
                svc = getattr(svc, "inner", None)
            if svc is not None:
                service = svc.client.definition.name
        return _ThriftClientTraced(inner, self.tracing, service or "")


class _Transient(dict[str, str]):
    """A call's transient metainfo as a try sent it, with the try's number (a retry's is one more)."""

    __slots__ = ("attempt",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.attempt = 0


class _ThriftClientTraced:
    __slots__ = ("inner", "service", "t")

    def __init__(self, inner: Any, t: Tracing, service: str) -> None:
        self.inner = inner
        self.t = t
        self.service = service

    async def __call__(self, call: Any) -> Any:
        t = self.t
        ids = t._next_ids()
        trace, parent, sampled, state = _parent_of_client(t, ids)
        sid = ids[32:48]
        # The call's own transient values, and ours (replacing an earlier try's, and the hop's own).
        prev = call.transient
        transient = _Transient(prev) if prev else _Transient()
        transient.attempt = prev.attempt + 1 if type(prev) is _Transient else 0
        transient["traceparent"] = _traceparent(trace, sid, sampled)
        if state is not None:
            transient["tracestate"] = state
        call.transient = transient
        if not sampled:
            return await self.inner(call)
        start = time.time_ns()
        error: str | None = None
        try:
            return await self.inner(call)
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            method = call.method.name
            service = self.service
            attrs: dict[str, Any] = {"rpc.system": "apache_thrift", "rpc.method": method}
            if service:
                attrs["rpc.service"] = service
            _endpoint_attrs(attrs, call.endpoint)
            if transient.attempt:
                attrs["monolake.rpc.attempt"] = transient.attempt  # 0 for the first try
            if error is not None:
                attrs["error.type"] = error
            name = f"{service}/{method}".encode() if service else method.encode()
            t._export(rpc_record(trace, sid, parent, start, name, attrs, error is not None, _KIND_CLIENT))


def grpc_server_tracing(table: dict[str, Any], where: str) -> GrpcServerTracing:
    """The layer of ``[servers.NAME.rpc_grpc.tracing]``. Raises ConfigError at ``where.KEY``."""
    return GrpcServerTracing(**msgspec.to_builtins(tracing_args(dict(table), where)))


def thrift_server_tracing(table: dict[str, Any], where: str) -> RpcTracing:
    """The layer of ``[servers.NAME.rpc_thrift.tracing]``. Raises ConfigError at ``where.KEY``."""
    return RpcTracing(**msgspec.to_builtins(tracing_args(dict(table), where)))
