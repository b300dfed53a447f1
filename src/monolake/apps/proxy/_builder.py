"""``ProxyBuilder``: the proxy's ``AppBuilder``, which keeps a worker's state across reloads.

One builder object lives as long as its worker process and owns what outlives a
config: the upstream connection ``Pool`` (keyed by endpoint, so a rebuilt route
that names the same endpoint finds its warm connections), the ``UpstreamCluster``
objects of clusters whose config did not change (their balancer state and
in-flight counts), the access log, and the source digest of every filter module.

``prepare(cfg, old)`` (the runtime's ``Reloadable``) changes nothing that serves:

- a server whose config, referenced clusters, log settings and filter modules are
  all unchanged keeps its app object as it is ("unchanged");
- every other server is built anew with ``build_apps`` (``Stack.build`` hands the
  old chain's leaf to ``make(old)``); where the running app can take the new one
  over in place (``adopt``: same app type), the running object stays and adopts at
  commit, so its open connections — keep-alive ones included — use the new chain
  from their next request ("changed"); otherwise the new app replaces it and the
  runtime drains the old one ("replaced");
- a filter module whose source changed on disk is executed again into a *new*
  module object, compiled from the source (not from a possibly stale ``.pyc``),
  and put in ``sys.modules`` only at commit. ``importlib.reload`` would execute it
  into the live module instead: an import error half-way would leave the running
  filters' globals half replaced although the reload aborts. Only the modules
  named in ``filters`` are reloaded, not modules they import.

``commit`` does the adoptions, swaps the builder's state and starts the active
health checks of clusters new to this config (kept clusters keep theirs, removed or
replaced ones stop theirs); ``abort`` closes what prepare opened. A worker's first
build starts every cluster's checks too, so they run from start-up, not from the
first request. A worker started later (a restart after a crash, forked from the
supervisor's older copy of this builder) checks the digests the same way on its
first build, so it never serves a stale filter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import msgspec

from ...core.client import Pool
from ...core.errors import ConfigError
from ..config import Cluster, Config, Server
from ..discovery._record import EndpointRecord, records_from_wire, to_endpoints
from ..observe import AccessLog
from ..observe._metrics import worker_metrics
from ._app import Shared, build_apps, new_access_log
from ._filters import make_importable
from ._upstream import UpstreamCluster


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def _source_of(module: ModuleType) -> str | None:
    path = getattr(module, "__file__", None)
    return path if isinstance(path, str) and path.endswith(".py") else None


def _filter_modules(server: Server) -> list[str]:
    """Modules named by ``filters``, ``layers`` and ``handler`` (reloaded alike)."""
    return [m for m, _ in _filter_module_paths("", server)]


def _filter_module_paths(name: str, server: Server) -> list[tuple[str, str]]:
    """(module, key path) of every user module a server names: its and its routes' ``filters``
    and ``layers`` (built-ins, in ``apps/edge``, are not reloaded), and its ``handler``."""
    out: list[tuple[str, str]] = []
    lists = [(f"servers.{name}.filters", server.filters), (f"servers.{name}.layers", server.layers)]
    for i, r in enumerate(server.routes):
        lists += [(f"servers.{name}.routes[{i}].filters", r.filters), (f"servers.{name}.routes[{i}].layers", r.layers)]
    for where, specs in lists:
        for j, spec in enumerate(specs):
            use = spec if isinstance(spec, str) else spec.use
            if ":" in use:
                out.append((use.partition(":")[0], f"{where}[{j}]"))
    if server.handler is not None:
        out.append((server.handler.partition(":")[0], f"servers.{name}.handler"))
    if server.rpc_grpc is not None:
        out.append((server.rpc_grpc.handler.partition(":")[0], f"servers.{name}.rpc_grpc.handler"))
    if server.rpc_thrift is not None:
        out.append((server.rpc_thrift.handler.partition(":")[0], f"servers.{name}.rpc_thrift.handler"))
    if server.streams is not None:  # a message stream server's handler (generated message modules stay)
        out.append((server.streams.handler.partition(":")[0], f"servers.{name}.streams.handler"))
    return out


def _load_fresh(name: str, path: str, old: ModuleType) -> ModuleType:
    """Execute ``path`` into a new module object named ``name`` (not installed). Raises what it raises."""
    search = old.__spec__.submodule_search_locations if old.__spec__ is not None else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=search)
    if spec is None:
        raise ImportError(f"cannot load {name!r} from {path}")
    module = importlib.util.module_from_spec(spec)
    with open(path, "rb") as fh:
        code = compile(fh.read(), path, "exec", dont_inherit=True)
    # Class bodies (dataclasses, typing) look their module up in sys.modules while it runs.
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    finally:
        sys.modules[name] = old
    return module


def _uses_clusters(server: Server) -> set[str] | None:
    """Cluster names a server refers to; None when not known (compare them all)."""
    if (
        server.handler is not None
        or server.rpc_grpc is not None
        or server.rpc_thrift is not None
        or server.streams is not None
    ):
        return set()
    if server.proxy_type not in ("http", "tcp"):
        return None
    names = {r.upstream for r in server.routes if r.upstream is not None}
    if server.upstream is not None:
        names.add(server.upstream)
    return names


def _start_checks(clusters: Mapping[str, tuple[Cluster, UpstreamCluster]]) -> None:
    """Start the clusters' active health checks now, so an endpoint that is down is found
    before a request is routed to it. Only in a worker, whose loop runs while it builds; a
    build without a loop (the supervisor's dry build, ``check``) starts nothing, and the
    first guarded request starts them instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    for _, u in clusters.values():
        u.start()  # idempotent: a cluster kept across a reload keeps its running checks


class ProxyBuilder:
    """The runtime's AppBuilder and Reloadable for the proxy. One per supervisor; each
    worker works on its own (forked) copy and makes its own pool on first use."""

    def __init__(self) -> None:
        self._pid = 0
        self._pool: Pool | None = None
        self._cfg: Config | None = None
        self._clusters: dict[str, tuple[Cluster, UpstreamCluster]] = {}
        self._access_log: AccessLog | None = None
        self._digests: dict[str, str] = {}
        self._discovered: dict[str, list[EndpointRecord]] = {}
        """The last endpoint set discovery sent for each cluster (``on_message``)."""
        self._preparing: dict[str, tuple[Cluster, UpstreamCluster]] = {}
        """The clusters of a reload between prepare and commit/abort (they get sets too)."""

    def on_message(self, msg: Mapping[str, Any]) -> None:
        """A message the supervisor broadcast to the workers: a cluster's discovered endpoint
        set (``apps.discovery``), applied at once to the running cluster and kept for the
        clusters later reloads build. An empty message forgets the cluster's set. A
        ``cache_purge`` (the admin endpoint's ``POST /cache/purge``) goes to the caches."""
        purge = msg.get("cache_purge")
        if isinstance(purge, str):
            from ..edge.cache import purge_all

            purge_all(purge)
            return
        name = msg.get("cluster")
        if not isinstance(name, str):
            return
        if "records" not in msg:
            self._discovered.pop(name, None)
            return
        records = records_from_wire(msg["records"])
        self._discovered[name] = records
        active, draining = to_endpoints(records)
        done: set[int] = set()
        for found in (self._clusters.get(name), self._preparing.get(name)):
            if found is not None and found[0].discovery is not None and id(found[1]) not in done:
                done.add(id(found[1]))
                found[1].set_endpoints(active, draining)

    @property
    def pool(self) -> Pool:
        """This process's upstream pool (a forked worker makes its own)."""
        if self._pool is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._pool = Pool()
        return self._pool

    def __call__(self, cfg: Config) -> dict[str, Any]:
        """A fresh build (start-up): every server built, changed filter modules installed at once."""
        fresh = self._fresh_modules(cfg)
        self._install(fresh)
        shared, clusters = self._shared(cfg, {}, reuse=False)
        apps = build_apps(cfg, shared=shared)
        if self._access_log is not None and self._access_log is not shared.access_log:
            self._access_log.close()
        self._settle(cfg, clusters, shared.access_log)
        _start_checks(clusters)
        return dict(apps)

    def prepare(self, cfg: Config, old: Mapping[str, Any]) -> PreparedApps:
        """Build ``cfg`` against the running ``old`` apps without touching them. Raises ConfigError."""
        running = self._cfg
        if running is None:
            raise ConfigError("", "the builder has not built a config yet")
        fresh = self._fresh_modules(cfg)
        shared, clusters = self._shared(cfg, {n: m for n, (m, _) in fresh.items()}, reuse=True)
        try:
            keep: dict[str, Any] = {}
            for name, server in cfg.servers.items():
                if name in old and self._unchanged(name, server, cfg, running, fresh):
                    keep[name] = old[name]
            build = msgspec.structs.replace(cfg, servers={n: s for n, s in cfg.servers.items() if n not in keep})
            built = build_apps(build, dict(old), shared=shared) if build.servers else {}
        except BaseException:
            if shared.access_log is not None and shared.access_log is not self._access_log:
                shared.access_log.close()
            raise
        apps: dict[str, Any] = {}
        changes: dict[str, str] = {}
        adopt: list[tuple[Any, Any]] = []
        for name in cfg.servers:
            if name in keep:
                apps[name], changes[name] = keep[name], "unchanged"
                continue
            new, prev = built[name], old.get(name)
            if prev is not None and type(prev) is type(new) and callable(getattr(prev, "adopt", None)):
                apps[name], changes[name] = prev, "changed"
                adopt.append((prev, new))
            else:
                apps[name], changes[name] = new, "replaced" if prev is not None else "added"
        self._preparing = clusters
        return PreparedApps(self, cfg, apps, changes, adopt, fresh, clusters, shared.access_log)

    # -- helpers ------------------------------------------------------------------------

    def _fresh_modules(self, cfg: Config) -> dict[str, tuple[ModuleType, str]]:
        """New versions (and source digests) of the imported filter modules whose source
        changed. Raises ConfigError."""
        out: dict[str, tuple[ModuleType, str]] = {}
        if any(_filter_modules(s) for s in cfg.servers.values()):
            make_importable(cfg.base_dir)  # so a first import's source is found where the build will find it
        for name, server in cfg.servers.items():
            for module_name, where in _filter_module_paths(name, server):
                mod = sys.modules.get(module_name)
                if mod is None:
                    self._first_import(module_name)
                    continue
                path = _source_of(mod)
                if path is None or module_name in out:
                    continue
                digest = _digest(path)
                if digest is None or digest == self._digests.setdefault(module_name, digest):
                    continue
                try:
                    out[module_name] = (_load_fresh(module_name, path, mod), digest)
                except Exception as exc:
                    raise ConfigError(where, f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
        return out

    def _first_import(self, module_name: str) -> None:
        # The build imports it; what it imports is the source as of now (or later, then
        # the next reload loads it again), whether this reload commits or not.
        try:
            spec = importlib.util.find_spec(module_name)
        except Exception:
            return  # the build reports it, with its key path
        origin = spec.origin if spec is not None else None
        if origin is not None and origin.endswith(".py"):
            digest = _digest(origin)
            if digest is not None:
                self._digests[module_name] = digest

    def _install(self, modules: Mapping[str, tuple[ModuleType, str]]) -> None:
        for module_name, (module, digest) in modules.items():
            sys.modules[module_name] = module
            self._digests[module_name] = digest

    def _shared(
        self, cfg: Config, modules: dict[str, ModuleType], *, reuse: bool
    ) -> tuple[Shared, dict[str, tuple[Cluster, UpstreamCluster]]]:
        clusters: dict[str, tuple[Cluster, UpstreamCluster]] = {}
        pool = self.pool
        for cname, c in cfg.upstreams.items():
            prev = self._clusters.get(cname) if reuse else None
            if prev is None or prev[0] != c:
                prev = (c, UpstreamCluster.from_config(cname, c, pool))
                found = self._discovered.get(cname) if c.discovery is not None else None
                if found is not None:
                    prev[1].set_endpoints(*to_endpoints(found))
            clusters[cname] = prev
        same_log = reuse and self._cfg is not None and self._cfg.log == cfg.log
        access_log = self._access_log if same_log else new_access_log(cfg)
        shared = Shared(
            pool=pool, clusters={n: u for n, (_, u) in clusters.items()}, access_log=access_log, modules=modules
        )
        return shared, clusters

    def _unchanged(self, name: str, server: Server, cfg: Config, running: Config, fresh: Mapping[str, Any]) -> bool:
        if running.servers.get(name) != server or running.log != cfg.log:
            return False
        uses = _uses_clusters(server)
        if uses is None:
            if running.upstreams != cfg.upstreams:
                return False
        elif any(running.upstreams.get(c) != cfg.upstreams.get(c) for c in uses):
            return False
        return not any(m in fresh for m in _filter_modules(server))

    def _settle(
        self, cfg: Config, clusters: dict[str, tuple[Cluster, UpstreamCluster]], access_log: AccessLog | None
    ) -> None:
        self._cfg = cfg
        self._clusters = clusters
        self._access_log = access_log


class PreparedApps:
    """A reload's apps, ready to commit (the runtime's ``Prepared``)."""

    def __init__(
        self,
        builder: ProxyBuilder,
        cfg: Config,
        apps: dict[str, Any],
        changes: dict[str, str],
        adopt: list[tuple[Any, Any]],
        modules: dict[str, tuple[ModuleType, str]],
        clusters: dict[str, tuple[Cluster, UpstreamCluster]],
        access_log: AccessLog | None,
    ) -> None:
        self.builder = builder
        self.cfg = cfg
        self.apps = apps
        self.changes = changes
        self._adopt = adopt
        self._modules = modules
        self._clusters = clusters
        self._access_log = access_log

    def commit(self) -> None:
        b = self.builder
        b._install(self._modules)
        for prev, new in self._adopt:
            prev.adopt(new)
        old_log = b._access_log
        kept = {id(u) for _, u in self._clusters.values()}
        watched = worker_metrics().clusters
        for _, u in b._clusters.values():
            if id(u) not in kept:
                # A replaced or removed cluster: stop its health checks and ejection timers.
                # Requests still in flight on the old chain finish through it.
                u.close()
                watched.discard(u)  # its last health must not be sampled over its successor's
        b._settle(self.cfg, self._clusters, self._access_log)
        b._preparing = {}
        _start_checks(self._clusters)  # new clusters' checks; kept ones' keep running
        if old_log is not None and old_log is not self._access_log:
            # Requests still in flight log through their app's current on_complete: the new log.
            with contextlib.suppress(OSError):
                old_log.close()

    def abort(self) -> None:
        self.builder._preparing = {}
        if self._access_log is not None and self._access_log is not self.builder._access_log:
            self._access_log.close()
