"""OTLP over gRPC: spans exported through monolake's HTTP/2 client to a grpcio receiver serving
opentelemetry-proto's TraceService; a failing collector never fails a request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import httpx
import pytest

pytest.importorskip("grpc", reason="the OTLP/gRPC receiver is grpcio (a test dependency)")
pytest.importorskip("opentelemetry.proto", reason="the receiver's stubs are opentelemetry-proto's")

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from ._support import EchoOrigin, InProcessProxy, LoopThread
from .test_tracing import PID, TID


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Records the spans of each Export; answers UNAVAILABLE while ``failing``."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.calls = 0
        self.failing = False
        self.metadata: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.calls += 1
            self.metadata.append(dict(context.invocation_metadata()))
            if self.failing:
                context.abort(grpc.StatusCode.UNAVAILABLE, "collector down")
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    self.spans.extend(ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait(self, pred: Any) -> None:
        deadline = time.monotonic() + 30
        while not pred():
            assert time.monotonic() < deadline, f"{self.calls} exports, {len(self.spans)} spans"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Collector, str]]:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    lt = LoopThread()
    origin = EchoOrigin(lt)
    args = {
        "endpoint": f"http://127.0.0.1:{port}",
        "protocol": "grpc",
        "export_interval": 0.05,
        "export_timeout": 5.0,
        "headers": {"x-api-key": "k1"},
    }
    proxy = InProcessProxy(
        lt,
        {
            "servers": {
                "web": {
                    "listener": "127.0.0.1:0",
                    "routes": [
                        {"upstreams": [{"endpoint": origin.url}], "filters": [{"use": "tracing", "args": args}]}
                    ],
                }
            }
        },
    )
    yield collector, proxy.url
    proxy.close()
    origin.close()
    lt.close()
    server.stop(None)


def test_spans_exported_over_grpc(env: Any) -> None:
    collector, url = env
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/g", headers={"traceparent": f"00-{TID}-{PID}-01"}).status_code == 200
    collector.wait(lambda: len(collector.spans) >= 2)
    server = next(s for s in collector.spans if s.kind == s.SPAN_KIND_SERVER)
    client = next(s for s in collector.spans if s.kind == s.SPAN_KIND_CLIENT)
    assert server.trace_id.hex() == TID and server.parent_span_id.hex() == PID
    assert client.parent_span_id == server.span_id
    assert collector.metadata[-1]["x-api-key"] == "k1"


def test_failing_collector_never_fails_requests(env: Any, caplog: pytest.LogCaptureFixture) -> None:
    collector, url = env
    collector.failing = True
    calls = collector.calls
    try:
        with caplog.at_level(logging.WARNING, "monolake.edge.tracing"), httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/while-down").status_code == 200
            collector.wait(lambda: collector.calls > calls)
            deadline = time.monotonic() + 30
            while "export to" not in caplog.text:
                assert time.monotonic() < deadline
                time.sleep(0.02)
    finally:
        collector.failing = False
    assert "grpc-status b'14' collector down" in caplog.text  # UNAVAILABLE, with the collector's message
    with httpx.Client(base_url=url, timeout=30) as c:  # the collector back: exports resume
        assert c.get("/after").status_code == 200

    def paths() -> set[str]:
        return {a.value.string_value for s in collector.spans for a in s.attributes if a.key == "url.path"}

    collector.wait(lambda: "/after" in paths())
    assert "/while-down" not in paths()  # its batch was dropped, not retried
