"""Build the servers of one worker from a Config.

``build_apps`` resolves clusters, imports filters, assembles each server's Stack
(CatchPanic outermost, then the optional Timeout and ConcurrencyLimit, then the
proxy) and checks the stack's context requirements. It raises ConfigError, naming
the key path, before any socket is bound (the supervisor runs it once as a dry
build). What the apps share (pool, clusters, access log) is ``Shared``: fresh per
call by default; ``ProxyBuilder`` (``_builder.py``, the runtime's builder) passes
one that lives as long as the worker, so a reload keeps it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from ...core.client import Pool
from ...core.errors import ConfigError
from ...core.proto.http1 import Request, Response
from ...core.server import HttpServerApp, error_response
from ...core.server._thrift import ThriftServerApp
from ...core.service import Layer, Stack
from ...core.service.layers import CatchPanicLayer, ConcurrencyLimitLayer, TimeoutLayer
from ...core.tls import ServerTlsContexts
from ..config import Config
from ..edge._shared import set_workers as set_edge_workers
from ..observe import AccessLog, compile_format
from ..observe._metrics import chain_completion, metrics_enabled, request_recorder, worker_metrics
from ._filters import Background, Phases, load_filters, load_layers
from ._handler import build_handler_app
from ._l4_app import AnyApp, ProxyProtocolHttpApp, build_l4_app
from ._proxy import ProxyFactory
from ._thrift_app import build_thrift_app
from ._upstream import UpstreamCluster

SERVER_PROVIDES = ("peer", "server", "start")
"""Context slots the HTTP server driver fills before calling the stack."""


def _panic(req: Any, exc: BaseException) -> Response:
    return error_response(500)


def server_stack(
    name: str,
    cfg: Config,
    filters: list[object],
    clusters: dict[str, UpstreamCluster],
    pool: Pool,
    user_layers: Sequence[Layer[Request, Response]] = (),
    route_extensions: Sequence[tuple[Sequence[object], Sequence[Layer[Request, Response]]]] = (),
) -> Stack[Request, Response]:
    server = cfg.servers[name]
    layers: list[Layer[Request, Response]] = [CatchPanicLayer(_panic)]
    if server.request_timeout is not None:  # bounds the upstream's answer: 504 when it passes
        layers.append(TimeoutLayer(server.request_timeout, gateway=True))
    if server.max_concurrency is not None:
        # A shed request raises Overloaded: the driver answers 503 (gRPC: UNAVAILABLE) and logs.
        layers.append(ConcurrencyLimitLayer(server.max_concurrency))
    layers.extend(user_layers)  # ``servers.NAME.layers``: inside the limits, around the proxy
    leaf = ProxyFactory(name, server, cfg, filters, clusters, pool, route_extensions)
    return Stack(layers, leaf, provided=SERVER_PROVIDES)


def _completion(
    access_log: AccessLog | None, phases: Phases, server: str = ""
) -> Callable[[Request, Response, int], None] | None:
    loggers = phases.logging
    if access_log is None and not loggers:
        return None
    if not loggers:
        return access_log
    mixed = phases.mixed("logging")
    if mixed:  # async loggers run as tasks: the response is already written
        background = Background(server)

        def on_complete_async(req: Request, resp: Response, sent: int) -> None:
            background.run(mixed, req, resp, req.ctx)
            if access_log is not None:
                access_log(req, resp, sent)

        return on_complete_async

    def on_complete(req: Request, resp: Response, sent: int) -> None:
        for f in loggers:
            f(req, resp, req.ctx)
        if access_log is not None:
            access_log(req, resp, sent)

    return on_complete


def _route_logging(
    server_loggers: Callable[[Request, Response, int], None] | None, access_log: AccessLog | None, server: str
) -> Callable[[Request, Response, int], None]:
    """The server's logging filters, the matched route's (``RouteEdge``), then the access log.
    Only servers with a route that has logging filters pay for the lookup."""
    background = Background(server)

    def on_complete(req: Request, resp: Response, sent: int) -> None:
        if server_loggers is not None:
            server_loggers(req, resp, sent)
        edge = getattr(req.ctx.route, "edge", None)
        if edge is not None:
            if edge.logging_mixed:
                background.run(edge.logging_mixed, req, resp, req.ctx)
            else:
                for f in edge.logging:
                    f(req, resp, req.ctx)
        if access_log is not None:
            access_log(req, resp, sent)

    return on_complete


@dataclass(slots=True, kw_only=True)
class Shared:
    """What one worker's apps share; ``ProxyBuilder`` keeps it across rebuilds."""

    pool: Pool
    clusters: dict[str, UpstreamCluster]
    """Named clusters (``[upstreams.NAME]``), all on ``pool``."""
    access_log: AccessLog | None
    modules: Mapping[str, ModuleType] = field(default_factory=dict)
    """Filter modules to use instead of importing them (a reload's new versions)."""


def new_access_log(cfg: Config) -> AccessLog | None:
    """The access log ``cfg.log`` asks for. Raises ConfigError (bad format, file that cannot be opened)."""
    try:
        compile_format(cfg.log.access_log_format)
    except ValueError as exc:
        raise ConfigError("log.access_log_format", str(exc)) from None
    if cfg.log.access_log == "off":
        return None
    try:
        return AccessLog(cfg.log.access_log, cfg.log.access_log_format, cfg.log.format)
    except OSError as exc:
        raise ConfigError("log.access_log", f"cannot open {cfg.log.access_log}: {exc.strerror or exc}") from None


def build_apps(
    cfg: Config, old: dict[str, AnyApp | ThriftServerApp] | None = None, *, shared: Shared | None = None
) -> dict[str, AnyApp | ThriftServerApp]:
    """One app per configured server (HTTP, HTTP behind a PROXY header reader, tcp or thrift). Raises ConfigError."""
    if shared is None:
        pool = Pool()
        clusters = {name: UpstreamCluster.from_config(name, c, pool) for name, c in cfg.upstreams.items()}
        shared = Shared(pool=pool, clusters=clusters, access_log=new_access_log(cfg))
    pool, clusters, access_log = shared.pool, shared.clusters, shared.access_log
    set_edge_workers(cfg.runtime.workers)  # before filters are built: edge limits are divided by it
    apps: dict[str, AnyApp | ThriftServerApp] = {}
    metrics_on = metrics_enabled(cfg)
    for name, server in cfg.servers.items():
        if server.streams is not None:  # a message stream server (apps/streams)
            from ..streams._app import build_streams_app

            streams_app: Any = build_streams_app(
                name,
                server,
                cfg.base_dir,
                old.get(name) if old else None,
                modules=shared.modules,
                access_log_fd=access_log.fd if access_log is not None else None,
            )
            apps[name] = streams_app
            if metrics_on:
                worker_metrics().watch(apps=[apps[name]])
            continue
        if server.rpc_thrift is not None:  # a Thrift service from IDL, answered by the user's handler
            from ..rpc.thrift._config import build_config_app

            rpc_app: Any = build_config_app(
                name,
                server,
                cfg,
                old.get(name) if old else None,
                modules=shared.modules,
                access_log=access_log,
                metrics=metrics_on,
            )
            apps[name] = rpc_app
            if metrics_on:
                worker_metrics().watch(apps=[apps[name]])
            continue
        if server.handler is not None or server.rpc_grpc is not None:  # the user's own service, no proxying
            prev = old.get(name) if old else None
            handler_app = build_handler_app(
                name,
                server,
                cfg,
                prev.inner if isinstance(prev, ProxyProtocolHttpApp) else prev,
                modules=shared.modules,
                on_complete=access_log if server.proxy_type == "http" else None,
                on_close=access_log.flush if access_log is not None else None,
            )
            if isinstance(handler_app, HttpServerApp) and server.proxy_protocol != "off":
                handler_app = ProxyProtocolHttpApp(handler_app)
            apps[name] = handler_app
            if metrics_on:
                worker_metrics().watch(apps=[apps[name]])
            continue
        if server.proxy_type in ("tcp", "thrift"):
            build = build_l4_app if server.proxy_type == "tcp" else build_thrift_app
            kind = server.proxy_type
            where = f"servers.{name}.filters"
            filters = load_filters(server.filters, where, modules=shared.modules, kind=kind, base_dir=cfg.base_dir)
            apps[name] = build(name, server, cfg, filters, clusters)
            if metrics_on:  # open connections (and calls in flight); what ended counts itself
                worker_metrics().watch(apps=[apps[name]])
            continue
        where, base_dir = f"servers.{name}", cfg.base_dir
        filters = load_filters(server.filters, f"{where}.filters", modules=shared.modules, base_dir=base_dir)
        user_layers = load_layers(server.layers, f"{where}.layers", modules=shared.modules, base_dir=base_dir)
        route_extensions = [
            (
                load_filters(r.filters, f"{where}.routes[{i}].filters", modules=shared.modules, base_dir=base_dir),
                load_layers(r.layers, f"{where}.routes[{i}].layers", modules=shared.modules, base_dir=base_dir),
            )
            for i, r in enumerate(server.routes)
        ]
        stack = server_stack(name, cfg, filters, clusters, pool, user_layers, route_extensions)
        try:
            prev = old.get(name) if old else None
            service = stack.build(prev.service if isinstance(prev, HttpServerApp | ProxyProtocolHttpApp) else None)
        except ConfigError as exc:
            raise ConfigError(f"servers.{name}", f"stack: {exc}") from None
        on_complete: Callable[[Request, Response, int], None] | None
        if any(Phases(f).logging for f, _ in route_extensions):
            on_complete = _route_logging(_completion(None, Phases(filters), name), access_log, name)
        else:
            on_complete = _completion(access_log, Phases(filters), name)
        if metrics_on:
            on_complete = chain_completion(request_recorder(name, [], [pool], clusters.values()), on_complete)
        app = HttpServerApp(
            name,
            server,
            service,
            on_complete=on_complete,
            on_close=access_log.flush if access_log is not None else None,
            tls=ServerTlsContexts(f"servers.{name}.tls", server.tls) if server.tls is not None else None,
        )
        if metrics_on:
            worker_metrics().watch(apps=[app])
        apps[name] = ProxyProtocolHttpApp(app) if server.proxy_protocol != "off" else app
    return apps
