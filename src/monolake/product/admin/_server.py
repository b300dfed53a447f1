"""The admin HTTP endpoint, served by a thread of the supervisor.

It is off the hot path by construction: workers never see it; it reads what they
wrote to the shared metrics directory (``observe._metrics``) and asks the
supervisor for a reload through its thread-safe ``request_reload``. Connections
are served by ``_http.HttpListener`` (one event loop thread, a few handler
threads, a connection cap and timeouts from ``[admin]``).

Endpoints (all GET unless said): ``/`` the dashboard (a static page; it carries
no data, so it is served without the token and sends the token on its own
requests), ``/metrics`` (Prometheus text), ``/healthz``, ``/config`` (the config
in force, secrets redacted), ``/upstreams`` (endpoints and their health),
``/stats.json`` (what the dashboard polls), ``POST /reload`` (waits for the
outcome; ``GET /reload`` shows the last one), ``GET /log_level`` and ``POST
/log_level?level=debug`` (every process's log level, until a restart), ``POST
/cache/purge?prefix=...`` (the ``cache`` filter's entries, in every worker). With ``[admin] token`` set, every
endpoint but ``/`` needs ``Authorization: Bearer TOKEN``.

``/config`` redacts what may be a secret: values under secret-looking keys
(token, password, ...), every header value the config sets or matches on (a
rewrite's ``add``/``set``, a route's ``headers``: an ``X-Api-Key`` or ``Cookie``
injected towards an upstream is a credential), and every private key path.

The listening socket has SO_REUSEPORT so a new supervisor started by a binary
upgrade can bind the same address while the old one still serves.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any

import msgspec

from ...apps.config import Config
from ...apps.observe._metrics import LATENCY_BUCKETS, worker_families
from ...core.address import parse_endpoint, parse_listener
from ...core.errors import ConfigError
from ...core.runtime._logging import LEVEL_NAMES, set_level, shared_level
from ...core.runtime._logging import logger as log
from ._fleet import PREFIX, endpoint_call, readiness
from ._http import HttpListener, Limits, Reply, Request

RELOAD_WAIT = 60.0
"""Seconds ``POST /reload`` waits for the reload's outcome before answering 202."""
REDACTED = "<redacted>"
_SECRET_WORDS = (
    "token",
    "secret",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "api-key",
    "authorization",
    "credential",
    "cookie",
)
_KEY_PATHS = ("key", "client_key")
"""Keys whose value is a private key's path (``certificates[].key``, ``tls.client_key``)."""
_HEADER_REWRITES = ("request_headers", "response_headers")
_SET_HEADERS = ("add", "set")


def redact(value: Any) -> Any:
    """``value`` (built-in types, as ``msgspec.to_builtins`` makes them) with what may be a secret
    replaced by ``REDACTED``: values of secret-looking keys, of private key paths, and every header
    value the config sets (``request_headers``/``response_headers`` ``add``/``set``) or matches on
    (a route's ``headers``). Names stay visible; None stays None."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = str(k)
            if v is None:
                out[key] = None
            elif key in _KEY_PATHS or any(w in key.lower() for w in _SECRET_WORDS):
                out[key] = REDACTED
            elif key in _HEADER_REWRITES and isinstance(v, Mapping):
                out[key] = {op: _redact_values(hv) if op in _SET_HEADERS else redact(hv) for op, hv in v.items()}
            elif key == "headers" and isinstance(v, Mapping):
                out[key] = _redact_values(v)
            else:
                out[key] = redact(v)
        return out
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _redact_values(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): REDACTED for k in value}
    return redact(value)


def _page() -> bytes:
    return resources.files(__package__).joinpath("dashboard.html").read_bytes()


class _Snapshot:
    """A collector that yields families already merged (``worker_families``)."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


class AdminState:
    """What the handlers read: the supervisor (or anything shaped like it) and the metrics directory.

    ``supervisor`` needs ``config`` (the Config in force) and may have
    ``request_reload(reason)`` and ``last_reload``; without ``request_reload``,
    ``POST /reload`` answers 501.
    """

    def __init__(self, supervisor: Any, metrics_dir: str | None, token: str | None) -> None:
        self.supervisor = supervisor
        self.metrics_dir = metrics_dir
        self.token = token
        self.started = time.time()
        self.reloads = threading.Condition()
        self.last_reload: Any = None
        self.hub: Any = None
        self.config_url: str | None = None
        """Where the config comes from when not a file (``etcd://...``): ``/config`` names it, and the
        last reload's error when it failed (a bad config pushed to the key)."""
        """The discovery hub (``apps.discovery.DiscoveryHub``) when a cluster discovers its endpoints."""

    def config(self) -> Config:
        return self.supervisor.config  # type: ignore[no-any-return]

    def current_token(self) -> str | None:
        """The token of the config in force (a reload may change it), else the one at start."""
        admin = getattr(self.config(), "admin", None)
        return admin.token if admin is not None else self.token

    def reload_done(self, result: Any) -> None:
        """Called by the supervisor (its main thread) when a reload ends."""
        with self.reloads:
            self.last_reload = result
            self.reloads.notify_all()

    # -- metrics ----------------------------------------------------------------------

    def families(self) -> list[Any]:
        if self.metrics_dir is None:
            return []
        return worker_families(self.metrics_dir)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        if self.metrics_dir is not None:
            registry.register(_Snapshot(self.families()))
        if self.hub is not None:
            registry.register(_Snapshot(self.hub.families()))
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def upstreams(self, fams: Iterable[Any] | None = None) -> dict[str, Any]:
        """Configured clusters and endpoints, each endpoint's health (None: not checked) and request counts."""
        cfg = self.config()
        out: dict[str, dict[str, Any]] = {}
        for name, c in cfg.upstreams.items():
            out[name] = {"endpoints": [_endpoint_text(u.endpoint) for u in c.endpoints]}
            found = self.hub.current(name) if self.hub is not None else None
            if found is not None:  # discovery's set, not the config's
                out[name] = {"endpoints": [_endpoint_text(r.address) for r in found if not r.draining]}
        for sname, server in cfg.servers.items():
            for i, r in enumerate(server.routes):
                if r.upstreams:
                    out[f"{sname}.routes[{i}]"] = {"endpoints": [_endpoint_text(u.endpoint) for u in r.upstreams]}
        health: dict[tuple[str, str], bool] = {}
        requests: dict[str, float] = {}
        errors: dict[str, float] = {}
        for fam in self.families() if fams is None else fams:
            for s in fam.samples:
                if s.name == "monolake_upstream_endpoint_healthy":
                    health[(s.labels["upstream"], s.labels["endpoint"])] = s.value >= 1
                elif s.name == "monolake_requests_total":
                    up = s.labels.get("upstream", "-")
                    requests[up] = requests.get(up, 0) + s.value
                    if s.labels.get("status", "").startswith("5"):
                        errors[up] = errors.get(up, 0) + s.value
        result: dict[str, Any] = {}
        for name, info in out.items():
            eps = [{"endpoint": ep, "healthy": health.pop((name, ep), None)} for ep in info["endpoints"]]
            result[name] = {"endpoints": eps, "requests": requests.get(name, 0), "errors_5xx": errors.get(name, 0)}
        for (name, ep), ok in health.items():  # endpoints named differently by the health checker
            if self.hub is not None and self.hub.current(name) is not None:
                continue  # a discovered endpoint since removed (its gauge outlives it in the metric files)
            entry = result.setdefault(name, {"endpoints": [], "requests": 0, "errors_5xx": 0})
            for e in entry["endpoints"]:
                if e["healthy"] is None and (e["endpoint"].endswith(ep) or ep.endswith(e["endpoint"])):
                    e["healthy"] = ok
                    break
            else:
                entry["endpoints"].append({"endpoint": ep, "healthy": ok})
        checked = any(e["healthy"] is not None for u in result.values() for e in u["endpoints"])
        return {"upstreams": result, "health_checks": checked}

    def stats(self) -> dict[str, Any]:
        """A snapshot for the dashboard: cumulative counts (it computes rates from two snapshots)."""
        fams = self.families()
        total = 0.0
        by_status: dict[str, float] = {}
        by_server: dict[str, float] = {}
        buckets = dict.fromkeys([*(str(b) for b in LATENCY_BUCKETS), "+Inf"], 0.0)
        lat_sum = lat_count = 0.0
        gauges: dict[str, float] = {}
        reloads: dict[str, float] = {"ok": 0, "failed": 0}
        for fam in fams:
            for s in fam.samples:
                n = s.name
                if n == "monolake_requests_total":
                    total += s.value
                    by_status[s.labels["status"]] = by_status.get(s.labels["status"], 0) + s.value
                    by_server[s.labels["server"]] = by_server.get(s.labels["server"], 0) + s.value
                elif n == "monolake_request_duration_seconds_bucket":
                    le = s.labels["le"]
                    key = le if le == "+Inf" else str(float(le))
                    buckets[key] = buckets.get(key, 0) + s.value
                elif n == "monolake_request_duration_seconds_sum":
                    lat_sum += s.value
                elif n == "monolake_request_duration_seconds_count":
                    lat_count += s.value
                elif n in ("monolake_active_connections", "monolake_requests_in_flight"):
                    gauges[n] = gauges.get(n, 0) + s.value
                elif n == "monolake_reloads_total":
                    reloads[s.labels["result"]] = reloads.get(s.labels["result"], 0) + s.value
        last = getattr(self.supervisor, "last_reload", None)
        return {
            "time": time.time(),
            "requests": total,
            "by_status": by_status,
            "by_server": by_server,
            "latency": {
                # JSON has no infinity: the +Inf bucket's bound is null.
                "buckets": [[None if k == "+Inf" else float(k), v] for k, v in buckets.items()],
                "sum": lat_sum,
                "count": lat_count,
            },
            "connections": gauges.get("monolake_active_connections", 0),
            "in_flight": gauges.get("monolake_requests_in_flight", 0),
            "reloads": reloads,
            "last_reload": last.as_dict() if last is not None else None,
            "upstreams": self.upstreams(fams)["upstreams"],
            "metrics": self.metrics_dir is not None,
        }

    # -- reload -----------------------------------------------------------------------

    def reload(self) -> tuple[int, dict[str, Any]]:
        request = getattr(self.supervisor, "request_reload", None)
        if request is None:
            return 501, {"ok": False, "error": "reload is not implemented by this supervisor"}
        with self.reloads:
            before = self.last_reload
            request("admin /reload")
            deadline = time.monotonic() + RELOAD_WAIT
            while self.last_reload is before:
                left = deadline - time.monotonic()
                if left <= 0:
                    return 202, {"ok": None, "error": "reload requested; still running (see GET /reload)"}
                self.reloads.wait(left)
            result = self.last_reload
        payload = result.as_dict() if hasattr(result, "as_dict") else {"ok": bool(result)}
        return (200 if payload.get("ok") else 500), payload


def _endpoint_text(spec: Any) -> str:
    """As the workers name an endpoint (``str(Endpoint)``: "host:port" or "unix:/path")."""
    try:
        return str(parse_endpoint(spec))
    except ValueError:
        return str(spec)


class _Routes:
    """The endpoints: ``__call__(Request) -> Reply``, run on the listener's handler threads."""

    def __init__(self, state: AdminState) -> None:
        self.state = state
        self.get: dict[str, Callable[[], Reply]] = {
            "/": self._index,
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/config": self._config,
            "/upstreams": self._upstreams,
            "/stats.json": self._stats,
            "/reload": self._last_reload,
            "/log_level": self._log_level,
            "/ready": self._ready,
            "/endpoints": self._endpoints,
        }

    def __call__(self, req: Request) -> Reply:
        path = req.path
        handler: Callable[[], Reply] | None = None
        if req.method in ("GET", "HEAD"):
            handler = self.get.get(path)
        elif req.method == "POST" and path == "/reload":
            handler = self._reload
        elif req.method in ("POST", "PUT") and path == "/log_level":
            handler = lambda: self._set_log_level(req)  # noqa: E731
        elif req.method == "POST" and path == "/cache/purge":
            handler = lambda: self._cache_purge(req)  # noqa: E731
        elif path.startswith(PREFIX) and req.method in ("PUT", "DELETE", "POST"):
            denied = self._denied(req)
            if denied is not None:
                return denied
            status, payload = endpoint_call(self.state.hub, req.method, path, req.body)
            return _json(status, payload)
        if handler is None:
            known = path in self.get
            return _json(405 if known else 404, {"error": "method not allowed" if known else "not found"})
        if handler != self._index:
            denied = self._denied(req)
            if denied is not None:
                return denied
        try:
            return handler()
        except Exception as exc:
            log.exception("admin: %s %s failed", req.method, req.target)
            return _json(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _denied(self, req: Request) -> Reply | None:
        token = self.state.current_token()
        if token is None:
            return None
        scheme, _, value = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
            return None
        return Reply(
            status=401,
            body=b'{"error": "missing or wrong bearer token"}\n',
            headers={"WWW-Authenticate": 'Bearer realm="monolake-admin"'},
        )

    def _index(self) -> Reply:
        return Reply(status=200, body=_page(), content_type="text/html; charset=utf-8")

    def _metrics(self) -> Reply:
        body, ctype = self.state.exposition()
        return Reply(status=200, body=body, content_type=ctype)

    def _healthz(self) -> Reply:
        st = self.state
        return _json(200, {"status": "ok", "pid": os.getpid(), "uptime": round(time.time() - st.started, 3)})

    def _ready(self) -> Reply:
        st = self.state
        ok, details = readiness(getattr(st.supervisor, "state", "ready"), st.config(), st.families())
        return _json(200 if ok else 503, details)

    def _endpoints(self) -> Reply:
        hub = self.state.hub
        return _json(200, {"upstreams": hub.statistics() if hub is not None else {}})

    def _config(self) -> Reply:
        doc = redact(msgspec.to_builtins(self.state.config()))
        url = self.state.config_url
        if url is not None:
            last = getattr(self.state.supervisor, "last_reload", None)
            error = last.error if last is not None and not last.ok else None
            doc["_source"] = {"url": url, "last_reload_error": error}
        return _json(200, doc)

    def _upstreams(self) -> Reply:
        return _json(200, self.state.upstreams())

    def _stats(self) -> Reply:
        return _json(200, self.state.stats())

    def _last_reload(self) -> Reply:
        last = getattr(self.state.supervisor, "last_reload", None)
        return _json(200, {"last_reload": last.as_dict() if last is not None else None})

    def _log_level(self) -> Reply:
        return _json(200, {"level": LEVEL_NAMES.get(shared_level(), str(shared_level()))})

    def _set_log_level(self, req: Request) -> Reply:
        """``POST /log_level?level=debug`` (or a body ``debug``/``{"level": "debug"}``): the
        supervisor's and every worker's level until the next restart, or a reload that changes
        ``log.level``."""
        _, _, query = req.target.partition("?")
        level = dict(p.partition("=")[::2] for p in query.split("&") if p).get("level")
        if level is None:
            body = req.body.strip()
            try:
                doc = json.loads(body) if body.startswith(b"{") else body.decode()
                level = doc.get("level") if isinstance(doc, dict) else doc
            except (ValueError, UnicodeDecodeError):
                level = None
        names = {v: k for k, v in LEVEL_NAMES.items()}
        if not isinstance(level, str) or level.lower() not in names:
            return _json(400, {"error": f"level must be one of {', '.join(names)}, got {level!r}"})
        set_level(names[level.lower()])
        log.warning("admin: log level set to %s", level.lower())
        return _json(200, {"level": level.lower()})

    def _cache_purge(self, req: Request) -> Reply:
        """``POST /cache/purge?prefix=example.com/img/`` (or a body ``{"prefix": ...}``; ``*``: all):
        every worker drops its ``cache`` entries whose key (host + path + query) starts with it.
        Sent over the control channel; the workers apply it as soon as their loops see it."""
        _, _, query = req.target.partition("?")
        prefix: Any = dict(p.partition("=")[::2] for p in query.split("&") if p).get("prefix")
        if prefix is not None:
            prefix = urllib.parse.unquote(prefix)
        else:
            try:
                doc = json.loads(req.body) if req.body.strip() else {}
            except ValueError:
                doc = None
            prefix = doc.get("prefix") if isinstance(doc, dict) else None
        if not isinstance(prefix, str) or not prefix:
            return _json(400, {"error": 'give a key prefix ("?prefix=host/path" or {"prefix": ...}), or "*" for all'})
        broadcast = getattr(self.state.supervisor, "broadcast", None)
        if broadcast is None:
            return _json(503, {"error": "no workers to tell"})
        # Not kept for workers started later (their caches start empty): forgotten at once.
        broadcast("cache/purge", {"op": "app", "topic": "cache/purge", "cache_purge": prefix})
        broadcast("cache/purge", {})
        log.warning("admin: cache purge of %r sent to the workers", prefix)
        return _json(202, {"purge": prefix})

    def _reload(self) -> Reply:
        status, payload = self.state.reload()
        return _json(status, payload)


def _json(status: int, value: Any) -> Reply:
    return Reply(status=status, body=json.dumps(value, indent=1).encode() + b"\n")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class AdminServer:
    """The admin listener. ``start`` serves it from its thread (see ``_http``); ``close`` stops it.

    The constructor binds (ConfigError if it cannot). ``limits`` default to ``[admin]``'s
    defaults. The listening socket has SO_REUSEPORT so a new supervisor started by a
    binary upgrade can bind the same address while the old one still serves.
    """

    def __init__(self, listen: str, state: AdminState, limits: Limits | None = None) -> None:
        try:
            addr = parse_listener(listen)
        except ValueError as exc:
            raise ConfigError("admin.listen", str(exc)) from None
        if addr.path:
            raise ConfigError("admin.listen", "must be host:port (a Unix socket is not supported)")
        self.state = state
        host = "127.0.0.1" if addr.host == "localhost" else addr.host
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, addr.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ConfigError("admin.listen", f"cannot listen on {listen}: {exc.strerror or exc}") from None
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self.listener = HttpListener(sock, _Routes(state), limits or Limits())

    def start(self) -> None:
        self.listener.start()
        log.info("admin endpoint on http://%s:%d/", *self.address)
        host = self.address[0]
        if self.state.current_token() is None and not _is_loopback(host):
            shown = f"[{host}]" if ":" in host else host
            log.warning(
                "admin endpoint listens on %s:%d without a token: anyone who can reach it can read the config "
                "and reload (set [admin] token, or listen on 127.0.0.1)",
                shown,
                self.address[1],
            )

    def close(self) -> None:
        self.listener.close()
