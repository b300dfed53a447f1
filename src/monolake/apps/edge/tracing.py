"""``tracing``: OpenTelemetry spans for proxied requests and thrift calls, exported over OTLP
(HTTP/protobuf, or gRPC through monolake's HTTP/2 client) in batches.

Per request: a SERVER span (the incoming W3C ``traceparent``/``tracestate`` is its parent
when there is one) and a CLIENT span per upstream try (a retrying route's retries are told
through ``RETRY_HOOKS``), whose context goes upstream in ``traceparent``/``tracestate``.
On a thrift server the context travels in TTHeader's ``RPC_TRANSIT_traceparent`` key;
``RpcTracing`` is the same for the RPC framework's thrift services, as a layer (its gRPC servers
and both clients: ``monolake.apps.rpc.tracing``, on this module's ``shared_tracing``). Sampling is
``sample_ratio`` of the trace ids (the ratio sampler's rule: the trace id's low 64 bits under ratio x 2^64), and with
``parent_based`` an incoming parent's sampled flag decides instead. Attributes follow the
HTTP semantic conventions (``http.request.method``, ``url.path``, ``url.query``,
``server.address``, ``client.address``, ``http.response.status_code``; the client span's
``server.address`` is the endpoint), plus ``monolake.route`` (the route's index); behind
trusted proxies (an ``ip_rules`` filter's ``CLIENT_ADDR``) ``client.address`` is the client it
found and ``network.peer.address`` the connection's peer. The
trace id is in the ``TRACE_ID`` slot (the access log's ``$trace_id``).

Why not the OpenTelemetry SDK's spans: each costs tens of microseconds (attribute
validation, locks, context objects), and a request has two. Here a span is a small list
filled by plain calls (ids are hex digits cut from one os.urandom per 64 requests),
queued when the request is logged; an export thread per worker
encodes each batch as an OTLP ``ExportTraceServiceRequest`` (protobuf, written by hand:
no dependency) and POSTs it. A request never waits for the collector; a full queue drops spans (counted)
and a failed export is a log line (at most one per 10 s), never a failed request. The
thread starts on the first sampled request in each worker (building the filter does no
I/O: ``monolake check`` runs it).
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import logging
import os
import re
import struct
import threading
import time
import weakref
from binascii import unhexlify
from contextvars import ContextVar
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from ...core.address import parse_endpoint
from ...core.proto._varint import SMALL as _SMALL
from ...core.proto._varint import encode_varint as _varint
from ...core.proto.http1 import Headers, Request, Response
from ...core.service import Context, ContextSlot, Layer
from ..config import Endpoint
from ..proxy._filters import HttpFilter
from ..proxy._retry import RETRY_HOOKS
from ._base import ArgError, build_from_args
from ._slots import CLIENT_ADDR, TRACE_ID

log = logging.getLogger("monolake.edge.tracing")

SPANS = ContextSlot("trace_spans", list, "The tracing filter's server span record, with its client span's.")

__all__ = ["TRACE_ID", "Tracing", "TracingArgs"]

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

# A span record: [trace_id, span_id, parent_id | None, start_ns, end_ns, name (bytes), raw attributes,
# error, client record | None] (+ sampled, tracestate, earlier tries' client records | None, the client
# span's id on the server record). Ids are lowercase hex bytes, as traceparent carries them.
_TID, _SID, _PID, _START, _END, _NAME, _ATTRS, _ERR, _CLIENT = range(9)
_SAMPLED, _STATE, _TRIES, _CSID = 9, 10, 11, 12
_KIND = 13  # an RPC span's kind (``rpc_record``); records without it are SERVER spans
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
_ODD = b"13579bdf"  # a traceparent flags byte's last hex digit when the sampled bit is set
_ID_BYTES = 2048
"""Random bytes per refill of a filter's id buffer: 64 requests' ids (trace, server and client span)."""
_ID_HEX = 2 * _ID_BYTES


class TracingArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    """The collector: its OTLP/HTTP traces URL, or with ``protocol = "grpc"`` its OTLP/gRPC address as
    ``http://host:4317`` (h2c) or ``https://host:4317`` (h2 over TLS); a path is ignored."""
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    """How spans are exported (OpenTelemetry's ``OTEL_EXPORTER_OTLP_PROTOCOL`` values): an HTTP
    POST of protobuf, or the ``TraceService/Export`` gRPC call over monolake's HTTP/2 client."""
    service_name: str = "monolake"
    """The ``service.name`` resource attribute."""
    sample_ratio: float = 1.0
    """Share of new traces recorded, 0..1."""
    parent_based: bool = True
    """Follow an incoming traceparent's sampled flag instead of the ratio."""
    export_interval: float = 1.0
    """Seconds between batch exports (sooner once ``batch`` spans are queued)."""
    export_timeout: float = 10.0
    """Seconds one export may take."""
    max_queue: int = 8192
    """Requests' spans queued for export; more are dropped (counted, logged)."""
    batch: int = 512
    """Requests whose spans go in one export."""
    headers: dict[str, str] = {}
    """Extra HTTP headers of the export requests (an API key...)."""


# -- OTLP protobuf, encoded by hand (opentelemetry/proto/trace/v1/trace.proto): a few fields
# of a few messages, so no protobuf runtime is needed and an export costs little CPU.

_KIND_SERVER = 2
_KIND_CLIENT = 3
_STATUS_ERROR = b"\x18\x02"  # Status.code (field 3, varint) = STATUS_CODE_ERROR
_STATUS_FIELD = b"\x7a\x02" + _STATUS_ERROR  # Span.status (15)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (bytes, string, message)."""
    n = len(payload)
    return _SMALL[number << 3 | 2] + (_SMALL[n] if n < 128 else _varint(n)) + payload


_ATTR_CACHE: dict[tuple[str, Any], bytes] = {}


def _kv(key: str, value: Any) -> bytes:
    """A KeyValue: key (1), value (2) an AnyValue with string_value (1) or int_value (3)."""
    if isinstance(value, int):
        any_value = b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    else:
        any_value = _field(1, str(value).encode())
    return _field(1, key.encode()) + _field(2, any_value)


def _attr(key: str, value: Any) -> bytes:
    """A span's attribute field (9). Most (key, value) pairs repeat (method, scheme, status...): cached."""
    cached = _ATTR_CACHE.get((key, value))
    if cached is not None:
        return cached
    out = _field(9, _kv(key, value))
    if len(_ATTR_CACHE) < 4096:
        _ATTR_CACHE[(key, value)] = out
    return out


_RAW_CACHE: dict[tuple[str, bytes], bytes] = {}


def _battr(key: str, raw: bytes) -> bytes:
    """An attribute field of a raw (latin-1) string value off the request (a path, a host...), cached."""
    out = _RAW_CACHE.get((key, raw))
    if out is None:
        out = _field(9, _kv(key, raw.decode("latin-1")))
        if len(_RAW_CACHE) < 4096:
            _RAW_CACHE[(key, raw)] = out
    return out


_SCHEME_HTTP = _field(9, _kv("url.scheme", "http"))
_GROUPS: dict[tuple[Any, ...], bytes] = {}
"""The attributes most requests share, as one run of fields: (server: method, version, status, host,
route name; client: method, status, endpoint, resend, error type) -> their bytes."""


def _group(key: tuple[Any, ...], make: Any) -> bytes:
    out = _GROUPS.get(key)
    if out is None:
        out = make(key)
        if len(_GROUPS) < 4096:
            _GROUPS[key] = out
    return out


def _server_group(key: tuple[Any, ...]) -> bytes:
    method, version, status, host, route = key
    out = _attr("http.request.method", method.decode("latin-1")) + _SCHEME_HTTP
    out += _attr("network.protocol.version", version.decode("latin-1"))
    out += _attr("http.response.status_code", status)
    if host:
        out += _battr("server.address", host)
    if route is not None:
        out += _attr("monolake.route", str(route))  # the route's index in its server's list
    return out


def _client_group(key: tuple[Any, ...]) -> bytes:
    method, status, endpoint, resend, error_type = key
    out = _attr("http.request.method", method.decode("latin-1"))
    if status is not None:
        out += _attr("http.response.status_code", status)
    if endpoint is not None:
        out += _attr("server.address", endpoint)
    if resend:
        out += _attr("http.request.resend_count", resend)
    if error_type is not None:
        out += _attr("error.type", error_type)
    return out


_NAMES: dict[tuple[bytes, bytes], bytes] = {}
_PACK_TIMES = struct.Struct("<BQBQ").pack
_SERVER = b"\x30\x02"  # Span.kind (6) = SPAN_KIND_SERVER
_CLIENT_KIND = b"\x30\x03"  # SPAN_KIND_CLIENT


def _tail(name: bytes, kind: bytes) -> bytes:
    """A span's name and kind fields."""
    tail = _NAMES.get((name, kind))
    if tail is None:
        tail = _field(5, name) + kind
        if len(_NAMES) < 64:
            _NAMES[(name, kind)] = tail
    return tail


_HEADS: dict[int, bytes] = {}
"""A span of n bytes: its ScopeSpans.spans (2) tag and length, and its trace_id field's tag and length."""


def _head(n: int) -> bytes:
    """The bytes before a span's trace id (``_HEADS``), for a span of ``n`` bytes."""
    head = _HEADS.get(n)
    if head is None:
        head = b"\x12" + _varint(n) + b"\x0a\x10"
        if n < 16384:
            _HEADS[n] = head
    return head


_SERVER_ATTRS: dict[tuple[Any, ...], bytes] = {}
"""An HTTP SERVER span's attribute fields by its raw values (most requests repeat a few): one lookup."""
_CLIENT_ATTRS: dict[tuple[Any, ...], bytes] = {}
_EP_NAMES: dict[int, tuple[Any, str]] = {}
"""id(endpoint) -> (endpoint, str(endpoint)): an Endpoint's hash and str are Python-level calls."""
_CACHED = 4096
"""Entries each of these caches holds; a full one is emptied (a reload's old routes go with it)."""


def _server_attrs(key: tuple[Any, ...], cache: bool = True) -> bytes:
    method, path, query, host, peer, version, route, status, client = key
    if client is None:
        attrs = _battr("url.path", path) + _attr("client.address", peer)
    else:  # behind trusted proxies (ip_rules): the client, and the connection's peer
        attrs = _battr("url.path", path) + _attr("client.address", client) + _attr("network.peer.address", peer)
    if query:
        attrs += _battr("url.query", query)
    # the route object: its name is read here, off the request path
    attrs += _group((method, version, status, host, getattr(route, "name", None)), _server_group)
    if cache:
        if len(_SERVER_ATTRS) >= _CACHED:
            _SERVER_ATTRS.clear()
        _SERVER_ATTRS[key] = attrs
    return attrs


_ID_TAG = b"\x12\x08"  # Span.span_id (2), 8 bytes
_PARENT_TAG = b"\x22\x08"  # Span.parent_span_id (4), 8 bytes
_FIXED = 2 + 16 + 2 + 8 + 18  # a span's trace_id, span_id and time fields
_WITH_PARENT = _FIXED + 10


def _http_spans(r: list[Any], out: list[bytes]) -> None:
    """An HTTP request's record: its SERVER span and its tries' CLIENT spans, as parts of the
    export's one ``b"".join`` (no span is copied into a framed one: its length is added up)."""
    key = tuple(r[_ATTRS])
    try:
        attrs = _SERVER_ATTRS.get(key)
    except TypeError:  # an unhashable value (a filter's own route object...): not cached
        attrs = _server_attrs(key, False)
    if attrs is None:
        attrs = _server_attrs(key)
    trace = unhexlify(r[_TID])
    sid = unhexlify(r[_SID])
    parent = r[_PID]
    start = r[_START]
    tail = _tail(r[_NAME], _SERVER)
    times = _PACK_TIMES(0x39, start, 0x41, r[_END] or start)
    n = len(tail) + len(attrs) + (4 if r[_ERR] else 0)
    if parent:
        out += (_head(n + _WITH_PARENT), trace, _ID_TAG, sid, _PARENT_TAG, unhexlify(parent), tail, times, attrs)
    else:
        out += (_head(n + _FIXED), trace, _ID_TAG, sid, tail, times, attrs)
    if r[_ERR]:
        out.append(_STATUS_FIELD)
    tries = r[_TRIES]
    last = r[_CLIENT]
    if tries is None and last is None:
        return
    for c in [*(tries or ()), last]:
        if c is None:
            continue
        ca = c[_ATTRS]
        if type(ca) is not list:  # a thrift call's client span
            out.append(_field(2, _span(c, _KIND_CLIENT, r[_SID], ca)))
            continue
        attrs = _client_attrs(ca)
        tail = _tail(c[_NAME], _CLIENT_KIND)
        start = c[_START]
        times = _PACK_TIMES(0x39, start, 0x41, c[_END] or start)
        n = len(tail) + len(attrs) + (4 if c[_ERR] else 0) + _WITH_PARENT
        out += (_head(n), trace, _ID_TAG, unhexlify(c[_SID]), _PARENT_TAG, sid, tail, times, attrs)
        if c[_ERR]:
            out.append(_STATUS_FIELD)


def _client_attrs(a: list[Any]) -> bytes:
    method, path, status, endpoint, resend, error_type = a
    if endpoint is not None and type(endpoint) is not str:
        hit = _EP_NAMES.get(id(endpoint))
        if hit is None or hit[0] is not endpoint:
            hit = (endpoint, str(endpoint))
            if len(_EP_NAMES) >= _CACHED:
                _EP_NAMES.clear()
            _EP_NAMES[id(endpoint)] = hit
        endpoint = hit[1]
    key = (method, path, status, endpoint, resend, error_type)
    out = _CLIENT_ATTRS.get(key)
    if out is None:
        out = _battr("url.path", path) + _group((method, status, endpoint, resend, error_type), _client_group)
        if len(_CLIENT_ATTRS) >= _CACHED:
            _CLIENT_ATTRS.clear()
        _CLIENT_ATTRS[key] = out
    return out


_KINDS = {_KIND_SERVER: _SERVER, _KIND_CLIENT: _CLIENT_KIND}


def _span(r: list[Any], kind: int, parent: bytes | None, attrs: dict[str, Any]) -> bytes:
    """An RPC record's Span (its attributes a dict), one join."""
    start = r[_START]
    parts = [b"\x0a\x10", unhexlify(r[_TID]), _ID_TAG, unhexlify(r[_SID])]
    if parent:
        parts += (_PARENT_TAG, unhexlify(parent))
    parts += (_tail(r[_NAME], _KINDS[kind]), _PACK_TIMES(0x39, start, 0x41, r[_END] or start))
    parts += [_attr(k, v) for k, v in attrs.items()]
    if r[_ERR]:
        parts.append(_STATUS_FIELD)
    return b"".join(parts)


class _Exporter:
    """One worker's export thread: batches of span records to OTLP/HTTP protobuf."""

    def __init__(self, args: TracingArgs) -> None:
        self.args = args
        self.queue: collections.deque[list[Any]] = collections.deque()
        self.dropped = 0
        self.exported = 0
        self.wake = threading.Event()
        self._last_error = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        """gRPC export: the export thread's event loop, its client and the collector's endpoint."""
        self._client: Any = None
        self._endpoint: Any = None
        self._http: http.client.HTTPConnection | None = None
        """HTTP export: the connection to the collector, and the request target."""
        self._target = "/"
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self._run, name="monolake-otlp", daemon=True)
        self.thread.start()

    def add(self, record: list[Any]) -> None:
        queue = self.queue
        n = len(queue)
        if n >= self.args.max_queue:
            self.dropped += 1
            return
        queue.append(record)
        if (n + 1) % self.args.batch == 0:  # once per batch (an Event.set takes a lock); again a batch later,
            self.wake.set()  # should the thread have cleared this one as it woke for the last

    def _run(self) -> None:
        while True:
            self.wake.wait(self.args.export_interval)
            self.wake.clear()
            while self.queue:
                n = min(len(self.queue), self.args.batch)
                records = [self.queue.popleft() for _ in range(n)]
                try:
                    self._post(self._encode(records))
                    self.exported += n
                except Exception as exc:
                    now = time.monotonic()
                    if now - self._last_error >= 10:
                        self._last_error = now
                        log.warning(
                            "tracing: export to %s failed, %d spans dropped: %s", self.args.endpoint, 2 * n, exc
                        )
                    # Not again before the interval, full batches or not: a collector that is down must
                    # not have this thread encode (and drop) every batch as fast as requests come.
                    time.sleep(self.args.export_interval)
                    break

    def _encode(self, records: list[list[Any]]) -> bytes:
        spans: list[bytes] = []
        for r in records:
            a = r[_ATTRS]
            if type(a) is list:  # an HTTP request's
                _http_spans(r, spans)
                continue
            # an RPC span's (a thrift call's, a layer's), attributes a dict
            spans.append(_field(2, _span(r, r[_KIND] if len(r) > _KIND else _KIND_SERVER, r[_PID], a)))
            c = r[_CLIENT]
            if c is not None:
                spans.append(_field(2, _span(c, _KIND_CLIENT, r[_SID], c[_ATTRS])))
        scope = _field(1, _field(1, b"monolake.edge.tracing")) + b"".join(spans)
        resource = _field(1, _kv("service.name", self.args.service_name))
        return _field(1, _field(1, resource) + _field(2, scope))

    def _post(self, body: bytes) -> None:
        if self.args.protocol == "grpc":
            self._post_grpc(body)
            return
        conn = self._http
        if conn is None:  # one connection kept open between batches (a new one after a failure)
            parts = urlsplit(self.args.endpoint)
            kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = self._http = kind(parts.netloc, timeout=self.args.export_timeout)
            self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "application/x-protobuf", **self.args.headers}
        try:
            conn.request("POST", self._target, body, headers)
            resp = conn.getresponse()
            resp.read()
        except BaseException:
            conn.close()
            self._http = None
            raise
        if not 200 <= resp.status < 300:
            raise RuntimeError(f"HTTP Error {resp.status}: {resp.reason}")
        if resp.will_close:
            conn.close()
            self._http = None

    def _post_grpc(self, body: bytes) -> None:
        """One unary ``Export`` call on the export thread's own event loop (its HTTP/2 connection
        stays open between batches). Raises on a transport error or a grpc-status other than 0."""
        from ...core.client import Client, PoolSettings

        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.new_event_loop()
            t = self.args.export_timeout
            self._client = Client(
                loop=loop, default=PoolSettings(http2=True, connect_timeout=t, read_timeout=t, pool_timeout=t)
            )
            parts = urlsplit(self.args.endpoint)
            self._endpoint = parse_endpoint(f"{parts.scheme}://{parts.netloc}")
        loop.run_until_complete(asyncio.wait_for(self._export_grpc(body), self.args.export_timeout))

    async def _export_grpc(self, body: bytes) -> None:
        headers = Headers([(b"content-type", b"application/grpc"), (b"te", b"trailers")])
        for k, v in self.args.headers.items():
            headers.add(k.lower().encode(), v.encode())
        message = b"\x00" + len(body).to_bytes(4, "big") + body  # not compressed, length, message
        req = Request(b"POST", _GRPC_EXPORT, headers, body=message)
        resp = await self._client.send(req, self._endpoint)
        status = resp.headers.get(b"grpc-status")  # a trailers-only answer (an error)
        rbody = resp.body
        if status is None and rbody is not None and not isinstance(rbody, bytes):
            await rbody.read_all(1 << 20)
            status = dict(rbody.trailers or ()).get(b"grpc-status")
        if resp.status != 200 or status != b"0":
            why = resp.headers.get(b"grpc-message") or b""
            raise RuntimeError(f"HTTP {resp.status}, grpc-status {status!r} {why.decode('latin-1')}".rstrip())


_GRPC_EXPORT = b"/opentelemetry.proto.collector.trace.v1.TraceService/Export"

THRIFT_TRACEPARENT = "RPC_TRANSIT_traceparent"
THRIFT_TRACESTATE = "RPC_TRANSIT_tracestate"
"""TTHeader keys of the W3C context: Kitex's OpenTelemetry suite puts ``traceparent`` in the
call's metainfo as a transient value, which TTHeader carries as ``RPC_TRANSIT_<key>`` (one hop:
each hop sends its own span as the parent)."""

_THRIFT_FAILED = frozenset({"exception", "error", "no_route", "refused"})


class Tracing(HttpFilter):
    """OpenTelemetry tracing; see the module docstring."""

    Args = TracingArgs
    kinds = ("http", "thrift")

    def __init__(self, args: TracingArgs) -> None:
        if not 0.0 <= args.sample_ratio <= 1.0:
            raise ArgError("sample_ratio", f"must be between 0 and 1, got {args.sample_ratio}")
        if not args.endpoint.startswith(("http://", "https://")):
            raise ArgError("endpoint", f"expected an http(s):// URL, got {args.endpoint!r}")
        if args.protocol == "grpc":
            try:
                parse_endpoint(f"{urlsplit(args.endpoint).scheme}://{urlsplit(args.endpoint).netloc}")
            except ValueError as exc:
                raise ArgError("endpoint", f"not a collector address: {exc}") from None
        for key in ("export_interval", "export_timeout"):
            if getattr(args, key) <= 0:
                raise ArgError(key, "must be > 0 (seconds)")
        for key in ("max_queue", "batch"):
            if getattr(args, key) < 1:
                raise ArgError(key, "must be >= 1")
        self.args = args
        self.bound = int(args.sample_ratio * (1 << 64))
        self.always = args.sample_ratio >= 1.0
        self.parent_based = args.parent_based
        self._exporter: _Exporter | None = None
        self._ids = b""
        """Hex digits of ``_ID_BYTES`` random bytes (one os.urandom), 64 taken per request."""
        self._at = _ID_HEX  # the buffer is filled on first use
        _INSTANCES.add(self)

    def _export(self, record: list[Any]) -> None:
        e = self._exporter
        if e is None:  # none yet in this process (a fork clears it: the thread did not come along)
            e = self._exporter = _Exporter(self.args)
        e.add(record)

    def _next_ids(self) -> bytes:
        """64 hex digits: a trace id's 32, a span id's 16, another's 16."""
        at = self._at
        if at >= len(self._ids):
            self._ids = os.urandom(_ID_BYTES).hex().encode()
            at = 0
        self._at = at + 64
        return self._ids[at : at + 64]

    def _sampled(self, trace: bytes) -> bool:
        """The ratio sampler's decision: the trace id's low 64 bits under ratio x 2^64."""
        return self.always or int(trace[16:], 16) < self.bound

    def call_filter(self, call: Any, ctx: Context) -> None:
        """A thrift server's call (``ThriftCall``): a SERVER span, and a CLIENT span whose context goes
        upstream in ``RPC_TRANSIT_traceparent`` (header transports; framed calls carry none)."""
        at = self._at
        if at >= len(self._ids):
            self._ids = os.urandom(_ID_BYTES).hex().encode()
            at = 0
        self._at = at + 64
        ids = self._ids[at : at + 64]
        headers = call.headers
        tp = headers.get(THRIFT_TRACEPARENT) if headers else None
        m = _TRACEPARENT.fullmatch(tp.strip().encode("latin-1")) if tp is not None else None
        if m is not None and m[1] != b"ff" and m[2] != _ZERO_TRACE and m[3] != _ZERO_SPAN:
            trace: bytes = m[2]
            parent: bytes | None = m[3]
            sampled = m[4][1] in _ODD if self.parent_based else self._sampled(trace)
            state = headers.get(THRIFT_TRACESTATE)
        else:
            trace = ids[:32]
            parent = None
            sampled = self._sampled(trace)
            state = None
        sid, csid = ids[32:48], ids[48:]
        out = {THRIFT_TRACEPARENT: f"00-{trace.decode()}-{csid.decode()}-{'01' if sampled else '00'}"}
        if state is not None:
            out[THRIFT_TRACESTATE] = state
        call.send_headers = out
        if not sampled:
            return
        now = time.time_ns()
        service = call.service or ""
        name = f"{service}/{call.method}".encode() if service else call.method.encode()
        attrs: dict[str, Any] = {"rpc.system": "apache_thrift", "rpc.method": call.method}
        if service:
            attrs["rpc.service"] = service
        server_attrs = {**attrs, "client.address": call.peer}
        client = [trace, csid, sid, now, 0, name, attrs, False, None]
        record = [trace, sid, parent, now, 0, name, server_attrs, False, client, True, state, None, csid]
        SPANS.set(ctx, record)
        TRACE_ID.set(ctx, trace)

    def call_done(self, call: Any, outcome: str, ctx: Context) -> None:
        record = SPANS.get(ctx, None)
        if record is None:
            return
        now = time.time_ns()
        record[_END] = now
        failed = outcome in _THRIFT_FAILED
        client = record[_CLIENT]
        if outcome in ("no_route", "refused"):  # nothing went upstream
            record[_CLIENT] = None
        else:
            client[_END] = now
            client[_ERR] = failed
            if ctx.endpoint is not None:
                client[_ATTRS]["server.address"] = str(ctx.endpoint)
            if failed:
                client[_ATTRS]["error.type"] = outcome
        record[_ERR] = failed
        if failed:
            record[_ATTRS]["error.type"] = outcome
        self._export(record)

    def request_filter(self, req: Request, ctx: Context) -> None:
        # One os.urandom per 64 requests, hex once: the ids are the hex digits traceparent carries.
        at = self._at
        ids = self._ids
        if at >= _ID_HEX:
            ids = self._ids = os.urandom(_ID_BYTES).hex().encode()
            at = 0
        self._at = at + 64
        headers = req.headers
        names = headers.names()  # lowered names, a C-level search (no per-call lowering of ours)
        if b"traceparent" in names:
            tp = headers.pairs()[names.index(b"traceparent")][1]
            m = _TRACEPARENT.fullmatch(tp.strip())
        else:
            m = None
        if m is not None and m[1] != b"ff" and m[2] != _ZERO_TRACE and m[3] != _ZERO_SPAN:
            trace: bytes = m[2]
            parent: bytes | None = m[3]
            sampled = m[4][1] in _ODD if self.parent_based else self._sampled(trace)
            state = headers.get(b"tracestate")
        else:
            trace = ids[at : at + 32]  # all zeros (invalid) once in 2^128
            parent = None
            sampled = self.always or self._sampled(trace)
            state = None
        method = req.method
        sid, csid = ids[at + 32 : at + 48], ids[at + 48 : at + 64]
        user = ctx.user
        if user is None:
            user = ctx.user = {}
        if sampled:
            # Attributes are raw values here, made into strings by the export thread.
            attrs = [method, req.path, req.query, req.host, ctx.peer, req.version, ctx.route, None, None]
            now = time.time_ns()
            user[SPANS] = [trace, sid, parent, now, 0, method, attrs, False, None, True, state, None, csid]
            user[TRACE_ID] = trace
        else:
            user[SPANS] = [trace, sid, parent, 0, 0, method, None, False, None, False, state, None, csid]
        return None

    def upstream_request_filter(self, req: Request, ctx: Context) -> None:
        user = ctx.user
        record = user.get(SPANS) if user is not None else None
        if record is None:
            return
        headers = req.headers
        names = headers.names()
        if b"traceparent" in names:  # the client's: ours replaces it
            headers.remove(b"traceparent")
        tid, csid = record[_TID], record[_CSID]
        if record[_SAMPLED]:
            headers.pairs().append((b"traceparent", b"00-%s-%s-01" % (tid, csid)))
            names.append(b"traceparent")
            name = record[_NAME]
            now = time.time_ns()
            # True: an error until a response head comes
            record[_CLIENT] = [tid, csid, record[_SID], now, 0, name, [name, req.path, None, None, 0, None], True, None]
        else:
            headers.pairs().append((b"traceparent", b"00-%s-%s-00" % (tid, csid)))
            names.append(b"traceparent")
        state = record[_STATE]
        if state is not None:
            headers.set(b"tracestate", state)

    def response_filter(self, resp: Response, ctx: Context) -> None:
        user = ctx.user
        record = user.get(SPANS) if user is not None else None
        if record is None or record[_CLIENT] is None:
            return
        client = record[_CLIENT]
        client[_END] = time.time_ns()
        client[_ERR] = resp.status >= 500
        attrs = client[_ATTRS]
        attrs[2] = resp.status
        attrs[3] = ctx.endpoint

    def logging(self, req: Request, resp: Response, ctx: Context) -> None:
        user = ctx.user
        record = user.get(SPANS) if user is not None else None
        if record is None or not record[_SAMPLED]:
            return
        now = time.time_ns()
        client = record[_CLIENT]
        if client is not None and not client[_END]:  # the upstream call failed: no response head came
            client[_END] = now
            client[_ATTRS][3] = ctx.endpoint
        record[_END] = now
        status = resp.status
        attrs = record[_ATTRS]
        attrs[7] = status
        attrs[8] = user.get(CLIENT_ADDR)  # type: ignore[union-attr]  # set when record is
        record[_ERR] = status >= 500
        e = self._exporter
        if e is None:
            e = self._exporter = _Exporter(self.args)
        e.add(record)


def _on_retry(req: Request, endpoint: Endpoint | None, why: str, nxt: Endpoint) -> None:
    """A retrying route's try failed (``RETRY_HOOKS``): end its client span, start the next try's
    (told upstream in traceparent)."""
    user = req.ctx.user
    record = user.get(SPANS) if user is not None else None
    if record is None or record[_CLIENT] is None:
        return
    now = time.time_ns()
    client = record[_CLIENT]
    client[_END] = now
    client[_ERR] = True
    attrs = client[_ATTRS]
    attrs[3] = endpoint
    if why.startswith("status "):
        attrs[2] = int(why[7:])
        attrs[5] = why[7:]  # error.type: the status code, as the HTTP conventions say
    else:
        attrs[5] = why.replace(" ", "_")
    tries = record[_TRIES]
    if tries is None:
        tries = record[_TRIES] = []
    tries.append(client)
    csid = os.urandom(8).hex().encode()
    req.headers.set(b"traceparent", b"00-%s-%s-01" % (record[_TID], csid))
    name = record[_NAME]
    record[_CLIENT] = [
        record[_TID],
        csid,
        record[_SID],
        now,
        0,
        name,
        [name, attrs[1], None, None, len(tries), None],
        True,
        None,
    ]


RETRY_HOOKS.append(_on_retry)


# -- pieces the RPC layers share (these and ``monolake.apps.rpc.tracing``'s) ------------------

CURRENT_SPAN: ContextVar[tuple[bytes, bytes, bool, str | None] | None] = ContextVar("monolake_rpc_span", default=None)
"""The server span of the RPC call this task serves: (trace id, span id, sampled, tracestate), hex
ids as traceparent carries them. A server layer sets it; a client layer's span is its child."""

_SHARED: dict[bytes, Tracing] = {}


def shared_tracing(args: TracingArgs) -> Tracing:
    """One ``Tracing`` (ids, sampler, export thread) per distinct settings in a process: a server's
    layer and the client layers its handler uses export through one thread."""
    key = msgspec.json.encode(args)
    t = _SHARED.get(key)
    if t is None:
        t = _SHARED[key] = Tracing(args)
    return t


def tracing_args(table: dict[str, Any], where: str) -> TracingArgs:
    """A TOML ``tracing`` table (the tracing filter's args) as checked settings. Raises ConfigError
    at ``where.KEY``."""
    t: Tracing = build_from_args(Tracing, table, where)  # its checks; no I/O (the exporter starts on a span)
    return t.args


def incoming(t: Tracing, tp: bytes | None, ids: bytes) -> tuple[bytes, bytes | None, bool]:
    """(trace id, parent span id or None, sampled) of a call whose caller sent traceparent ``tp``
    (None, or invalid: a new trace, its id the first 32 of ``ids``, ``t``'s ratio deciding)."""
    m = _TRACEPARENT.fullmatch(tp.strip()) if tp is not None else None
    if m is not None and m[1] != b"ff" and m[2] != _ZERO_TRACE and m[3] != _ZERO_SPAN:
        trace: bytes = m[2]
        return trace, m[3], m[4][1] in _ODD if t.parent_based else t._sampled(trace)
    trace = ids[:32]
    return trace, None, t._sampled(trace)


def rpc_record(
    trace: bytes,
    sid: bytes,
    parent: bytes | None,
    start: int,
    name: bytes,
    attrs: dict[str, Any],
    error: bool,
    kind: int,
) -> list[Any]:
    """An RPC span's record (attributes a dict, encoded by ``_span``), ended now."""
    return [trace, sid, parent, start, time.time_ns(), name, attrs, error, None, True, None, None, None, kind]


class RpcTracing(Layer[Any, Any]):
    """Tracing as a layer of the RPC framework's thrift services (``monolake.rpc.ThriftService(...,
    layers=[RpcTracing(endpoint=...)])``, or ``[servers.NAME.rpc_thrift.tracing]``); the keywords
    are ``TracingArgs``.

    A SERVER span per call (``rpc.*`` attributes, named ``Service/method``; a raised exception,
    declared or not, is an error), its parent the caller's ``traceparent`` metainfo (TTHeader
    ``RPC_TRANSIT_traceparent``). The span's context is set as this hop's transient
    ``traceparent`` (and ``CURRENT_SPAN``), so the calls the handler makes with a ``ThriftClient``
    (or, through a client tracing layer, a ``GrpcClient``) are its children.
    """

    def __init__(self, **args: Any) -> None:
        self.tracing = shared_tracing(msgspec.convert(args, TracingArgs))

    def layer(self, inner: Any) -> _RpcTraced:
        return _RpcTraced(inner, self.tracing)


class _RpcTraced:
    __slots__ = ("inner", "t")

    def __init__(self, inner: Any, t: Tracing) -> None:
        self.inner = inner
        self.t = t

    async def __call__(self, req: Any) -> Any:
        t = self.t
        ids = t._next_ids()
        mi = req.metainfo
        tp = mi.upstream.get("traceparent")
        trace, parent, sampled = incoming(t, tp.encode("latin-1") if tp is not None else None, ids)
        state = mi.upstream.get("tracestate") if parent is not None else None
        sid = ids[32:48]
        mi.set_transient("traceparent", f"00-{trace.decode()}-{sid.decode()}-{'01' if sampled else '00'}")
        if state is not None:
            mi.set_transient("tracestate", state)
        CURRENT_SPAN.set((trace, sid, sampled, state))  # the call's own context: nothing to reset
        if not sampled:
            return await self.inner(req)
        start = time.time_ns()
        error: str | None = None
        try:
            return await self.inner(req)
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            attrs: dict[str, Any] = {
                "rpc.system": "apache_thrift",
                "rpc.service": req.service,
                "rpc.method": req.method,
                "client.address": req.peer,
            }
            if error is not None:
                attrs["error.type"] = error
            name = f"{req.service}/{req.method}".encode()
            t._export(rpc_record(trace, sid, parent, start, name, attrs, error is not None, _KIND_SERVER))


_INSTANCES: weakref.WeakSet[Tracing] = weakref.WeakSet()


def _forked() -> None:
    # The parent's export thread did not come along, and the child must not reuse the parent's ids.
    for t in list(_INSTANCES):
        t._exporter = None
        t._ids = b""
        t._at = _ID_HEX


os.register_at_fork(after_in_child=_forked)
