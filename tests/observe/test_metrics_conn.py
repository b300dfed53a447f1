"""observe._conn_metrics: L4 connections and Thrift calls counted per worker and folded
into the multi-process Prometheus files (in a subprocess, as the workers do)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from monolake.apps.observe import _conn_metrics as cm
from monolake.apps.observe._metrics import worker_metrics

FOLD = textwrap.dedent(
    """
    import asyncio
    from monolake.apps.observe import _metrics as m
    from monolake.apps.observe import _conn_metrics as cm

    path = m.prepare_multiprocess()

    async def work():
        l4 = cm.l4_stats("relay")
        assert cm.l4_stats("relay") is l4  # one per server and worker, across reloads
        l4.closed("db", "ok", 0.5, 100, 2000)
        l4.closed("db", "ok", 20.0, 1, 2)
        l4.closed("db", "connect_error", 0.01, 0, 0)
        l4.connect_failed("127.0.0.1:9")
        th = cm.thrift_stats("rpc")
        th.record("Calc", "add", "ok", 0.002)
        th.record("Calc", "add", "ok", 0.004)
        th.record("Calc", "add", "exception", 0.001)
        th.record(None, "ping", "error", 1.5)
        th.record(None, "nope", "no_route", 0.0)
        w = m.worker_metrics()
        w.flush()
        w.flush()  # nothing new: nothing counted twice
        w.stop()

    asyncio.run(work())
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg, path)
    print(generate_latest(reg).decode())
    m.cleanup_multiprocess(path)
    """
)


def test_l4_and_thrift_series_fold_into_prometheus() -> None:
    out = subprocess.run([sys.executable, "-c", FOLD], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    expected = [
        'monolake_l4_connections_total{outcome="ok",server="relay",upstream="db"} 2.0',
        'monolake_l4_connections_total{outcome="connect_error",server="relay",upstream="db"} 1.0',
        'monolake_l4_bytes_total{direction="up",server="relay",upstream="db"} 101.0',
        'monolake_l4_bytes_total{direction="down",server="relay",upstream="db"} 2002.0',
        'monolake_l4_connection_duration_seconds_count{server="relay",upstream="db"} 3.0',
        'monolake_l4_connection_duration_seconds_bucket{le="1.0",server="relay",upstream="db"} 2.0',
        'monolake_l4_connection_duration_seconds_bucket{le="10.0",server="relay",upstream="db"} 2.0',
        'monolake_l4_connection_duration_seconds_bucket{le="30.0",server="relay",upstream="db"} 3.0',
        'monolake_upstream_connect_errors_total{endpoint="127.0.0.1:9"} 1.0',
        'monolake_thrift_calls_total{method="add",outcome="ok",server="rpc",service="Calc"} 2.0',
        'monolake_thrift_calls_total{method="add",outcome="exception",server="rpc",service="Calc"} 1.0',
        'monolake_thrift_calls_total{method="ping",outcome="error",server="rpc",service="-"} 1.0',
        'monolake_thrift_calls_total{method="nope",outcome="no_route",server="rpc",service="-"} 1.0',
        'monolake_thrift_call_duration_seconds_count{method="add",server="rpc",service="Calc"} 3.0',
        'monolake_thrift_call_duration_seconds_bucket{le="0.0025",method="add",server="rpc",service="Calc"} 2.0',
        'monolake_thrift_call_duration_seconds_count{method="ping",server="rpc",service="-"} 1.0',
    ]
    missing = [line for line in expected if line not in text]
    assert not missing, (missing, text)
    # A call that never reached an upstream has no latency.
    assert 'monolake_thrift_call_duration_seconds_count{method="nope"' not in text


def test_method_names_are_bounded() -> None:
    st = cm.ThriftStats("rpc")
    for i in range(cm.MAX_METHODS + 50):
        st.record("S", f"m{i}", "no_route", 0.0)
    names = {(svc, method) for svc, method, _ in st.series}
    assert len(names) == cm.MAX_METHODS + 1
    assert st.series[(None, "-other-", "no_route")].count == 50


def test_without_a_metrics_directory_nothing_is_registered() -> None:
    before = dict(worker_metrics().counted)
    st = cm.l4_stats("unwatched")
    st.closed("db", "ok", 0.1, 1, 1)
    assert cm.thrift_stats("unwatched") is not cm.thrift_stats("unwatched")
    assert worker_metrics().counted == before
