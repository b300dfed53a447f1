"""The configuration schema.

msgspec Structs with ``forbid_unknown_fields``: an unknown or misspelt key is an
error, never silently ignored (the seed project lost its timeouts that way). The
shape follows the seed project's TOML (``[runtime]``, ``[servers.NAME]`` with
``listener``, ``proxy_type``, ``routes``, ``upstreams``), plus clusters declared once
under ``[upstreams.NAME]`` and referred to by name from routes.

Semantic checks that a schema cannot express (references, regexes, addresses)
live in ``_load.py`` and report the same key paths.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ...core.tls_settings import Certificate as Certificate
from ...core.tls_settings import ServerTls as ServerTls
from ...core.tls_settings import TlsVersion as TlsVersion
from ...core.tls_settings import UpstreamTls as UpstreamTls

LoopKind = Literal["uvloop", "asyncio", "io_uring", "auto"]
RetryOn = Literal["connect_failure", "reset", "502", "503", "504", "timeout"]
BalancerKind = Literal["round_robin", "weighted_round_robin", "random", "least_request", "consistent_hash"]


class Runtime(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    workers: int = 0
    """Worker processes; 0 means one per CPU core."""
    loop: LoopKind = "uvloop"
    """"io_uring" falls back to uvloop with a logged warning where the kernel forbids it; "auto" is the same."""
    uring_entries: Annotated[int, msgspec.Meta(ge=2, le=32768)] = 256
    """io_uring submission queue size (the completion queue is four times larger)."""
    sqpoll_idle_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    """io_uring SQPOLL: a kernel thread polls submissions, idling after this many ms; 0 is off."""
    cpu_affinity: bool | None = None
    """Pin worker i to core i. None: on when workers <= cores (Linux only)."""
    drain_timeout: float = 10.0
    """Seconds a stopping worker waits for in-flight requests."""
    pid_file: str | None = None
    """Where the supervisor writes its pid once it serves (``monolake reload``/``upgrade`` read it)."""
    watch_config: bool = False
    """Reload when the config file changes (inotify; Linux)."""
    max_open_files: Annotated[int, msgspec.Meta(ge=64)] | None = None
    """Each worker's soft limit of open files (RLIMIT_NOFILE); None: the hard limit. Above the hard limit
    it raises that too where allowed (root), else it is a config error. A start-up warning says when it is
    low for the servers' backlog/max_concurrency (see README, "File descriptors"). Needs a restart."""
    trim_interval: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    """Seconds between checks of a worker's heap: once many objects were freed (e.g. a surge of connections
    closed), glibc's ``malloc_trim`` gives the free pages back to the system. 0 turns it off."""


class Log(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: str = "off"
    """"off", "stdout", "stderr" or a file path."""
    access_log_format: str = (
        '$remote_addr "$request" $status $body_bytes_sent $request_time "$upstream_addr" $server $route'
    )
    format: Literal["text", "json"] = "text"
    """"json": the error log and the access log write one JSON object per line (the access log's keys
    are the variables ``access_log_format`` names). "text": as today; either way every value that a
    client or an upstream controls is escaped (nginx's ``escape=default``: ``"``, ``\\`` and bytes
    outside printable ASCII as ``\\xHH``; JSON escaping in "json")."""


class ListenerSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    type: Literal["socket", "unix"] = "socket"
    value: str = ""


class EndpointSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    type: Literal["uri", "socket", "unix"] = "uri"
    value: str = ""


class UpstreamSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    endpoint: str | EndpointSpec
    """"http://host:port", "host:port", "unix:/path", or the seed's {type, value} table."""
    weight: int = 1


class HealthCheck(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Active health checks of every endpoint of a cluster (each worker checks on its own)."""

    type: Literal["http", "tcp"] = "http"
    """"http": GET ``path`` and expect ``expected_status``; "tcp": a connect is enough."""
    path: str = "/"
    expected_status: list[int] = msgspec.field(default_factory=lambda: [200])
    host: str | None = None
    """Host header of the check; default the endpoint's host:port."""
    interval: float = 5.0
    timeout: float = 2.0
    healthy_threshold: int = 2
    """Consecutive passes that make an unhealthy endpoint healthy again."""
    unhealthy_threshold: int = 3
    """Consecutive failures that take an endpoint out of rotation."""


class OutlierDetection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Passive ejection: endpoints that keep failing real requests leave rotation for a while."""

    consecutive_5xx: int = 5
    """5xx responses (and failed exchanges) in a row that eject an endpoint; 0 disables."""
    consecutive_connect_failures: int = 3
    """Failed connects in a row that eject an endpoint; 0 disables."""
    base_ejection_time: float = 30.0
    """First ejection; the n-th in a row lasts n times as long, up to ``max_ejection_time``."""
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 50
    """Never eject more than this share of the cluster's endpoints (at least one may always be ejected)."""


class CircuitBreaker(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Per-worker limits of a cluster; a request over one is answered 503 at once."""

    max_connections: int | None = None
    """Open upstream connections to the cluster's endpoints."""
    max_pending: int | None = None
    """Requests waiting for a new connection."""
    max_requests: int | None = None
    """Requests in flight to the cluster."""


class Retry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Retries of a route's requests on another endpoint."""

    attempts: int = 2
    """Retries after the first try (so at most attempts + 1 tries)."""
    on: list[RetryOn] = msgspec.field(default_factory=lambda: ["connect_failure", "reset", "502", "503", "504"])
    """What a try may fail with to be retried; "reset": the upstream closed or reset the connection."""
    per_try_timeout: float | None = None
    """Seconds each try may wait for the response head; a try that exceeds it counts as "timeout"."""
    budget_percent: float = 20.0
    """Retries in flight may be at most this share of the route's requests in flight ..."""
    min_retry_concurrency: int = 3
    """... or this many, whichever is larger."""


class Discovery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Where a cluster's endpoints come from at run time (``[upstreams.NAME.discovery]``). The
    supervisor runs one source per cluster and sends every change to the workers, which rebuild
    the cluster's balancer without a reload. Endpoint records are JSON objects
    ``{"address": "10.0.0.5:8080", "weight": 1, "zone": "a", "tags": ["canary"], "draining": false}``
    (only ``address`` is required)."""

    kind: Literal["static", "dns", "file", "etcd", "admin", "custom"]
    """"static": the cluster's ``endpoints``; "dns": A/AAAA or SRV records of ``name``; "file": the
    records in ``path``; "etcd": the records under the key ``prefix``; "admin": what the admin
    endpoint's ``PUT``/``DELETE /upstreams/NAME/endpoints/ADDRESS`` set, starting from ``endpoints``.
    The admin endpoint changes the set of every kind (until the source's next update). "custom": your
    own ``EndpointSource`` named by ``source``."""
    name: str = ""
    """dns: the name to resolve."""
    record: Literal["A", "AAAA", "A+AAAA", "SRV"] = "A+AAAA"
    """dns: "A", "AAAA", both ("A+AAAA": every address of either family), or "SRV" (targets with
    their ports and weights; the targets' addresses are resolved too)."""
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    """dns (A/AAAA): the endpoints' port."""
    scheme: Literal["http", "https"] = "http"
    """dns: the endpoints' scheme."""
    nameservers: list[str] = []
    """dns: "ip" or "ip:port" of the resolvers to ask; empty: the system's (/etc/resolv.conf)."""
    min_interval: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    """dns: seconds; a record's TTL shorter than this is re-resolved only this often. After a failed
    resolution (the last good set is kept) the next try is this much later."""
    max_interval: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    """dns: seconds; a record's TTL longer than this is re-resolved this often anyway."""
    path: str = ""
    """file: a JSON file (a list of records, or ``{"endpoints": [...]}``) or a ``.toml`` file
    (``[[endpoints]]`` tables), watched with inotify; relative to the config file."""
    endpoints: list[str] = []
    """etcd: the members' URLs, "http://127.0.0.1:2379" (https:// with ``tls``); the watch moves to
    the next one when one fails and resumes from the last revision it saw."""
    prefix: str = ""
    """etcd: the key prefix whose values are endpoint records (one key per endpoint)."""
    username: str | None = None
    """etcd: user for etcd's authentication (with ``password``)."""
    password: str | None = None
    tls: UpstreamTls | None = None
    """etcd: TLS to the members (CA, client certificate for etcd's client-certificate auth)."""
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """dns, etcd: seconds one query or connect may take."""
    source: str = ""
    """custom: "module:Class", a ``monolake.apps.discovery.EndpointSource`` subclass; the supervisor
    makes one per cluster as ``Class(cluster_name, **args)``."""
    args: dict[str, Any] = {}
    """custom: the keyword arguments of ``source``."""


class Cluster(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    endpoints: list[UpstreamSpec] = []
    """The endpoints; with a ``discovery`` of kind dns, file or etcd they may be left out."""
    load_balancer: BalancerKind = "round_robin"
    hash_on: str = "client_ip"
    """For consistent_hash: "client_ip", "header:NAME" or "cookie:NAME"."""
    hash_algorithm: Literal["ring", "maglev"] = "ring"
    connect_timeout: float = 3.0
    read_timeout: float = 60.0
    idle_timeout: float = 60.0
    max_idle_per_key: int = 64
    send_proxy_protocol: Literal["off", "v1", "v2"] = "off"
    """Open every upstream connection with a PROXY header naming the client (tcp servers only)."""
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection | None = None
    circuit_breaker: CircuitBreaker | None = None
    tls: UpstreamTls | None = None
    """Speak TLS to the endpoints (``https://`` endpoints use the defaults without this table)."""
    protocol: Literal["http1", "h2c", "h2"] = "http1"
    """HTTP to the endpoints: "http1"; "h2c" (HTTP/2 in cleartext, by prior knowledge); "h2" (HTTP/2
    over TLS, which must pick it by ALPN). HTTP/2 multiplexes the requests of a worker on one
    connection per endpoint (more only when the endpoint's stream limit is reached)."""
    discovery: Discovery | None = None
    """Endpoints that change at run time; absent: ``endpoints`` as written (a reload changes them)."""


class HeaderRewrite(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    add: dict[str, str] = {}
    """Appended (an existing header of the same name stays)."""
    set: dict[str, str] = {}
    """Replaces every existing header of that name."""
    remove: list[str] = []


class Connect(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """CONNECT tunnelling on a route (forward-proxy use): the proxy connects to the request's host:port."""

    ports: list[int] = msgspec.field(default_factory=lambda: [443])
    """Target ports a CONNECT may reach; any other is answered 403."""
    connect_timeout: float = 10.0
    """Seconds to connect to the target; a failed or late connect is answered 502."""


class Gateway(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """An HTTP route answered by calling a Thrift service (the route's upstream) from an annotated IDL."""

    idl: str
    """Thrift IDL file with CloudWeGo-style ``api.*`` annotations; relative to the config file."""
    service: str
    """The IDL service whose methods become HTTP endpoints."""
    transport: Literal["framed", "ttheader", "theader"] = "framed"
    protocol: Literal["binary", "compact"] = "binary"


class Route(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    host: str | None = None
    """Exact host or "*.suffix"; matched case-insensitively without the port."""
    path: str | None = None
    """Path prefix (the default "/" when no other path matcher is given)."""
    path_exact: str | None = None
    path_regex: str | None = None
    methods: list[str] | None = None
    headers: dict[str, str] | None = None
    """Header name -> exact value that must be present."""

    upstream: str | None = None
    """Name of a cluster under [upstreams]."""
    upstreams: list[UpstreamSpec] | None = None
    """Inline endpoints (seed-project style); the cluster settings below apply to them."""
    load_balancer: BalancerKind = "round_robin"
    hash_on: str = "client_ip"
    hash_algorithm: Literal["ring", "maglev"] = "ring"
    protocol: Literal["http1", "h2c", "h2"] = "http1"
    """HTTP to the inline ``upstreams``, as a cluster's ``protocol``."""

    strip_prefix: bool = False
    """Remove the matched ``path`` prefix before forwarding."""
    prefix_rewrite: str | None = None
    """Replace the matched ``path`` prefix with this."""
    host_header: str = "keep"
    """"keep" (client's Host), "upstream" (endpoint host:port) or a literal value."""
    request_headers: HeaderRewrite = HeaderRewrite()
    response_headers: HeaderRewrite = HeaderRewrite()
    timeout: float | None = None
    """Whole-request deadline (504 when exceeded; a TApplicationException on thrift servers)."""
    retry: Retry | None = None
    """Retry failed tries on another endpoint (http servers)."""

    # -- thrift servers -------------------------------------------------------------------
    thrift_method: str | list[str] | None = None
    """Method name(s) this route takes (exact; without a multiplexed "Service:" prefix)."""
    thrift_service: str | list[str] | None = None
    """IDL service name(s): the TTHeader ``isn`` key, or the "Service:" prefix of a multiplexed call."""

    # -- http servers ---------------------------------------------------------------------
    gateway: Gateway | None = None
    """Answer from a Thrift service instead of proxying HTTP (the route's upstream speaks Thrift)."""
    connect: bool | Connect = False
    """Tunnel CONNECT requests matched here (true, or a table of settings); off: they are answered 405.
    CONNECT requests match routes as path "/" with the target's host. A route with it needs no upstream."""
    filters: list[str | FilterSpec] = []
    """Filters for requests matched to this route (http servers): "module:Class", a built-in's name
    ("cors", see docs/edge.md) or a {use, args} table. Each phase runs them after the server's filters
    of that phase; their request_filter runs after routing."""
    layers: list[str | FilterSpec] = []
    """Layers around this route's upstream call (http servers), outermost first, inside the server's."""


class FilterSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    use: str
    """"module:Class" importable from the worker, or a built-in's name ("cors", see docs/edge.md)."""
    args: dict[str, str | int | float | bool | list[Any] | dict[str, Any]] = {}
    """Keyword arguments of the class; a built-in's settings."""


class Forwarded(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    x_forwarded_for: bool = True
    x_forwarded_proto: bool = True
    x_forwarded_host: bool = True
    forwarded: bool = False
    """RFC 7239 Forwarded header."""


class Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    max_header_bytes: int = 32768
    """Request line plus headers; more is answered 431."""
    max_headers: int = 100
    max_body_bytes: int = 100 * 1024 * 1024
    """Larger bodies are answered 413; 0 means unlimited."""
    max_pipelined: int = 32
    """Queued pipelined requests before the connection stops reading."""
    max_request_line_bytes: int = 8192
    """Request line (method, target, version); a longer one is answered 414 (nginx's
    large_client_header_buffers: 8 KiB). It also counts toward ``max_header_bytes``."""


class Http2(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """HTTP/2 on an HTTP server: h2c by prior knowledge (the client preface) on a cleartext listener,
    "h2" by ALPN on a TLS one (list it in ``tls.alpn``)."""

    enabled: bool = True
    max_concurrent_streams: int = 128
    """Streams a client may have open at once; more are refused (RST_STREAM REFUSED_STREAM)."""
    initial_window_size: int = 262144
    """Per-stream receive window: request body bytes a client may send ahead of the upstream reading them."""
    max_frame_size: int = 16384
    max_header_list_size: int = 65536
    """Decoded request header list size (RFC 9113 §6.5.2); larger header blocks are refused."""
    max_resets_per_10s: int = 500
    """Stream resets (by the client, or refusals) within 10 s before the connection is closed with
    GOAWAY ENHANCE_YOUR_CALM (the "rapid reset" attack, CVE-2023-44487)."""
    max_buffered_bytes: int = 4194304
    """Response bytes one connection may hold for streams waiting on the client's flow-control window.
    Each stream pauses its upstream once it holds its share (this / max_concurrent_streams, at least
    16 KiB, at most 256 KiB), or after one more upstream read while the connection is over this."""
    max_worker_buffered_bytes: int = 268435456
    """The same for all HTTP/2 connections of a worker together, as a hard limit: over it, a stream whose
    response bytes would wait for the client's window is reset (RST_STREAM CANCEL), its upstream closed.
    A stalled stream holds its share plus one upstream read (~70-110 KiB with the defaults), so this is a
    safety net for a few thousand stalled streams, not a budget that slow but honest clients reach."""
    send_timeout: float = 60.0
    """Seconds a stream's queued response bytes may wait without the client's window letting any out;
    then the stream is reset (RST_STREAM CANCEL) and its upstream connection closed."""


class RpcGrpc(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """``[servers.NAME.rpc_grpc]``: serve gRPC services written in Python from ``.proto`` files
    (``monolake.apps.rpc.grpc``), on an http server without routes or upstream."""

    protos: list[str]
    """``.proto`` files (relative to the config file), compiled once with protoc (grpcio-tools)."""
    import_paths: list[str] = []
    """Directories their imports are found in (relative to the config file); a file's own directory
    is searched too."""
    handler: str
    """"module:attr": the servicer (a class, instantiated per worker, or an instance), or a dict of
    full service name to servicer. Looked up beside the config file first; reloaded like a handler's."""
    health: bool = True
    """Serve grpc.health.v1.Health (every service SERVING)."""
    reflection: bool = True
    """Serve server reflection (grpc.reflection.v1 and v1alpha), for grpcurl-style tools."""
    max_receive_message_bytes: int = 4 * 1024 * 1024
    """Largest request message in bytes (RESOURCE_EXHAUSTED past it)."""
    max_send_message_bytes: int = 2**31 - 1
    """Largest response message in bytes (RESOURCE_EXHAUSTED past it)."""
    compression: Literal["off", "gzip"] = "off"
    """"gzip": compress response messages for clients that accept it (requests are always accepted)."""
    log_calls: bool = False
    """Log one line per call (method, status code, seconds) to the ``monolake.grpc.access`` logger."""
    tracing: dict[str, str | int | float | bool | dict[str, Any]] | None = None
    """OpenTelemetry spans: a SERVER span per call, its parent the caller's ``traceparent`` metadata;
    the keys are the ``tracing`` filter's (``endpoint``, ``protocol``, ``sample_ratio``...; see
    docs/edge.md). Absent: no tracing."""


class RpcThrift(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A Thrift RPC service answered by your own handler (``proxy_type = "thrift"``, no routes)."""

    idl: str
    """Path of the ``.thrift`` file (relative to the config file's directory), loaded with thriftpy2."""
    handler: str
    """"module:attr": a class (instantiated without arguments; a reload keeps the instance while the class is
    the same), or an object, with a method per IDL method (``async def``, or ``def`` for CPU-only work)."""
    service: str | None = None
    """The IDL's service to serve; may be left out when the IDL defines one service."""
    include_dirs: list[str] = []
    """Directories (relative to the config file's) searched for the IDL's includes."""
    tracing: dict[str, str | int | float | bool | dict[str, Any]] | None = None
    """OpenTelemetry spans: a SERVER span per call, its parent the caller's TTHeader
    ``RPC_TRANSIT_traceparent``; the keys are the ``tracing`` filter's (see docs/edge.md). Absent: none."""


class Streams(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A message stream server (``monolake.streams``): framed messages in, a handler called per message."""

    codec: Literal["protobuf", "msgpack", "bytes"] = "protobuf"
    """"protobuf": varint length-delimited (protosocket-prost's wire); "msgpack": a msgpack uint32 length, then
    msgpack (protosocket-messagepack's); "bytes": a 4-byte big-endian length, then the bytes."""
    message: str | None = None
    """"module:Class" of the messages received (a protobuf message class, a msgspec Struct); required for
    "protobuf", optional for "msgpack" (any msgpack value), unused for "bytes"."""
    response: str | None = None
    """"module:Class" of the replies; needed with ``rpc`` (cancel and end messages are made of it)."""
    handler: str
    """"module:attr": the handler, called per message (a Factory, Stack, Service class or callable, as a
    server's ``handler``); it returns a reply, an async iterable of replies (a stream), or None."""
    rpc: bool = False
    """protosocket-rpc's envelope: the messages' ``id_field``/``code_field`` carry a call id and a control code
    (0 normal, 1 cancel, 2 end); replies get their call's id, cancels abort the call, streams end with an end."""
    id_field: str = "request_id"
    """Attribute of ``message`` and ``response`` holding the call id (with ``rpc``)."""
    code_field: str = "code"
    """Attribute of ``message`` and ``response`` holding the control code (with ``rpc``)."""
    semantics: Literal["ordered", "concurrent"] = "concurrent"
    """"ordered": a connection's messages are handled one at a time, replies in order; "concurrent": up to
    ``max_in_flight`` at once, replies as they finish."""
    max_in_flight: int = 1024
    """Messages received and not yet answered per connection; reading from it pauses at this many."""
    max_message_size: int = 4194304
    """Bytes of one message (without its length prefix); a larger length prefix closes the connection."""
    idle_timeout: float = 600.0
    """Seconds without a message received or a call in flight before a connection is closed (0: never)."""


class Server(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    listener: str | ListenerSpec
    """"host:port", "unix:/path", or the seed's {type, value} table."""
    proxy_type: Literal["http", "tcp", "thrift"] = "http"
    """"http": routes and filters; "tcp": a byte relay to ``upstream``/``upstreams``; "thrift": Thrift calls
    routed by service/method name."""
    routes: list[Route] = []
    """Required for http and thrift servers, not allowed for tcp ones."""
    filters: list[str | FilterSpec] = []
    """"module:Class" (or {use, args}): HttpFilter phases on http servers, TcpFilter ones on tcp servers,
    ThriftFilter ones on thrift servers; plain or async. Modules are looked up beside the config file first."""
    forwarded: Forwarded = Forwarded()
    limits: Limits = Limits()
    upstream_http_version: Literal["http11"] = "http11"
    keepalive_timeout: float = 75.0
    header_timeout: float = 60.0
    """Seconds from the first byte of a request head to its end: a deadline for the whole head, not
    an idle time, so a client trickling bytes is answered 408 when it passes (nginx's
    client_header_timeout). Checked once a second."""
    max_concurrency: int | None = None
    """In-flight requests per worker; beyond it requests are shed with 503."""
    request_timeout: float | None = None
    """Deadline for every request on this server (504); a route's ``timeout`` is tried first."""
    backlog: int = 1024
    proxy_protocol: Literal["off", "v1", "v2", "optional"] = "off"
    """Expect a PROXY header first (its client address becomes the peer); "optional": either or none."""
    tls: ServerTls | None = None
    """Serve HTTPS on the listener (http servers)."""
    http2: Http2 = Http2()
    """HTTP/2 for http servers (on by default: a client that does not speak it costs one check per connection)."""
    normalize_path: bool = True
    """Normalise request paths before filters and routing, and forward the normalised path (RFC 3986
    §6.2.2): escaped unreserved characters are decoded (``%2F`` and other reserved ones stay encoded, hex
    uppercased) and dot segments removed; a path climbing above the root is answered 400."""
    merge_slashes: bool = True
    """Merge runs of "/" in request paths into one (before dot segments are removed)."""
    body_timeout: float = 60.0
    """Seconds without a byte of a request body being received (HTTP/1.1) before the request fails
    with 408, or the connection closes if a response already started (nginx's client_body_timeout).
    Not counted while the proxy itself stops reading (the upstream is slower than the client)."""

    # -- tcp servers --------------------------------------------------------------------
    upstream: str | None = None
    """Name of a cluster under [upstreams]."""
    upstreams: list[UpstreamSpec] | None = None
    """Inline endpoints; the balancer settings below apply, other cluster settings keep their defaults."""
    load_balancer: BalancerKind = "round_robin"
    hash_on: str = "client_ip"
    """Only "client_ip" for tcp servers (there are no headers or cookies to hash)."""
    hash_algorithm: Literal["ring", "maglev"] = "ring"
    idle_timeout: float = 600.0
    """Close a relayed connection (of a tcp server, or an http server's WebSocket/CONNECT tunnel) after
    this many seconds without a byte either way."""
    splice: bool = True
    """Move a connection (or a WebSocket/CONNECT tunnel without TLS) to a zero-copy os.splice relay (Linux)
    once it has relayed ``splice_after`` bytes."""
    splice_after: int = 1048576
    """Bytes relayed through the event loop before splicing (splicing costs more per connection, less per byte)."""

    # -- thrift servers -----------------------------------------------------------------
    max_frame_size: int = 16777216
    """Largest Thrift frame accepted from a client or an upstream; a larger call is answered with an error."""
    upstream_connections: int = 8
    """Connections per upstream endpoint (per worker, transport and protocol) that calls are multiplexed over."""
    upstream_in_flight: int = 2
    """Calls in flight on one upstream connection before another is opened (up to ``upstream_connections``).
    Servers that answer one call at a time per connection (thriftpy2, Apache) serve a connection's calls in
    turn, so keep it low for them; raise it for servers that answer out of order (Kitex with mux)."""

    # -- extension points ---------------------------------------------------------------
    layers: list[str | FilterSpec] = []
    """http servers: "module:Factory" (or {use, args}) making a ``monolake.core.service.Layer``, inserted into the
    server's stack around the proxy, outermost first (inside the catch-all, request_timeout and
    max_concurrency layers). Modules resolve like filters' (the config file's directory first)."""

    # -- handler servers ----------------------------------------------------------------
    handler: str | None = None
    """"module:attr": serve your own service instead of proxying (no routes or upstream). ``attr`` is a
    ``monolake.Factory``, a ``Stack`` (its layers and leaf), a Service class, or a callable returning one of
    these; HTTP services with ``proxy_type = "http"``, stream ones (a call per connection) with "tcp".
    The module is looked up beside the config file first, then on sys.path. ``request_timeout`` is the
    handler's deadline (503 past it, not 504: no upstream timed out)."""
    rpc_grpc: RpcGrpc | None = None
    """Serve gRPC services from ``.proto`` files and a Python servicer (see ``RpcGrpc``) instead of proxying.
    Such a server's TLS offers h2 by ALPN unless ``tls.alpn`` is set, and ``limits.max_body_bytes`` left at
    its default is off (it would count a stream's bytes over its life; messages are bounded instead)."""

    # -- thrift rpc servers ---------------------------------------------------------------
    rpc_thrift: RpcThrift | None = None
    """Serve a Thrift service from IDL with your handler (``proxy_type = "thrift"``, no routes or upstreams).
    Framed, TTHeader, THeader and unframed transports, binary and compact, are detected per connection;
    ``request_timeout`` bounds each call, ``max_frame_size`` each message, ``limits.max_pipelined`` the calls
    in flight per connection."""

    # -- message stream servers -----------------------------------------------------------
    streams: Streams | None = None
    """A message stream server (``proxy_type = "tcp"``, no upstream): see ``[servers.NAME.streams]``."""


class Admin(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The admin HTTP endpoint, served by the supervisor (metrics, health, config, reload, dashboard)."""

    listen: str = "127.0.0.1:9901"
    """"host:port" of its own listener; keep it on localhost unless ``token`` is set."""
    token: str | None = None
    """When set, every request needs ``Authorization: Bearer TOKEN`` (shown redacted by /config)."""
    max_connections: int = 256
    """Open admin connections at most; one more is answered 503 and closed."""
    header_timeout: float = 10.0
    """Seconds a client has to send a request's head, from connect or from its first byte; then 408 and close."""
    idle_timeout: float = 30.0
    """Seconds a kept-alive admin connection may wait for its next request before it is closed."""
    ready_upstreams: list[str] = []
    """Clusters ``/ready`` needs healthy: it answers 503 while one of them has fewer than
    ``ready_min_healthy`` healthy endpoints in some worker (and while starting or draining)."""
    ready_min_healthy: Annotated[int, msgspec.Meta(ge=1)] = 1
    """Healthy endpoints each of ``ready_upstreams`` needs for ``/ready`` to answer 200."""


class Metrics(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    enabled: bool = False
    """Count requests in Prometheus metrics even without ``[admin]`` (which turns them on by itself)."""


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    runtime: Runtime = Runtime()
    log: Log = Log()
    upstreams: dict[str, Cluster] = {}
    servers: dict[str, Server] = {}
    admin: Admin | None = None
    """Admin endpoint; absent means none. Read at start only (a reload does not open or move it)."""
    metrics: Metrics = Metrics()
    base_dir: str | None = None
    """Set by the loader, not in the file: the config file's directory, where filter and layer modules
    are looked up first."""
