"""Load and validate a TOML config.

Two passes: msgspec converts the TOML tables into the frozen Structs of
``_schema`` (types, unknown keys), then ``validate`` checks what a schema cannot
(references between tables, regexes, addresses, balancer options). Both report a
``ConfigError`` whose ``path`` is the dotted key path, e.g.
``servers.web.routes[2].upstream``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ..errors import ConfigError
from ._address import parse_endpoint, parse_listener
from ._schema import Cluster, Config, Http2, Route, Server, ServerTls, UpstreamTls

T = TypeVar("T")

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _convert(raw: Any, typ: type[T], path: str) -> T:
    try:
        return msgspec.convert(raw, typ, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = _AT.search(text)
        sub = ""
        if m:
            text = text[: m.start()]
            sub = m.group("path")
        full = (path + sub) if sub.startswith("[") or not path else f"{path}{sub}"
        raise ConfigError(full.lstrip("."), text) from None


def _convert_named(raw: Any, typ: type[T], path: str) -> dict[str, T]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(path, f"expected a table, got {type(raw).__name__}")
    return {name: _convert(value, typ, f"{path}.{name}") for name, value in raw.items()}


def parse_config(raw: dict[str, Any], base_dir: str | Path | None = None) -> Config:
    """Turn a decoded TOML document into a validated Config, or raise ConfigError.

    Relative file names in the config (gateway IDLs) are taken relative to
    ``base_dir`` (the config file's directory) when given, else to the working directory.
    """
    rest = {k: v for k, v in raw.items() if k not in ("servers", "upstreams")}
    base = _convert(rest, Config, "")
    servers = _convert_named(raw.get("servers"), Server, "servers")
    upstreams = _convert_named(raw.get("upstreams"), Cluster, "upstreams")
    if base_dir is not None:
        servers = {name: _resolve_files(s, Path(base_dir)) for name, s in servers.items()}
        upstreams = {
            name: c if c.tls is None else msgspec.structs.replace(c, tls=_resolve_tls(c.tls, Path(base_dir)))
            for name, c in upstreams.items()
        }
    cfg = msgspec.structs.replace(base, upstreams=upstreams, servers=servers)
    validate(cfg)
    return cfg


def _rel(base: Path, name: str | None) -> str | None:
    return name if name is None or Path(name).is_absolute() else str(base / name)


def _resolve_tls(t: T, base: Path) -> T:
    if isinstance(t, ServerTls):
        certs = [msgspec.structs.replace(c, chain=_rel(base, c.chain), key=_rel(base, c.key)) for c in t.certificates]
        return msgspec.structs.replace(t, certificates=certs, client_ca=_rel(base, t.client_ca))
    assert isinstance(t, UpstreamTls)
    return msgspec.structs.replace(
        t, ca=_rel(base, t.ca), client_cert=_rel(base, t.client_cert), client_key=_rel(base, t.client_key)
    )


def _resolve_files(s: Server, base: Path) -> Server:
    if s.tls is not None:
        s = msgspec.structs.replace(s, tls=_resolve_tls(s.tls, base))
    if not any(r.gateway is not None and not Path(r.gateway.idl).is_absolute() for r in s.routes):
        return s
    routes = [
        r
        if r.gateway is None or Path(r.gateway.idl).is_absolute()
        else msgspec.structs.replace(r, gateway=msgspec.structs.replace(r.gateway, idl=str(base / r.gateway.idl)))
        for r in s.routes
    ]
    return msgspec.structs.replace(s, routes=routes)


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file. Raises ConfigError (also for unreadable files)."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path} is not valid TOML: {exc}") from None
    return parse_config(raw, Path(path).parent)


_HASH_ON = re.compile(r"^(client_ip|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|cookie:[^=;, ]+)$")


def _check_balancer(path: str, lb: str, hash_on: str) -> None:
    if lb == "consistent_hash" and not _HASH_ON.match(hash_on):
        raise ConfigError(f"{path}.hash_on", f"expected client_ip, header:NAME or cookie:NAME, got {hash_on!r}")


def _check_cluster(path: str, c: Cluster) -> None:
    if not c.endpoints:
        raise ConfigError(f"{path}.endpoints", "a cluster needs at least one endpoint")
    for i, up in enumerate(c.endpoints):
        try:
            parse_endpoint(up.endpoint, up.weight)
        except ValueError as exc:
            raise ConfigError(f"{path}.endpoints[{i}]", str(exc)) from None
    _check_balancer(path, c.load_balancer, c.hash_on)
    for key in ("connect_timeout", "read_timeout", "idle_timeout"):
        if getattr(c, key) <= 0:
            raise ConfigError(f"{path}.{key}", "must be > 0")
    if c.max_idle_per_key < 0:
        raise ConfigError(f"{path}.max_idle_per_key", "must be >= 0")
    _check_resilience(path, c)
    if c.tls is not None:
        _check_upstream_tls(f"{path}.tls", c.tls)
        for i, up in enumerate(c.endpoints):
            if parse_endpoint(up.endpoint, up.weight).scheme == "http" and _says_http(up.endpoint):
                raise ConfigError(
                    f"{path}.endpoints[{i}]", "an http:// endpoint in a cluster with [tls] (use https:// or host:port)"
                )
    if c.protocol != "http1":
        _check_h2_cluster(path, c)


def _check_h2_cluster(path: str, c: Cluster) -> None:
    if c.health_check is not None:
        raise ConfigError(f"{path}.health_check", f"not available with protocol = {c.protocol!r} yet (only with http1)")
    cb = c.circuit_breaker
    for key in ("max_connections", "max_pending"):
        if cb is not None and getattr(cb, key) is not None:
            raise ConfigError(
                f"{path}.circuit_breaker.{key}",
                f"not available with protocol = {c.protocol!r} (requests share connections); use max_requests",
            )
    eps = [parse_endpoint(up.endpoint, up.weight) for up in c.endpoints]
    tls = c.tls is not None or any(ep.scheme == "https" for ep in eps)
    if c.protocol == "h2c" and tls:
        raise ConfigError(f"{path}.protocol", '"h2c" is HTTP/2 in cleartext; use "h2" for HTTP/2 over TLS')
    if c.protocol == "h2" and (not tls or any(ep.path for ep in eps)):
        raise ConfigError(
            f"{path}.protocol",
            '"h2" is HTTP/2 over TLS: give https:// (not unix) endpoints or a [tls] table, or use "h2c" for cleartext',
        )


def _says_http(spec: object) -> bool:
    text = spec if isinstance(spec, str) else getattr(spec, "value", "")
    return isinstance(text, str) and text.startswith("http://")


_VERSION_ORDER = {"1.2": 0, "1.3": 1}


def _check_file(path: str, name: str | None) -> None:
    if name is not None and not Path(name).is_file():
        raise ConfigError(path, f"no such file: {name}")


def _check_backend(path: str, backend: str) -> None:
    if backend == "rustls":
        try:
            import rtls  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"{path}.backend", f"TLS backend 'rustls' needs the rtls package: {exc}") from None


def _check_rustls_listener(path: str, t: ServerTls) -> None:
    """What the rustls backend (rtls) cannot do on a listener (see monolake/rtls_impl.py)."""
    if t.client_auth != "none" or t.client_ca is not None:
        key = "client_auth" if t.client_auth != "none" else "client_ca"
        raise ConfigError(
            f"{path}.{key}", "backend 'rustls' cannot verify client certificates (mTLS); use backend = 'openssl'"
        )
    if t.session_tickets:
        raise ConfigError(
            f"{path}.session_tickets", "backend 'rustls' cannot resume sessions; leave it unset or use 'openssl'"
        )


def _check_alpn(path: str, alpn: list[str] | None, h2: bool = False) -> None:
    """``h2``: "h2" may be offered too (a listener with HTTP/2 enabled)."""
    if alpn is None:
        return
    known = ("h2", "http/1.1") if h2 else ("http/1.1",)
    for i, proto in enumerate(alpn):
        if proto not in known:
            raise ConfigError(f"{path}.alpn[{i}]", f"protocol {proto!r} is not available here (only {known})")


def _check_upstream_tls(path: str, t: UpstreamTls) -> None:
    _check_backend(path, t.backend)
    _check_file(f"{path}.ca", t.ca)
    _check_file(f"{path}.client_cert", t.client_cert)
    _check_file(f"{path}.client_key", t.client_key)
    if (t.client_cert is None) != (t.client_key is None):
        raise ConfigError(path, "give both client_cert and client_key, or neither")
    if t.sni is not None and (not t.sni or any(c.isspace() for c in t.sni)):
        raise ConfigError(f"{path}.sni", f"expected a host name, got {t.sni!r}")
    _check_alpn(path, t.alpn)
    if (
        t.min_version is not None
        and t.max_version is not None
        and _VERSION_ORDER[t.min_version] > _VERSION_ORDER[t.max_version]
    ):
        raise ConfigError(f"{path}.min_version", f"{t.min_version} is above max_version {t.max_version}")


def _check_server_tls(path: str, s: Server, t: ServerTls) -> None:
    _check_backend(path, t.backend)
    if t.backend == "rustls":
        _check_rustls_listener(path, t)
    if s.proxy_protocol != "off":
        raise ConfigError(path, "TLS together with proxy_protocol is not available yet")
    if parse_listener(s.listener).is_unix:
        raise ConfigError(path, "TLS on a unix listener is not available yet")
    if not t.certificates:
        raise ConfigError(f"{path}.certificates", "needs at least one certificate")
    for i, c in enumerate(t.certificates):
        cpath = f"{path}.certificates[{i}]"
        _check_file(f"{cpath}.chain", c.chain)
        _check_file(f"{cpath}.key", c.key)
        for j, name in enumerate(c.server_names):
            if not name or name.count("*") > 1 or ("*" in name and not name.startswith("*.")) or name == "*.":
                raise ConfigError(f"{cpath}.server_names[{j}]", f"expected an exact name or '*.suffix', got {name!r}")
    if s.proxy_type != "http":
        # A byte relay or Thrift listener may announce any protocol its clients expect.
        for i, proto in enumerate(t.alpn or []):
            if not proto or len(proto.encode()) > 255:
                raise ConfigError(f"{path}.alpn[{i}]", "expected a protocol name of 1 to 255 bytes")
    else:
        if t.alpn is not None and "h2" in t.alpn and not s.http2.enabled:
            raise ConfigError(f"{path}.alpn", "offers 'h2' but http2.enabled is false")
        _check_alpn(path, t.alpn, h2=True)
    if _VERSION_ORDER[t.min_version] > _VERSION_ORDER[t.max_version]:
        raise ConfigError(f"{path}.min_version", f"{t.min_version} is above max_version {t.max_version}")
    if t.ciphers is not None and not t.ciphers:
        raise ConfigError(f"{path}.ciphers", "must not be empty")
    _check_file(f"{path}.client_ca", t.client_ca)
    if t.client_auth != "none" and t.client_ca is None:
        raise ConfigError(f"{path}.client_auth", f"client_auth = {t.client_auth!r} needs client_ca")


def _is_tls_cluster(c: Cluster) -> bool:
    return c.tls is not None or any(parse_endpoint(u.endpoint, u.weight).scheme == "https" for u in c.endpoints)


def _check_no_tls(path: str, name: str, cfg: Config, what: str) -> None:
    if _is_tls_cluster(cfg.upstreams[name]):
        raise ConfigError(path, f"cluster {name!r} speaks TLS, which {what} do not support yet")


def _check_resilience(path: str, c: Cluster) -> None:
    hc = c.health_check
    if hc is not None:
        p = f"{path}.health_check"
        for key in ("interval", "timeout"):
            if getattr(hc, key) <= 0:
                raise ConfigError(f"{p}.{key}", "must be > 0")
        for key in ("healthy_threshold", "unhealthy_threshold"):
            if getattr(hc, key) < 1:
                raise ConfigError(f"{p}.{key}", "must be >= 1")
        if not hc.path.startswith("/"):
            raise ConfigError(f"{p}.path", f"must start with '/', got {hc.path!r}")
        if not hc.expected_status or any(not 100 <= st <= 599 for st in hc.expected_status):
            raise ConfigError(f"{p}.expected_status", "expected a non-empty list of HTTP statuses (100-599)")
    od = c.outlier_detection
    if od is not None:
        p = f"{path}.outlier_detection"
        for key in ("consecutive_5xx", "consecutive_connect_failures"):
            if getattr(od, key) < 0:
                raise ConfigError(f"{p}.{key}", "must be >= 0 (0 disables)")
        for key in ("base_ejection_time", "max_ejection_time"):
            if getattr(od, key) <= 0:
                raise ConfigError(f"{p}.{key}", "must be > 0")
        if not 0 <= od.max_ejection_percent <= 100:
            raise ConfigError(f"{p}.max_ejection_percent", "must be between 0 and 100")
    cb = c.circuit_breaker
    if cb is not None:
        for key in ("max_connections", "max_pending", "max_requests"):
            value = getattr(cb, key)
            if value is not None and value < 1:
                raise ConfigError(f"{path}.circuit_breaker.{key}", "must be >= 1")


def _check_http_only_resilience(path: str, name: str, cfg: Config, what: str) -> None:
    c = cfg.upstreams[name]
    for key in ("health_check", "outlier_detection", "circuit_breaker"):
        if getattr(c, key) is not None:
            raise ConfigError(path, f"cluster {name!r} has {key} (upstreams.{name}.{key}), which {what} do not use")


def _check_route(path: str, r: Route, cfg: Config) -> None:
    matchers = [k for k in ("path", "path_exact", "path_regex") if getattr(r, k) is not None]
    if len(matchers) > 1:
        raise ConfigError(path, f"give only one of path, path_exact, path_regex (got {', '.join(matchers)})")
    for key in ("path", "path_exact"):
        value = getattr(r, key)
        if value is not None and not value.startswith("/"):
            raise ConfigError(f"{path}.{key}", f"must start with '/', got {value!r}")
    if r.path_regex is not None:
        try:
            re.compile(r.path_regex.encode())  # the router matches bytes paths
        except re.error as exc:
            raise ConfigError(f"{path}.path_regex", f"invalid regular expression: {exc}") from None
    if (r.strip_prefix or r.prefix_rewrite is not None) and r.path is None:
        raise ConfigError(path, "strip_prefix/prefix_rewrite need a 'path' prefix to replace")
    if r.host is not None and (not r.host or r.host.count("*") > 1 or ("*" in r.host and not r.host.startswith("*."))):
        raise ConfigError(f"{path}.host", f"expected an exact host or '*.suffix', got {r.host!r}")
    if r.upstream is not None and r.upstreams is not None:
        raise ConfigError(path, "give either 'upstream' (a cluster name) or inline 'upstreams', not both")
    if r.upstream is None and r.upstreams is None and not r.connect:
        raise ConfigError(path, "a route needs 'upstream' (a cluster name) or inline 'upstreams'")
    if not isinstance(r.connect, bool):  # a [connect] table
        for i, port in enumerate(r.connect.ports):
            if not 0 < port < 65536:
                raise ConfigError(f"{path}.connect.ports[{i}]", f"not a TCP port: {port}")
        if r.connect.connect_timeout <= 0:
            raise ConfigError(f"{path}.connect.connect_timeout", "must be > 0")
    if r.upstream is not None and r.upstream not in cfg.upstreams:
        known = ", ".join(sorted(cfg.upstreams)) or "none defined"
        raise ConfigError(f"{path}.upstream", f"unknown cluster {r.upstream!r} (known: {known})")
    if r.upstreams is not None:
        if not r.upstreams:
            raise ConfigError(f"{path}.upstreams", "needs at least one endpoint")
        for i, up in enumerate(r.upstreams):
            try:
                parse_endpoint(up.endpoint, up.weight)
            except ValueError as exc:
                raise ConfigError(f"{path}.upstreams[{i}]", str(exc)) from None
        _check_balancer(path, r.load_balancer, r.hash_on)
        if r.protocol != "http1":
            _check_h2_cluster(path, Cluster(endpoints=r.upstreams, protocol=r.protocol))
    elif r.protocol != "http1":
        raise ConfigError(f"{path}.protocol", "applies to inline 'upstreams'; set it on the cluster instead")
    if r.timeout is not None and r.timeout <= 0:
        raise ConfigError(f"{path}.timeout", "must be > 0")
    if r.retry is not None:
        if r.retry.attempts < 0:
            raise ConfigError(f"{path}.retry.attempts", "must be >= 0")
        if r.retry.per_try_timeout is not None and r.retry.per_try_timeout <= 0:
            raise ConfigError(f"{path}.retry.per_try_timeout", "must be > 0")
        if r.retry.budget_percent < 0:
            raise ConfigError(f"{path}.retry.budget_percent", "must be >= 0")
        if r.retry.min_retry_concurrency < 0:
            raise ConfigError(f"{path}.retry.min_retry_concurrency", "must be >= 0")


def _check_tcp_server(path: str, s: Server, cfg: Config) -> None:
    if s.routes:
        raise ConfigError(f"{path}.routes", 'a proxy_type = "tcp" server has no routes (give upstream or upstreams)')
    if s.filters:
        raise ConfigError(f"{path}.filters", 'HTTP filters do not apply to a proxy_type = "tcp" server')
    if s.upstream is not None and s.upstreams is not None:
        raise ConfigError(path, "give either 'upstream' (a cluster name) or inline 'upstreams', not both")
    if s.upstream is None and s.upstreams is None:
        raise ConfigError(path, "a tcp server needs 'upstream' (a cluster name) or inline 'upstreams'")
    if s.upstream is not None and s.upstream not in cfg.upstreams:
        known = ", ".join(sorted(cfg.upstreams)) or "none defined"
        raise ConfigError(f"{path}.upstream", f"unknown cluster {s.upstream!r} (known: {known})")
    if s.upstream is not None:
        _check_http_only_resilience(f"{path}.upstream", s.upstream, cfg, "tcp servers")
        c = cfg.upstreams[s.upstream]
        if c.send_proxy_protocol != "off" and _is_tls_cluster(c):
            raise ConfigError(
                f"upstreams.{s.upstream}.send_proxy_protocol",
                "a PROXY header before TLS to the endpoints is not available yet (turn one off)",
            )
    if s.upstreams is not None:
        if not s.upstreams:
            raise ConfigError(f"{path}.upstreams", "needs at least one endpoint")
        for i, up in enumerate(s.upstreams):
            try:
                parse_endpoint(up.endpoint, up.weight)
            except ValueError as exc:
                raise ConfigError(f"{path}.upstreams[{i}]", str(exc)) from None
        if s.load_balancer == "consistent_hash" and s.hash_on != "client_ip":
            raise ConfigError(f"{path}.hash_on", f"a tcp server can only hash on client_ip, got {s.hash_on!r}")
    if s.idle_timeout <= 0:
        raise ConfigError(f"{path}.idle_timeout", "must be > 0")
    if s.splice_after < 0:
        raise ConfigError(f"{path}.splice_after", "must be >= 0")


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
)
_THRIFT_DEFAULTS = Route()


def _names(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else value


def _check_thrift_server(path: str, s: Server, cfg: Config) -> None:
    if s.filters:
        raise ConfigError(f"{path}.filters", 'HTTP filters do not apply to a proxy_type = "thrift" server')
    for key in ("upstream", "upstreams"):
        if getattr(s, key) is not None:
            raise ConfigError(f"{path}.{key}", "a thrift server sends calls to its routes' upstreams; set it there")
    if not s.routes:
        raise ConfigError(f"{path}.routes", "a thrift server needs at least one route")
    for i, r in enumerate(s.routes):
        rpath = f"{path}.routes[{i}]"
        for key in (*_HTTP_ONLY_ROUTE_KEYS, "strip_prefix", "host_header", "request_headers", "response_headers"):
            if getattr(r, key) != getattr(_THRIFT_DEFAULTS, key):
                raise ConfigError(
                    f"{rpath}.{key}", "an HTTP route key; thrift routes match thrift_service/thrift_method"
                )
        for key in ("thrift_method", "thrift_service"):
            value = getattr(r, key)
            if value is not None and (not _names(value) or not all(_names(value))):
                raise ConfigError(f"{rpath}.{key}", "expected a non-empty name or list of names")
        _check_route(rpath, r, cfg)
        if r.upstreams is not None and r.load_balancer == "consistent_hash" and r.hash_on != "client_ip":
            raise ConfigError(f"{rpath}.hash_on", f"a thrift route can only hash on client_ip, got {r.hash_on!r}")
        if r.upstream is not None:
            c = cfg.upstreams[r.upstream]
            if c.load_balancer == "consistent_hash" and c.hash_on != "client_ip":
                raise ConfigError(
                    f"{rpath}.upstream",
                    f"cluster {r.upstream!r} hashes on {c.hash_on!r}; thrift routes hash on client_ip",
                )
            if c.send_proxy_protocol != "off":
                raise ConfigError(f"{rpath}.upstream", f"cluster {r.upstream!r} sends the PROXY protocol (tcp only)")
            _check_http_only_resilience(f"{rpath}.upstream", r.upstream, cfg, "thrift routes")
    if not 64 <= s.max_frame_size <= 0x7FFFFFFF:
        raise ConfigError(f"{path}.max_frame_size", "must be between 64 and 2147483647")
    for key in ("upstream_connections", "upstream_in_flight"):
        if getattr(s, key) < 1:
            raise ConfigError(f"{path}.{key}", "must be >= 1")
    if s.idle_timeout <= 0:
        raise ConfigError(f"{path}.idle_timeout", "must be > 0")
    if s.request_timeout is not None and s.request_timeout <= 0:
        raise ConfigError(f"{path}.request_timeout", "must be > 0")
    if s.limits.max_pipelined < 1:
        raise ConfigError(f"{path}.limits.max_pipelined", "must be >= 1")


def _check_server(path: str, s: Server, cfg: Config) -> None:
    try:
        parse_listener(s.listener)
    except ValueError as exc:
        raise ConfigError(f"{path}.listener", str(exc)) from None
    if s.tls is not None:
        _check_server_tls(f"{path}.tls", s, s.tls)
    if s.proxy_type == "tcp":
        _check_tcp_server(path, s, cfg)
        return
    if s.proxy_type == "thrift":
        _check_thrift_server(path, s, cfg)
        return
    for key in ("upstream", "upstreams"):
        if getattr(s, key) is not None:
            raise ConfigError(f"{path}.{key}", 'only a proxy_type = "tcp" server has one; http servers use routes')
    if not s.routes:
        raise ConfigError(f"{path}.routes", "a server needs at least one route")
    for i, r in enumerate(s.routes):
        for key in ("thrift_method", "thrift_service"):
            if getattr(r, key) is not None:
                raise ConfigError(f"{path}.routes[{i}].{key}", 'only routes of a proxy_type = "thrift" server have one')
        if r.gateway is not None:
            for key in ("idl", "service"):
                if not getattr(r.gateway, key):
                    raise ConfigError(f"{path}.routes[{i}].gateway.{key}", "must not be empty")
            if r.retry is not None:
                raise ConfigError(f"{path}.routes[{i}].retry", "gateway routes are not retried")
            if r.upstream is not None and r.upstream in cfg.upstreams:
                _check_http_only_resilience(f"{path}.routes[{i}].upstream", r.upstream, cfg, "gateway routes")
                _check_no_tls(f"{path}.routes[{i}].upstream", r.upstream, cfg, "gateway routes")
            for j, up in enumerate(r.upstreams or []):
                if parse_endpoint(up.endpoint, up.weight).scheme == "https":
                    raise ConfigError(f"{path}.routes[{i}].upstreams[{j}]", "gateway routes do not support TLS yet")
        _check_route(f"{path}.routes[{i}]", r, cfg)
        if r.upstream is not None and cfg.upstreams[r.upstream].send_proxy_protocol != "off":
            raise ConfigError(
                f"{path}.routes[{i}].upstream",
                f"cluster {r.upstream!r} sends the PROXY protocol (upstreams.{r.upstream}.send_proxy_protocol), "
                "which HTTP routes do not support",
            )
    for i, f in enumerate(s.filters):
        use = f if isinstance(f, str) else f.use
        if use.count(":") != 1 or not all(use.split(":")):
            raise ConfigError(f"{path}.filters[{i}]", f"expected 'module:Class', got {use!r}")
    for key in ("keepalive_timeout", "header_timeout", "idle_timeout"):
        if getattr(s, key) <= 0:
            raise ConfigError(f"{path}.{key}", "must be > 0")
    if s.splice_after < 0:
        raise ConfigError(f"{path}.splice_after", "must be >= 0")
    if s.request_timeout is not None and s.request_timeout <= 0:
        raise ConfigError(f"{path}.request_timeout", "must be > 0")
    if s.max_concurrency is not None and s.max_concurrency < 1:
        raise ConfigError(f"{path}.max_concurrency", "must be >= 1")
    for key in ("max_header_bytes", "max_headers", "max_pipelined"):
        if getattr(s.limits, key) < 1:
            raise ConfigError(f"{path}.limits.{key}", "must be >= 1")
    if s.limits.max_body_bytes < 0:
        raise ConfigError(f"{path}.limits.max_body_bytes", "must be >= 0 (0 = unlimited)")
    _check_http2(f"{path}.http2", s.http2)


def _check_http2(path: str, h: Http2) -> None:
    for key in ("max_concurrent_streams", "max_header_list_size", "max_resets_per_10s"):
        if getattr(h, key) < 1:
            raise ConfigError(f"{path}.{key}", "must be >= 1")
    if not 1 <= h.initial_window_size <= 2**31 - 1:
        raise ConfigError(f"{path}.initial_window_size", "must be between 1 and 2147483647 (RFC 9113 §6.5.2)")
    if not 16384 <= h.max_frame_size <= 16777215:
        raise ConfigError(f"{path}.max_frame_size", "must be between 16384 and 16777215 (RFC 9113 §6.5.2)")
    for key in ("max_buffered_bytes", "max_worker_buffered_bytes"):
        if getattr(h, key) < 16384:
            raise ConfigError(f"{path}.{key}", "must be >= 16384 (one DATA frame)")
    if not h.send_timeout > 0:
        raise ConfigError(f"{path}.send_timeout", "must be > 0 seconds")


def validate(cfg: Config) -> None:
    """Check cross-references and values. Raises ConfigError naming the key path."""
    if cfg.runtime.workers < 0:
        raise ConfigError("runtime.workers", "must be >= 0 (0 = one per core)")
    if cfg.runtime.drain_timeout < 0:
        raise ConfigError("runtime.drain_timeout", "must be >= 0")
    for name, c in cfg.upstreams.items():
        _check_cluster(f"upstreams.{name}", c)
    if not cfg.servers:
        raise ConfigError("servers", "no servers configured")
    seen: dict[str, str] = {}
    for name, s in cfg.servers.items():
        _check_server(f"servers.{name}", s, cfg)
        addr = str(parse_listener(s.listener))
        if addr in seen and not addr.endswith(":0"):
            raise ConfigError(f"servers.{name}.listener", f"{addr} is already used by servers.{seen[addr]}")
        seen[addr] = name
    if cfg.admin is not None:
        _check_admin(cfg.admin.listen, seen)


def _check_admin(listen: str, servers: dict[str, str]) -> None:
    """``admin.listen``: host:port (the admin endpoint is not served on a Unix socket), not a server's."""
    try:
        addr = parse_listener(listen)
    except ValueError as exc:
        raise ConfigError("admin.listen", str(exc)) from None
    if addr.path:
        raise ConfigError("admin.listen", "must be host:port (a Unix socket is not supported)")
    used = str(addr)
    if used in servers and not used.endswith(":0"):
        raise ConfigError("admin.listen", f"{used} is already used by servers.{servers[used]}")
