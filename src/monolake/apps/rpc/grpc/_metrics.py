"""Metrics of a gRPC server's calls: counted per worker, folded into prometheus once a second.

``monolake_grpc_server_calls{server,method,code}`` and
``monolake_grpc_server_call_duration_seconds{server,method}``, counted like the Thrift
ones (``apps/observe/_conn_metrics.py``): a call adds to a plain per-worker series; the
worker's ``WorkerMetrics`` folds the series into the metric files. Method names come from
the routes built at ``make`` (the server counts unknown paths as "-unknown-"), so labels are bounded.
"""

from __future__ import annotations

from typing import Any

from ...observe._conn_metrics import _Counted
from ...observe._metrics import LATENCY_BUCKETS, multiprocess_dir, worker_metrics
from ._status import StatusCode

_families: tuple[Any, Any] | None = None


def _grpc_families() -> tuple[Any, Any]:
    global _families
    if _families is None:
        from prometheus_client import Counter, Histogram

        _families = (
            Counter(
                "monolake_grpc_server_calls",
                "gRPC calls answered by a monolake gRPC server, by method and status code.",
                ["server", "method", "code"],
                registry=None,
            ),
            Histogram(
                "monolake_grpc_server_call_duration_seconds",
                "Time from a gRPC call's headers to its status.",
                ["server", "method"],
                buckets=LATENCY_BUCKETS,
                registry=None,
            ),
        )
    return _families


_CODE_NAMES = {int(c): c.name for c in StatusCode}


class GrpcStats:
    """One gRPC server's calls in this worker, by (method, code)."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.series: dict[tuple[str, int], _Counted] = {}

    def record(self, method: str, code: int, duration: float) -> None:
        c = self.series.get((method, code))
        if c is None:
            c = self.series[(method, code)] = _Counted(LATENCY_BUCKETS)
        c.add(duration)

    def counts(self) -> dict[tuple[str, str], int]:
        """Calls counted since the last flush, by (method, code name): for tests and the admin."""
        return {(m, _CODE_NAMES.get(code, str(code))): c.count for (m, code), c in self.series.items() if c.count}

    def flush(self, fam: Any) -> None:
        calls, duration = _grpc_families()
        for (method, code), c in self.series.items():
            if c.count:
                name = _CODE_NAMES.get(code, str(code))
                c.fold(calls.labels(self.server, method, name), duration.labels(self.server, method))


def grpc_stats(server: str) -> GrpcStats:
    """``server``'s GrpcStats in this worker (the same object across reloads); counted into
    nothing that is read when this process writes no metrics."""
    if multiprocess_dir() is None:
        return GrpcStats(server)
    w = worker_metrics()
    key = ("grpc", server)
    st = w.counted.get(key)
    if st is None:
        st = w.counted[key] = GrpcStats(server)
        w._start()
    assert isinstance(st, GrpcStats)
    return st
