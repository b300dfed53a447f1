"""``serve(*apps)``: run a user's own services on the multi-process runtime, from Python.

An app names a listener and a ``Factory`` of its service: ``HttpApp`` for a
``Service[Request, Response]`` (served by the HTTP/1.1 and HTTP/2 drivers, behind
``HandlerGuard``), ``StreamApp`` for a ``Service[Connection, None]`` (one call per
TCP, Unix or TLS connection), ``ProxyApp`` (``_proxy_app.py``) for a reverse-proxy
server as the TOML config has it. ``serve`` runs them exactly as ``monolake run`` runs
the proxy: a supervisor, one pinned worker per core, SO_REUSEPORT listeners, drain
on SIGTERM, reload on SIGHUP, binary upgrade on SIGUSR2.

Reload keeps state: ``ServeBuilder`` is a ``Reloadable`` builder, so on SIGHUP every
worker rebuilds each app's chain with ``Stack.build(old)``, which hands the running
service to ``factory.make(old)``, and the running app object adopts the new chain
(open keep-alive connections use it from their next request). A plain
``AppBuilder`` (a function of the config) cannot do that: the runtime has no old
service to give it, which is why a counter kept by a custom service went back to
its start on reload while the reload's log said "unchanged".

The runtime still takes its listener and runtime settings as a ``Config`` (the TOML
schema's structs); ``serve`` builds one in memory (``servers.NAME`` with the app's
listener and settings, no routes) and reload re-reads that same object. Making the
runtime take its own small settings object instead is left to the re-layering.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from ..core.errors import ConfigError
from ..core.runtime import ConfigSource
from ..core.server._service_app import build_http_app
from ..core.server._stream_app import build_stream_app
from ..core.service import Factory
from ._apps import HttpApp as HttpApp
from ._apps import StreamApp as StreamApp
from ._proxy_app import ProxyApp, proxy_config
from .config import Config, Log, Runtime, Server, parse_listener

if TYPE_CHECKING:
    from ..core.runtime import Prepared, ServerApp
    from .proxy import ProxyBuilder


class CustomApp(Protocol):
    """Any other app ``serve`` runs (``monolake.rpc.ThriftApp``): it gives its server settings
    and builds its runtime app from them (``old``: the running one, on reload)."""

    @property
    def name(self) -> str: ...

    def server_settings(self) -> Server: ...

    def build_app(self, server: Server, old: object) -> ServerApp: ...


AnyApp = HttpApp[Any] | StreamApp[Any] | ProxyApp | CustomApp


def _server_of(app: HttpApp[Any] | StreamApp[Any] | CustomApp) -> Server:
    if not isinstance(app, HttpApp | StreamApp):
        return app.server_settings()
    kind: Literal["http", "tcp"] = "http" if isinstance(app, HttpApp) else "tcp"
    base = app.settings if app.settings is not None else Server(listener=app.listen)
    return msgspec.structs.replace(base, listener=app.listen, proxy_type=kind, tls=app.tls)


def apps_config(
    apps: Sequence[AnyApp],
    *,
    workers: int = 0,
    loop: str = "uvloop",
    drain_timeout: float = 10.0,
    log_level: str = "info",
    pid_file: str | None = None,
    access_log: str = "off",
) -> Config:
    """The in-memory ``Config`` the runtime serves ``apps`` from. Raises ConfigError."""
    servers: dict[str, Server] = {}
    proxies: list[ProxyApp] = []
    names: set[str] = set()
    for i, app in enumerate(apps):
        if isinstance(app, ProxyApp):
            if app.name in names:
                raise ConfigError(f"servers.{app.name}", "two apps have this name")
            names.add(app.name)
            proxies.append(app)
            continue
        if not isinstance(app, HttpApp | StreamApp) and not callable(getattr(app, "build_app", None)):
            raise ConfigError(f"apps[{i}]", f"is a {type(app).__name__}, not an HttpApp, StreamApp or ProxyApp")
        if isinstance(app, HttpApp | StreamApp) and not isinstance(app.factory, Factory):
            raise ConfigError(f"servers.{app.name}.factory", f"{app.factory!r} is not a monolake.Factory")
        if app.name in names:
            raise ConfigError(f"servers.{app.name}", "two apps have this name")
        names.add(app.name)
        servers[app.name] = _server_of(app)
    if not names:
        raise ConfigError("servers", "serve() needs at least one app")
    try:
        runtime = msgspec.convert(
            {"workers": workers, "loop": loop, "drain_timeout": drain_timeout, "pid_file": pid_file}, Runtime
        )
        log = msgspec.convert({"level": log_level, "access_log": access_log}, Log)
    except msgspec.ValidationError as exc:
        raise ConfigError("runtime", str(exc)) from None
    for name, s in servers.items():
        try:
            parse_listener(s.listener)
        except ValueError as exc:
            raise ConfigError(f"servers.{name}.listener", str(exc)) from None
    cfg = Config(runtime=runtime, log=log, servers=servers)
    return proxy_config(proxies, cfg) if proxies else cfg


@dataclass(slots=True)
class _Rebuilt:
    """A reload's apps: the running app objects, each adopting its rebuilt chain at commit;
    ``proxy``: the proxy apps' own prepared reload (``ProxyBuilder.prepare``), if any."""

    apps: Mapping[str, ServerApp]
    adopt: list[tuple[Any, Any]]
    changes: dict[str, str] = field(default_factory=dict)
    proxy: Prepared | None = None

    def commit(self) -> None:
        for prev, new in self.adopt:
            prev.adopt(new)
        if self.proxy is not None:
            self.proxy.commit()

    def abort(self) -> None:
        if self.proxy is not None:
            self.proxy.abort()


class ServeBuilder:
    """The runtime's builder (and ``Reloadable``) for ``serve``'s apps: one app per server
    of the config, found by name; on reload each is rebuilt with ``make(old)``. The
    ``ProxyApp`` servers are built together (they share clusters and a pool) by the
    proxy's ``ProxyBuilder``, which keeps them as they run when nothing changed."""

    def __init__(self, apps: Sequence[AnyApp]) -> None:
        self.apps = {app.name: app for app in apps}
        self.proxied = frozenset(n for n, a in self.apps.items() if isinstance(a, ProxyApp))
        self._proxy: ProxyBuilder | None = None

    def _proxy_builder(self) -> ProxyBuilder:
        if self._proxy is None:  # imported only when a ProxyApp is served
            from .proxy import ProxyBuilder

            self._proxy = ProxyBuilder()
        return self._proxy

    def _proxy_cfg(self, cfg: Config) -> Config | None:
        if not self.proxied:
            return None
        return msgspec.structs.replace(cfg, servers={n: s for n, s in cfg.servers.items() if n in self.proxied})

    def on_message(self, msg: Mapping[str, Any]) -> None:
        """A supervisor broadcast (a discovered endpoint set): the proxy apps' clusters take it."""
        if self._proxy is not None:
            self._proxy.on_message(msg)

    def _build(self, name: str, server: Server, old: object) -> ServerApp:
        spec = self.apps.get(name)
        if spec is None or isinstance(spec, ProxyApp):
            raise ConfigError(f"servers.{name}", "no app of this name was given to serve()")
        try:
            if not isinstance(spec, HttpApp | StreamApp):
                return spec.build_app(server, old)
            if isinstance(spec, HttpApp):
                return build_http_app(name, server, spec.factory, spec.layers, old)
            return build_stream_app(name, server, spec.factory, spec.layers, old)
        except ConfigError as exc:
            raise ConfigError(f"servers.{name}", f"stack: {exc}") from None

    def __call__(self, cfg: Config) -> dict[str, ServerApp]:
        proxy_cfg = self._proxy_cfg(cfg)
        built: dict[str, ServerApp] = dict(self._proxy_builder()(proxy_cfg)) if proxy_cfg is not None else {}
        for name, server in cfg.servers.items():
            if name not in self.proxied:
                built[name] = self._build(name, server, None)
        return {name: built[name] for name in cfg.servers if name in built}

    def prepare(self, cfg: Config, old: Mapping[str, ServerApp]) -> _Rebuilt:
        proxy_cfg = self._proxy_cfg(cfg)
        proxy: Prepared | None = None
        if proxy_cfg is not None:
            proxy = self._proxy_builder().prepare(proxy_cfg, {n: a for n, a in old.items() if n in self.proxied})
        apps: dict[str, ServerApp] = {}
        adopt: list[tuple[Any, Any]] = []
        changes: dict[str, str] = dict(getattr(proxy, "changes", {}))
        try:
            for name, server in cfg.servers.items():
                if name in self.proxied:
                    continue
                prev = old.get(name)
                new = self._build(name, server, prev)
                if prev is not None and type(prev) is type(new):
                    apps[name], changes[name] = prev, "rebuilt"
                    adopt.append((prev, new))
                else:
                    apps[name], changes[name] = new, "replaced" if prev is not None else "added"
        except BaseException:
            if proxy is not None:
                proxy.abort()
            raise
        if proxy is not None:
            apps.update(proxy.apps)
        return _Rebuilt({n: apps[n] for n in cfg.servers if n in apps}, adopt, changes, proxy)


@dataclass(frozen=True, slots=True)
class _InMemory(ConfigSource[Config]):
    """A reload's "config file" for ``serve``: the same in-memory config again."""

    cfg: Config | None = None

    def load(self) -> Config:
        assert self.cfg is not None
        return self.cfg


def serve(
    *apps: AnyApp,
    workers: int = 0,
    loop: Literal["uvloop", "asyncio", "io_uring", "auto"] = "uvloop",
    drain_timeout: float = 10.0,
    log_level: Literal["debug", "info", "warning", "error"] = "info",
    pid_file: str | None = None,
    access_log: str = "off",
) -> int:
    """Serve ``apps`` in ``workers`` processes (0: one per core) until SIGTERM or SIGINT.

    Blocks; returns the exit code (0 after a clean stop). SIGHUP rebuilds every app's
    chain with ``Factory.make(old)`` (state is kept); ``ProxyApp``s keep running as they
    are (their pool, clusters and filter objects). ``access_log``: where ``ProxyApp``s log
    each request ("off", "stdout", "stderr" or a file path; the ``[log]`` table's format).
    Raises ConfigError before anything is bound when an app is invalid (the error names
    ``servers.NAME...``). Call it from the main thread of a process that runs no event
    loop (it forks).
    """
    from ..core.runtime import run
    from ._startup import started

    cfg = apps_config(
        apps,
        workers=workers,
        loop=loop,
        drain_timeout=drain_timeout,
        log_level=log_level,
        pid_file=pid_file,
        access_log=access_log,
    )
    return run(cfg, ServeBuilder(apps), source=_InMemory("", cfg=cfg), operations=started)
