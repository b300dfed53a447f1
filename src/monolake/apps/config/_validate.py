"""The semantic checks of a decoded config (``validate``): what the schema's types cannot say -
references between tables, regexes, addresses, balancer options, TLS files, server kinds. Each check
adds to a ``_Report`` instead of raising (see ``_load``'s docstring)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from ...core.address import Endpoint, parse_endpoint, parse_listener
from ...core.errors import ConfigError
from ._report import _Report
from ._schema import (
    Admin,
    Cluster,
    Config,
    Discovery,
    FilterSpec,
    Http2,
    Route,
    Server,
    ServerTls,
    UpstreamSpec,
    UpstreamTls,
)

_HASH_ON = re.compile(r"^(client_ip|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|cookie:[^=;, ]+)$")


def _endpoint(up: UpstreamSpec) -> Endpoint | None:
    """The parsed endpoint, or None where it is invalid (reported by the endpoint's own check)."""
    try:
        return parse_endpoint(up.endpoint, up.weight)
    except ValueError:
        return None


def _check_endpoints(rep: _Report, path: str, ups: list[UpstreamSpec]) -> bool:
    """Each endpoint parses (an error each that does not); True if all do and there is one."""
    ok = bool(ups)
    for i, up in enumerate(ups):
        try:
            parse_endpoint(up.endpoint, up.weight)
        except ValueError as exc:
            rep.add(f"{path}[{i}]", str(exc))
            ok = False
    return ok


def _check_balancer(rep: _Report, path: str, lb: str, hash_on: str) -> None:
    if lb == "consistent_hash" and not _HASH_ON.match(hash_on):
        rep.add(f"{path}.hash_on", f"expected client_ip, header:NAME or cookie:NAME, got {hash_on!r}")


def _check_cluster(rep: _Report, path: str, c: Cluster) -> None:
    dynamic = c.discovery is not None and c.discovery.kind not in ("static", "admin")
    if not c.endpoints and not dynamic:
        rep.add(f"{path}.endpoints", "a cluster needs at least one endpoint")
    if c.discovery is not None:
        _check_discovery(rep, f"{path}.discovery", c.discovery)
    endpoints_ok = _check_endpoints(rep, f"{path}.endpoints", c.endpoints)
    _check_balancer(rep, path, c.load_balancer, c.hash_on)
    for key in ("connect_timeout", "read_timeout", "idle_timeout"):
        if getattr(c, key) <= 0:
            rep.add(f"{path}.{key}", "must be > 0")
    if c.max_idle_per_key < 0:
        rep.add(f"{path}.max_idle_per_key", "must be >= 0")
    _check_resilience(rep, path, c)
    if c.tls is not None:
        _check_upstream_tls(rep, f"{path}.tls", c.tls)
        for i, up in enumerate(c.endpoints):
            ep = _endpoint(up)
            if ep is not None and ep.scheme == "http" and _says_http(up.endpoint):
                rep.add(
                    f"{path}.endpoints[{i}]", "an http:// endpoint in a cluster with [tls] (use https:// or host:port)"
                )
    if c.protocol != "http1" and endpoints_ok:
        _check_h2_cluster(rep, path, c)


def _check_discovery(rep: _Report, path: str, d: Discovery) -> None:
    need = {"dns": ("name",), "file": ("path",), "etcd": ("endpoints", "prefix"), "custom": ("source",)}.get(d.kind, ())
    module, sep, attr = d.source.partition(":")
    if d.source and not (sep and module and attr):
        rep.add(f"{path}.source", f'{d.source!r} is not "module:Class"')
    for key in need:
        if not getattr(d, key):
            rep.add(f"{path}.{key}", f'discovery kind "{d.kind}" needs it')
    if d.kind == "dns" and d.record != "SRV" and not d.port:
        rep.add(f"{path}.port", "an A/AAAA discovery needs the endpoints' port")
    if d.min_interval > d.max_interval:
        rep.add(f"{path}.min_interval", f"must be <= max_interval ({d.max_interval:g})")
    for i, ns in enumerate(d.nameservers):
        try:
            split_nameserver(ns)
        except ValueError as exc:
            rep.add(f"{path}.nameservers[{i}]", str(exc))
    for i, url in enumerate(d.endpoints):
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("http", "https") or not rest.strip("/"):
            rep.add(f"{path}.endpoints[{i}]", f'expected "http://host:port" or "https://host:port", got {url!r}')
    if (d.username is None) != (d.password is None):
        rep.add(f"{path}.username", "username and password go together")
    if d.tls is not None:
        _check_upstream_tls(rep, f"{path}.tls", d.tls)


def split_nameserver(text: str) -> tuple[str, int]:
    """ "ip", "ip:port" or "[v6]:port" → (ip, port). Raises ValueError."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":")) if rest.startswith(":") and rest[1:].isdigit() else -1
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p) if p.isdigit() else -1
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f'expected "ip" or "ip:port", got {text!r}') from None
    if not 0 < port < 65536:
        raise ValueError(f"invalid port in {text!r}")
    return host, port


def _check_h2_cluster(rep: _Report, path: str, c: Cluster) -> None:
    """HTTP/2 to the endpoints (all of which parse)."""
    cb = c.circuit_breaker
    for key in ("max_connections", "max_pending"):
        if cb is not None and getattr(cb, key) is not None:
            rep.add(
                f"{path}.circuit_breaker.{key}",
                f"not available with protocol = {c.protocol!r} (requests share connections); use max_requests",
            )
    eps = [parse_endpoint(up.endpoint, up.weight) for up in c.endpoints]
    tls = c.tls is not None or any(ep.scheme == "https" for ep in eps)
    if c.protocol == "h2c" and tls:
        rep.add(f"{path}.protocol", '"h2c" is HTTP/2 in cleartext; use "h2" for HTTP/2 over TLS')
    if c.protocol == "h2" and (not tls or any(ep.path for ep in eps)):
        rep.add(
            f"{path}.protocol",
            '"h2" is HTTP/2 over TLS: give https:// (not unix) endpoints or a [tls] table, or use "h2c" for cleartext',
        )


def _says_http(spec: object) -> bool:
    text = spec if isinstance(spec, str) else getattr(spec, "value", "")
    return isinstance(text, str) and text.startswith("http://")


_VERSION_ORDER = {"1.2": 0, "1.3": 1}


def _check_file(rep: _Report, path: str, name: str | None) -> None:
    if name is not None and not Path(name).is_file():
        rep.add(path, f"no such file: {name}")


def _check_backend(rep: _Report, path: str, backend: str) -> None:
    if backend == "rustls":
        try:
            import rtls  # noqa: F401
        except ImportError as exc:
            rep.add(f"{path}.backend", f"TLS backend 'rustls' needs the rtls package: {exc}")


def _check_rustls_listener(rep: _Report, path: str, t: ServerTls) -> None:
    """What the rustls backend (rtls) cannot do on a listener (see monolake/core/rtls_impl.py)."""
    if t.client_auth != "none" or t.client_ca is not None:
        key = "client_auth" if t.client_auth != "none" else "client_ca"
        rep.add(f"{path}.{key}", "backend 'rustls' cannot verify client certificates (mTLS); use backend = 'openssl'")
    if t.session_tickets:
        rep.add(f"{path}.session_tickets", "backend 'rustls' cannot resume sessions; leave it unset or use 'openssl'")


def _check_alpn(rep: _Report, path: str, alpn: list[str] | None, h2: bool = False) -> None:
    """``h2``: "h2" may be offered too (a listener with HTTP/2 enabled)."""
    if alpn is None:
        return
    known = ("h2", "http/1.1") if h2 else ("http/1.1",)
    for i, proto in enumerate(alpn):
        if proto not in known:
            rep.add(f"{path}.alpn[{i}]", f"protocol {proto!r} is not available here (only {known})")


def _check_upstream_tls(rep: _Report, path: str, t: UpstreamTls) -> None:
    _check_backend(rep, path, t.backend)
    _check_file(rep, f"{path}.ca", t.ca)
    _check_file(rep, f"{path}.client_cert", t.client_cert)
    _check_file(rep, f"{path}.client_key", t.client_key)
    if (t.client_cert is None) != (t.client_key is None):
        rep.add(path, "give both client_cert and client_key, or neither")
    if t.sni is not None and (not t.sni or any(c.isspace() for c in t.sni)):
        rep.add(f"{path}.sni", f"expected a host name, got {t.sni!r}")
    _check_alpn(rep, path, t.alpn)
    if (
        t.min_version is not None
        and t.max_version is not None
        and _VERSION_ORDER[t.min_version] > _VERSION_ORDER[t.max_version]
    ):
        rep.add(f"{path}.min_version", f"{t.min_version} is above max_version {t.max_version}")


def _is_unix(s: Server) -> bool:
    try:
        return parse_listener(s.listener).is_unix
    except ValueError:
        return False  # reported as servers.NAME.listener


def _check_server_tls(rep: _Report, path: str, s: Server, t: ServerTls) -> None:
    _check_backend(rep, path, t.backend)
    if t.backend == "rustls":
        _check_rustls_listener(rep, path, t)
    if s.proxy_protocol != "off":
        rep.add(path, "TLS together with proxy_protocol is not available yet")
    if _is_unix(s):
        rep.add(path, "TLS on a unix listener is not available yet")
    if not t.certificates:
        rep.add(f"{path}.certificates", "needs at least one certificate")
    for i, c in enumerate(t.certificates):
        cpath = f"{path}.certificates[{i}]"
        _check_file(rep, f"{cpath}.chain", c.chain)
        _check_file(rep, f"{cpath}.key", c.key)
        for j, name in enumerate(c.server_names):
            if not name or name.count("*") > 1 or ("*" in name and not name.startswith("*.")) or name == "*.":
                rep.add(f"{cpath}.server_names[{j}]", f"expected an exact name or '*.suffix', got {name!r}")
    if s.proxy_type != "http":
        # A byte relay or Thrift listener may announce any protocol its clients expect.
        for i, proto in enumerate(t.alpn or []):
            if not proto or len(proto.encode()) > 255:
                rep.add(f"{path}.alpn[{i}]", "expected a protocol name of 1 to 255 bytes")
    else:
        if t.alpn is not None and "h2" in t.alpn and not s.http2.enabled:
            rep.add(f"{path}.alpn", "offers 'h2' but http2.enabled is false")
        _check_alpn(rep, path, t.alpn, h2=True)
    if _VERSION_ORDER[t.min_version] > _VERSION_ORDER[t.max_version]:
        rep.add(f"{path}.min_version", f"{t.min_version} is above max_version {t.max_version}")
    if t.ciphers is not None and not t.ciphers:
        rep.add(f"{path}.ciphers", "must not be empty")
    _check_file(rep, f"{path}.client_ca", t.client_ca)
    if t.client_auth != "none" and t.client_ca is None:
        rep.add(f"{path}.client_auth", f"client_auth = {t.client_auth!r} needs client_ca")


def _is_tls_cluster(c: Cluster) -> bool:
    return c.tls is not None or any((ep := _endpoint(u)) is not None and ep.scheme == "https" for u in c.endpoints)


def _check_no_tls(rep: _Report, path: str, name: str, cfg: Config, what: str) -> None:
    if name in cfg.upstreams and _is_tls_cluster(cfg.upstreams[name]):
        rep.add(path, f"cluster {name!r} speaks TLS, which {what} do not support yet")


def _check_resilience(rep: _Report, path: str, c: Cluster) -> None:
    hc = c.health_check
    if hc is not None:
        p = f"{path}.health_check"
        for key in ("interval", "timeout"):
            if getattr(hc, key) <= 0:
                rep.add(f"{p}.{key}", "must be > 0")
        for key in ("healthy_threshold", "unhealthy_threshold"):
            if getattr(hc, key) < 1:
                rep.add(f"{p}.{key}", "must be >= 1")
        if not hc.path.startswith("/"):
            rep.add(f"{p}.path", f"must start with '/', got {hc.path!r}")
        if not hc.expected_status or any(not 100 <= st <= 599 for st in hc.expected_status):
            rep.add(f"{p}.expected_status", "expected a non-empty list of HTTP statuses (100-599)")
    od = c.outlier_detection
    if od is not None:
        p = f"{path}.outlier_detection"
        for key in ("consecutive_5xx", "consecutive_connect_failures"):
            if getattr(od, key) < 0:
                rep.add(f"{p}.{key}", "must be >= 0 (0 disables)")
        for key in ("base_ejection_time", "max_ejection_time"):
            if getattr(od, key) <= 0:
                rep.add(f"{p}.{key}", "must be > 0")
        if not 0 <= od.max_ejection_percent <= 100:
            rep.add(f"{p}.max_ejection_percent", "must be between 0 and 100")
    cb = c.circuit_breaker
    if cb is not None:
        for key in ("max_connections", "max_pending", "max_requests"):
            value = getattr(cb, key)
            if value is not None and value < 1:
                rep.add(f"{path}.circuit_breaker.{key}", "must be >= 1")


def _check_http_only_resilience(rep: _Report, path: str, name: str, cfg: Config, what: str) -> None:
    c = cfg.upstreams.get(name)
    # discovery: tcp servers, thrift and gateway routes follow the discovered set (apps/proxy/_follow.py).
    for key in ("health_check", "outlier_detection", "circuit_breaker"):
        if c is not None and getattr(c, key) is not None:
            rep.add(path, f"cluster {name!r} has {key} (upstreams.{name}.{key}), which {what} do not use")


def _check_known(rep: _Report, path: str, name: str, cfg: Config) -> None:
    """``name`` is a cluster under [upstreams] (one that did not decode counts: its errors say why)."""
    if name not in cfg.upstreams and name not in rep.bad_upstreams:
        known = ", ".join(sorted({*cfg.upstreams, *rep.bad_upstreams} - {""})) or "none defined"
        rep.add(path, f"unknown cluster {name!r} (known: {known})")


def _check_route(rep: _Report, path: str, r: Route, cfg: Config) -> None:
    matchers = [k for k in ("path", "path_exact", "path_regex") if getattr(r, k) is not None]
    if len(matchers) > 1:
        rep.add(path, f"give only one of path, path_exact, path_regex (got {', '.join(matchers)})")
    for key in ("path", "path_exact"):
        value = getattr(r, key)
        if value is not None and not value.startswith("/"):
            rep.add(f"{path}.{key}", f"must start with '/', got {value!r}")
    if r.path_regex is not None:
        try:
            re.compile(r.path_regex.encode())  # the router matches bytes paths
        except re.error as exc:
            rep.add(f"{path}.path_regex", f"invalid regular expression: {exc}")
    if (r.strip_prefix or r.prefix_rewrite is not None) and r.path is None:
        rep.add(path, "strip_prefix/prefix_rewrite need a 'path' prefix to replace")
    if r.host is not None and (not r.host or r.host.count("*") > 1 or ("*" in r.host and not r.host.startswith("*."))):
        rep.add(f"{path}.host", f"expected an exact host or '*.suffix', got {r.host!r}")
    if r.upstream is not None and r.upstreams is not None:
        rep.add(path, "give either 'upstream' (a cluster name) or inline 'upstreams', not both")
    if r.upstream is None and r.upstreams is None and not r.connect:
        rep.add(path, "a route needs 'upstream' (a cluster name) or inline 'upstreams'")
    if not isinstance(r.connect, bool):  # a [connect] table
        for i, port in enumerate(r.connect.ports):
            if not 0 < port < 65536:
                rep.add(f"{path}.connect.ports[{i}]", f"not a TCP port: {port}")
        if r.connect.connect_timeout <= 0:
            rep.add(f"{path}.connect.connect_timeout", "must be > 0")
    if r.upstream is not None:
        _check_known(rep, f"{path}.upstream", r.upstream, cfg)
    if r.upstreams is not None:
        if not r.upstreams:
            rep.add(f"{path}.upstreams", "needs at least one endpoint")
        endpoints_ok = _check_endpoints(rep, f"{path}.upstreams", r.upstreams)
        _check_balancer(rep, path, r.load_balancer, r.hash_on)
        if r.protocol != "http1" and endpoints_ok:
            _check_h2_cluster(rep, path, Cluster(endpoints=r.upstreams, protocol=r.protocol))
    elif r.protocol != "http1":
        rep.add(f"{path}.protocol", "applies to inline 'upstreams'; set it on the cluster instead")
    if r.timeout is not None and r.timeout <= 0:
        rep.add(f"{path}.timeout", "must be > 0")
    if r.retry is not None:
        if r.retry.attempts < 0:
            rep.add(f"{path}.retry.attempts", "must be >= 0")
        if r.retry.per_try_timeout is not None and r.retry.per_try_timeout <= 0:
            rep.add(f"{path}.retry.per_try_timeout", "must be > 0")
        if r.retry.budget_percent < 0:
            rep.add(f"{path}.retry.budget_percent", "must be >= 0")
        if r.retry.min_retry_concurrency < 0:
            rep.add(f"{path}.retry.min_retry_concurrency", "must be >= 0")


def _check_extensions(rep: _Report, path: str, s: Server) -> None:
    """``filters`` and ``layers`` name "module:Class"; their shapes (which phases, by server kind)
    are checked when they are imported (``proxy._filters``)."""
    if s.layers and s.proxy_type != "http":
        rep.add(f"{path}.layers", f"layers wrap an http server's request service, not a {s.proxy_type} server")
    _check_filter_specs(rep, path, s.filters, s.layers, s.proxy_type)


def _check_filter_specs(
    rep: _Report, path: str, filters: list[str | FilterSpec], layers: list[str | FilterSpec], kind: str
) -> None:
    """ "module:Class" entries, or built-ins (``apps/edge``) whose args are checked here (by
    building them: their constructors do no I/O)."""
    from ..edge import is_builtin, make_builtin

    for key, specs in (("filters", filters), ("layers", layers)):
        for i, f in enumerate(specs):
            use = f if isinstance(f, str) else f.use
            if key == "filters" and is_builtin(use):
                try:
                    make_builtin(use, {} if isinstance(f, str) else dict(f.args), f"{path}.{key}[{i}]", kind)
                except ConfigError as exc:
                    rep.add(exc.path, exc.reason)
                continue
            if use.count(":") != 1 or not all(use.split(":")):
                rep.add(f"{path}.{key}[{i}]", f"expected 'module:Class', got {use!r}")


def _check_tcp_server(rep: _Report, path: str, s: Server, cfg: Config) -> None:
    if s.routes:
        rep.add(f"{path}.routes", 'a proxy_type = "tcp" server has no routes (give upstream or upstreams)')
    _check_extensions(rep, path, s)
    if s.upstream is not None and s.upstreams is not None:
        rep.add(path, "give either 'upstream' (a cluster name) or inline 'upstreams', not both")
    if s.upstream is None and s.upstreams is None:
        rep.add(path, "a tcp server needs 'upstream' (a cluster name) or inline 'upstreams'")
    if s.upstream is not None:
        _check_known(rep, f"{path}.upstream", s.upstream, cfg)
    if s.upstream is not None and s.upstream in cfg.upstreams:
        _check_http_only_resilience(rep, f"{path}.upstream", s.upstream, cfg, "tcp servers")
        c = cfg.upstreams[s.upstream]
        if c.send_proxy_protocol != "off" and _is_tls_cluster(c):
            rep.add(
                f"upstreams.{s.upstream}.send_proxy_protocol",
                "a PROXY header before TLS to the endpoints is not available yet (turn one off)",
            )
    if s.upstreams is not None:
        if not s.upstreams:
            rep.add(f"{path}.upstreams", "needs at least one endpoint")
        _check_endpoints(rep, f"{path}.upstreams", s.upstreams)
        if s.load_balancer == "consistent_hash" and s.hash_on != "client_ip":
            rep.add(f"{path}.hash_on", f"a tcp server can only hash on client_ip, got {s.hash_on!r}")
    if s.idle_timeout <= 0:
        rep.add(f"{path}.idle_timeout", "must be > 0")
    if s.splice_after < 0:
        rep.add(f"{path}.splice_after", "must be >= 0")


_HTTP_ONLY_ROUTE_KEYS = (
    "host",
    "path",
    "path_exact",
    "path_regex",
    "methods",
    "headers",
    "prefix_rewrite",
    "gateway",
    "retry",
    "connect",
    "filters",
    "layers",
)
_THRIFT_DEFAULTS = Route()


def _names(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else value


def _check_thrift_server(rep: _Report, path: str, s: Server, cfg: Config) -> None:
    _check_extensions(rep, path, s)
    for key in ("upstream", "upstreams"):
        if getattr(s, key) is not None:
            rep.add(f"{path}.{key}", "a thrift server sends calls to its routes' upstreams; set it there")
    if not s.routes:
        rep.add(f"{path}.routes", "a thrift server needs at least one route")
    for i, r in enumerate(s.routes):
        rpath = f"{path}.routes[{i}]"
        http_keys = [
            key
            for key in (*_HTTP_ONLY_ROUTE_KEYS, "strip_prefix", "host_header", "request_headers", "response_headers")
            if getattr(r, key) != getattr(_THRIFT_DEFAULTS, key)
        ]
        for key in http_keys:
            rep.add(f"{rpath}.{key}", "an HTTP route key; thrift routes match thrift_service/thrift_method")
        for key in ("thrift_method", "thrift_service"):
            value = getattr(r, key)
            if value is not None and (not _names(value) or not all(_names(value))):
                rep.add(f"{rpath}.{key}", "expected a non-empty name or list of names")
        if http_keys:
            continue  # an HTTP route by mistake: its HTTP checks would only repeat that
        _check_route(rep, rpath, r, cfg)
        if r.upstreams is not None and r.load_balancer == "consistent_hash" and r.hash_on != "client_ip":
            rep.add(f"{rpath}.hash_on", f"a thrift route can only hash on client_ip, got {r.hash_on!r}")
        if r.upstream is not None and r.upstream in cfg.upstreams:
            c = cfg.upstreams[r.upstream]
            if c.load_balancer == "consistent_hash" and c.hash_on != "client_ip":
                rep.add(
                    f"{rpath}.upstream",
                    f"cluster {r.upstream!r} hashes on {c.hash_on!r}; thrift routes hash on client_ip",
                )
            if c.send_proxy_protocol != "off":
                rep.add(f"{rpath}.upstream", f"cluster {r.upstream!r} sends the PROXY protocol (tcp only)")
            _check_http_only_resilience(rep, f"{rpath}.upstream", r.upstream, cfg, "thrift routes")
    for key in ("upstream_connections", "upstream_in_flight"):
        if getattr(s, key) < 1:
            rep.add(f"{path}.{key}", "must be >= 1")
    _check_thrift_limits(rep, path, s)


def _check_thrift_limits(rep: _Report, path: str, s: Server) -> None:
    """The framing and timing limits every Thrift server (proxy or RPC) has."""
    if not 64 <= s.max_frame_size <= 0x7FFFFFFF:
        rep.add(f"{path}.max_frame_size", "must be between 64 and 2147483647")
    if s.idle_timeout <= 0:
        rep.add(f"{path}.idle_timeout", "must be > 0")
    if s.request_timeout is not None and s.request_timeout <= 0:
        rep.add(f"{path}.request_timeout", "must be > 0")
    if s.limits.max_pipelined < 1:
        rep.add(f"{path}.limits.max_pipelined", "must be >= 1")


def _check_spec(rep: _Report, where: str, spec: str) -> None:
    """``spec`` must read "module:attr" (the import itself is checked when the app is built)."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        rep.add(where, f'{spec!r} is not "module:attr"')


def _answers_itself(rep: _Report, path: str, s: Server, who: str) -> None:
    """A server that answers with its own service has no routes, filters or upstream."""
    for key in ("routes", "filters"):
        if getattr(s, key):
            rep.add(f"{path}.{key}", f"{who} answers itself: it has no routes or filters")
    for key in ("upstream", "upstreams"):
        if getattr(s, key) is not None:
            rep.add(f"{path}.{key}", f"{who} answers itself: it has no upstream")


def _check_handler_server(rep: _Report, path: str, s: Server) -> None:
    """A server answering with its own service: no routes or upstreams to check, none allowed."""
    assert s.handler is not None
    _check_spec(rep, f"{path}.handler", s.handler)
    if s.proxy_type == "thrift":
        rep.add(f"{path}.handler", 'a handler serves proxy_type = "http" or "tcp"')
    _answers_itself(rep, path, s, "a server with a handler")


def _check_rpc_grpc_server(rep: _Report, path: str, s: Server) -> None:
    """A gRPC server from .proto files: an http server answering itself."""
    g = s.rpc_grpc
    assert g is not None
    where = f"{path}.rpc_grpc"
    _check_spec(rep, f"{where}.handler", g.handler)
    if not g.protos:
        rep.add(f"{where}.protos", "needs at least one .proto file")
    for key in ("max_receive_message_bytes", "max_send_message_bytes"):
        if getattr(g, key) < 1:
            rep.add(f"{where}.{key}", "must be >= 1 (bytes)")
    if s.proxy_type != "http":
        rep.add(f"{path}.proxy_type", 'a server with rpc_grpc is proxy_type = "http"')
    if s.handler is not None:
        rep.add(f"{path}.handler", "a server has a handler or rpc_grpc, not both")
    _answers_itself(rep, path, s, "a gRPC server")
    _check_rpc_tracing(rep, where, g.tracing)


def _check_rpc_thrift_server(rep: _Report, path: str, s: Server) -> None:
    """A Thrift RPC server from IDL: the IDL must load and name the service; nothing to proxy."""
    rt = s.rpc_thrift
    assert rt is not None
    if s.proxy_type != "thrift":
        rep.add(f"{path}.proxy_type", 'a server with rpc_thrift has proxy_type = "thrift"')
    for key in ("routes", "filters"):
        if getattr(s, key):
            rep.add(f"{path}.{key}", "an rpc_thrift server answers with its handler: it has no routes or filters")
    for key in ("upstream", "upstreams", "handler"):
        if getattr(s, key) is not None:
            rep.add(f"{path}.{key}", "an rpc_thrift server answers with rpc_thrift.handler: remove this key")
    _check_spec(rep, f"{path}.rpc_thrift.handler", rt.handler)
    from ..rpc.thrift._idl import load_module, service_def

    try:
        service_def(load_module(rt.idl, include_dirs=rt.include_dirs), rt.service)
    except ConfigError as exc:
        rep.add(f"{path}.rpc_thrift.{'idl' if exc.path == 'idl' else 'service'}", exc.reason)
    _check_thrift_limits(rep, path, s)
    _check_rpc_tracing(rep, f"{path}.rpc_thrift", rt.tracing)


def _check_rpc_tracing(rep: _Report, where: str, table: dict[str, Any] | None) -> None:
    """``rpc_grpc.tracing`` / ``rpc_thrift.tracing``: the tracing filter's settings."""
    if table is None:
        return
    from ..edge import build_from_args, builtin_class  # by the built-ins' registry: edge imports config

    try:
        build_from_args(builtin_class("tracing", where), dict(table), f"{where}.tracing")
    except ConfigError as exc:
        rep.add(exc.path, exc.reason)


def _check_streams_server(rep: _Report, path: str, s: Server) -> None:
    """A message stream server: a tcp listener, its own handler, no upstream."""
    st = s.streams
    assert st is not None
    spath = f"{path}.streams"
    if s.proxy_type != "tcp":
        rep.add(f"{path}.proxy_type", 'a server with [streams] has proxy_type = "tcp"')
    if s.handler is not None:
        rep.add(f"{path}.handler", "a server with [streams] names its handler in streams.handler")
    for key in ("upstream", "upstreams"):
        if getattr(s, key) is not None:
            rep.add(f"{path}.{key}", "a message stream server answers itself: it has no upstream")
    for key in ("routes", "filters"):
        if getattr(s, key):
            rep.add(f"{path}.{key}", "a message stream server has no routes or filters")
    for key in ("handler", "message", "response"):
        v = getattr(st, key)
        if v is not None and (v.count(":") != 1 or not all(v.split(":"))):
            rep.add(f"{spath}.{key}", f'{v!r} is not "module:attr"')
    if st.codec == "protobuf" and st.message is None:
        rep.add(f"{spath}.message", 'the protobuf codec needs the message class ("module:Class")')
    if st.rpc and st.response is None:
        rep.add(f"{spath}.response", 'rpc needs the response class ("module:Class") to make cancel and end replies')
    if st.max_in_flight < 1:
        rep.add(f"{spath}.max_in_flight", "must be >= 1")
    if st.max_message_size < 1:
        rep.add(f"{spath}.max_message_size", "must be >= 1 (bytes)")
    if st.idle_timeout < 0:
        rep.add(f"{spath}.idle_timeout", "must be >= 0 (seconds; 0: never)")


def _check_server(rep: _Report, path: str, s: Server, cfg: Config) -> None:
    try:
        parse_listener(s.listener)
    except ValueError as exc:
        rep.add(f"{path}.listener", str(exc))
    if s.tls is not None:
        _check_server_tls(rep, f"{path}.tls", s, s.tls)
    if s.rpc_grpc is not None:
        _check_rpc_grpc_server(rep, path, s)
        return
    if s.rpc_thrift is not None:
        _check_rpc_thrift_server(rep, path, s)
        return
    if s.streams is not None:
        _check_streams_server(rep, path, s)
        return
    if s.handler is not None:
        _check_handler_server(rep, path, s)
        if s.proxy_type != "http":
            return
    if s.proxy_type == "tcp":
        _check_tcp_server(rep, path, s, cfg)
        return
    if s.proxy_type == "thrift":
        _check_thrift_server(rep, path, s, cfg)
        return
    for key in ("upstream", "upstreams"):
        if getattr(s, key) is not None and s.handler is None:
            rep.add(f"{path}.{key}", 'only a proxy_type = "tcp" server has one; http servers use routes')
    if not s.routes and s.handler is None:
        rep.add(f"{path}.routes", "a server needs at least one route (or a handler)")
    for i, r in enumerate(s.routes):
        for key in ("thrift_method", "thrift_service"):
            if getattr(r, key) is not None:
                rep.add(f"{path}.routes[{i}].{key}", 'only routes of a proxy_type = "thrift" server have one')
        if r.gateway is not None:
            for key in ("idl", "service"):
                if not getattr(r.gateway, key):
                    rep.add(f"{path}.routes[{i}].gateway.{key}", "must not be empty")
            if r.retry is not None:
                rep.add(f"{path}.routes[{i}].retry", "gateway routes are not retried")
            if r.upstream is not None and r.upstream in cfg.upstreams:
                _check_http_only_resilience(rep, f"{path}.routes[{i}].upstream", r.upstream, cfg, "gateway routes")
                _check_no_tls(rep, f"{path}.routes[{i}].upstream", r.upstream, cfg, "gateway routes")
            for j, up in enumerate(r.upstreams or []):
                if (ep := _endpoint(up)) is not None and ep.scheme == "https":
                    rep.add(f"{path}.routes[{i}].upstreams[{j}]", "gateway routes do not support TLS yet")
        _check_route(rep, f"{path}.routes[{i}]", r, cfg)
        if r.filters or r.layers:
            _check_filter_specs(rep, f"{path}.routes[{i}]", r.filters, r.layers, "http")
        if r.upstream in cfg.upstreams and cfg.upstreams[r.upstream].send_proxy_protocol != "off":
            rep.add(
                f"{path}.routes[{i}].upstream",
                f"cluster {r.upstream!r} sends the PROXY protocol (upstreams.{r.upstream}.send_proxy_protocol), "
                "which HTTP routes do not support",
            )
    _check_extensions(rep, path, s)
    for key in ("keepalive_timeout", "header_timeout", "idle_timeout", "body_timeout"):
        if getattr(s, key) <= 0:
            rep.add(f"{path}.{key}", "must be > 0")
    if s.splice_after < 0:
        rep.add(f"{path}.splice_after", "must be >= 0")
    if s.request_timeout is not None and s.request_timeout <= 0:
        rep.add(f"{path}.request_timeout", "must be > 0")
    if s.max_concurrency is not None and s.max_concurrency < 1:
        rep.add(f"{path}.max_concurrency", "must be >= 1")
    for key in ("max_header_bytes", "max_headers", "max_pipelined", "max_request_line_bytes"):
        if getattr(s.limits, key) < 1:
            rep.add(f"{path}.limits.{key}", "must be >= 1")
    if s.limits.max_body_bytes < 0:
        rep.add(f"{path}.limits.max_body_bytes", "must be >= 0 (0 = unlimited)")
    _check_http2(rep, f"{path}.http2", s.http2)


def _check_http2(rep: _Report, path: str, h: Http2) -> None:
    for key in ("max_concurrent_streams", "max_header_list_size", "max_resets_per_10s"):
        if getattr(h, key) < 1:
            rep.add(f"{path}.{key}", "must be >= 1")
    if not 1 <= h.initial_window_size <= 2**31 - 1:
        rep.add(f"{path}.initial_window_size", "must be between 1 and 2147483647 (RFC 9113 §6.5.2)")
    if not 16384 <= h.max_frame_size <= 16777215:
        rep.add(f"{path}.max_frame_size", "must be between 16384 and 16777215 (RFC 9113 §6.5.2)")
    for key in ("max_buffered_bytes", "max_worker_buffered_bytes"):
        if getattr(h, key) < 16384:
            rep.add(f"{path}.{key}", "must be >= 16384 (one DATA frame)")
    if not h.send_timeout > 0:
        rep.add(f"{path}.send_timeout", "must be > 0 seconds")


def validate(cfg: Config) -> None:
    """Check cross-references and values. Raises ConfigError naming the key path
    (``ConfigErrors`` listing each when there is more than one)."""
    rep = _Report()
    _validate(cfg, rep)
    rep.raise_if_any()


def _validate(cfg: Config, rep: _Report) -> None:
    if cfg.runtime.workers < 0:
        rep.add("runtime.workers", "must be >= 0 (0 = one per core)")
    if cfg.runtime.drain_timeout < 0:
        rep.add("runtime.drain_timeout", "must be >= 0")
    for name, c in cfg.upstreams.items():
        _check_cluster(rep, f"upstreams.{name}", c)
    if not cfg.servers and not rep.bad_servers:
        rep.add("servers", "no servers configured")
    seen: dict[str, str] = {}
    for name, s in cfg.servers.items():
        _check_server(rep, f"servers.{name}", s, cfg)
        try:
            addr = str(parse_listener(s.listener))
        except ValueError:
            continue  # reported by _check_server
        if addr in seen and not addr.endswith(":0"):
            rep.add(f"servers.{name}.listener", f"{addr} is already used by servers.{seen[addr]}")
        seen[addr] = name
    if cfg.admin is not None:
        _check_admin(rep, cfg.admin.listen, seen)
        _check_admin_limits(rep, cfg.admin)
        for i, name in enumerate(cfg.admin.ready_upstreams):
            if name not in cfg.upstreams:
                rep.add(f"admin.ready_upstreams[{i}]", f"no [upstreams.{name}] table")


def _check_admin(rep: _Report, listen: str, servers: dict[str, str]) -> None:
    """``admin.listen``: host:port (the admin endpoint is not served on a Unix socket), not a server's."""
    try:
        addr = parse_listener(listen)
    except ValueError as exc:
        rep.add("admin.listen", str(exc))
        return
    if addr.path:
        rep.add("admin.listen", "must be host:port (a Unix socket is not supported)")
        return
    used = str(addr)
    if used in servers and not used.endswith(":0"):
        rep.add("admin.listen", f"{used} is already used by servers.{servers[used]}")


def _check_admin_limits(rep: _Report, admin: Admin) -> None:
    """``admin.max_connections`` at least 1; ``admin.header_timeout`` and ``idle_timeout`` positive."""
    if admin.max_connections < 1:
        rep.add("admin.max_connections", f"must be at least 1, not {admin.max_connections}")
    for key in ("header_timeout", "idle_timeout"):
        value = getattr(admin, key)
        if not value > 0:
            rep.add(f"admin.{key}", f"must be a positive number of seconds, not {value}")
