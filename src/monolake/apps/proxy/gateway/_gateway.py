"""HTTP → Thrift gateway: a route's requests answered by calling a Thrift service.

Theory of operation. When the config loads, the route's IDL is parsed with
thriftpy2 (which keeps annotations: ``__thrift_function_annotations__`` on the
service, ``__thrift_field_annotations__`` and ``__thrift_annotations__`` on
structs) and every method with an ``api.get|post|put|delete|patch = "/path/:id"``
annotation becomes an endpoint, with its request and response converters
compiled (``_convert``), and for binary upstreams a writer generated per method
(``_binary``). Per request: match method and path → the ``<method>_args`` bytes
from path parameters, query, headers, cookies and the JSON body: with the binary
protocol written directly from a typed msgspec decode of the body (no thriftpy2
objects; any input it does not take, errors included, goes the object path, which
names the field), with the compact protocol as thriftpy2 objects and its compact
codec → the call in the configured transport with ``rpc-persist-*``/
``rpc-transit-*`` headers as TTHeader/THeader metadata → ``ThriftPool.call``
(multiplexed, like the Thrift proxy) → decode the result (thriftpy2) → JSON.

Where a request field comes from (CloudWeGo conventions): ``api.path``,
``api.query``, ``api.header``, ``api.cookie``, ``api.body`` (a JSON body key),
``api.raw_body`` (the body bytes), ``api.none`` (nowhere); unannotated fields are
query parameters for GET and body keys otherwise. A method whose one argument is
a struct maps that struct's fields; otherwise the arguments themselves are the
fields. In the response struct ``api.header``, ``api.cookie`` and
``api.http_code`` fields become a header, a Set-Cookie and the status,
``api.raw_body`` the body; the rest is the JSON body.

Statuses: declared exceptions → the exception's ``api.http_code`` (struct
annotation, or the value of a field so annotated), else 400, with
``{"error": Name, "detail": {...}}``; missing or ill-typed input → 400
``{"error": ..., "field": "body.items[0].id"}``; no such path → 404, wrong method
→ 405; the upstream's TApplicationException → 502; connect failures and broken
connections → 502, timeouts → 504.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.utils import deserialize, serialize

from ....core.client._thrift import ThriftPool
from ....core.errors import ConfigError, ConnectError, ConnectTimeout, MonolakeError, ReadTimeout
from ....core.proto.http1 import Headers, Request, Response
from ....core.proto.thrift import (
    MessageType,
    ThriftProtocol,
    Transport,
    classify,
    encode_frame,
    message_begin,
    parse_application_exception,
    peek_message,
    read_header_info,
)
from ...config import Cluster, Config, Endpoint, Route, Server, parse_endpoint
from .._balancer import Balancer, make_balancer
from .._follow import Follower
from ._binary import BINARY, BinaryCompiler, Unsupported
from ._convert import BODY as _BODY
from ._convert import COOKIE as _COOKIE
from ._convert import HEADER as _HEADER
from ._convert import PATH as _PATH
from ._convert import QUERY as _QUERY
from ._convert import RAW_BODY as _RAW_BODY
from ._convert import SOURCE_NAMES as _SOURCE_NAMES
from ._convert import Compiler, Invalid, _unpack, field_annotations, is_none

log = logging.getLogger("monolake.gateway")

HTTP_ANNOTATIONS = {
    "api.get": b"GET",
    "api.post": b"POST",
    "api.put": b"PUT",
    "api.delete": b"DELETE",
    "api.patch": b"PATCH",
}
METADATA_LIMIT = 64 * 1024
"""Bytes of rpc-persist-*/rpc-transit-* headers a request may carry (CloudWeGo's cap)."""

_T_STRUCT = 12
_T_LIST = 15
_T_SET = 14
_T_STRING = 11
_T_BINARY = 18
_JSON = (b"Content-Type", b"application/json")
_PARAM = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)|\*([A-Za-z_][A-Za-z0-9_]*)")

_decode_json = msgspec.json.Decoder().decode
_encode_json = msgspec.json.Encoder().encode


def json_response(status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    return Response(status, Headers([_JSON, *(headers or [])]), _encode_json(body))


class _InField:
    __slots__ = ("attr", "conv", "js_conv", "key", "multi", "required", "source")

    def __init__(
        self,
        source: int,
        key: str,
        attr: str,
        conv: Callable[[Any, str], Any],
        required: bool,
        multi: bool,
        js_conv: bool,
    ):
        self.source = source
        self.key = key
        self.attr = attr
        self.conv = conv
        self.required = required
        self.multi = multi
        """A list field read from repeated query keys."""
        self.js_conv = js_conv


class GatewayMethod:
    """One IDL method exposed over HTTP, with its converters compiled."""

    def __init__(
        self,
        service: Any,
        name: str,
        http_method: bytes,
        pattern: str,
        compiler: Compiler,
        where: str,
        binary: BinaryCompiler | None = None,
    ):
        self.name = name
        self.http_method = http_method
        self.pattern = pattern
        self.params: list[str] = []
        rx = ""
        pos = 0
        for m in _PARAM.finditer(pattern):
            rx += re.escape(pattern[pos : m.start()])
            if m[1]:
                rx += f"(?P<{m[1]}>[^/]+)"
                self.params.append(m[1])
            else:
                rx += f"(?P<{m[2]}>.*)"
                self.params.append(m[2])
            pos = m.end()
        rx += re.escape(pattern[pos:])
        self.regex = re.compile(rx + r"\Z")
        self.static = not self.params
        self.args_cls = getattr(service, f"{name}_args")
        self.result_cls = getattr(service, f"{name}_result", None)
        self.oneway = self.result_cls is None or not getattr(self.result_cls, "thrift_spec", None)
        specs = [_unpack(s) for s in self.args_cls.thrift_spec.values()]
        if len(specs) == 1 and specs[0][0] == _T_STRUCT:
            self.req_attr: str | None = specs[0][1]
            self.req_cls = specs[0][2]
        else:
            self.req_attr = None
            self.req_cls = self.args_cls
        self.fields = self._in_fields(compiler, where)
        self.needs_query = any(f.source == _QUERY for f in self.fields)
        self.needs_cookies = any(f.source == _COOKIE for f in self.fields)
        self.needs_body = any(f.source == _BODY for f in self.fields)
        self.needs_raw = any(f.source == _RAW_BODY for f in self.fields)
        self._out(compiler)
        self.fast: Callable[[dict[str, str], Request, bytes], bytes] | None = None
        """The args struct's binary encoding straight from the request (``_binary``), or None."""
        if binary is not None:
            try:
                self.fast = binary.method_encoder(self, _query_lists, _cookies)
            except Unsupported as exc:
                log.info("gateway %s: binary fast path off, the object path serves it: %s", name, exc)
            except Exception:  # a bug in the generator must not keep the IDL from loading
                log.warning(
                    "gateway %s: binary fast path failed to compile; the object path serves it", name, exc_info=True
                )

    def _in_fields(self, compiler: Compiler, where: str) -> list[_InField]:
        out = []
        annotations = field_annotations(self.req_cls)
        default = _QUERY if self.http_method == b"GET" else _BODY
        for spec in self.req_cls.thrift_spec.values():
            ttype, name, arg, required = _unpack(spec)
            ann = annotations.get(name, {})
            if is_none(ann):
                continue
            js_conv = ann.get("api.js_conv", "").lower() in ("true", "1", "")
            js_conv = js_conv and "api.js_conv" in ann
            source, key = default, name
            for i, label in enumerate(_SOURCE_NAMES):
                value = ann.get(f"api.{label}")
                if value is not None:
                    source, key = i, value or name
                    break
            if source == _PATH and key not in self.params:
                why = f"{self.name}: field {name!r} takes path parameter {key!r}, not in {self.pattern!r}"
                raise ConfigError(where, why)
            if source == _RAW_BODY and ttype not in (_T_STRING, _T_BINARY):
                raise ConfigError(where, f"{self.name}: api.raw_body field {name!r} must be a string or binary")
            multi = source == _QUERY and ttype in (_T_LIST, _T_SET)
            if source == _BODY:
                conv = compiler.from_json(ttype, arg, js_conv)
            elif multi:
                etype, earg = arg if isinstance(arg, tuple) else (arg, None)
                item = compiler.from_text(etype, earg, js_conv)
                conv = _multi(item)
            elif source == _RAW_BODY:
                conv = (lambda v, p: v) if ttype == _T_BINARY else (lambda v, p: v.decode("utf-8", "replace"))
            else:
                conv = compiler.from_text(ttype, arg, js_conv)
            key = key.lower() if source == _HEADER else key
            out.append(_InField(source, key, name, conv, required, multi, js_conv))
        return out

    def _out(self, compiler: Compiler) -> None:
        self.success_type: int | None = None
        self.success_conv: Callable[[Any], Any] | None = None
        self.header_fields: list[tuple[bytes, str]] = []
        self.cookie_fields: list[tuple[str, str]] = []
        self.code_field: str | None = None
        self.raw_field: str | None = None
        self.exceptions: list[tuple[str, str, Callable[[Any], Any], int, str | None]] = []
        if self.result_cls is None:
            return
        for fid, spec in self.result_cls.thrift_spec.items():
            ttype, name, arg, _ = _unpack(spec)
            if fid == 0:
                self.success_type = ttype
                if ttype == _T_STRUCT:
                    skip = set()
                    for fname, ann in field_annotations(arg).items():
                        if "api.header" in ann:
                            self.header_fields.append((ann["api.header"].encode("latin-1"), fname))
                        elif "api.cookie" in ann:
                            self.cookie_fields.append((ann["api.cookie"], fname))
                        elif "api.http_code" in ann:
                            self.code_field = fname
                        elif "api.raw_body" in ann:
                            self.raw_field = fname
                        else:
                            continue
                        skip.add(fname)
                    self.success_conv = compiler.struct_to_json(arg, frozenset(skip))
                else:
                    self.success_conv = compiler.to_json(ttype, arg)
                continue
            status = 400
            code_attr = None
            cls_ann = getattr(arg, "__thrift_annotations__", None) or {}
            if cls_ann.get("api.http_code", "").isdigit():
                status = int(cls_ann["api.http_code"])
            for fname, ann in field_annotations(arg).items():
                if "api.http_code" in ann:
                    code_attr = fname
            self.exceptions.append((name, arg.__name__, compiler.struct_to_json(arg), status, code_attr))

    def build(self, params: dict[str, str], req: Request, body: Any, raw: bytes) -> Any:
        """The args struct for a request. Raises Invalid naming the field."""
        obj = self.req_cls()
        query: dict[str, list[str]] | None = None
        cookies: dict[str, str] | None = None
        if self.needs_query:
            query = _query_lists(req)
        if self.needs_cookies:
            cookies = _cookies(req.headers)
        if self.needs_body and body is not None and type(body) is not dict:
            raise Invalid("body", "expected a JSON object")
        for f in self.fields:
            src = f.source
            value: Any
            if src == _BODY:
                value = body.get(f.key) if body is not None else None
            elif src == _QUERY:
                assert query is not None
                values = query.get(f.key)
                value = values if f.multi else (values[-1] if values else None)
            elif src == _PATH:
                value = params.get(f.key)
            elif src == _HEADER:
                raw_value = req.headers.get(f.key)
                value = raw_value.decode("latin-1") if raw_value is not None else None
            elif src == _COOKIE:
                assert cookies is not None
                value = cookies.get(f.key)
            else:
                value = raw if raw else None
            where = f"{_SOURCE_NAMES[src]}.{f.key}" if src != _RAW_BODY else "body"
            if value is None:
                if f.required:
                    raise Invalid(where, "required field is missing")
                continue
            setattr(obj, f.attr, f.conv(value, where))
        if self.req_attr is None:
            return obj
        args = self.args_cls()
        setattr(args, self.req_attr, obj)
        return args

    def encode_binary(self, params: dict[str, str], req: Request, raw: bytes) -> bytes:
        """The ``<method>_args`` struct in the binary protocol: the generated fast path, or
        (for input it does not take, errors included) ``build`` and thriftpy2, which
        raise Invalid naming the field or msgspec.DecodeError for a body that is not JSON."""
        fast = self.fast
        if fast is not None:
            try:
                return fast(params, req, raw)
            except Exception:
                pass
        body = _decode_json(raw) if self.needs_body and raw else None
        return serialize(self.build(params, req, body, raw), BINARY)

    def respond(self, result: Any) -> Response:
        """The HTTP response for a decoded ``<method>_result``."""
        for attr, ename, conv, status, code_attr in self.exceptions:
            exc = getattr(result, attr)
            if exc is not None:
                if code_attr is not None and isinstance(getattr(exc, code_attr), int):
                    status = getattr(exc, code_attr)
                return json_response(status, {"error": ename, "detail": conv(exc)})
        value = result.success
        if self.success_type is None:  # void
            return json_response(200, {})
        if value is None:
            return json_response(502, {"error": f"{self.name} returned no result"})
        assert self.success_conv is not None
        if self.success_type != _T_STRUCT:
            return json_response(200, self.success_conv(value))
        status = 200
        headers: list[tuple[bytes, bytes]] = []
        for hname, attr in self.header_fields:
            v = getattr(value, attr)
            if v is not None:
                headers.append((hname, str(v).encode("latin-1", "replace")))
        for cname, attr in self.cookie_fields:
            v = getattr(value, attr)
            if v is not None:
                headers.append((b"Set-Cookie", f"{cname}={v}".encode("latin-1", "replace")))
        if self.code_field is not None:
            code = getattr(value, self.code_field)
            if isinstance(code, int) and 100 <= code <= 599:
                status = code
        if self.raw_field is not None:
            raw = getattr(value, self.raw_field)
            body = raw if isinstance(raw, bytes) else (raw or "").encode()
            return Response(status, Headers(headers), body)
        return json_response(status, self.success_conv(value), headers)


def _multi(item: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    def conv(values: list[str], path: str) -> list[Any]:
        return [item(v, f"{path}[{i}]") for i, v in enumerate(values)]

    return conv


def _query_lists(req: Request) -> dict[str, list[str]]:
    """Query parameters by name, as ``urllib.parse.parse_qsl(..., keep_blank_values=True)``
    reads them, without its per-pair overhead when nothing is escaped."""
    query: dict[str, list[str]] = {}
    raw = req.query
    if not raw:
        return query
    unquote = urllib.parse.unquote
    for part in raw.decode("utf-8", "replace").split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name = unquote(name.replace("+", " "))
            value = unquote(value.replace("+", " "))
        values = query.get(name)
        if values is None:
            query[name] = [value]
        else:
            values.append(value)
    return query


def _cookies(headers: Headers) -> dict[str, str]:
    """Cookies by name, the first of each name winning."""
    out: dict[str, str] = {}
    names = headers.names()
    if b"cookie" not in names:
        return out
    pairs = headers.pairs()
    lines = (
        [pairs[names.index(b"cookie")][1]]
        if names.count(b"cookie") == 1
        else [v for (_, v), n in zip(pairs, names, strict=True) if n == b"cookie"]
    )
    for line in lines:
        for part in line.decode("latin-1").split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name not in out:
                out[name] = value
    return out


def load_methods(idl: str, service_name: str, where: str) -> list[GatewayMethod]:
    """Load an annotated IDL and compile its HTTP methods. Raises ConfigError naming ``where``."""
    path = Path(idl)
    if not path.is_file():
        raise ConfigError(f"{where}.idl", f"no such file: {idl}")
    stem = re.sub(r"\W", "_", path.stem)
    try:
        module = thriftpy2.load(str(path), module_name=f"monolake_gateway_{stem}_thrift")
    except Exception as exc:
        raise ConfigError(f"{where}.idl", f"cannot load {idl}: {type(exc).__name__}: {exc}") from None
    service = getattr(module, service_name, None)
    if service is None or not hasattr(service, "thrift_services"):
        raise ConfigError(f"{where}.service", f"{idl} defines no service {service_name!r}")
    compiler = Compiler()
    binary = BinaryCompiler(compiler)
    methods = []
    annotations: dict[str, dict[str, str]] = getattr(service, "__thrift_function_annotations__", None) or {}
    for name in service.thrift_services:
        ann = annotations.get(name, {})
        for key, verb in HTTP_ANNOTATIONS.items():
            pattern = ann.get(key)
            if pattern is None:
                continue
            if not pattern.startswith("/"):
                raise ConfigError(f"{where}.idl", f"{service_name}.{name}: {key} must start with '/', got {pattern!r}")
            methods.append(GatewayMethod(service, name, verb, pattern, compiler, f"{where}.idl", binary))
    if not methods:
        raise ConfigError(f"{where}.service", f"{service_name} has no method with an api.get/post/put/delete/patch")
    return methods


class GatewayTable:
    """Method lookup by path: static paths in a dict, patterns in order."""

    def __init__(self, methods: list[GatewayMethod]) -> None:
        self.static: dict[str, dict[bytes, GatewayMethod]] = {}
        self.patterns: list[tuple[re.Pattern[str], dict[bytes, GatewayMethod]]] = []
        by_pattern: dict[str, dict[bytes, GatewayMethod]] = {}
        for m in methods:
            by_pattern.setdefault(m.pattern, {})[m.http_method] = m
        for pattern, verbs in by_pattern.items():
            first = next(iter(verbs.values()))
            if first.static:
                self.static[pattern] = verbs
            else:
                self.patterns.append((first.regex, verbs))

    def match(self, path: str) -> tuple[dict[bytes, GatewayMethod] | None, dict[str, str]]:
        verbs = self.static.get(path)
        if verbs is not None:
            return verbs, {}
        for rx, verbs in self.patterns:
            m = rx.match(path)
            if m is not None:
                return verbs, {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
        return None, {}


class GatewayHandler:
    """The route's leaf: ``await handler(req) -> Response``."""

    def __init__(
        self,
        *,
        name: str,
        service: str,
        methods: list[GatewayMethod],
        balancer: Balancer,
        pool: ThriftPool,
        transport: Transport,
        protocol: ThriftProtocol,
        connect_timeout: float,
        timeout: float,
        max_body: int,
    ) -> None:
        self.name = name
        self.service = service
        self.table = GatewayTable(methods)
        self.heads = {
            m.name: message_begin(m.name, MessageType.ONEWAY if m.oneway else MessageType.CALL, 0, protocol)
            for m in methods
        }
        """Each method's message header (seq id 0: the pool gives each call its own)."""
        self.balancer = balancer
        self.pool = pool
        self.transport = transport
        self.protocol = protocol
        self.factory: Any = (
            TBinaryProtocolFactory() if protocol is ThriftProtocol.BINARY else TCompactProtocolFactory()  # type: ignore[no-untyped-call]
        )
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_body = max_body
        self.follower: Any = None
        """Keeps ``balancer`` current over a discovering cluster (the cluster holds it weakly)."""

    async def __call__(self, req: Request) -> Response:
        path = req.path.decode("utf-8", "replace")
        verbs, params = self.table.match(path)
        if verbs is None:
            return json_response(404, {"error": f"no method for {path}"})
        m = verbs.get(req.method)
        if m is None:
            allow = b", ".join(verbs)
            return json_response(405, {"error": f"{req.method.decode()} not allowed"}, [(b"Allow", allow)])
        raw = b""
        if req.body is not None and (m.needs_body or m.needs_raw):
            try:
                raw = await req.body.read_all(self.max_body)
            except ValueError:
                return json_response(413, {"error": f"body larger than {self.max_body} bytes"})
        try:
            if self.protocol is ThriftProtocol.BINARY:
                data = m.encode_binary(params, req, raw)
            else:  # compact: thriftpy2 objects and its compact codec
                body = _decode_json(raw) if m.needs_body and raw else None
                data = serialize(m.build(params, req, body, raw), self.factory)
        except msgspec.DecodeError as exc:
            return json_response(400, {"error": f"body is not JSON: {exc}", "field": "body"})
        except Invalid as exc:
            return json_response(400, {"error": exc.message, "field": exc.field})
        metadata = self._metadata(req.headers)
        if metadata is None:
            return json_response(400, {"error": f"rpc-* metadata over {METADATA_LIMIT} bytes", "field": "header"})
        payload = self.heads[m.name] + data
        frame = classify(encode_frame(self.transport, payload, seq_id=0, protocol=self.protocol, headers=metadata))
        head = peek_message(frame.data, frame.payload, self.protocol)
        ep = self.balancer.pick(req)
        req.ctx.endpoint = ep
        if m.oneway:
            self.pool.send(ep, frame, head, None, connect_timeout=self.connect_timeout, timeout=0, oneway=True)
            return json_response(202, {})
        try:
            reply, rhead = await self.pool.call(
                ep, frame, head, connect_timeout=self.connect_timeout, timeout=self.timeout
            )
        except MonolakeError as exc:
            status = 504 if isinstance(exc, ReadTimeout | ConnectTimeout) else 502
            log.warning("gateway %s %s: upstream %s failed: %s: %s", self.name, m.name, ep, type(exc).__name__, exc)
            kind = "connect" if isinstance(exc, ConnectError | ConnectTimeout) else "upstream"
            return json_response(status, {"error": f"{kind} failure: {type(exc).__name__}: {exc}"})
        return self._decode(m, reply, rhead)

    def _metadata(self, headers: Headers) -> dict[str, str] | None:
        if self.transport is Transport.FRAMED:
            return {}  # nowhere to carry metadata
        meta: dict[str, str] = {"isn": self.service} if self.transport is Transport.TTHEADER else {}
        size = 0
        for name, value in headers:
            lname = name.lower()
            if lname.startswith(b"rpc-persist-") or lname.startswith(b"rpc-transit-"):
                key = lname.decode("latin-1").upper().replace("-", "_")
                meta[key] = value.decode("latin-1")
                size += len(key) + len(value)
        return meta if size <= METADATA_LIMIT else None

    def _decode(self, m: GatewayMethod, frame: Any, head: Any) -> Response:
        data = frame.data
        backward: list[tuple[bytes, bytes]] = []
        if frame.transport is not Transport.FRAMED:
            for k, v in read_header_info(frame).headers.items():
                if k.startswith("RPC_BACKWARD_"):
                    backward.append((k.lower().replace("_", "-").encode("latin-1"), v.encode("latin-1", "replace")))
        if head.type == MessageType.EXCEPTION:
            kind, message = parse_application_exception(data, head.end, self.protocol)
            resp = json_response(502, {"error": "upstream application exception", "type": kind, "message": message})
        else:
            assert m.result_cls is not None
            result = deserialize(m.result_cls(), data[head.end :], self.factory)
            resp = m.respond(result)
        if backward:
            resp.headers.pairs().extend(backward)
            resp.headers.names().extend(n for n, _ in backward)
        return resp

    def close(self) -> None:
        self.pool.close()


def make_gateway(
    server_name: str, index: int, r: Route, cfg: Config, server: Server, clusters: Mapping[str, Any] | None = None
) -> GatewayHandler:
    """The handler of a validated gateway route. Raises ConfigError (IDL problems). A named
    cluster with ``discovery`` (an ``UpstreamCluster`` in ``clusters``, the worker's) starts
    from its discovered set and follows it; connections to endpoints that left drain."""
    gw = r.gateway
    assert gw is not None
    where = f"servers.{server_name}.routes[{index}].gateway"
    methods = load_methods(gw.idl, gw.service, where)
    if r.upstream is not None:
        c = cfg.upstreams[r.upstream]
    else:
        assert r.upstreams is not None
        c = Cluster(
            endpoints=r.upstreams, load_balancer=r.load_balancer, hash_on=r.hash_on, hash_algorithm=r.hash_algorithm
        )
    eps = [parse_endpoint(u.endpoint, u.weight) for u in c.endpoints]
    up = clusters.get(r.upstream) if clusters is not None and r.upstream is not None and c.discovery else None
    follower: Follower | None = None
    if up is not None:
        follower = Follower(r.upstream or "", c.load_balancer, hash_on=c.hash_on, hash_algorithm=c.hash_algorithm)
        if up.source_endpoints is not None:
            eps = list(up.source_endpoints)
        follower.keys = {ep.key: ep for ep in eps}
        balancer = follower.build(eps)
    else:
        balancer = make_balancer(c.load_balancer, eps, hash_on=c.hash_on, hash_algorithm=c.hash_algorithm)
    pool = ThriftPool(max_frame_size=16 * 1024 * 1024, idle_timeout=c.idle_timeout)
    handler = GatewayHandler(
        name=f"{server_name}.routes[{index}]",
        service=gw.service,
        methods=methods,
        balancer=balancer,
        pool=pool,
        transport=Transport(gw.transport),
        protocol=ThriftProtocol.BINARY if gw.protocol == "binary" else ThriftProtocol.COMPACT,
        connect_timeout=c.connect_timeout,
        timeout=r.timeout or server.request_timeout or c.read_timeout,
        max_body=server.limits.max_body_bytes,
    )
    if follower is not None and up is not None:

        def install(balancer: Balancer) -> None:
            handler.balancer = balancer

        def drain(gone: list[Endpoint]) -> None:
            pool.drain([ep.key for ep in gone])

        follower.install = install
        follower.on_removed = drain
        handler.follower = follower
        up.followers.add(follower)
    return handler
