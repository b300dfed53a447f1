"""``tracing``: OpenTelemetry spans for proxied requests, exported over OTLP/HTTP in batches.

Per request: a SERVER span (the incoming W3C ``traceparent``/``tracestate`` is its parent
when there is one) and a CLIENT span for the upstream call, whose context goes upstream
in ``traceparent``/``tracestate``. Sampling is ``sample_ratio`` of the trace ids, and with
``parent_based`` a sampled (or not) incoming parent decides instead. Attributes follow the
HTTP semantic conventions (``http.request.method``, ``url.path``, ``url.query``,
``server.address``, ``client.address``, ``http.response.status_code``; the client span's
``server.address`` is the endpoint), plus ``monolake.route`` (the route's index). The trace id is in the
``TRACE_ID`` slot (the access log's ``$trace_id``).

Spans are queued to the SDK's batch processor, whose thread exports them: a request never
waits for the collector, and an export failure is the SDK's log line, never a failed
request (a full queue drops spans). The provider and its thread are made on the first
request in each worker (building the filter does no I/O: ``monolake check`` runs it).

Needs ``pip install monolake[tracing]`` (opentelemetry-sdk and its OTLP/HTTP exporter).
"""

from __future__ import annotations

import importlib
from typing import Any

import msgspec

from ...core.proto.http1 import Request, Response
from ...core.service import Context, ContextSlot
from ..proxy._filters import HttpFilter
from ._base import ArgError
from ._slots import TRACE_ID

SPANS = ContextSlot("trace_spans", list, "The tracing filter's [server span, client span or None].")

__all__ = ["TRACE_ID", "Tracing", "TracingArgs"]


class TracingArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    """The OTLP/HTTP traces URL of the collector."""
    service_name: str = "monolake"
    """The ``service.name`` resource attribute."""
    sample_ratio: float = 1.0
    """Share of new traces recorded, 0..1."""
    parent_based: bool = True
    """Follow an incoming traceparent's sampled flag instead of the ratio."""
    export_interval: float = 1.0
    """Seconds between batch exports (or sooner when 512 spans are queued)."""
    export_timeout: float = 10.0
    """Seconds one export may take."""
    max_queue: int = 8192
    """Spans queued for export; more are dropped (counted by the SDK)."""
    headers: dict[str, str] = {}
    """Extra HTTP headers of the export requests (an API key...)."""


def _require() -> None:
    for module in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise ArgError(
                "endpoint", "tracing needs pip install monolake[tracing] (opentelemetry-sdk, OTLP/HTTP exporter)"
            ) from None


class Tracing(HttpFilter):
    """OpenTelemetry tracing; see the module docstring."""

    Args = TracingArgs

    def __init__(self, args: TracingArgs) -> None:
        if not 0.0 <= args.sample_ratio <= 1.0:
            raise ArgError("sample_ratio", f"must be between 0 and 1, got {args.sample_ratio}")
        if not args.endpoint.startswith(("http://", "https://")):
            raise ArgError("endpoint", f"expected an http(s):// URL, got {args.endpoint!r}")
        for key in ("export_interval", "export_timeout"):
            if getattr(args, key) <= 0:
                raise ArgError(key, "must be > 0 (seconds)")
        if args.max_queue < 1:
            raise ArgError("max_queue", "must be >= 1")
        _require()
        self.args = args
        self.tracer: Any = None
        self.provider: Any = None

    def _start(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        a = self.args
        ratio = TraceIdRatioBased(a.sample_ratio)
        provider = TracerProvider(
            resource=Resource.create({"service.name": a.service_name}),
            sampler=ParentBased(ratio) if a.parent_based else ratio,
        )
        exporter = OTLPSpanExporter(endpoint=a.endpoint, timeout=a.export_timeout, headers=dict(a.headers))
        provider.add_span_processor(
            BatchSpanProcessor(exporter, max_queue_size=a.max_queue, schedule_delay_millis=a.export_interval * 1000)
        )
        self.provider = provider
        self.tracer = provider.get_tracer("monolake.edge.tracing")
        self.propagator = TraceContextTextMapPropagator()
        self.server_kind = SpanKind.SERVER
        self.client_kind = SpanKind.CLIENT
        self.in_context = set_span_in_context

    def request_filter(self, req: Request, ctx: Context) -> None:
        if self.tracer is None:
            self._start()
        carrier: dict[str, str] = {}
        tp = req.headers.get(b"traceparent")
        if tp is not None:
            carrier["traceparent"] = tp.decode("latin-1")
            ts = req.headers.get(b"tracestate")
            if ts is not None:
                carrier["tracestate"] = ts.decode("latin-1")
        parent = self.propagator.extract(carrier) if carrier else None
        method = req.method.decode("latin-1")
        attrs: dict[str, Any] = {
            "http.request.method": method,
            "url.path": req.path.decode("latin-1"),
            "url.scheme": "http",
            "client.address": ctx.peer,
            "network.protocol.version": req.version.decode("latin-1"),
        }
        if req.query:
            attrs["url.query"] = req.query.decode("latin-1")
        if req.host:
            attrs["server.address"] = req.host.decode("latin-1")
        span = self.tracer.start_span(method, context=parent, kind=self.server_kind, attributes=attrs)
        sc = span.get_span_context()
        if sc.trace_flags.sampled:
            TRACE_ID.set(ctx, f"{sc.trace_id:032x}".encode())
        SPANS.set(ctx, [span, None])
        return None

    def upstream_request_filter(self, req: Request, ctx: Context) -> None:
        spans = SPANS.get(ctx, None)
        if spans is None:
            return
        server = spans[0]
        route = getattr(ctx.route, "name", None)
        if route is not None:
            server.set_attribute("monolake.route", str(route))  # the route's index in the server's list
        method = req.method.decode("latin-1")
        client = self.tracer.start_span(
            method,
            context=self.in_context(server),
            kind=self.client_kind,
            attributes={"http.request.method": method, "url.path": req.path.decode("latin-1")},
        )
        spans[1] = client
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=self.in_context(client))
        headers = req.headers
        for k, v in carrier.items():
            headers.set(k.encode(), v.encode("latin-1"))

    def response_filter(self, resp: Response, ctx: Context) -> None:
        spans = SPANS.get(ctx, None)
        if spans is None or spans[1] is None:
            return
        client = spans[1]
        client.set_attribute("http.response.status_code", resp.status)
        ep = ctx.endpoint
        if ep is not None:
            client.set_attribute("server.address", str(ep))
        if resp.status >= 500:
            from opentelemetry.trace import Status, StatusCode

            client.set_status(Status(StatusCode.ERROR))
        client.end()
        spans[1] = None

    def logging(self, req: Request, resp: Response, ctx: Context) -> None:
        spans = SPANS.get(ctx, None)
        if spans is None:
            return
        server, client = spans
        if client is not None:  # the upstream call failed: no response head came
            from opentelemetry.trace import Status, StatusCode

            client.set_status(Status(StatusCode.ERROR))
            client.end()
        server.set_attribute("http.response.status_code", resp.status)
        if resp.status >= 500:
            from opentelemetry.trace import Status, StatusCode

            server.set_status(Status(StatusCode.ERROR))
        server.end()

    def shutdown(self) -> None:
        """Export what is queued and stop the export thread (tests, a clean exit)."""
        if self.provider is not None:
            self.provider.shutdown()
