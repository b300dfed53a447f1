"""Prometheus metrics, aggregated across worker processes.

The supervisor makes a temporary directory and sets ``PROMETHEUS_MULTIPROC_DIR``
to it before it forks (``prepare_multiprocess``), so every process writes its
values to its own mmapped files there and the admin endpoint (in the supervisor)
merges them with prometheus-client's ``MultiProcessCollector``. A dead worker's
live gauges are dropped with ``mark_process_dead`` (``reap_dead``); its counters
stay, so totals never go backwards when a worker restarts.

Hot path: a request costs one dict lookup and three integer/float additions in
``RequestMetrics.__call__`` (the HTTP server's completion hook). Nothing touches
prometheus-client per request: each worker folds what it counted into the
labelled children once a second (``WorkerMetrics.flush``), which is also when
connection counts, pool sizes, connect errors and endpoint health are sampled.
So the admin endpoint lags the traffic by up to ``FLUSH_INTERVAL``, and counts of
the last second are lost if a worker is killed.

prometheus-client is imported lazily, after the environment variable is set, so
that its value class is the multi-process one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import weakref
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

from ...core.proto.http1 import Request, Response

ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_INTERVAL = 1.0
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Connection durations (seconds) of tcp and thrift servers."""
"""Upper bounds in seconds of ``monolake_request_duration_seconds`` (+Inf is added)."""


def metrics_enabled(cfg: Any) -> bool:
    """Whether ``cfg`` asks for metrics: an ``[admin]`` table or ``[metrics] enabled = true``."""
    return getattr(cfg, "admin", None) is not None or bool(getattr(getattr(cfg, "metrics", None), "enabled", False))


def multiprocess_dir() -> str | None:
    """The directory this process writes its metric files to, or None when metrics are off here."""
    return os.environ.get(ENV) or None


def prepare_multiprocess() -> str:
    """Make a fresh metrics directory and point this process (and the ones it forks) at it."""
    path = tempfile.mkdtemp(prefix="monolake-metrics-")
    os.environ[ENV] = path
    import prometheus_client.values as values

    # In case prometheus-client was imported before the variable was set.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return path


def cleanup_multiprocess(path: str) -> None:
    """Remove the metrics directory made by ``prepare_multiprocess``."""
    if os.environ.get(ENV) == path:
        del os.environ[ENV]
    shutil.rmtree(path, ignore_errors=True)


def reap_dead(path: str) -> None:
    """``mark_process_dead`` for every process with files in ``path`` that no longer exists."""
    from prometheus_client import multiprocess

    pids: set[int] = set()
    with contextlib.suppress(OSError):
        for name in os.listdir(path):
            stem = name.rsplit(".", 1)[0]
            digits = stem.rsplit("_", 1)[-1]
            if digits.isdigit():
                pids.add(int(digits))
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass


def worker_families(path: str) -> list[Any]:
    """The metric families merged from every worker's files in ``path`` (dead workers' reaped first).

    A scrape can meet a worker that is starting (its file created, still empty) or one whose
    files ``reap_dead`` or the supervisor is removing: empty files are skipped, and a file that
    vanishes under the merge makes it list the directory again (prometheus-client's own
    collector raised on both, and the scrape was a 500).
    """
    from prometheus_client.multiprocess import MultiProcessCollector

    reap_dead(path)
    for _ in range(3):
        files = []
        for name in sorted(os.listdir(path)) if os.path.isdir(path) else ():
            if not name.endswith(".db"):
                continue
            full = os.path.join(path, name)
            with contextlib.suppress(OSError):
                if os.path.getsize(full) >= 8:  # the used-bytes header is written
                    files.append(full)
        try:
            return list(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]
        except FileNotFoundError:
            continue
    return []


class _Families:
    """The metric families, made once per process on first use."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "monolake_requests", "Requests answered.", ["server", "route", "status", "upstream"], registry=None
        )
        self.latency = Histogram(
            "monolake_request_duration_seconds",
            "Time from the request head to the last byte of the response.",
            ["server", "route", "upstream"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.connections = Gauge(
            "monolake_active_connections",
            "Open client connections.",
            ["server"],
            multiprocess_mode="livesum",
            registry=None,
        )
        self.in_flight = Gauge(
            "monolake_requests_in_flight",
            "Requests being served.",
            ["server"],
            multiprocess_mode="livesum",
            registry=None,
        )
        self.pool_idle = Gauge(
            "monolake_upstream_pool_idle_connections",
            "Idle upstream connections kept for reuse.",
            multiprocess_mode="livesum",
            registry=None,
        )
        self.connects = Counter("monolake_upstream_connects", "Upstream connections opened.", registry=None)
        self.connect_errors = Counter(
            "monolake_upstream_connect_errors", "Upstream connects that failed.", ["endpoint"], registry=None
        )
        self.healthy = Gauge(
            "monolake_upstream_endpoint_healthy",
            "1 if every worker considers the endpoint healthy (from its health checks), else 0.",
            ["upstream", "endpoint"],
            multiprocess_mode="livemin",
            registry=None,
        )
        self.reloads = Counter("monolake_reloads", "Config reloads by result.", ["result"], registry=None)
        self.endpoints = Gauge(
            "monolake_upstream_endpoints",
            "Endpoints of a cluster by state (healthy, unhealthy, ejected, draining), per worker (pid).",
            ["upstream", "state"],
            multiprocess_mode="liveall",
            registry=None,
        )
        self.cache_lookups = Counter(
            "monolake_cache_lookups",
            "Requests on routes with the cache filter, by result (hit, miss, stale, revalidated).",
            ["result"],
            registry=None,
        )
        self.cache_bytes = Gauge(
            "monolake_cache_bytes", "Bytes the cache filters hold.", multiprocess_mode="livesum", registry=None
        )
        self.cache_entries = Gauge(
            "monolake_cache_entries", "Responses the cache filters hold.", multiprocess_mode="livesum", registry=None
        )
        # L4 and Thrift servers (counted in _conn_metrics.py).

        self.l4_connections = Counter(
            "monolake_l4_connections",
            "L4 client connections ended, by outcome (ok: relayed to the upstream; connect_error).",
            ["server", "upstream", "outcome"],
            registry=None,
        )
        self.l4_duration = Histogram(
            "monolake_l4_connection_duration_seconds",
            "Time from accepting an L4 client connection to the end of its relay.",
            ["server", "upstream"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.l4_bytes = Counter(
            "monolake_l4_bytes",
            "Bytes relayed by ended L4 connections (up: client to upstream, down: upstream to client).",
            ["server", "upstream", "direction"],
            registry=None,
        )
        self.thrift_calls = Counter(
            "monolake_thrift_calls",
            "Thrift calls, by outcome (ok, exception, error, no_route, oneway).",
            ["server", "service", "method", "outcome"],
            registry=None,
        )
        self.thrift_duration = Histogram(
            "monolake_thrift_call_duration_seconds",
            "Time from a Thrift call's frame to its reply (or error) written back.",
            ["server", "service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )


_families: _Families | None = None


def families() -> _Families:
    global _families
    if _families is None:
        _families = _Families()
    return _families


def count_reload(ok: bool) -> None:
    """Count one finished reload (called in the supervisor)."""
    families().reloads.labels("ok" if ok else "failed").inc()


class _Series:
    """What one worker counted for one (server, route, status, upstream) since the last flush."""

    __slots__ = ("buckets", "count", "counter", "hist", "labels", "total")

    def __init__(self, labels: tuple[str, str, str, str]) -> None:
        self.labels = labels
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.counter: Any = None
        self.hist: Any = None

    def flush(self, fam: _Families) -> None:
        if not self.count:
            return
        if self.counter is None:
            server, route, status, upstream = self.labels
            self.counter = fam.requests.labels(server, route, status, upstream)
            self.hist = fam.latency.labels(server, route, upstream)
        self.counter.inc(self.count)
        # A histogram child keeps one value per bucket (non-cumulative) and one for the sum.
        hist = self.hist
        for i, n in enumerate(self.buckets):
            if n:
                hist._buckets[i].inc(n)
                self.buckets[i] = 0
        hist._sum.inc(self.total)
        self.count = 0
        self.total = 0.0


class WorkerMetrics:
    """One per worker process: the series counted there, and what it samples once a second."""

    def __init__(self) -> None:
        self.series: list[_Series] = []
        self.apps: weakref.WeakSet[Any] = weakref.WeakSet()
        self.pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self.clusters: weakref.WeakSet[Any] = weakref.WeakSet()
        self.counted: dict[tuple[str, str], Any] = {}
        """L4 and Thrift servers' stats (``_conn_metrics.py``), by (kind, server)."""
        self._connects: dict[int, int] = {}
        self._errors: dict[tuple[int, str], int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cache: dict[str, int] = {}
        """The cache filters' lookup counts at the last flush."""

    def watch(self, *, apps: Iterable[Any] = (), pools: Iterable[Any] = (), clusters: Iterable[Any] = ()) -> None:
        """Sample these (held weakly) from now on; starts the flush timer if a loop runs."""
        for a in apps:
            self.apps.add(a)
        for p in pools:
            self.pools.add(p)
        for c in clusters:
            self.clusters.add(c)
        self._start()

    def _start(self) -> None:
        if self._timer is not None:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a dry build in the supervisor: nothing to sample
        self._timer = self._loop.call_later(FLUSH_INTERVAL, self._tick)

    def _tick(self) -> None:
        self._timer = None
        try:
            self.flush()
        finally:
            if self._loop is not None and not self._loop.is_closed():
                self._timer = self._loop.call_later(FLUSH_INTERVAL, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def flush(self) -> None:
        """Fold counted requests into the metric files and sample the gauges."""
        fam = families()
        for s in self.series:
            s.flush(fam)
        for st in self.counted.values():
            st.flush(fam)
        by_server: dict[str, list[int]] = {}
        for app in list(self.apps):
            stats = getattr(app, "statistics", None)
            if stats is None:
                continue
            st = stats()
            acc = by_server.setdefault(str(app.name), [0, 0])
            acc[0] += int(st.get("connections", 0))
            acc[1] += int(st.get("in_flight", 0))
        for name, (conns, flight) in by_server.items():
            fam.connections.labels(name).set(conns)
            fam.in_flight.labels(name).set(flight)
        idle = 0
        for pool in list(self.pools):
            idle += int(pool.statistics().get("idle", 0))
            n = int(getattr(pool, "connects", 0))
            last = self._connects.get(id(pool), 0)
            if n > last:
                fam.connects.inc(n - last)
            self._connects[id(pool)] = n
            errors = getattr(pool, "connect_errors", None)
            if isinstance(errors, Mapping):
                for ep, count in errors.items():
                    k = (id(pool), str(ep))
                    prev = self._errors.get(k, 0)
                    if count > prev:
                        fam.connect_errors.labels(str(ep)).inc(count - prev)
                    self._errors[k] = count
        fam.pool_idle.set(idle)
        for cluster in list(self.clusters):
            for ep, healthy in endpoint_health(cluster):
                fam.healthy.labels(str(cluster.name), ep).set(1 if healthy else 0)
            states = getattr(cluster, "endpoint_states", None)
            if states is not None:
                for state, n in states().items():
                    fam.endpoints.labels(str(cluster.name), state).set(n)
        cache = sys.modules.get("monolake.apps.edge.cache")  # loaded only when a config names it
        if cache is not None:
            st = cache.statistics()
            for result in ("hit", "miss", "stale", "revalidated"):
                n = st[result]
                last = self._cache.get(result, 0)
                if n > last:
                    fam.cache_lookups.labels(result).inc(n - last)
                self._cache[result] = n
            fam.cache_bytes.set(st["bytes"])
            fam.cache_entries.set(st["entries"])

    def recorder(self, server: str) -> RequestMetrics:
        return RequestMetrics(server, self)


def endpoint_health(cluster: Any) -> list[tuple[str, bool]]:
    """(endpoint, healthy) pairs from ``cluster.statistics()``; [] if it has none (no health checks yet).

    Accepts ``{"endpoints": {EP: bool | "healthy" | {"healthy": bool}}}`` or a list of
    ``{"endpoint": EP, "healthy": bool}`` (or ``"state"``).
    """
    stats_fn = getattr(cluster, "statistics", None)
    if stats_fn is None:
        return []
    try:
        stats = stats_fn()
    except Exception:
        return []
    eps = stats.get("endpoints") if isinstance(stats, Mapping) else None
    items: list[tuple[Any, Any]] = []
    if isinstance(eps, Mapping):
        items = list(eps.items())
    elif isinstance(eps, list):
        for e in eps:
            if isinstance(e, Mapping):
                items.append((e.get("endpoint") or e.get("address") or e.get("name"), e))
    out: list[tuple[str, bool]] = []
    for ep, state in items:
        if isinstance(state, Mapping):
            state = state.get("healthy", state.get("state"))
        if isinstance(state, str):
            state = state.lower() in ("healthy", "up", "ok", "pass", "true")
        if isinstance(state, bool) and ep is not None:
            out.append((str(ep), state))
    return out


_NO_LABEL = "-"


class RequestMetrics:
    """The completion hook of one HTTP server: counts a request in a cached per-label series."""

    __slots__ = ("_loop", "_owner", "_series", "server")

    def __init__(self, server: str, owner: WorkerMetrics) -> None:
        self.server = server
        self._owner = owner
        self._series: dict[tuple[Any, int, Any], _Series] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, req: Request, resp: Response, sent: int) -> None:
        ctx = req.ctx
        key = (ctx.route, resp.status, ctx.cluster)
        s = self._series.get(key)
        if s is None:
            s = self._new(key)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        dt = loop.time() - ctx.start
        s.count += 1
        s.total += dt
        s.buckets[bisect_left(LATENCY_BUCKETS, dt)] += 1

    def _new(self, key: tuple[Any, int, Any]) -> _Series:
        route, status, cluster = key
        if len(self._series) > 10000:
            self._series.clear()  # routes of many reloads ago; their series stay in the owner's list
        name = getattr(route, "name", None)
        upstream = getattr(cluster, "name", None)
        s = _Series((self.server, _NO_LABEL if name is None else str(name), str(status), upstream or _NO_LABEL))
        for old in self._owner.series:
            if old.labels == s.labels:
                s = old
                break
        else:
            self._owner.series.append(s)
        self._series[key] = s
        if cluster is not None:
            self._owner.clusters.add(cluster)
        self._owner._start()
        return s


_worker: WorkerMetrics | None = None


def worker_metrics() -> WorkerMetrics:
    """This process's ``WorkerMetrics``."""
    global _worker
    if _worker is None:
        _worker = WorkerMetrics()
    return _worker


def _forget_parent() -> None:
    # A forked worker starts with none of its parent's watched objects: the supervisor's
    # dry build leaves clusters alive (in reference cycles) whose never-checked health
    # would otherwise be written over the worker's own under the same labels.
    global _worker
    _worker = None


os.register_at_fork(after_in_child=_forget_parent)


def request_recorder(
    server: str, apps: Iterable[Any] = (), pools: Iterable[Any] = (), clusters: Iterable[Any] = ()
) -> RequestMetrics:
    """The completion hook counting ``server``'s requests (and sample the given objects)."""
    w = worker_metrics()
    w.watch(apps=apps, pools=pools, clusters=clusters)
    return w.recorder(server)


def chain_completion(first: RequestMetrics, then: Any) -> Any:
    """``first`` then ``then`` (another completion hook, or None) as one hook."""
    if then is None:
        return first

    def on_complete(req: Request, resp: Response, sent: int) -> None:
        first(req, resp, sent)
        then(req, resp, sent)

    return on_complete
