"""``ProxyApp``: a proxy server given from Python, served by ``serve(...)`` beside the user's own apps.

A ``ProxyApp`` is one ``[servers.NAME]`` table of the TOML config (its routes,
filters, layers, limits) plus the ``[upstreams.NAME]`` clusters its routes name,
with one addition: ``filters`` and ``layers`` entries may be Python objects, not only
``"module:Class"`` strings. Everything else is the TOML path: ``serve`` turns the
apps into the same raw tables and validates them with ``parse_config`` (errors name
``servers.NAME.routes[0].upstreams[0].endpoint`` as ``monolake check`` would), and the
workers build them with the proxy's own ``ProxyBuilder``, which keeps the upstream
pool, the clusters and the filter objects across a reload (SIGHUP).

Python objects reach the builder through a module made in memory,
``monolake.apps._proxy_objects``: each is registered there under a name, and the
server's table names it as ``"monolake.apps._proxy_objects:NAME"``. The builder
imports and instantiates it like any filter, so the shape checks, the key paths in
errors and the per-filter log names (which name the object's own class) are the
same. The module has no source file, so a reload never loads it again (which would
lose the objects); workers are forked, so each gets its own copy.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import msgspec

from ..core.errors import ConfigError
from .config import Cluster, Config, FilterSpec, Route, Server, ServerTls, load_config, parse_config, parse_listener

OBJECTS_MODULE = "monolake.apps._proxy_objects"
_ids = itertools.count(1)


def _objects() -> ModuleType:
    module = sys.modules.get(OBJECTS_MODULE)
    if module is None:
        module = sys.modules[OBJECTS_MODULE] = ModuleType(OBJECTS_MODULE, "Filters and layers given to ProxyApp.")
    return module


def _label(obj: object) -> str:
    target = obj.func if isinstance(obj, functools.partial) else obj
    named = target if isinstance(target, type) or inspect.isroutine(target) else type(target)
    return getattr(named, "__qualname__", type(target).__name__).replace(":", ".")


def _is_factory(obj: object) -> bool:
    """A class, a function, a bound method or a ``functools.partial``: called at each build (in
    every worker). Anything else is the filter or layer itself."""
    return isinstance(obj, type | functools.partial) or inspect.isfunction(obj) or inspect.ismethod(obj)


def _register(obj: object) -> str:
    """The ``use`` string naming ``obj``: its factory, or a function giving the object itself."""
    key = f"{_label(obj)}@{next(_ids)}"
    setattr(_objects(), key, obj if _is_factory(obj) else (lambda: obj))
    return f"{OBJECTS_MODULE}:{key}"


def _spec(entry: object, where: str) -> str | dict[str, Any]:
    """A ``filters``/``layers`` entry as the TOML table has it."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, FilterSpec):
        return msgspec.to_builtins(entry)  # type: ignore[no-any-return]
    if isinstance(entry, Mapping):
        return dict(entry)  # {use, args}: validated as in TOML
    if entry is None:
        raise ConfigError(where, "is None, not a filter or a layer")
    return _register(entry)


def _seq(entries: object, where: str) -> Sequence[object]:
    if isinstance(entries, str | bytes | Mapping) or not isinstance(entries, Sequence):
        raise ConfigError(where, f"expected a list, got {type(entries).__name__}")
    return entries


def _specs(entries: object, where: str) -> list[str | dict[str, Any]]:
    return [_spec(e, f"{where}[{i}]") for i, e in enumerate(_seq(entries, where))]


def _table(value: object, where: str) -> dict[str, Any]:
    """A struct or a mapping as a raw TOML table."""
    if isinstance(value, msgspec.Struct):
        raw = msgspec.to_builtins(value)
        assert isinstance(raw, dict)
        return raw
    if isinstance(value, Mapping):
        return dict(value)
    raise ConfigError(where, f"expected a table (a dict or a monolake.apps.config struct), got {type(value).__name__}")


def _route(value: object, where: str) -> dict[str, Any]:
    raw = _table(value, where)
    for key in ("filters", "layers"):
        if key in raw:
            raw[key] = _specs(raw[key], f"{where}.{key}")
    return raw


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyApp:
    """A reverse-proxy server, as a ``[servers.NAME]`` table is, served by ``monolake.serve``.

    ``listen``: "host:port" or "unix:/path". ``routes``: the route tables, in order
    (dicts with the TOML keys, or ``monolake.apps.config.Route``). ``upstreams``: named
    clusters (``[upstreams.NAME]`` tables) the routes refer to with ``upstream = NAME``;
    apps served together share them (one definition per name). ``filters`` and ``layers``:
    each entry a filter or ``Layer`` object (used as is, a copy per worker), a class, a
    function, a method or a ``functools.partial`` that makes one (called with no arguments
    in every worker's build: an object holding connections or tasks is best made so),
    a ``"module:Class"`` string, a built-in's name (``"cors"``) or a ``{use, args}`` table;
    route tables' ``filters`` and ``layers`` take the same. ``tls``: the listener's
    certificates. ``settings``: any other key of the server table (``request_timeout``,
    ``limits``, ``proxy_type = "tcp"`` with ``upstream``...), as a dict or a
    ``monolake.apps.config.Server``. ``base_dir``: where ``"module:Class"`` entries are
    looked up first (then ``sys.path``); apps served together share one.

    A reload (SIGHUP) keeps the app as it runs (the pool's connections, the clusters'
    balancer and health state, the filter objects); ``"module:Class"`` filters whose
    source changed on disk are imported again, as with ``monolake run``.
    """

    name: str
    listen: str
    routes: Sequence[Mapping[str, Any] | Route] = ()
    filters: Sequence[object] = ()
    layers: Sequence[object] = ()
    upstreams: Mapping[str, Mapping[str, Any] | Cluster] = field(default_factory=dict)
    tls: ServerTls | Mapping[str, Any] | None = None
    settings: Mapping[str, Any] | Server | None = None
    base_dir: str | None = None

    def server_table(self) -> dict[str, Any]:
        """The ``[servers.NAME]`` table, Python objects registered. Raises ConfigError."""
        where = f"servers.{self.name}"
        raw = _table(self.settings, f"{where}.settings") if self.settings is not None else {}
        raw["listener"] = self.listen
        given = {"routes": self.routes, "filters": self.filters, "layers": self.layers, "tls": self.tls}
        for key, value in given.items():
            if value is None or (not value and key != "tls"):
                continue
            if raw.get(key):
                raise ConfigError(f"{where}.{key}", f"given both as ProxyApp({key}=...) and in settings")
            raw[key] = value
        # Entries from ``settings`` too: a dict's route tables may hold Python filter objects.
        for key in ("filters", "layers"):
            if key in raw:
                raw[key] = _specs(raw[key], f"{where}.{key}")
        if "routes" in raw:
            routes = _seq(raw["routes"], f"{where}.routes")
            raw["routes"] = [_route(r, f"{where}.routes[{i}]") for i, r in enumerate(routes)]
        if raw.get("tls") is not None:
            raw["tls"] = _table(raw["tls"], f"{where}.tls")
        for key in ("handler", "rpc_grpc", "rpc_thrift"):
            if raw.get(key) is not None:
                raise ConfigError(f"{where}.{key}", "a ProxyApp proxies; serve your own service with HttpApp")
        return raw


def proxy_config(apps: Sequence[ProxyApp], base: Config) -> Config:
    """``base`` with ``apps`` as servers and their clusters, validated as a TOML file is
    (every error found, each naming its key path). Raises ConfigError."""
    servers: dict[str, Any] = {}
    upstreams: dict[str, Any] = {}
    owner: dict[str, str] = {}
    base_dirs = {os.path.abspath(a.base_dir) for a in apps if a.base_dir is not None}
    if len(base_dirs) > 1:
        raise ConfigError("base_dir", f"apps served together look modules up in one directory, not {sorted(base_dirs)}")
    for app in apps:
        servers[app.name] = app.server_table()
        for cname, cluster in app.upstreams.items():
            table = _table(cluster, f"upstreams.{cname}")
            if cname in upstreams and upstreams[cname] != table:
                raise ConfigError(f"upstreams.{cname}", f"defined differently by {owner[cname]} and {app.name}")
            upstreams[cname], owner[cname] = table, app.name
            if table.get("discovery") is not None:
                raise ConfigError(
                    f"upstreams.{cname}.discovery", "is followed by `monolake run`, not by serve(): list endpoints"
                )
    # File names given from Python are relative to the working directory (``proxy_apps`` has
    # resolved a file's already): base_dir only says where modules are looked up first.
    cfg = parse_config({"servers": servers, "upstreams": upstreams})
    return msgspec.structs.replace(
        base, servers={**base.servers, **cfg.servers}, upstreams=cfg.upstreams, base_dir=next(iter(base_dirs), None)
    )


def proxy_apps(config: str | os.PathLike[str] | Mapping[str, Any] | Config) -> list[ProxyApp]:
    """The servers of a proxy config as ``ProxyApp``s, to ``serve`` beside other apps:
    a TOML file's path, its decoded tables, or a ``Config``. Every server gets the
    config's clusters; a file's directory is where its filter modules are looked up
    first. Its ``[runtime]``, ``[log]``, ``[admin]`` and ``[metrics]`` tables are not
    used (``serve``'s arguments say how to run). Raises ConfigError."""
    if isinstance(config, Config):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = parse_config(dict(config))
    else:
        cfg = load_config(os.fspath(config))
    apps: list[ProxyApp] = []
    for name, server in cfg.servers.items():
        try:
            listen = str(parse_listener(server.listener))
        except ValueError as exc:
            raise ConfigError(f"servers.{name}.listener", str(exc)) from None
        apps.append(ProxyApp(name=name, listen=listen, upstreams=cfg.upstreams, settings=server, base_dir=cfg.base_dir))
    return apps
