"""Metrics and access log lines of message stream servers.

A server's ``StreamsStats`` counts calls by outcome (and their durations) as they
end, and reads messages and bytes from the app's own counters when it flushes, so
nothing is counted per message beyond the connection's additions. It is registered
with the worker's ``WorkerMetrics`` (flushed once a second, like the L4 and Thrift
series) only when this process writes metrics.

The access log gets one line per call, buffered by ``CallLog`` and written at most
once a second (or per 64 KiB):
``streams server=NAME peer=IP:PORT id=N outcome=ok replies=1 ms=0.12``.
"""

from __future__ import annotations

from typing import Any

from ..observe._accesslog import LineWriter
from ..observe._conn_metrics import _Counted
from ..observe._metrics import LATENCY_BUCKETS, multiprocess_dir, worker_metrics
from ._server import CallRecord, MessageServerApp


class _Families:
    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.messages = Counter(
            "monolake_stream_messages", "Messages of message stream servers.", ["server", "direction"], registry=None
        )
        self.bytes = Counter(
            "monolake_stream_bytes", "Bytes of message stream servers.", ["server", "direction"], registry=None
        )
        self.calls = Counter(
            "monolake_stream_calls",
            "Message stream calls, by outcome (ok, error, cancelled, aborted).",
            ["server", "outcome"],
            registry=None,
        )
        self.duration = Histogram(
            "monolake_stream_call_duration_seconds",
            "Time from a call's message to its last reply.",
            ["server"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )


_families: _Families | None = None


class StreamsStats:
    """One message stream server's series in this worker."""

    def __init__(self, app: MessageServerApp) -> None:
        self.server = app.name
        self.app = app
        self.outcomes: dict[str, _Counted] = {}
        self._seen = {"messages_in": 0, "messages_out": 0, "bytes_in": 0, "bytes_out": 0}

    def record(self, rec: CallRecord) -> None:
        c = self.outcomes.get(rec.outcome)
        if c is None:
            c = self.outcomes[rec.outcome] = _Counted(LATENCY_BUCKETS)
        c.add(rec.seconds)

    def flush(self, fam: Any) -> None:
        global _families
        if _families is None:
            _families = _Families()
        f = _families
        server = self.server
        hist = f.duration.labels(server)
        for outcome, c in self.outcomes.items():
            if c.count:
                c.fold(f.calls.labels(server, outcome), hist)
        st = self.app.statistics()
        for key, counter, direction in (
            ("messages_in", f.messages, "in"),
            ("messages_out", f.messages, "out"),
            ("bytes_in", f.bytes, "in"),
            ("bytes_out", f.bytes, "out"),
        ):
            n = st[key] - self._seen[key]
            if n > 0:
                counter.labels(server, direction).inc(n)
                self._seen[key] = st[key]


def streams_stats(app: MessageServerApp) -> StreamsStats | None:
    """The server's stats, registered with the worker's metrics; None when metrics are off."""
    if multiprocess_dir() is None:
        return None
    wm = worker_metrics()
    key = ("streams", app.name)
    prev = wm.counted.get(key)
    if isinstance(prev, StreamsStats):
        return prev
    st = StreamsStats(app)
    wm.counted[key] = st
    return st


class CallLog(LineWriter):
    """Access log lines of calls, written to ``fd`` in batches."""

    def __call__(self, rec: CallRecord) -> None:
        self.write(
            f"streams server={rec.server} peer={rec.peer} id={rec.message_id} outcome={rec.outcome} "
            f"replies={rec.replies} ms={rec.seconds * 1000:.3f}"
        )
