"""Thrift RPC client: async, pooled, multiplexed, balanced, retried within a budget.

Theory of operation. ``ThriftClient.call`` makes a ``ClientCall`` and runs it down a
stack in Volo's order::

    user layers -> timeout + discovery / load balancing (+ retries) -> inner layers -> transport

- the timeout service sets the call's deadline (per call, else the client's); every
  attempt below it gets what is left, so retries never outlive the caller's budget;
- the balancing service asks discovery for the endpoints (a static list now; any
  object with ``endpoints()`` and a ``version`` that changes with them), keeps one
  of the proxy's balancers over them (round robin, weighted, random, least request,
  consistent hash by ``ClientCall.hash_key``), and on a failure that is safe to
  retry (``retry_safe``: nothing was sent, e.g. a refused connect) tries another
  endpoint (``pick_excluding``) while the retry budget allows; a fixed ``address``
  skips balancing;
- the transport encodes the call (our message head, the method's generated struct codec, ``_gen``;
  thriftpy2's for what it refuses),
  sends it on the worker's ``ThriftPool`` (core/client/_thrift.py: many calls in
  flight per connection, each with its own sequence id on TTHeader), and reads the
  reply: the result, a declared exception (raised as the IDL's class) or a
  ``TApplicationException`` (raised as thriftpy2's). On TTHeader and THeader, the
  call carries the context's metainfo (``RPC_PERSIST_*``, ``RPC_TRANSIT_*``) and
  the reply's ``RPC_BACKWARD_*`` values land in ``metainfo().received_backward``.

Without layers a call is two coroutine frames, ``call`` and the transport's: balancing hands
back the transport's coroutine itself, and adds a frame of its own only to retry.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from ....core.address import Endpoint
from ....core.client._thrift import ThriftPool
from ....core.errors import ConfigError, ConnectError, MonolakeError, ReadTimeout, UpstreamError
from ....core.proto.thrift import (
    DEFAULT_MAX_FRAME_SIZE,
    AppError,
    Frame,
    MessageHead,
    MessageType,
    ThriftProtocol,
    Transport,
    encode_frame,
    message_begin,
    parse_application_exception,
    read_header_info,
)
from ....core.server._l4 import PickKey
from ....core.service import Layer, Service
from . import _metainfo
from ._codec import StructCodec
from ._gen import args_decoder, struct_encoder
from ._idl import MethodDef, ServiceDef, as_service_def, load_service

_TRANSPORTS = {"ttheader": Transport.TTHEADER, "framed": Transport.FRAMED, "theader": Transport.THEADER}
_PROTOCOLS = {"binary": ThriftProtocol.BINARY, "compact": ThriftProtocol.COMPACT}


def _app_exception(kind: int, message: str) -> Exception:
    from thriftpy2.thrift import TApplicationException

    exc: Exception = TApplicationException(kind, message)
    return exc


class ClientCall:
    """One call down the client stack. Layers may read and change it."""

    __slots__ = ("address", "args", "backward", "deadline", "endpoint", "hash_key", "method", "timeout", "transient")

    def __init__(
        self,
        method: MethodDef,
        args: Sequence[Any],
        timeout: float | None = None,
        address: Endpoint | None = None,
        hash_key: str = "",
        transient: dict[str, str] | None = None,
    ) -> None:
        # Not keyword-only: ``ThriftClient.call`` passes them by position (calling a class with
        # keywords cost ~0.25 µs more per call on 3.11).
        self.method = method
        self.args = args
        self.timeout = timeout
        """Seconds for the whole call, retries included (None: the client's)."""
        self.address = address
        """A fixed endpoint: no balancing, no retry to another."""
        self.hash_key = hash_key
        """What a consistent-hash balancer hashes."""
        self.transient = transient
        """Transient metainfo for this call only."""
        self.deadline = 0.0
        self.endpoint: Endpoint | None = None
        """The endpoint of the current attempt (set by balancing)."""
        self.backward: dict[str, str] | None = None


class _Key:
    """What ``Balancer.pick`` reads: ``ctx.peer`` (hashed by consistent hashing) and headers."""

    __slots__ = ("ctx", "headers", "peer")

    def __init__(self, key: str) -> None:
        self.ctx = self
        self.peer = key
        self.headers = PickKey._EMPTY


class StaticDiscovery:
    """A fixed endpoint list (``version`` never changes)."""

    version = 0

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        if not endpoints:
            raise ConfigError("endpoints", "a client needs at least one endpoint")
        self._endpoints = list(endpoints)

    def endpoints(self) -> list[Endpoint]:
        return self._endpoints


def parse_address(spec: str | Endpoint) -> Endpoint:
    """ "host:port", "[v6]:port" or "unix:/path" as an Endpoint. Raises ValueError."""
    if isinstance(spec, Endpoint):
        return spec
    if spec.startswith("unix:"):
        return Endpoint(scheme="thrift", path=spec[5:])
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{spec!r} is not host:port")
    return Endpoint(scheme="thrift", host=host.strip("[]"), port=int(port))


_FRAMED = Transport.FRAMED
_BINARY = ThriftProtocol.BINARY
_U32 = struct.Struct("!I")
_join = b"".join
_bjoin = bytearray().join  # joins into a new bytearray (the empty separator is never changed)
_CURRENT = _metainfo.current


class _Begin:
    """A method's message head with sequence id 0, and where the id sits in it; its generated
    codecs (``_gen``: the arguments from a tuple, the result into a list; None, or a raise,
    means thriftpy2's path)."""

    __slots__ = (
        "data", "decode", "encode", "exc_at", "header", "mtype", "nargs", "seq_offset", "seq_size", "success_at",
    )  # fmt: skip

    def __init__(self, m: MethodDef, proto: ThriftProtocol, transport: Transport) -> None:
        self.mtype = MessageType.ONEWAY if m.oneway else MessageType.CALL
        self.data = message_begin(m.name, self.mtype, 0, proto)
        # A header transport's frame without info blocks, after its length field (sequence id 0).
        self.header = b"" if transport is _FRAMED else encode_frame(transport, b"", seq_id=0, protocol=proto)[4:]
        n = len(m.name.encode())
        binary = proto is ThriftProtocol.BINARY
        if binary:
            self.seq_offset, self.seq_size = 8 + n, 4
        else:
            self.seq_offset, self.seq_size = 2, 1  # compact: varint 0 right after the type byte
        self.nargs = len(m.arg_names)
        self.encode = struct_encoder(m.args_cls, compact=not binary)
        self.decode = args_decoder(m.result_cls, compact=not binary) if not m.oneway else None
        # Where the result's fields land in the decoded list (the spec's order).
        order = [item[1] for item in m.result_cls.thrift_spec.values()]
        self.success_at = order.index("success") if not m.void else -1
        self.exc_at = tuple(order.index(name) for name, _ in m.exceptions)


class _Transport:
    """The innermost service: one attempt on ``call.endpoint``."""

    def __init__(self, client: ThriftClient) -> None:
        self.client = client

    async def __call__(self, call: ClientCall) -> Any:
        c = self.client
        ep = call.endpoint
        assert ep is not None
        m = call.method
        proto = c.protocol
        begin = c.begins.get(m.name)
        if begin is None:
            begin = c.begins[m.name] = _Begin(m, proto, c.transport)
        body: bytes | None = None
        if begin.encode is not None and len(call.args) == begin.nargs:
            try:
                body = begin.encode(call.args)
            except Exception:  # thriftpy2 encodes it, or raises the error
                body = None
        if body is None:
            try:
                args = m.args_cls(*call.args)  # thriftpy2's structs take their fields in IDL order
            except TypeError as exc:
                raise ValueError(f"{m.name}: {exc}") from None
            body = c.codec.encode(args, proto)
        loop = c.pool.loop
        left = call.deadline - loop.time() if call.deadline else 0.0
        if call.deadline and left <= 0:
            raise ReadTimeout(f"{m.name}: no time left for the call")
        if proto is _BINARY and not m.oneway:
            # The frame is made as a bytearray for this call alone: the pool sets its sequence id
            # in place (no Frame, MessageHead or copy).
            if c.transport is _FRAMED:
                buf = _bjoin((_U32.pack(len(begin.data) + len(body)), begin.data, body))
                at = 4 + begin.seq_offset
            else:
                mi = _CURRENT.get()
                headers = None if mi is None and not call.transient else _metainfo.forward_headers(mi, call.transient)
                if headers is None:  # no info blocks: the header is the same bytes for every call
                    tail = begin.header
                    buf = _bjoin((_U32.pack(len(tail) + len(begin.data) + len(body)), tail, begin.data, body))
                    at = 4 + len(tail) + begin.seq_offset
                else:
                    payload = begin.data + body
                    buf = bytearray(encode_frame(c.transport, payload, seq_id=0, protocol=proto, headers=headers))
                    at = len(buf) - len(payload) + begin.seq_offset
            reply, rhead = await c.pool.call_owned(
                ep, buf, c.transport, at,
                connect_timeout=min(c.connect_timeout, left) if left else c.connect_timeout, timeout=left,
            )  # fmt: skip
            return self.read_reply(call, reply, rhead)
        # The frame and head are made from what we just encoded, not parsed back.
        if c.transport is _FRAMED:
            data = _join((_U32.pack(len(begin.data) + len(body)), begin.data, body))
            off, info = 4, 0
        else:
            headers = _metainfo.forward_headers(_metainfo.current.get(), call.transient)
            if headers is None:  # no info blocks: the header is the same bytes for every call
                tail = begin.header
                data = _join((_U32.pack(len(tail) + len(begin.data) + len(body)), tail, begin.data, body))
                off = 4 + len(tail)
            else:
                payload = begin.data + body
                data = encode_frame(c.transport, payload, seq_id=0, protocol=proto, headers=headers)
                off = len(data) - len(payload)
            info = 16  # 14 fixed bytes, protocol id, no transforms
        frame = Frame(data, c.transport, proto, off, 0, 0, info)
        head = MessageHead(m.name, begin.mtype, 0, off + begin.seq_offset, begin.seq_size, off + len(begin.data))
        if m.oneway:
            c.pool.send(ep, frame, head, None, connect_timeout=c.connect_timeout, timeout=0, oneway=True)
            return None
        reply, rhead = await c.pool.call(
            ep, frame, head, connect_timeout=min(c.connect_timeout, left) if left else c.connect_timeout, timeout=left
        )
        return self.read_reply(call, reply, rhead)

    def read_reply(self, call: ClientCall, reply: Frame, head: Any) -> Any:
        m = call.method
        proto = reply.protocol
        assert proto is not None
        # Only backward metainfo is read from the info blocks: replies without it skip the parse.
        if (
            reply.info
            and reply.info < reply.payload
            and reply.data.find(b"RPC_BACKWARD_", reply.info, reply.payload) >= 0
        ):
            back = _metainfo.read_backward(read_header_info(reply).headers)
            if back:
                call.backward = back
                mi = _metainfo.current.get()
                if mi is not None:
                    mi.received_backward.update(back)
        if head.type == MessageType.EXCEPTION:
            kind, message = parse_application_exception(reply.data, head.end, proto)
            raise _app_exception(kind, message)
        if head.type != MessageType.REPLY:
            raise UpstreamError(f"{m.name}: reply of message type {head.type}")
        data = reply.data
        begin = self.client.begins.get(m.name)
        vals: list[Any] | None = None
        if begin is not None and begin.decode is not None and proto is self.client.protocol and data.__class__ is bytes:
            try:
                vals = begin.decode(data, head.end)
            except Exception:  # thriftpy2 reads it, or says what is wrong
                vals = None
        if vals is not None:
            for i in begin.exc_at:  # type: ignore[union-attr]
                if vals[i] is not None:
                    raise vals[i]
            if m.void:
                return None
            value = vals[begin.success_at]  # type: ignore[union-attr]
        else:
            try:
                result = self.client.codec.decode(m.result_cls, data[head.end :], proto)
            except Exception as exc:
                raise UpstreamError(f"{m.name}: undecodable result: {exc}") from None
            for name, _ in m.exceptions:
                exc_value = getattr(result, name, None)
                if exc_value is not None:
                    raise exc_value
            if m.void:
                return None
            value = result.success
        if value is None:
            raise _app_exception(AppError.MISSING_RESULT, f"{m.name} failed: unknown result")
        return value


class _Balance:
    """Discovery and load balancing, with retries to other endpoints within the budget."""

    def __init__(self, client: ThriftClient, inner: Service[ClientCall, Any]) -> None:
        self.client = client
        self.inner = inner
        self._version = -1
        self._balancer: Any = None

    def balancer(self) -> Any:
        d = self.client.discovery
        if d.version != self._version or self._balancer is None:
            from ...proxy._balancer import make_balancer

            c = self.client
            self._balancer = make_balancer(c.load_balancer, d.endpoints(), hash_algorithm=c.hash_algorithm)
            self._version = d.version
        return self._balancer

    def __call__(self, call: ClientCall) -> Coroutine[Any, Any, Any]:
        # A plain function: with one endpoint (or a fixed address) it returns the attempt's own
        # coroutine, so the call costs no coroutine frame here; retries need one (_balanced).
        c = self.client
        if not call.deadline:  # the timeout service, merged in: one deadline for every attempt
            t = call.timeout if call.timeout is not None else c.timeout
            if t:
                call.deadline = c.pool.loop.time() + t
        if call.address is not None:
            call.endpoint = call.address
            return self.inner(call)
        d = c.discovery
        if (d.version != self._version or self._balancer is None) and not d.endpoints():
            return self._after_first_set(call, d)
        return self._attempts(call)

    def _attempts(self, call: ClientCall) -> Coroutine[Any, Any, Any]:
        bal = self.balancer()
        eps = bal.endpoints
        if len(eps) == 1:  # nothing to choose, nowhere else to retry
            call.endpoint = eps[0]
            return self.inner(call)
        return self._balanced(call, bal)

    async def _after_first_set(self, call: ClientCall, d: Any) -> Any:
        await self._first_set(call, d)
        return await self._attempts(call)

    async def _balanced(self, call: ClientCall, bal: Any) -> Any:
        c = self.client
        key = _Key(call.hash_key)
        ep = bal.pick(key)
        tried: list[Endpoint] = []
        c.budget.deposit()
        while True:
            call.endpoint = ep
            bal.started(ep)
            try:
                return await self.inner(call)
            except MonolakeError as exc:
                if not exc.retry_safe or len(tried) >= c.retries or not c.budget.withdraw():
                    raise
                tried.append(ep)
                nxt = bal.pick_excluding(key, tried)
                if nxt is None:
                    raise
            finally:
                bal.finished(ep)
            ep = nxt

    async def _first_set(self, call: ClientCall, d: Any) -> None:
        """Wait (within the call's deadline) for a discovery source's first set; none: ConnectError."""
        wait = getattr(d, "wait", None)
        if wait is not None:
            left = call.deadline - self.client.pool.loop.time() if call.deadline else None
            try:
                await asyncio.wait_for(wait(), left)
            except TimeoutError:
                raise ReadTimeout(f"{call.method.name}: no endpoint discovered within the call's timeout") from None
        if not d.endpoints():
            raise ConnectError(f"{call.method.name}: no endpoints discovered")


class RetryBudget:
    """Retries may add at most ``ratio`` of the calls made, plus ``min_per_second`` (Finagle/tower style)."""

    def __init__(self, ratio: float = 0.2, min_per_second: float = 10.0) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.tokens = min_per_second
        self._last = time.monotonic()

    def deposit(self) -> None:
        self.tokens = min(self.tokens + self.ratio, 100.0 + self.min_per_second)

    def withdraw(self) -> bool:
        """Take one retry from the budget, if there is one."""
        now = time.monotonic()
        if now - self._last >= 1.0:
            self.tokens = min(self.tokens + self.min_per_second, 100.0 + self.min_per_second)
            self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ThriftClient:
    """Calls a Thrift service on one or more endpoints. Use one per event loop (worker).

    ``idl``: a ``.thrift`` path, a ``ServiceDef`` or a thriftpy2 service class; ``endpoints``:
    "host:port" / "unix:/path" strings or ``Endpoint`` objects (static discovery), or
    ``discovery``: an object with ``endpoints()`` and ``version`` (``monolake.rpc.SourceDiscovery``
    runs any discovery source: dns, file, etcd; connections to endpoints it drops drain). ``transport``: "ttheader"
    (default: calls multiplexed by sequence id, metainfo carried), "framed" or "theader";
    ``protocol``: "binary" or "compact". ``timeout``: seconds per call, retries included
    (a call's own ``timeout`` wins); ``retries``: further attempts, each on another endpoint,
    only after failures where nothing reached the server (``retry_safe``), within
    ``budget``. ``load_balancer``: as a proxy cluster's. ``layers`` wrap the whole call,
    ``inner_layers`` each attempt (both ``Layer[ClientCall, Any]``, outermost first).

    Calls: ``await client.call("echo", "hi")`` or ``await client.echo("hi")``; raises the
    method's declared exceptions, thriftpy2's ``TApplicationException``, or monolake's
    ``ConnectError``, ``ReadTimeout``, ``ReadError``, ``UpstreamError``.
    """

    def __init__(
        self,
        idl: str | ServiceDef | Any,
        endpoints: Sequence[str | Endpoint] = (),
        *,
        service: str | None = None,
        discovery: Any = None,
        transport: str = "ttheader",
        protocol: str = "binary",
        timeout: float | None = 10.0,
        connect_timeout: float = 5.0,
        retries: int = 2,
        budget: RetryBudget | None = None,
        load_balancer: str = "round_robin",
        hash_algorithm: str = "ring",
        max_connections: int = 4,
        max_in_flight: int = 100,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        layers: Sequence[Layer[ClientCall, Any]] = (),
        inner_layers: Sequence[Layer[ClientCall, Any]] = (),
    ) -> None:
        self.definition = load_service(idl, service) if isinstance(idl, str) else as_service_def(idl)
        if transport not in _TRANSPORTS:
            raise ConfigError("transport", f"must be ttheader, framed or theader, got {transport!r}")
        if protocol not in _PROTOCOLS:
            raise ConfigError("protocol", f"must be binary or compact, got {protocol!r}")
        self.transport = _TRANSPORTS[transport]
        self.protocol = _PROTOCOLS[protocol]
        self.codec = StructCodec()
        self.discovery = discovery if discovery is not None else StaticDiscovery([parse_address(e) for e in endpoints])
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.budget = budget if budget is not None else RetryBudget()
        self.load_balancer = load_balancer
        self.hash_algorithm = hash_algorithm
        # Framed upstreams (thriftpy2, Apache) answer one call at a time per connection: spread calls over
        # connections instead of queueing them behind each other.
        in_flight = max_in_flight if self.transport is not Transport.FRAMED else 1
        conns = max_connections if self.transport is not Transport.FRAMED else max(max_connections, 16)
        self.pool = ThriftPool(
            max_connections=conns, max_in_flight=in_flight, max_frame_size=max_frame_size, idle_timeout=60.0
        )
        on_change = getattr(self.discovery, "on_change", None)
        if on_change is not None:  # a changing set (SourceDiscovery): removed endpoints' connections drain
            on_change(lambda gone: self.pool.drain([ep.key for ep in gone]))
        svc: Any = _Transport(self)
        for layer in reversed(list(inner_layers)):
            svc = layer.layer(svc)
        svc = _Balance(self, svc)
        for layer in reversed(list(layers)):
            svc = layer.layer(svc)
        self.chain: Service[ClientCall, Any] = svc
        # Built now, not at a method's first call: the generated codecs are compiled here.
        self.begins: dict[str, _Begin] = {
            name: _Begin(m, self.protocol, self.transport) for name, m in self.definition.methods.items()
        }

    async def call(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        address: str | Endpoint | None = None,
        hash_key: str = "",
        metainfo: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call ``method`` with ``args`` (IDL order; or by name in ``kwargs``). See the class docstring.

        ``address``: this endpoint only; ``metainfo``: transient values for this call.
        """
        m = self.definition.methods.get(method)
        if m is None:
            raise AttributeError(f"{self.definition.name} has no method {method!r}")
        if kwargs:
            names = m.arg_names
            given = dict(zip(names, args, strict=False))
            given.update(kwargs)
            unknown = set(given) - set(names)
            if unknown:
                raise TypeError(f"{method}() got unexpected argument(s) {', '.join(sorted(unknown))}")
            args = tuple(given.get(n) for n in names)
        call = ClientCall(m, args, timeout, parse_address(address) if address is not None else None, hash_key, metainfo)
        return await self.chain(call)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self.__dict__.get("definition", _NO_DEF).methods:
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> Any:
            return self.call(name, *args, **kwargs)  # the coroutine itself: one frame fewer per call

        method.__name__ = name
        self.__dict__[name] = method  # found without __getattr__ from now on
        return method

    def close(self) -> None:
        """Close the connections (and stop a discovery source); calls in flight fail with ReadError."""
        self.pool.close()
        stop = getattr(self.discovery, "close", None)
        if stop is not None:
            stop()

    async def __aenter__(self) -> ThriftClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def statistics(self) -> dict[str, int]:
        return self.pool.statistics()


class _NoDef:
    methods: dict[str, MethodDef] = {}


_NO_DEF = _NoDef()
