"""Metrics of L4 connections and Thrift calls, counted like the HTTP ones (``_metrics.py``).

An L4 server counts a connection once, when it ends (``L4Stats.closed``): its
outcome, its duration and the bytes it relayed each way, read from the relay's
own counters, so nothing is done per byte or per read. A Thrift server counts a
call when its reply, error or routing verdict is known (``ThriftStats.record``).
Both add to plain per-worker series; ``WorkerMetrics.flush`` folds them into
prometheus-client once a second, as it does for HTTP requests.

Labels are bounded: an L4 series is per (server, upstream), a Thrift one per
(server, service, method), and a server keeps at most ``MAX_METHODS`` distinct
(service, method) pairs (method names come from clients); later ones are counted
under ``method="-other-"``. ``service`` is what routing knew: the multiplexed
"Service:" prefix, or the TTHeader ``isn`` when some route matches on the service;
otherwise "-".

A server's stats object is registered with the worker's ``WorkerMetrics`` only
when this process writes metrics (``multiprocess_dir``); otherwise it counts into
nothing that is ever read, which costs the same few additions.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from ._metrics import DURATION_BUCKETS, LATENCY_BUCKETS, multiprocess_dir, worker_metrics

"""Upper bounds in seconds of ``monolake_l4_connection_duration_seconds`` (+Inf is added)."""
MAX_METHODS = 1000
_NO_LABEL = "-"
_OTHER = "-other-"


class _Counted:
    """Counts of one label set since the last flush, folded into a counter and a histogram."""

    __slots__ = ("bounds", "buckets", "count", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(bounds) + 1)

    def add(self, dt: float) -> None:
        self.count += 1
        self.total += dt
        self.buckets[bisect_left(self.bounds, dt)] += 1

    def fold(self, counter: Any, hist: Any) -> None:
        counter.inc(self.count)
        # A histogram child keeps one value per bucket (non-cumulative) and one for the sum.
        for i, n in enumerate(self.buckets):
            if n:
                if hist is not None:
                    hist._buckets[i].inc(n)
                self.buckets[i] = 0
        if hist is not None:
            hist._sum.inc(self.total)
        self.count = 0
        self.total = 0.0


class _L4Series:
    __slots__ = ("bytes_down", "bytes_up", "outcomes", "upstream")

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.outcomes: dict[str, _Counted] = {}
        self.bytes_up = 0
        self.bytes_down = 0


class L4Stats:
    """One L4 server's connections in this worker, by upstream cluster and outcome."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.series: dict[str, _L4Series] = {}
        self.connect_errors: dict[str, int] = {}

    def closed(self, upstream: str, outcome: str, duration: float, up: int, down: int) -> None:
        """A connection ended: ``outcome`` "ok" (it reached its upstream) or "connect_error"."""
        s = self.series.get(upstream)
        if s is None:
            s = self.series[upstream] = _L4Series(upstream)
        c = s.outcomes.get(outcome)
        if c is None:
            c = s.outcomes[outcome] = _Counted(DURATION_BUCKETS)
        c.add(duration)
        s.bytes_up += up
        s.bytes_down += down

    def connect_failed(self, endpoint: str) -> None:
        self.connect_errors[endpoint] = self.connect_errors.get(endpoint, 0) + 1

    def flush(self, fam: Any) -> None:
        server = self.server
        for s in self.series.values():
            hist = fam.l4_duration.labels(server, s.upstream)
            for outcome, c in s.outcomes.items():
                if c.count:
                    c.fold(fam.l4_connections.labels(server, s.upstream, outcome), hist)
            if s.bytes_up:
                fam.l4_bytes.labels(server, s.upstream, "up").inc(s.bytes_up)
                s.bytes_up = 0
            if s.bytes_down:
                fam.l4_bytes.labels(server, s.upstream, "down").inc(s.bytes_down)
                s.bytes_down = 0
        for ep, n in self.connect_errors.items():
            if n:
                fam.connect_errors.labels(ep).inc(n)
        self.connect_errors.clear()


class ThriftStats:
    """One Thrift server's calls in this worker, by (service, method) and outcome."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.series: dict[tuple[str | None, str, str], _Counted] = {}
        self._names: set[tuple[str | None, str]] = set()

    def record(self, service: str | None, method: str, outcome: str, duration: float) -> None:
        """One call: ``outcome`` is "ok", "exception" (the upstream answered one), "error"
        (connect, timeout or upstream failure: the client got an error from us),
        "no_route" or "oneway" (sent, nothing to wait for)."""
        c = self.series.get((service, method, outcome))
        if c is None:
            c = self._new(service, method, outcome)
        c.add(duration)

    def _new(self, service: str | None, method: str, outcome: str) -> _Counted:
        if (service, method) not in self._names:
            if len(self._names) >= MAX_METHODS:
                return self.series.setdefault((None, _OTHER, outcome), _Counted(LATENCY_BUCKETS))
            self._names.add((service, method))
        c = self.series[(service, method, outcome)] = _Counted(LATENCY_BUCKETS)
        return c

    def flush(self, fam: Any) -> None:
        server = self.server
        for (service, method, outcome), c in self.series.items():
            if c.count:
                svc = _NO_LABEL if service is None else service
                timed = outcome not in ("no_route", "oneway")
                hist = fam.thrift_duration.labels(server, svc, method) if timed else None
                c.fold(fam.thrift_calls.labels(server, svc, method, outcome), hist)


def l4_stats(server: str) -> L4Stats:
    """``server``'s L4Stats in this worker (the same object across reloads)."""
    w = worker_metrics()
    if multiprocess_dir() is None:
        return L4Stats(server)
    key = ("l4", server)
    st = w.counted.get(key)
    if st is None:
        st = w.counted[key] = L4Stats(server)
        w._start()
    assert isinstance(st, L4Stats)
    return st


def thrift_stats(server: str) -> ThriftStats:
    """``server``'s ThriftStats in this worker (the same object across reloads)."""
    w = worker_metrics()
    if multiprocess_dir() is None:
        return ThriftStats(server)
    key = ("thrift", server)
    st = w.counted.get(key)
    if st is None:
        st = w.counted[key] = ThriftStats(server)
        w._start()
    assert isinstance(st, ThriftStats)
    return st
