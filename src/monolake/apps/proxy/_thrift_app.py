"""The Thrift proxy: ``proxy_type = "thrift"`` servers.

Per frame, all plain calls: peek the message head (name, type, sequence id) →
route on service and method → pick an endpoint with the route's balancer →
``ThriftPool.send``, which rewrites the sequence id and multiplexes the call over
a pooled upstream connection. The reply comes back to ``_ProxyCall.reply``, which
restores the client's sequence id and writes it. Nothing is decoded beyond the
message head, and the frame (TTHeader/THeader info blocks included) is forwarded
byte for byte apart from the sequence ids.

Routing. A route matches on ``thrift_method`` (the method name, without a
multiplexed "Service:" prefix) and ``thrift_service`` (the IDL service name: the
TTHeader ``isn`` key, or the prefix of a TMultiplexedProtocol name); a route
without either takes every call; the first match in config order wins. Matches
are cached per (service, method). TTHeader info blocks are read only when some
route matches on the service and the call's name carries no prefix.

Metadata. CloudWeGo metadata rides in the TTHeader KEY_VALUE block:
``RPC_PERSIST_*`` keys travel the whole call chain, ``RPC_TRANSIT_*`` keys one hop.
A proxy is not a hop of the call chain (the upstream is the service the caller
addressed), so both reach the upstream unchanged, and it is the upstream that
does not pass transit keys on; ``RPC_BACKWARD_*`` keys in replies reach the
caller unchanged too.

Failures the client is told about, as a ``TApplicationException`` for that call's
sequence id: no route (UNKNOWN_METHOD), connect failure, timeout, upstream gone
or unreadable (INTERNAL_ERROR with the reason), a frame whose protocol or
transforms we cannot read (INVALID_PROTOCOL / INVALID_TRANSFORM), a message that
is not a call (INVALID_MESSAGE_TYPE). Oneway calls have nobody to tell; their
failures are logged.

Filters (``ThriftFilter``): with ``filters`` set, each call is described as a
``ThriftCall`` (service, method, seq id, TTHeader headers) and ``call_filter`` runs
before routing: raising (``RefuseCall``, or anything) answers the call with a
TApplicationException instead of forwarding it. When a call filter is async the call
waits for it in a task (in flight meanwhile, so a drain waits for it too).
``call_done`` sees every filtered call's outcome. A server without filters pays one
``is None`` test per call.

TLS: a listener with ``tls`` serves Thrift over TLS; a cluster with ``tls`` (or
https:// endpoints) is called over TLS, a failed handshake failing the waiting calls
like a connect failure. Neither side offers ALPN unless ``tls.alpn`` lists protocols.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from time import monotonic as _now

from ...core.client._thrift import ThriftPool
from ...core.errors import MonolakeError, Overloaded, RemoteProtocolError
from ...core.proto.thrift import (
    AppError,
    Frame,
    MessageHead,
    MessageType,
    Transport,
    classify,
    encode_theader,
    encode_ttheader,
    peek_message,
    read_header_info,
    rewrite_seq_id,
)
from ...core.server._thrift import ThriftConnection, ThriftServerApp
from ...core.service import Context
from ..config import Cluster, Config, Route, Server
from ..config import Endpoint as Endpoint
from ..observe._conn_metrics import ThriftStats, thrift_stats
from ._balancer import Balancer, make_balancer
from ._filters import RefuseCall, ThriftPhases
from ._follow import Follower
from ._l4_app import server_tls, tls_endpoints, tls_shape
from ._upstream import UpstreamCluster

log = logging.getLogger("monolake.thrift")

_CALL = MessageType.CALL.value
_ONEWAY = MessageType.ONEWAY.value
_EXCEPTION = MessageType.EXCEPTION.value
_TTHEADER = Transport.TTHEADER
_FRAMED = Transport.FRAMED
_CACHE_MAX = 4096


def _names(value: str | list[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


class ThriftRoute:
    """A route, ready: its matchers, balancer and deadlines."""

    __slots__ = ("balancer", "cluster", "connect_timeout", "index", "methods", "services", "timeout", "track")

    def __init__(
        self, index: int, r: Route, cluster: str, balancer: Balancer, c: Cluster, request_timeout: float | None
    ) -> None:
        self.index = index
        self.methods = _names(r.thrift_method)
        self.services = _names(r.thrift_service)
        self.cluster = cluster
        self.balancer = balancer
        self.connect_timeout = c.connect_timeout
        self.timeout = r.timeout or request_timeout or c.read_timeout
        """Seconds a call may wait for its reply."""
        self.track = type(balancer).started is not Balancer.started

    def matches(self, service: str | None, method: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.services is None or service in self.services


class ThriftRouter:
    """First matching route in config order; results cached per (service, method)."""

    def __init__(self, routes: list[ThriftRoute]) -> None:
        self.routes = routes
        self.needs_service = any(r.services is not None for r in routes)
        self._cache: dict[tuple[str | None, str], ThriftRoute | None] = {}

    def match(self, service: str | None, method: str) -> ThriftRoute | None:
        key = (service, method)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = next((r for r in self.routes if r.matches(service, method)), None)
        if len(self._cache) < _CACHE_MAX:
            self._cache[key] = found
        return found


class ThriftCall:
    """A call as a thrift server's filters see it."""

    __slots__ = ("headers", "method", "name", "oneway", "peer", "send_headers", "seq_id", "service")

    def __init__(
        self, service: str | None, method: str, name: str, seq_id: int, headers: dict[str, str], oneway: bool, peer: str
    ) -> None:
        self.service = service
        """The IDL service name (TTHeader ``isn``, or a multiplexed "Service:" prefix), or None."""
        self.method = method
        self.name = name
        """The message name as sent (with a multiplexed prefix)."""
        self.seq_id = seq_id
        """The client's sequence id."""
        self.headers = headers
        """TTHeader/THeader string headers (CloudWeGo metadata among them); {} for other transports."""
        self.oneway = oneway
        self.peer = peer
        self.send_headers: dict[str, str] | None = None
        """String headers a call filter sets on the forwarded frame (TTHeader, THeader; the tracing
        filter's ``RPC_TRANSIT_traceparent``); the frame is re-encoded only when some are set."""

    def __repr__(self) -> str:
        return f"<ThriftCall {self.name} seq={self.seq_id} peer={self.peer}>"


_Filtered = tuple[ThriftPhases, ThriftCall, Context]


class _ProxyCall:
    """One call in flight: restores the client's sequence id on the reply (a ``Waiter``)."""

    __slots__ = (
        "conn",
        "endpoint",
        "filtered",
        "frame",
        "method",
        "name",
        "route",
        "seq",
        "service",
        "start",
        "stats",
    )

    def __init__(
        self,
        conn: ThriftConnection,
        frame: Frame,
        head: MessageHead,
        route: ThriftRoute,
        ep: Endpoint,
        stats: ThriftStats,
        service: str | None,
        method: str,
        filtered: _Filtered | None,
    ):
        self.conn = conn
        self.filtered = filtered
        self.frame = frame
        self.name = head.name
        self.seq = head.seq_id
        self.route = route
        self.endpoint = ep
        self.stats = stats
        self.service = service
        self.method = method
        self.start = _now()

    def reply(self, frame: Frame, head: MessageHead) -> None:
        if self.route.track:
            self.route.balancer.finished(self.endpoint)
        self.conn.answer(rewrite_seq_id(frame, head, self.seq))
        outcome = "exception" if head.type == _EXCEPTION else "ok"
        self.stats.record(self.service, self.method, outcome, _now() - self.start)
        if self.filtered is not None:
            phases, call, ctx = self.filtered
            phases.done(call, outcome, ctx)

    def fail(self, exc: MonolakeError) -> None:
        route = self.route
        if route.track:
            route.balancer.finished(self.endpoint)
        log.warning(
            "thrift call failed: server=%s client=%s method=%s cluster=%s endpoint=%s: %s: %s",
            self.conn.app.name,
            self.conn.peer,
            self.name,
            route.cluster,
            self.endpoint,
            type(exc).__name__,
            exc,
        )
        why = f"monolake: {type(exc).__name__}: {exc}"
        self.conn.answer_error(self.frame, self.name, self.seq, AppError.INTERNAL_ERROR, why)
        self.stats.record(self.service, self.method, "error", _now() - self.start)
        if self.filtered is not None:
            phases, call, ctx = self.filtered
            phases.done(call, "error", ctx)


class ThriftProxy:
    """The ``Dispatcher`` of a thrift server. See the module docstring."""

    def __init__(self, name: str, router: ThriftRouter, pool: ThriftPool, phases: ThriftPhases | None = None) -> None:
        self.name = name
        self.router = router
        self.pool = pool
        self.phases = phases
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = thrift_stats(name)
        """Counts calls for the metrics (observe/_conn_metrics.py)."""
        self.followers: list[Follower] = []
        """Keep the routes over discovering clusters current (the clusters hold them weakly)."""

    def dispatch(self, conn: ThriftConnection, frame: Frame) -> None:
        proto = frame.protocol
        if proto is None or frame.transforms:
            kind = AppError.INVALID_TRANSFORM if frame.transforms else AppError.INVALID_PROTOCOL
            what = f"transforms {list(frame.transforms)}" if frame.transforms else "protocol id"
            conn.begin()
            conn.answer_error(frame, "", frame.seq_id, kind, f"monolake: unsupported {what}")
            return
        try:
            head = peek_message(frame.data, frame.payload, proto)
        except RemoteProtocolError as exc:
            log.warning("thrift: bad message: server=%s client=%s: %s", self.name, conn.peer, exc)
            conn.reject(frame, "", frame.seq_id, AppError.PROTOCOL_ERROR, f"monolake: {exc}")
            return
        mtype = head.type
        oneway = mtype == _ONEWAY
        if mtype != _CALL and not oneway:
            conn.begin()
            conn.answer_error(frame, head.name, head.seq_id, AppError.INVALID_MESSAGE_TYPE, "monolake: not a call")
            return
        name = head.name
        service: str | None = None
        method = name
        if ":" in name:
            service, _, method = name.partition(":")
        elif self.router.needs_service and frame.transport is _TTHEADER:
            try:
                service = read_header_info(frame).headers.get("isn")
            except RemoteProtocolError as exc:
                conn.reject(frame, name, head.seq_id, AppError.PROTOCOL_ERROR, f"monolake: {exc}")
                return
        if self.phases is not None:
            self._filter(conn, frame, head, service, method, oneway, self.phases)
            return
        self._forward(conn, frame, head, service, method, oneway, None, False)

    def _forward(
        self,
        conn: ThriftConnection,
        frame: Frame,
        head: MessageHead,
        service: str | None,
        method: str,
        oneway: bool,
        filtered: _Filtered | None,
        begun: bool,
    ) -> None:
        """Route and send a call (``begun``: already counted in flight by ``conn.begin``)."""
        name = head.name
        route = self.router.match(service, method)
        if route is None:
            what = f"service {service!r} method {method!r}" if service is not None else f"method {method!r}"
            log.info("thrift: no route: server=%s client=%s %s", self.name, conn.peer, what)
            self.stats.record(service, method, "no_route", 0.0)
            if not oneway:
                if not begun:
                    conn.begin()
                conn.answer_error(frame, name, head.seq_id, AppError.UNKNOWN_METHOD, f"monolake: no route for {what}")
            if filtered is not None:
                filtered[0].done(filtered[1], "no_route", filtered[2])
            return
        try:
            ep = route.balancer.pick(conn.pick_key)
        except Overloaded as exc:  # a discovered set that is empty for now
            log.warning("thrift: server=%s client=%s method=%s: %s", self.name, conn.peer, method, exc)
            self.stats.record(service, method, "error", 0.0)
            if not oneway:
                if not begun:
                    conn.begin()
                conn.answer_error(frame, name, head.seq_id, AppError.INTERNAL_ERROR, f"monolake: {exc}")
            if filtered is not None:
                filtered[0].done(filtered[1], "error", filtered[2])
            return
        if filtered is not None:
            filtered[2].endpoint = ep
            extra = filtered[1].send_headers
            if extra and frame.transport is not _FRAMED:
                try:
                    frame, head = _with_headers(frame, extra)
                except MonolakeError as exc:  # a header over TTHeader's limits: forward the call as it came
                    log.warning("thrift: cannot add headers %s: server=%s: %s", list(extra), self.name, exc)
        if oneway:
            self.pool.send(ep, frame, head, None, connect_timeout=route.connect_timeout, timeout=0, oneway=True)
            self.stats.record(service, method, "oneway", 0.0)
            if filtered is not None:
                filtered[0].done(filtered[1], "oneway", filtered[2])
            return
        if not begun:
            conn.begin()
        if route.track:
            route.balancer.started(ep)
        call = _ProxyCall(conn, frame, head, route, ep, self.stats, service, method, filtered)
        self.pool.send(ep, frame, head, call, connect_timeout=route.connect_timeout, timeout=route.timeout)

    # -- filters -------------------------------------------------------------------------

    def _filter(
        self,
        conn: ThriftConnection,
        frame: Frame,
        head: MessageHead,
        service: str | None,
        method: str,
        oneway: bool,
        phases: ThriftPhases,
    ) -> None:
        headers: dict[str, str] = {}
        if frame.transport is not _FRAMED:
            try:
                headers = read_header_info(frame).headers
            except RemoteProtocolError as exc:
                conn.reject(frame, head.name, head.seq_id, AppError.PROTOCOL_ERROR, f"monolake: {exc}")
                return
        named = service if service is not None else headers.get("isn")  # the IDL service, as routing would read it
        call = ThriftCall(named, method, head.name, head.seq_id, headers, oneway, conn.peer)
        ctx = Context(conn.peer, self.name, _now())
        filtered = (phases, call, ctx)
        if not phases.awaits:
            try:
                phases.check(call, ctx)
            except Exception as exc:
                self._refuse(conn, frame, head, filtered, exc, begun=False)
                return
            self._forward(conn, frame, head, service, method, oneway, filtered, False)
            return
        if not oneway:
            conn.begin()  # in flight while its filters run
        task = asyncio.get_running_loop().create_task(
            self._filter_async(conn, frame, head, service, method, oneway, filtered)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _filter_async(
        self,
        conn: ThriftConnection,
        frame: Frame,
        head: MessageHead,
        service: str | None,
        method: str,
        oneway: bool,
        filtered: _Filtered,
    ) -> None:
        phases, call, ctx = filtered
        try:
            await phases.check_async(call, ctx)
        except asyncio.CancelledError:
            if not oneway:
                conn.answer_error(frame, head.name, head.seq_id, AppError.INTERNAL_ERROR, "monolake: shutting down")
            raise
        except Exception as exc:
            self._refuse(conn, frame, head, filtered, exc, begun=not oneway)
            return
        self._forward(conn, frame, head, service, method, oneway, filtered, not oneway)

    def _refuse(
        self, conn: ThriftConnection, frame: Frame, head: MessageHead, filtered: _Filtered, exc: Exception, begun: bool
    ) -> None:
        """A call filter raised: answer a TApplicationException (a ``RefuseCall``'s message and type;
        anything else is a broken filter, logged with its traceback, INTERNAL_ERROR)."""
        phases, call, ctx = filtered
        if isinstance(exc, RefuseCall):
            kind, message = exc.kind, exc.message
            log.info(
                "thrift: call refused: server=%s client=%s method=%s: %s", self.name, conn.peer, call.name, message
            )
        elif isinstance(exc, TimeoutError):
            kind, message = AppError.INTERNAL_ERROR, f"request timeout of {phases.timeout:g}s exceeded in call filters"
            log.warning("thrift: %s: server=%s client=%s method=%s", message, self.name, conn.peer, call.name)
        else:
            kind, message = AppError.INTERNAL_ERROR, f"call filter failed: {type(exc).__name__}"
            log.error(
                "thrift: call filter failed: server=%s client=%s method=%s: %s: %s",
                self.name,
                conn.peer,
                call.name,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        self.stats.record(call.service, call.method, "refused", 0.0)
        if not call.oneway:
            if not begun:
                conn.begin()
            conn.answer_error(frame, call.name, call.seq_id, kind, message)
        phases.done(call, "refused", ctx)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.pool.close()

    def statistics(self) -> dict[str, int]:
        return self.pool.statistics()


def _with_headers(frame: Frame, extra: dict[str, str]) -> tuple[Frame, MessageHead]:
    """``frame`` re-encoded with ``extra`` in its KEY_VALUE headers (the other blocks kept)."""
    info = read_header_info(frame)
    payload = frame.data[frame.payload :]
    proto = frame.protocol
    assert proto is not None  # checked by ``dispatch``
    headers = {**info.headers, **extra}
    if frame.transport is _TTHEADER:
        data = encode_ttheader(
            payload,
            seq_id=frame.seq_id,
            protocol=proto,
            flags=frame.flags,
            headers=headers,
            int_headers=info.int_headers,
            acl_token=info.acl_token,
        )
    else:
        data = encode_theader(
            payload,
            seq_id=frame.seq_id,
            protocol=proto,
            flags=frame.flags,
            headers=headers,
            persistent_headers=info.persistent_headers,
        )
    new = classify(data)
    return new, peek_message(new.data, new.payload, proto)


def _route_cluster(server_name: str, i: int, r: Route, cfg: Config) -> tuple[str, Cluster]:
    if r.upstream is not None:
        return r.upstream, cfg.upstreams[r.upstream]
    assert r.upstreams is not None
    c = Cluster(
        endpoints=r.upstreams, load_balancer=r.load_balancer, hash_on=r.hash_on, hash_algorithm=r.hash_algorithm
    )
    return f"{server_name}.routes[{i}]", c


def _balancer(path: str, c: Cluster) -> Balancer:
    eps = tls_endpoints(path, c)
    return make_balancer(c.load_balancer, eps, hash_on=c.hash_on, hash_algorithm=c.hash_algorithm)


def _follower(path: str, cname: str, c: Cluster, u: UpstreamCluster) -> Follower:
    def shape(found: list[Endpoint]) -> list[Endpoint]:
        return tls_shape(path, c, found)

    f = Follower(cname, c.load_balancer, hash_on=c.hash_on, hash_algorithm=c.hash_algorithm, shape=shape)
    eps = shape(u.source_endpoints) if u.source_endpoints is not None else tls_endpoints(path, c)
    f.keys = {ep.key: ep for ep in eps}
    return f


def _installer(proxy: ThriftProxy, cname: str) -> Callable[[Balancer], None]:
    def install(balancer: Balancer) -> None:
        track = type(balancer).started is not Balancer.started
        for route in proxy.router.routes:
            if route.cluster == cname:
                route.balancer = balancer
                route.track = track

    return install


def _drainer(pool: ThriftPool) -> Callable[[list[Endpoint]], None]:
    def drain(gone: list[Endpoint]) -> None:
        pool.drain([ep.key for ep in gone])

    return drain


def build_thrift_app(
    name: str,
    server: Server,
    cfg: Config,
    filters: Sequence[object] = (),
    clusters: Mapping[str, UpstreamCluster] | None = None,
) -> ThriftServerApp:
    """The app of a validated thrift server; named clusters share one balancer per server. A
    named cluster with ``discovery`` (in ``clusters``, the worker's) starts from its discovered
    set and follows it: its routes' balancer is rebuilt on each set, and the pooled
    connections to endpoints that left drain (calls in flight on them are answered)."""
    balancers: dict[str, Balancer] = {}
    routes: list[ThriftRoute] = []
    idle = []
    follow: dict[str, Follower] = {}
    for i, r in enumerate(server.routes):
        cname, c = _route_cluster(name, i, r, cfg)
        if cname not in balancers:
            path = f"upstreams.{cname}" if r.upstream is not None else f"servers.{cname}"
            u = clusters.get(cname) if clusters is not None and r.upstream is not None and c.discovery else None
            if u is not None:
                f = follow[cname] = _follower(path, cname, c, u)
                balancers[cname] = f.build(list(f.keys.values()))
            else:
                balancers[cname] = _balancer(path, c)
        routes.append(ThriftRoute(i, r, cname, balancers[cname], c, server.request_timeout))
        idle.append(c.idle_timeout)
    pool = ThriftPool(
        max_connections=server.upstream_connections,
        max_in_flight=server.upstream_in_flight,
        max_frame_size=server.max_frame_size,
        idle_timeout=min(idle),
    )
    phases = ThriftPhases(name, filters, server.request_timeout) if filters else None
    proxy = ThriftProxy(name, ThriftRouter(routes), pool, phases)
    for cname, f in follow.items():
        f.install = _installer(proxy, cname)
        f.on_removed = _drainer(pool)
        proxy.followers.append(f)
        u = clusters[cname] if clusters is not None else None
        assert u is not None
        u.followers.add(f)
    return ThriftServerApp(name, server, proxy, tls=server_tls(name, server))
