"""An async gRPC client over the HTTP/2 client driver (``core/client/_h2.py``).

Calls are streams multiplexed on one connection per endpoint (``H2Pool`` opens another
only when the peer's stream limit is reached). A call goes through a stack of services
in Volo's order::

    user layers -> timeout -> discovery / load balancing (and retries) -> inner layers -> transport

each a ``Service[GrpcCall, GrpcReply]`` (``core.service``'s Service and Layer), so a user
layer sees the call before its deadline is set and an inner layer sees the endpoint
picked for one try.

- Timeout: the call's ``timeout`` or the client's becomes a deadline (no later than the deadline
  of the server call the client is called from, if any: deadlines propagate); it goes out as
  ``grpc-timeout`` (what is left of it) and bounds the HTTP/2 stream; passing it ends
  the call with DEADLINE_EXCEEDED.
- Discovery: ``StaticDiscover`` (a fixed list) or ``DnsDiscover`` (a name's addresses, resolved
  again in the background); any object with ``endpoints()`` (and optionally ``async wait()``,
  awaited while it has none yet) works.
  Load balancing uses the proxy's balancers (``apps/proxy/_balancer.py``: round robin,
  random, least request, consistent hashing on a metadata key...).
- Retries: only a call that failed with a retryable status (UNAVAILABLE by default:
  the connection failed, or the server said so) and whose requests can be sent again
  (not a client stream) is retried, on another endpoint when there is one, at most
  ``attempts`` tries, within a budget (retries in flight at most ``budget_percent`` of
  the calls in flight, or ``min_retries``), as the proxy's route retries.
- Transport: the call's fields (metadata, ``-bin`` base64, metainfo) and messages out;
  initial metadata, messages, trailers and status in. A non-OK status raises ``RpcError``.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError, Message

from ....core._body import Body
from ....core.address import Endpoint, parse_endpoint
from ....core.client._h2 import H2Pool
from ....core.errors import ConnectError, ConnectTimeout, MonolakeError, ReadTimeout
from ....core.proto.grpc import encode_timeout
from ....core.proto.http1 import Headers, Request
from ....core.server._service_app import stream_body
from ....core.service import Layer, Service
from . import _metainfo
from ._protos import MethodInfo, Protos, load_protos
from ._server import CALL_DEADLINE, DEFAULT_MAX_RECEIVE
from ._status import Metadata, RpcError, StatusCode, metadata_in, metadata_out, percent_decode

_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


@dataclass(slots=True)
class GrpcCall:
    """One call as it goes down the client's stack."""

    method: MethodInfo
    request: Any
    """A message (unary and server-streaming calls) or an (async) iterable of them."""
    metadata: Metadata = ()
    timeout: float | None = None
    """Seconds for the whole call (None: the client's)."""
    address: str | None = None
    """A fixed "host:port" for this call, bypassing discovery and balancing."""
    deadline: float | None = None
    """The loop time the call must end by (set by the timeout stage)."""
    endpoint: Endpoint | None = None
    """The endpoint of this try (set by the balancing stage)."""
    attempt: int = 0

    @property
    def replayable(self) -> bool:
        return not self.method.client_streaming


@dataclass(slots=True)
class GrpcReply:
    """A call's answer: the reply (unary response) or ``messages`` (streaming), and metadata."""

    initial_metadata: list[tuple[str, str | bytes]]
    message: Any = None
    messages: AsyncIterator[Any] | None = None
    trailing_metadata: list[tuple[str, str | bytes]] = field(default_factory=list)
    endpoint: Endpoint | None = None


class _Replies:
    """The response messages of a call, read from its body; the status at the end."""

    __slots__ = ("body", "buf", "cls", "gzip", "limit", "reply")

    def __init__(self, body: Body | bytes | None, cls: type[Message], limit: int, gzip_in: bool) -> None:
        self.body = body
        self.buf = bytearray()
        self.cls = cls
        self.limit = limit
        self.gzip = gzip_in
        self.reply: GrpcReply | None = None

    def __aiter__(self) -> _Replies:
        return self

    async def __anext__(self) -> Any:
        buf = self.buf
        while True:
            if len(buf) >= 5:
                n = int.from_bytes(buf[1:5], "big")
                if n > self.limit:
                    self._cancel()
                    raise RpcError(StatusCode.RESOURCE_EXHAUSTED, f"received message larger than max ({n})")
                if len(buf) >= 5 + n:
                    flag = buf[0]
                    payload = bytes(buf[5 : 5 + n])
                    del buf[: 5 + n]
                    return self._decode(flag, payload)
            body = self.body
            if isinstance(body, Body):
                try:
                    chunk = await body.read()
                except MonolakeError as exc:
                    raise _as_rpc_error(exc) from None
                if not chunk:
                    self._end(body.trailers or [])
            else:
                self.body = None
                chunk = body or b""
                if not chunk:
                    self._end([])
            buf += chunk

    def _end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self.buf:
            raise RpcError(StatusCode.INTERNAL, "the response ended inside a message")
        self.body = None
        reply = self.reply
        if reply is not None:
            reply.trailing_metadata = metadata_in(trailers)
        mi = _metainfo.peek()
        if mi is not None or any(n.startswith(b"rpc-backward-") for n, _ in trailers):
            _metainfo.take_backward(_metainfo.current(), trailers)
        raise_status(trailers, "no grpc-status in the response trailers")
        raise StopAsyncIteration

    def _decode(self, flag: int, payload: bytes) -> Any:
        if flag:
            if not self.gzip:
                raise RpcError(StatusCode.INTERNAL, "compressed message without grpc-encoding")
            payload = gzip.decompress(payload)
        try:
            return self.cls.FromString(payload)
        except DecodeError:
            raise RpcError(StatusCode.INTERNAL, "invalid response message (protobuf parse error)") from None

    def _cancel(self) -> None:
        body = self.body
        if isinstance(body, Body):
            body.cancel()
        self.body = None

    async def aclose(self) -> None:
        self._cancel()


def raise_status(fields: list[tuple[bytes, bytes]], missing: str) -> None:
    """Raise ``RpcError`` for a non-OK grpc-status in ``fields`` (or none at all)."""
    code: int | None = None
    message = ""
    details: bytes | None = None
    for name, value in fields:
        if name == b"grpc-status":
            try:
                code = int(value)
            except ValueError:
                code = StatusCode.UNKNOWN
        elif name == b"grpc-message":
            message = percent_decode(value)
        elif name == b"grpc-status-details-bin":
            from ._status import b64decode

            details = b64decode(value)
    if code is None:
        raise RpcError(StatusCode.INTERNAL, missing)
    if code != 0:
        try:
            status = StatusCode(code)
        except ValueError:
            status = StatusCode.UNKNOWN
        raise RpcError(status, message, details, metadata_in(fields))


def _as_rpc_error(exc: BaseException) -> RpcError:
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, ReadTimeout):
        return RpcError(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    if isinstance(exc, ConnectError | ConnectTimeout):
        return RpcError(StatusCode.UNAVAILABLE, f"cannot connect: {exc}")
    retry_safe = getattr(exc, "retry_safe", False)
    err = RpcError(StatusCode.UNAVAILABLE if retry_safe else StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    return err


def _frame(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


async def _framed(requests: AsyncIterable[Message] | Iterable[Message]) -> AsyncIterator[bytes]:
    if isinstance(requests, AsyncIterable):
        async for m in requests:
            yield _frame(m.SerializeToString())
    else:
        for m in requests:
            yield _frame(m.SerializeToString())


class Transport:
    """The innermost service: one try of a call on ``call.endpoint``."""

    __slots__ = ("connect_timeout", "idle_timeout", "max_receive", "pool", "user_agent")

    def __init__(self, pool: H2Pool, *, connect_timeout: float, idle_timeout: float, max_receive: int) -> None:
        self.pool = pool
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_receive = max_receive
        self.user_agent = b"monolake-grpc"

    async def __call__(self, call: GrpcCall) -> GrpcReply:
        ep = call.endpoint
        assert ep is not None
        info = call.method
        loop = asyncio.get_running_loop()
        fields = [
            (b":method", b"POST"),
            (b":scheme", b"https" if ep.scheme == "https" else b"http"),
            (b":authority", ep.authority.encode()),
            (b":path", info.path.encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-accept-encoding", b"identity,gzip"),
            (b"user-agent", self.user_agent),
        ]
        deadline = call.deadline
        if deadline is not None:
            left = deadline - loop.time()
            if left <= 0:
                raise RpcError(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded before the call went out")
            fields.append((b"grpc-timeout", encode_timeout(left)))
        if call.metadata:
            fields += metadata_out(call.metadata)
        mi = _metainfo.peek()
        if mi is not None:
            fields += _metainfo.outgoing(mi)
        body: Body | bytes
        if info.client_streaming:
            body = stream_body(_framed(call.request), "grpc client request stream")
        else:
            body = _frame(call.request.SerializeToString())
        try:
            conn = await self.pool.acquire(ep, connect_timeout=self.connect_timeout, idle_timeout=self.idle_timeout)
            st = conn.request(fields, body, head_only=False, read_timeout=1e9, deadline=deadline, grpc=True)
        except MonolakeError as exc:
            raise _as_rpc_error(exc) from None
        try:
            resp = await st.fut
        except asyncio.CancelledError:
            st.cancel()
            raise
        except MonolakeError as exc:
            raise _as_rpc_error(exc) from None
        h = resp.headers
        if resp.status != 200:
            if isinstance(resp.body, Body):
                resp.body.cancel()
            code = _HTTP_TO_GRPC.get(resp.status, StatusCode.UNKNOWN)
            raise RpcError(code, f"HTTP status {resp.status} from {ep}")
        pairs = h.pairs()
        initial = metadata_in(pairs)
        if resp.body is None or h.get(b"grpc-status") is not None:  # Trailers-Only
            if isinstance(resp.body, Body):
                resp.body.cancel()
            if mi is not None or any(n.startswith(b"rpc-backward-") for n, _ in pairs):
                _metainfo.take_backward(_metainfo.current(), pairs)
            raise_status(pairs, "no grpc-status in a response without a body")
            replies = _Replies(None, info.response, self.max_receive, False)
        else:
            replies = _Replies(resp.body, info.response, self.max_receive, h.get(b"grpc-encoding") == b"gzip")
        reply = GrpcReply(initial, endpoint=ep)
        replies.reply = reply
        if info.server_streaming:
            reply.messages = replies
            return reply
        got = [m async for m in replies]
        if len(got) != 1:
            raise RpcError(StatusCode.UNIMPLEMENTED if not got else StatusCode.INTERNAL, "not one response message")
        reply.message = got[0]
        return reply


class StaticDiscover:
    """Discovery from a fixed list of "host:port" (or ``Endpoint``) entries."""

    def __init__(self, endpoints: Sequence[str | Endpoint]) -> None:
        self.list = [e if isinstance(e, Endpoint) else parse_endpoint(e) for e in endpoints]

    def endpoints(self) -> list[Endpoint]:
        return self.list


class DnsDiscover:
    """Discovery from DNS: every address ``host`` resolves to, on ``port``; resolved again in the
    background once ``refresh`` seconds old (the last good answer is kept when a lookup fails)."""

    def __init__(self, host: str, port: int, *, refresh: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.refresh = refresh
        self.list: list[Endpoint] = []
        self._at = 0.0
        self._task: asyncio.Task[None] | None = None

    def endpoints(self) -> list[Endpoint]:
        loop = asyncio.get_running_loop()
        if self._task is None and loop.time() - self._at > self.refresh:
            self._task = loop.create_task(self._resolve())
        return self.list

    async def wait(self) -> None:
        """Resolve now if nothing was resolved yet (the first call waits for it)."""
        self.endpoints()
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    async def _resolve(self) -> None:
        import socket

        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            found: list[Endpoint] = []
            for _family, _type, _proto, _name, addr in infos:
                ep = Endpoint(host=str(addr[0]), port=int(addr[1]))
                if ep not in found:
                    found.append(ep)
            if found != self.list:
                self.list = found
        except OSError as exc:
            if not self.list:
                raise RpcError(StatusCode.UNAVAILABLE, f"cannot resolve {self.host}: {exc}") from None
        finally:
            self._at = loop.time()
            self._task = None


class RetryBudget:
    """Retries in flight at most ``percent`` of calls in flight, or ``min_retries``."""

    __slots__ = ("active", "min_retries", "percent", "refused", "retries", "retrying")

    def __init__(self, percent: float = 20.0, min_retries: int = 3) -> None:
        self.percent = percent
        self.min_retries = min_retries
        self.active = 0
        self.retrying = 0
        self.retries = 0
        self.refused = 0

    def admit(self) -> bool:
        if self.retrying + 1 > max(self.min_retries, self.active * self.percent / 100.0):
            self.refused += 1
            return False
        self.retrying += 1
        self.retries += 1
        return True


_NO_REQUEST = Request(b"POST", b"/", Headers())


class Balanced:
    """Discovery, load balancing and retries (see the module docstring)."""

    __slots__ = ("_balancer", "_eps", "attempts", "budget", "discover", "hash_on", "inner", "kind", "retry_on")

    def __init__(
        self,
        inner: Service[GrpcCall, GrpcReply],
        discover: Any,
        *,
        kind: str,
        hash_on: str,
        attempts: int,
        retry_on: frozenset[int],
        budget: RetryBudget,
    ) -> None:
        self.inner = inner
        self.discover = discover
        self.kind = kind
        self.hash_on = hash_on
        self.attempts = attempts
        self.retry_on = retry_on
        self.budget = budget
        self._eps: list[Endpoint] | None = None
        self._balancer: Any = None

    async def _balancer_now(self) -> Any:
        eps = self.discover.endpoints()
        if not eps:
            wait = getattr(self.discover, "wait", None)
            if wait is not None:
                await wait()
                eps = self.discover.endpoints()
        if eps is not self._eps:
            from ...proxy._balancer import make_balancer

            if not eps:
                raise RpcError(StatusCode.UNAVAILABLE, "no endpoints discovered")
            self._balancer = make_balancer(self.kind, eps, hash_on=self.hash_on)
            self._eps = eps
        return self._balancer

    async def __call__(self, call: GrpcCall) -> GrpcReply:
        if call.address is not None:
            call.endpoint = parse_endpoint(call.address)
            return await self.inner(call)
        balancer = await self._balancer_now()
        # Only hashing balancers read the request (a metadata key); the others get a shared stand-in.
        req = (
            Request(b"POST", call.method.path.encode(), Headers(metadata_out(call.metadata)))
            if self.kind == "consistent_hash"
            else _NO_REQUEST
        )
        budget = self.budget
        budget.active += 1
        tried: list[Endpoint] = []
        retrying = False
        try:
            while True:
                ep = balancer.pick_excluding(req, tried) if tried else balancer.pick(req)
                if ep is None:
                    ep = balancer.pick(req)
                call.endpoint = ep
                balancer.started(ep)
                try:
                    return await self.inner(call)
                except RpcError as exc:
                    if (
                        exc.code not in self.retry_on
                        or call.attempt + 1 >= self.attempts
                        or not call.replayable
                        or (call.deadline is not None and asyncio.get_running_loop().time() >= call.deadline)
                    ):
                        raise
                    if retrying:
                        budget.retrying -= 1
                        retrying = False
                    if not budget.admit():
                        raise
                    retrying = True
                    tried.append(ep)
                    call.attempt += 1
                finally:
                    balancer.finished(ep)
        finally:
            budget.active -= 1
            if retrying:
                budget.retrying -= 1


class Timeout:
    """Sets the call's deadline; a unary call past it ends with DEADLINE_EXCEEDED."""

    __slots__ = ("default", "inner")

    def __init__(self, inner: Service[GrpcCall, GrpcReply], default: float | None) -> None:
        self.inner = inner
        self.default = default

    async def __call__(self, call: GrpcCall) -> GrpcReply:
        t = call.timeout if call.timeout is not None else self.default
        inherited = CALL_DEADLINE.get()
        if t is None and inherited is None:
            return await self.inner(call)
        deadline = asyncio.get_running_loop().time() + t if t is not None else inherited
        assert deadline is not None
        if inherited is not None and inherited < deadline:
            deadline = inherited
        if call.deadline is None or deadline < call.deadline:
            call.deadline = deadline
        if call.method.server_streaming:
            return await self.inner(call)  # the stream's own deadline ends it with status 4
        try:
            async with asyncio.timeout_at(call.deadline):
                return await self.inner(call)
        except TimeoutError:
            raise RpcError(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None


async def _closing(reply: GrpcReply) -> AsyncIterator[Any]:
    """The reply's messages; a consumer that stops early resets the stream."""
    messages = reply.messages
    assert isinstance(messages, _Replies)
    try:
        async for m in messages:
            yield m
    finally:
        await messages.aclose()


class GrpcClient:
    """An async gRPC client for the services of ``protos`` (see the module docstring).

    ``endpoints``: "host:port" entries (a ``StaticDiscover``), or ``discover``: an object with
    ``endpoints() -> list[Endpoint]`` (``monolake.rpc.SourceDiscovery`` runs any discovery source:
    dns, file, etcd; connections to endpoints it drops drain). ``timeout``: seconds per call unless a call says
    otherwise. ``load_balancer``/``hash_on``: as a proxy cluster's (``hash_on`` may be
    "header:NAME", read from the call's metadata). ``attempts``/``retry_on``/``budget``: retries.
    ``layers`` wrap the whole stack (outermost first), ``inner_layers`` each try.
    """

    def __init__(
        self,
        protos: Protos | Sequence[Any],
        endpoints: Sequence[str | Endpoint] = (),
        *,
        discover: Any = None,
        timeout: float | None = None,
        metadata: Metadata = (),
        load_balancer: str = "round_robin",
        hash_on: str = "client_ip",
        attempts: int = 3,
        retry_on: Iterable[StatusCode] = (StatusCode.UNAVAILABLE,),
        budget: RetryBudget | None = None,
        layers: Sequence[Layer[GrpcCall, GrpcReply]] = (),
        inner_layers: Sequence[Layer[GrpcCall, GrpcReply]] = (),
        connect_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE,
        pool: H2Pool | None = None,
    ) -> None:
        self.protos = protos if isinstance(protos, Protos) else load_protos(list(protos))
        if discover is None:
            if not endpoints:
                raise ValueError("GrpcClient needs endpoints or discover")
            discover = StaticDiscover(endpoints)
        self.metadata = tuple(metadata)
        self.pool = pool if pool is not None else H2Pool()
        self._own_pool = pool is None
        self.discover = discover
        on_change = getattr(discover, "on_change", None)
        if on_change is not None:  # a changing set (SourceDiscovery): removed endpoints' connections drain
            on_change(lambda gone: self.pool.drain([ep.key for ep in gone]))
        svc: Any = Transport(
            self.pool, connect_timeout=connect_timeout, idle_timeout=idle_timeout, max_receive=max_receive_message_bytes
        )
        for layer in reversed(inner_layers):
            svc = layer.layer(svc)
        self.budget = budget if budget is not None else RetryBudget()
        svc = Balanced(
            svc,
            discover,
            kind=load_balancer,
            hash_on=hash_on,
            attempts=attempts,
            retry_on=frozenset(int(c) for c in retry_on),
            budget=self.budget,
        )
        svc = Timeout(svc, timeout)
        for layer in reversed(layers):
            svc = layer.layer(svc)
        self.service: Service[GrpcCall, GrpcReply] = svc
        self._methods: dict[str, MethodInfo] = {}

    def method(self, name: str) -> MethodInfo:
        info = self._methods.get(name)
        if info is None:
            info = self._methods[name] = self.protos.method(name)
        return info

    async def call(
        self,
        method: str,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Metadata = (),
        address: str | None = None,
    ) -> GrpcReply:
        """Run a call of any kind through the stack; the ``GrpcReply`` has its message(s) and metadata."""
        md = (*self.metadata, *metadata) if self.metadata else metadata
        return await self.service(GrpcCall(self.method(method), request, md, timeout, address))

    async def unary(self, method: str, request: Message, **opts: Any) -> Any:
        """A unary call: the reply message. Raises ``RpcError``."""
        return (await self.call(method, request, **opts)).message

    async def client_stream(
        self, method: str, requests: AsyncIterable[Message] | Iterable[Message], **opts: Any
    ) -> Any:
        """A client-streaming call: the reply message."""
        return (await self.call(method, requests, **opts)).message

    async def server_stream(self, method: str, request: Message, **opts: Any) -> AsyncIterator[Any]:
        """A server-streaming call: its replies, as they come."""
        reply = await self.call(method, request, **opts)
        async for m in _closing(reply):
            yield m

    async def bidi(
        self, method: str, requests: AsyncIterable[Message] | Iterable[Message], **opts: Any
    ) -> AsyncIterator[Any]:
        """A bidi-streaming call: its replies, as they come, while ``requests`` are sent."""
        reply = await self.call(method, requests, **opts)
        async for m in _closing(reply):
            yield m

    def close(self) -> None:
        """Close the client's connections (not a pool it was given) and stop a discovery source."""
        stop = getattr(self.discover, "close", None)
        if stop is not None:
            stop()
        if self._own_pool:
            self.pool.close()

    async def aclose(self, timeout: float = 5.0) -> None:
        """``close``, then wait (up to ``timeout`` seconds) until the connections are gone: a TLS
        connection's close_notify needs the loop to run, so call this before the loop ends."""
        self.close()
        if not self._own_pool:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while any(self.pool.open.values()) and loop.time() < until:
            await asyncio.sleep(0.01)
