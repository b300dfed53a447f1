"""Tracing: spans received by an OTLP/HTTP receiver (decoded with opentelemetry-proto), linked
parent to child across client → proxy (server span → client span) → origin (traceparent)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip(
    "opentelemetry.proto", reason="the OTLP receiver decodes with opentelemetry-proto (a test dependency)"
)

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ._support import EchoOrigin, InProcessProxy, LoopThread, echo

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
PID = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP traces endpoint: POST /v1/traces, protobuf ExportTraceServiceRequest."""

    def __init__(self, lt: LoopThread) -> None:
        self.spans: list[Any] = []
        self.resources: list[Any] = []
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server = lt.run(self._start())
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/traces"
        self.lt = lt

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                req = ExportTraceServiceRequest.FromString(await reader.readexactly(length))
                for rs in req.resource_spans:
                    self.resources.append(rs.resource)
                    for ss in rs.scope_spans:
                        self.spans.extend(ss.spans)
                body = ExportTraceServiceResponse().SerializeToString()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for w in list(self.writers):
                w.close()
            await self.server.wait_closed()

        self.lt.run(stop())


SEEN: set[bytes] = set()


def flaky(
    method: bytes, target: bytes, headers: dict[str, str], body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    """503 for a target's first request, then the echo."""
    if target not in SEEN:
        SEEN.add(target)
        return 503, [], b"try again"
    return echo(method, target, headers, body)


class Env:
    def __init__(self) -> None:
        self.lt = LoopThread()
        self.receiver = Receiver(self.lt)
        self.origin = EchoOrigin(self.lt)
        self.flaky = EchoOrigin(self.lt, flaky)
        up = [{"endpoint": self.origin.url}]
        args = {
            "endpoint": self.receiver.url,
            "export_interval": 0.05,
            "export_timeout": 2.0,
            "service_name": "edge-test",
        }
        rare = {**args, "sample_ratio": 0.0}
        self.proxy = InProcessProxy(
            self.lt,
            {
                "servers": {
                    "web": {
                        "listener": "127.0.0.1:0",
                        "routes": [
                            {"path": "/rare/", "upstreams": up, "filters": [{"use": "tracing", "args": rare}]},
                            {
                                "path": "/down/",
                                "upstreams": [{"endpoint": "http://127.0.0.1:1"}],
                                "filters": [{"use": "tracing", "args": args}],
                            },
                            {
                                "path": "/retry/",
                                "upstreams": [{"endpoint": self.flaky.url}],
                                "retry": {"attempts": 2, "on": ["503"]},
                                "filters": [{"use": "tracing", "args": args}],
                            },
                            {"path": "/", "upstreams": up, "filters": [{"use": "tracing", "args": args}]},
                        ],
                    }
                }
            },
        )

    def close(self) -> None:
        self.proxy.close()
        self.origin.close()
        self.flaky.close()
        self.receiver.close()
        self.lt.close()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.close()


def wait_spans(env: Env, n: int) -> list[Any]:
    deadline = time.monotonic() + 30
    while len(env.receiver.spans) < n:
        assert time.monotonic() < deadline, f"{len(env.receiver.spans)} spans received, {n} expected"
        time.sleep(0.02)
    return list(env.receiver.spans)


def test_spans_linked_across_client_proxy_origin(env: Env) -> None:
    env.receiver.spans.clear()
    with httpx.Client(base_url=env.proxy.url, timeout=30) as c:
        r = c.get("/items?id=7", headers={"traceparent": f"00-{TID}-{PID}-01", "tracestate": "vendor=x"})
    assert r.status_code == 200
    sent = r.json()["headers"]
    spans = wait_spans(env, 2)
    server = next(s for s in spans if s.kind == s.SPAN_KIND_SERVER)
    client = next(s for s in spans if s.kind == s.SPAN_KIND_CLIENT)
    assert server.trace_id.hex() == client.trace_id.hex() == TID
    assert server.parent_span_id.hex() == PID  # the caller's span
    assert client.parent_span_id == server.span_id
    # the origin was told the client span is its parent, and the tracestate went along
    assert sent["traceparent"] == f"00-{TID}-{client.span_id.hex()}-01"
    assert sent["tracestate"] == "vendor=x"
    attrs = {a.key: a.value for a in server.attributes}
    assert attrs["http.request.method"].string_value == "GET"
    assert attrs["url.path"].string_value == "/items" and attrs["url.query"].string_value == "id=7"
    assert attrs["http.response.status_code"].int_value == 200
    assert {a.key: a.value for a in client.attributes}["server.address"].string_value == env.origin.address
    names = {a.key: a.value.string_value for r in env.receiver.resources for a in r.attributes}
    assert names["service.name"] == "edge-test"


def test_new_trace_and_failed_upstream(env: Env) -> None:
    env.receiver.spans.clear()
    with httpx.Client(base_url=env.proxy.url, timeout=30) as c:
        assert c.get("/down/x").status_code == 502
    spans = wait_spans(env, 2)
    server = next(s for s in spans if s.kind == s.SPAN_KIND_SERVER)
    client = next(s for s in spans if s.kind == s.SPAN_KIND_CLIENT)
    assert server.parent_span_id == b"" and client.parent_span_id == server.span_id
    assert client.status.code == client.status.STATUS_CODE_ERROR
    assert server.status.code == server.status.STATUS_CODE_ERROR


def test_sampling_ratio_and_parent_based(env: Env) -> None:
    env.receiver.spans.clear()
    with httpx.Client(base_url=env.proxy.url, timeout=30) as c:
        unsampled = c.get("/rare/a").json()["headers"]
        assert int(unsampled["traceparent"][-2:], 16) & 1 == 0  # propagated, not sampled
        # a sampled parent wins over the 0 ratio (parent_based)
        c.get("/rare/b", headers={"traceparent": f"00-{TID}-{PID}-01"})
    spans = wait_spans(env, 2)
    time.sleep(0.2)  # a batch or two more: nothing else may come
    assert len(env.receiver.spans) == 2
    assert {s.trace_id.hex() for s in spans} == {TID}


def test_client_span_per_retried_try(env: Env) -> None:
    env.receiver.spans.clear()
    env.flaky.requests.clear()
    with httpx.Client(base_url=env.proxy.url, timeout=30) as c:
        r = c.get("/retry/once", headers={"traceparent": f"00-{TID}-{PID}-01"})
    assert r.status_code == 200
    spans = wait_spans(env, 3)
    server = next(s for s in spans if s.kind == s.SPAN_KIND_SERVER)
    clients = sorted((s for s in spans if s.kind == s.SPAN_KIND_CLIENT), key=lambda s: s.start_time_unix_nano)
    assert len(clients) == 2
    first, second = ({a.key: a.value for a in s.attributes} for s in clients)
    assert all(s.parent_span_id == server.span_id and s.trace_id.hex() == TID for s in clients)
    # the failed try: its status, error.type and endpoint; the retry: its resend count, no error
    assert clients[0].status.code == clients[0].status.STATUS_CODE_ERROR
    assert first["http.response.status_code"].int_value == 503 and first["error.type"].string_value == "503"
    assert first["server.address"].string_value == env.flaky.address
    assert clients[1].status.code != clients[1].status.STATUS_CODE_ERROR
    assert second["http.request.resend_count"].int_value == 1 and "error.type" not in second
    assert second["http.response.status_code"].int_value == 200
    assert clients[0].end_time_unix_nano <= clients[1].start_time_unix_nano
    # each try told the origin its own span as the parent
    sent = [h["traceparent"] for _, _, h in env.flaky.requests]
    assert sent == [f"00-{TID}-{s.span_id.hex()}-01" for s in clients]


# -- the encoder and the exporter, without a proxy ----------------------------------------------------


class _Collect:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def add(self, record: Any) -> None:
        self.records.append(record)


def test_the_otlp_encoding_of_a_request_with_a_retry() -> None:
    """Records made by the filter's own phases (a parent from traceparent, a failed try and its
    retry, an error status) encoded by the export thread's encoder, decoded by opentelemetry-proto:
    every field and attribute as the HTTP conventions name them."""
    from monolake.apps.edge.tracing import Tracing, TracingArgs, _Exporter, _on_retry
    from monolake.core.proto.http1 import Headers, Request, Response
    from monolake.core.service import Context

    class Route:
        name = 3

    class Endpoint:
        def __init__(self, text: str) -> None:
            self.text = text

        def __str__(self) -> str:
            return self.text

    t = Tracing(TracingArgs(endpoint="http://127.0.0.1:1/v1/traces"))
    sink = _Collect()
    t._exporter = sink  # type: ignore[assignment]
    headers = Headers([(b"Host", b"api.test:8080"), (b"traceparent", f"00-{TID}-{PID}-01".encode())])
    req = Request(b"POST", b"/items?id=7", headers, host=b"api.test", raw_host=b"api.test:8080")
    ctx = Context("10.1.2.3", "web", 0.0)
    req.ctx = ctx
    ctx.route = Route()
    t.request_filter(req, ctx)
    t.upstream_request_filter(req, ctx)
    first_tp = req.headers.get(b"traceparent")
    _on_retry(req, Endpoint("10.0.0.1:80"), "status 503", Endpoint("10.0.0.2:80"))  # type: ignore[arg-type]
    second_tp = req.headers.get(b"traceparent")
    resp = Response(502, Headers([]))
    ctx.endpoint = Endpoint("10.0.0.2:80")  # type: ignore[assignment]
    t.response_filter(resp, ctx)
    t.logging(req, resp, ctx)
    assert len(sink.records) == 1 and req.headers.get_all(b"traceparent") == [second_tp]
    e = _Exporter.__new__(_Exporter)
    e.args = TracingArgs(service_name="enc")
    msg = ExportTraceServiceRequest.FromString(e._encode(sink.records))
    (rs,) = msg.resource_spans
    assert {a.key: a.value.string_value for a in rs.resource.attributes} == {"service.name": "enc"}
    server, retried, last = rs.scope_spans[0].spans
    assert server.kind == server.SPAN_KIND_SERVER and server.name == "POST"
    assert server.trace_id.hex() == TID and server.parent_span_id.hex() == PID
    assert (
        server.status.code == server.status.STATUS_CODE_ERROR
        and server.end_time_unix_nano >= server.start_time_unix_nano
    )

    def attrs(span: Any) -> dict[str, Any]:
        return {
            a.key: a.value.int_value if a.value.HasField("int_value") else a.value.string_value for a in span.attributes
        }

    assert attrs(server) == {
        "http.request.method": "POST",
        "url.path": "/items",
        "url.query": "id=7",
        "url.scheme": "http",
        "server.address": "api.test",
        "client.address": "10.1.2.3",
        "network.protocol.version": "1.1",
        "http.response.status_code": 502,
        "monolake.route": "3",
    }
    for span in (retried, last):
        assert span.kind == span.SPAN_KIND_CLIENT and span.trace_id.hex() == TID
        assert span.parent_span_id == server.span_id and span.status.code == span.status.STATUS_CODE_ERROR
    assert first_tp == f"00-{TID}-{retried.span_id.hex()}-01".encode()
    assert second_tp == f"00-{TID}-{last.span_id.hex()}-01".encode()
    assert attrs(retried) == {
        "http.request.method": "POST",
        "url.path": "/items",
        "http.response.status_code": 503,
        "server.address": "10.0.0.1:80",
        "error.type": "503",
    }
    assert attrs(last) == {
        "http.request.method": "POST",
        "url.path": "/items",
        "http.response.status_code": 502,
        "server.address": "10.0.0.2:80",
        "http.request.resend_count": 1,
    }


def test_a_collector_that_refuses_is_not_retried_for_every_batch(caplog: pytest.LogCaptureFixture) -> None:
    """After a failed export the thread waits ``export_interval`` before the next try, however many
    full batches come meanwhile: they wait in the queue (bounded), they are not encoded and dropped."""
    import logging
    import socket

    from monolake.apps.edge.tracing import TracingArgs, _Exporter

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = TracingArgs(endpoint=f"http://127.0.0.1:{port}/v1/traces", batch=1, export_interval=60, max_queue=5)
    with caplog.at_level(logging.WARNING, "monolake.edge.tracing"):
        e = _Exporter(args)
        record = [b"0" * 32, b"0" * 16, None, 1, 2, b"GET", {}, False, None, True, None, None]
        e.add(record)  # a full batch: exported at once
        deadline = time.monotonic() + 30
        while "export to" not in caplog.text:
            assert time.monotonic() < deadline, "the export never failed"
            time.sleep(0.01)
    for _ in range(8):
        e.add(list(record))
    time.sleep(0.2)  # a thread that retried at once would have taken them by now
    assert len(e.queue) == 5 and e.dropped == 3 and e.exported == 0


def test_client_address_behind_trusted_proxies() -> None:
    """With ip_rules' CLIENT_ADDR set (its trusted proxies forwarded the request), client.address
    is that client and network.peer.address the connection's peer (the HTTP conventions)."""
    from monolake.apps.edge._slots import CLIENT_ADDR
    from monolake.apps.edge.ip_rules import IpRules, IpRulesArgs
    from monolake.apps.edge.tracing import Tracing, TracingArgs, _Exporter
    from monolake.core.proto.http1 import Headers, Request, Response
    from monolake.core.service import Context

    t = Tracing(TracingArgs(endpoint="http://127.0.0.1:1/v1/traces"))
    sink = _Collect()
    t._exporter = sink  # type: ignore[assignment]
    rules = IpRules(IpRulesArgs(deny=["192.0.2.0/24"], trusted_proxies=["10.0.0.0/8"]))
    req = Request(b"GET", b"/", Headers([(b"X-Forwarded-For", b"198.51.100.7")]))
    ctx = Context("10.0.0.2", "web", 0.0)
    t.request_filter(req, ctx)  # tracing first: the client is read when the request is logged
    assert rules.request_filter(req, ctx) is None and CLIENT_ADDR.get(ctx) == "198.51.100.7"
    resp = Response(200, Headers([]))
    t.logging(req, resp, ctx)
    e = _Exporter.__new__(_Exporter)
    e.args = TracingArgs()
    (span,) = ExportTraceServiceRequest.FromString(e._encode(sink.records)).resource_spans[0].scope_spans[0].spans
    attrs = {a.key: a.value.string_value for a in span.attributes}
    assert attrs["client.address"] == "198.51.100.7" and attrs["network.peer.address"] == "10.0.0.2"
