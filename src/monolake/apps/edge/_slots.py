"""Context slots the edge filters fill and the access log reads (no imports of the proxy here:
``observe`` imports this module)."""

from __future__ import annotations

from ...core.service import ContextSlot

REQUEST_ID = ContextSlot("request_id", bytes, "The request's id (the request_id filter): $request_id.")
UPSTREAM_TIMES = ContextSlot(
    "upstream_times",
    tuple,
    "(loop time the upstream call started, loop time its response head came): $upstream_header_time, "
    "$upstream_response_time. Set only when the access log format uses them.",
)
UPSTREAM_CONNECT_TIME = ContextSlot(
    "upstream_connect_time",
    float,
    "Seconds spent opening the upstream connections this request opened (its tries' summed; unset when it "
    "reused pooled ones; over HTTP/2, its wait for a new connection): $upstream_connect_time. Set only when "
    "the access log format uses it.",
)
TRACE_ID = ContextSlot("trace_id", bytes, "The request's trace id, 32 hex digits (the tracing filter): $trace_id.")
CLIENT_ADDR = ContextSlot(
    "client_addr",
    str,
    "The client's address as ip_rules found it behind its trusted_proxies (nginx's realip): $remote_addr and "
    "rate_limit's ip key. Unset (the peer is the client) when no trusted proxy forwarded the request.",
)
