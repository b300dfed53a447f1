"""Upstream clusters: choose an endpoint, take a pooled connection, exchange.

``UpstreamCluster.forward`` is the only coroutine between the server and the
upstream socket. It asks the balancer for an endpoint, gets a connection from the
worker's pool and waits for the response head. One retry, on a fresh connection,
covers the stale keep-alive race: a reused connection that died before the first
response byte, for an idempotent request without a body (RFC 9110 §9.2.2).

Health checks, outlier detection and circuit breaking live on a second path,
``_forward_guarded``: a cluster that has one of them points ``forward`` at it in
``__init__``. A route with retries runs its ``RetryLayer`` (``_retry``) over the
cluster's one-try service ``tries``, under ``guard``. So a cluster and route without
them run exactly the code of ``forward`` and pay nothing per request for features
they do not use. A change of
health rebuilds the balancer over the eligible endpoints (``_refresh``) rather
than filtering every pick. The guarded path repeats the fast one's exchange code
(``_try``) instead of sharing it: one more coroutine frame on every request of
every cluster is what sharing would cost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import msgspec

from ...core._body import Body
from ...core._compiled import WeakReferable
from ...core.client import Pool, UpstreamConnection
from ...core.client._client import IDEMPOTENT
from ...core.client._h2 import request_headers as h2_request_headers
from ...core.client._http import ResponseTarget
from ...core.errors import ConnectError, ConnectTimeout, ReadError, ReadTimeout, UpstreamError, WriteError
from ...core.proto.grpc import deadline_of, is_grpc, with_remaining_timeout
from ...core.proto.http1 import Request, Response
from ...core.proto.http1._serialize import CHUNKED_LINE, content_length_line, request_head
from ...core.server import error_response
from ...core.service import Service
from ...core.tls import client_tls
from ..config import (
    CircuitBreaker,
    Cluster,
    Endpoint,
    HealthCheck,
    OutlierDetection,
    Retry,
    UpstreamTls,
    parse_endpoint,
)
from ..edge._slots import UPSTREAM_CONNECT_TIME
from ._balancer import Balancer, EmptyBalancer, make_balancer
from ._health import EndpointState, HealthChecker, Outliers
from ._retry import Attempt, RetryingCluster, RetryPolicy

log = logging.getLogger("monolake.apps.proxy")


class _Overflow(Exception):
    """A circuit breaker limit was reached: the request is answered 503."""

    def __init__(self, limit: str, value: int) -> None:
        super().__init__(limit)
        self.limit = limit
        self.value = value


def _as_is(ep: Endpoint) -> Endpoint:
    return ep


def _with_tls(tls: object, ep: Endpoint) -> Endpoint:
    return ep if ep.path else dataclasses.replace(ep, scheme="https", tls=tls)


def _discovered_tls(tls: object, every: bool, ep: Endpoint) -> Endpoint:
    return _with_tls(tls, ep) if every or ep.scheme == "https" else ep


def _connected(req: Request, conn: UpstreamConnection) -> None:
    """``req`` opened ``conn``, whose connect the pool timed: $upstream_connect_time (summed over tries)."""
    ctx = req.ctx
    UPSTREAM_CONNECT_TIME.set(ctx, UPSTREAM_CONNECT_TIME.get(ctx, 0.0) + conn.connect_time)


def _h1_head(req: Request, host: bytes | None, ep: Endpoint) -> tuple[bytes, bool]:
    """The upstream request head for ``ep`` and whether the body goes chunked. ``host`` replaces
    the Host header when given; b"" means the endpoint's own authority."""
    if host is None and req.raw_host is None:
        host = b""  # an HTTP/1.0 client sent no Host; HTTP/1.1 upstreams need one
    if host is not None:
        req.headers.set(b"Host", host or ep.authority.encode())
    body: Any = req.body
    if body is None:
        framing = b""
        chunked = False
    elif body.length is not None:
        framing = content_length_line(body.length)
        chunked = False
    else:
        framing = CHUNKED_LINE
        chunked = True
    return request_head(req.method, req.target, req.headers, framing), chunked


class UpstreamCluster(WeakReferable):  # WeakReferable: sampled weakly by the metrics
    """A set of endpoints behind one balancer, with its timeouts and resilience settings."""

    def __init__(
        self,
        name: str,
        endpoints: Sequence[Endpoint],
        balancer: Balancer,
        *,
        connect_timeout: float,
        read_timeout: float,
        idle_timeout: float,
        max_idle: int,
        pool: Pool,
        health_check: HealthCheck | None = None,
        outlier_detection: OutlierDetection | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        rebalance: Callable[[Sequence[Endpoint]], Balancer] | None = None,
        protocol: str = "http1",
    ) -> None:
        self.name = name
        self.endpoints = list(endpoints)
        self.balancer = balancer
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.pool = pool
        # least_request needs in-flight counts; the others skip the two calls.
        self.track = type(balancer).started is not Balancer.started
        # -- the guarded path's state (unused by ``forward``) --
        self._all = balancer
        self._rebalance = rebalance or (lambda eps: type(balancer)(eps))
        self._states = [EndpointState(ep) for ep in self.endpoints]
        self._state_of = {id(ep): st for ep, st in zip(self.endpoints, self._states, strict=True)}
        self._checker = (
            HealthChecker(name, health_check, self._states, self._refresh, http2=protocol != "http1")
            if health_check is not None
            else None
        )
        self._outliers = (
            Outliers(name, outlier_detection, self._states, self._refresh) if outlier_detection is not None else None
        )
        cb = circuit_breaker or CircuitBreaker()
        self.max_requests = cb.max_requests
        self.max_pending = cb.max_pending
        self.max_connections = cb.max_connections
        self._keys = list({ep.key for ep in self.endpoints})
        pool.use(self._keys)
        self._closed = False
        self._shape: Callable[[Endpoint], Endpoint] = _as_is
        """What a discovered endpoint becomes in this cluster (its TLS settings)."""
        self.draining: list[Endpoint] = []
        """Endpoints discovery marked draining: kept for the admin pages, never picked."""
        self.updates = 0
        """Endpoint sets applied by ``set_endpoints``."""
        self.source_endpoints: list[Endpoint] | None = None
        """The last set discovery gave, as given (tcp servers, thrift and gateway routes shape their own)."""
        self.followers: weakref.WeakSet[Any] = weakref.WeakSet()
        """Objects with ``endpoints_changed(endpoints)`` (``_follow.Follower``): the balancers of tcp
        servers, thrift and gateway routes over this cluster, rebuilt on each set. Held weakly: the
        apps a reload replaces drop out by themselves."""
        self.active = 0
        """Requests in flight (counted on the guarded path only)."""
        self.pending = 0
        """Requests waiting for a new connection (guarded path only)."""
        self.overflows: dict[str, int] = {}
        self._overflow_logged = -1e18
        self._suppressed = 0
        self.guarded = health_check is not None or outlier_detection is not None or circuit_breaker is not None
        self.protocol = protocol
        # Chosen once: ``forward`` and ``_exchange`` are attributes holding the bound method for this
        # cluster's kind (plain clusters never test a flag per request; no method is rebound, which a
        # compiled class would refuse). HTTP/2 exchanges run on the fast path or under the guarded one.
        self._exchange: Callable[[Request, bytes | None, Endpoint], Awaitable[Response]] = (
            self._exchange_h1 if protocol == "http1" else self._exchange_h2
        )
        self.forward: Callable[[Request, bytes | None], Awaitable[Response]] = (
            self._forward_guarded if self.guarded else self._forward_h1 if protocol == "http1" else self._forward_h2
        )
        self.plain_h1 = not self.guarded and protocol == "http1"
        """``forward`` is ``_forward_h1``: ``HttpProxy`` may call ``send_h1`` instead."""
        self.tries = _Tries(self)
        """One try of an ``Attempt`` (the service a route's ``RetryLayer`` wraps)."""

    @classmethod
    def from_config(cls, name: str, c: Cluster, pool: Pool) -> UpstreamCluster:
        eps = [parse_endpoint(u.endpoint, u.weight) for u in c.endpoints]
        shape = _as_is
        if c.tls is not None or c.discovery is not None or any(ep.scheme == "https" for ep in eps):
            tls_cfg = c.tls
            if c.protocol == "h2":
                tls_cfg = msgspec.structs.replace(tls_cfg or UpstreamTls(), alpn=["h2"])
            tls = client_tls(f"upstreams.{name}.tls", tls_cfg)
            # A discovered endpoint speaks TLS with the cluster's settings when the cluster has a
            # [tls] table, or when its record says https://.
            shape = functools.partial(_discovered_tls, tls, c.tls is not None)
            if c.tls is not None or any(ep.scheme == "https" for ep in eps):
                eps = [_with_tls(tls, ep) for ep in eps]

        def rebalance(some: Sequence[Endpoint]) -> Balancer:
            return make_balancer(c.load_balancer, some, hash_on=c.hash_on, hash_algorithm=c.hash_algorithm)

        cluster = cls(
            name,
            eps,
            rebalance(eps) if eps else EmptyBalancer(name),
            connect_timeout=c.connect_timeout,
            read_timeout=c.read_timeout,
            idle_timeout=c.idle_timeout,
            max_idle=c.max_idle_per_key,
            pool=pool,
            health_check=c.health_check,
            outlier_detection=c.outlier_detection,
            circuit_breaker=c.circuit_breaker,
            rebalance=rebalance,
            protocol=c.protocol,
        )
        cluster._shape = shape
        return cluster

    def with_retry(self, retry: Retry | None) -> UpstreamCluster | RetryingCluster:
        """This cluster as a route with ``retry`` sees it (itself when there is none)."""
        return self if retry is None else RetryingCluster(self, RetryPolicy(retry))

    async def _forward_h1(self, req: Request, host: bytes | None) -> Response:
        """``forward`` of a plain HTTP/1.1 cluster. ``forward(req, host)``: send ``req`` to an
        endpoint and return the response head.

        ``host`` replaces the Host header when given; b"" means the endpoint's own
        authority. Raises ConnectError, ConnectTimeout, ReadError, ReadTimeout,
        UpstreamError, or the request body's error. On cancellation the upstream
        connection is closed (it is mid-exchange and cannot be reused).
        """
        ep = self.balancer.pick(req)
        req.ctx.endpoint = ep
        return await self._forward_h1_to(req, host, ep)

    def send_h1(
        self, req: Request, host: bytes | None
    ) -> tuple[UpstreamConnection, asyncio.Future[Response]] | Coroutine[Any, Any, Response]:
        """``forward`` of a plain HTTP/1.1 cluster, for a caller that awaits the upstream itself
        (``HttpProxy``): one coroutine level less per request in the common case. When the
        balancer tracks nothing and a pooled connection is idle, the request is sent on it here
        and this returns the connection and the future of its response head: the caller awaits
        the future and hands any exception it raises to ``recover_h1`` (which closes the
        connection on cancellation, retries a stale one, logs a timeout, as ``forward`` does).
        Otherwise it returns ``forward``'s coroutine for the endpoint it picked."""
        ep = self.balancer.pick(req)
        req.ctx.endpoint = ep
        if self.track:
            return self._forward_h1_to(req, host, ep)
        head, chunked = _h1_head(req, host, ep)
        body: Any = req.body
        conn = self.pool.take_idle(ep, self.idle_timeout, self.max_idle)
        if conn is None:  # a connect: the slow path (which sets the same Host again)
            return self._forward_h1_to(req, host, ep)
        fut = conn.request(head, body, chunked=chunked, head_only=req.method == b"HEAD", read_timeout=self.read_timeout)
        return conn, fut

    def send_h1_to(
        self, req: Request, host: bytes | None, target: ResponseTarget
    ) -> UpstreamConnection | Coroutine[Any, Any, Response]:
        """``send_h1`` for a caller that takes the response by callback (``HttpProxy.dispatch``):
        when the balancer tracks nothing and a pooled connection is idle, the request is sent
        on it for ``target`` (``UpstreamConnection.request_to``) and the connection is returned
        (closed by the caller if it gives up; a failure goes through ``retry_h1``). Otherwise
        ``forward``'s coroutine for the endpoint it picked, sending nothing."""
        ep = self.balancer.pick(req)
        req.ctx.endpoint = ep
        if self.track:
            return self._forward_h1_to(req, host, ep)
        conn = self.pool.take_idle(ep, self.idle_timeout, self.max_idle)
        if conn is None:  # a connect: the slow path
            return self._forward_h1_to(req, host, ep)
        head, chunked = _h1_head(req, host, ep)
        body: Any = req.body
        conn.request_to(
            target, head, body, chunked=chunked, head_only=req.method == b"HEAD", read_timeout=self.read_timeout
        )
        return conn

    def recover_h1(self, req: Request, conn: UpstreamConnection, exc: BaseException) -> Coroutine[Any, Any, Response]:
        """What ``forward`` does when the response ``send_h1`` sent for fails with ``exc``:
        cancelled, the connection is closed (it is mid-exchange); a stale pooled connection
        (``ReadError`` before any byte) is retried once on a fresh one for an idempotent request
        without a body (the coroutine returned); a timeout is logged. Raises ``exc`` otherwise."""
        if isinstance(exc, asyncio.CancelledError):
            conn.close()
            raise exc
        retry = self.retry_h1(req, exc)
        if retry is None:
            raise exc
        return retry

    def retry_h1(self, req: Request, exc: BaseException) -> Coroutine[Any, Any, Response] | None:
        """``recover_h1`` past a cancellation: the retry's coroutine for a stale pooled connection
        (``ReadError`` before any byte, idempotent request without a body), else None (``exc``
        stands; a timeout is logged)."""
        ep: Endpoint = req.ctx.endpoint
        if isinstance(exc, ReadError) and exc.retry_safe and req.body is None and req.method in IDEMPOTENT:
            return self._retry_h1(req, ep)
        if isinstance(exc, ReadTimeout):
            log.warning("upstream timeout: cluster=%s endpoint=%s: %s", self.name, ep, exc)
        return None

    async def _retry_h1(self, req: Request, ep: Endpoint) -> Response:
        """``recover_h1``'s retry on a fresh connection (the request has no body; its head is
        made again from the same request: the same bytes)."""
        log.info(
            "stale pooled connection to %s; retrying %s %s on a fresh one",
            ep,
            req.method.decode(),
            req.target.decode("latin-1"),
        )
        try:
            conn = await self.pool.connect(ep, connect_timeout=self.connect_timeout)
            conn.idle_timeout = self.idle_timeout
            conn.max_idle = self.max_idle
            if conn.connect_time:
                _connected(req, conn)
            head = request_head(req.method, req.target, req.headers, b"")
            fut = conn.request(
                head, None, chunked=False, head_only=req.method == b"HEAD", read_timeout=self.read_timeout
            )
            try:
                return await fut
            except asyncio.CancelledError:
                conn.close()  # mid-exchange: not reusable
                raise
        except (ConnectError, ConnectTimeout) as exc:
            log.warning("upstream connect failed: cluster=%s endpoint=%s: %s", self.name, ep, exc)
            raise
        except ReadTimeout as exc:
            log.warning("upstream timeout: cluster=%s endpoint=%s: %s", self.name, ep, exc)
            raise

    async def _forward_h1_to(self, req: Request, host: bytes | None, ep: Endpoint) -> Response:
        """``_forward_h1`` after the pick (``ep`` in ``req.ctx.endpoint``)."""
        track = self.track
        if track:
            self.balancer.started(ep)
        try:
            head, chunked = _h1_head(req, host, ep)
            body: Any = req.body
            head_only = req.method == b"HEAD"
            conn = self.pool.take_idle(ep, self.idle_timeout, self.max_idle)
            if conn is None:
                conn = await self.pool.acquire(
                    ep, connect_timeout=self.connect_timeout, idle_timeout=self.idle_timeout, max_idle=self.max_idle
                )
                if conn.connect_time and not conn.reused:
                    _connected(req, conn)
            fut = conn.request(head, body, chunked=chunked, head_only=head_only, read_timeout=self.read_timeout)
            try:
                return await fut
            except ReadError as exc:
                if not (exc.retry_safe and body is None and req.method in IDEMPOTENT):
                    raise
                log.info(
                    "stale pooled connection to %s; retrying %s %s on a fresh one",
                    ep,
                    req.method.decode(),
                    req.target.decode("latin-1"),
                )
                conn = await self.pool.connect(ep, connect_timeout=self.connect_timeout)
                conn.idle_timeout = self.idle_timeout
                conn.max_idle = self.max_idle
                if conn.connect_time:
                    _connected(req, conn)
                fut = conn.request(head, body, chunked=chunked, head_only=head_only, read_timeout=self.read_timeout)
                return await fut
            except asyncio.CancelledError:
                conn.close()
                raise
        except (ConnectError, ConnectTimeout) as exc:
            log.warning("upstream connect failed: cluster=%s endpoint=%s: %s", self.name, ep, exc)
            raise
        except ReadTimeout as exc:
            log.warning("upstream timeout: cluster=%s endpoint=%s: %s", self.name, ep, exc)
            raise
        finally:
            if track:
                self.balancer.finished(ep)

    def _forward_h2(self, req: Request, host: bytes | None) -> Coroutine[Any, Any, Response]:
        """``forward`` over HTTP/2 (protocol "h2c" or "h2"): a stream on the endpoint's shared
        connection. Raises what ``forward`` raises. A stream the upstream did not process
        (GOAWAY, REFUSED_STREAM) of an idempotent request without a body is retried once on
        another connection. On cancellation the stream is reset; the connection stays.

        A plain call returning ``_exchange_h2``'s coroutine, which does the balancer's accounting
        and logs failures when ``forwarding``: one coroutine less per request.
        """
        ep = self.balancer.pick(req)
        req.ctx.endpoint = ep
        return self._exchange_h2(req, host, ep, True)

    async def _exchange_h2(self, req: Request, host: bytes | None, ep: Endpoint, forwarding: bool = False) -> Response:
        """One request to ``ep`` over HTTP/2: ``_forward_h2``'s (``forwarding``: with the balancer's
        accounting and the failure log) and ``_try``'s, which accounts and logs itself."""
        track = forwarding and self.track
        if track:
            self.balancer.started(ep)
        try:
            if host is None:
                authority = req.raw_host if req.raw_host is not None else ep.authority.encode()
            else:
                authority = host or ep.authority.encode()
            body = req.body
            length = body.length if isinstance(body, Body) else len(body) if isinstance(body, bytes) else None
            scheme = b"https" if ep.tls is not None else b"http"
            headers = h2_request_headers(req.method, req.target, req.headers, authority, scheme, length)
            pool = self.pool.h2
            deadline = None
            grpc = is_grpc(req.headers.get(b"content-type"))
            if grpc:
                deadline = deadline_of(req.headers, pool.loop.time())
            for attempt in (0, 1):
                conn = pool.take(ep)
                if conn is None:
                    if self.pool.time_connects:  # $upstream_connect_time: the wait for a new connection
                        t0 = pool.loop.time()
                        conn = await pool.acquire(
                            ep, connect_timeout=self.connect_timeout, idle_timeout=self.idle_timeout
                        )
                        ctx = req.ctx
                        UPSTREAM_CONNECT_TIME.set(ctx, UPSTREAM_CONNECT_TIME.get(ctx, 0.0) + pool.loop.time() - t0)
                    else:
                        conn = await pool.acquire(
                            ep, connect_timeout=self.connect_timeout, idle_timeout=self.idle_timeout
                        )
                if deadline is not None:
                    headers = with_remaining_timeout(headers, deadline, pool.loop.time())
                st = conn.request(
                    headers,
                    body,
                    head_only=req.method == b"HEAD",
                    read_timeout=self.read_timeout,
                    deadline=deadline,
                    grpc=grpc,
                )
                try:
                    return await st.fut
                except ReadError as exc:
                    if attempt or not (exc.retry_safe and body is None and req.method in IDEMPOTENT):
                        raise
                    log.info(
                        "%s; retrying %s %s on another connection to %s",
                        exc,
                        req.method.decode(),
                        req.target.decode("latin-1"),
                        ep,
                    )
                except asyncio.CancelledError:
                    st.cancel()
                    raise
            raise AssertionError("unreachable: the second try returns or raises")
        except (ConnectError, ConnectTimeout) as exc:
            if forwarding:
                log.warning("upstream connect failed: cluster=%s endpoint=%s: %s", self.name, ep, exc)
            raise
        except ReadTimeout as exc:
            if forwarding:
                log.warning("upstream timeout: cluster=%s endpoint=%s: %s", self.name, ep, exc)
            raise
        finally:
            if track:
                self.balancer.finished(ep)

    # -- health, outliers, circuit breaking, retries (the guarded path) --------------------

    def start(self) -> None:
        """Start the active health checks, if any (needs the worker's running loop). Idempotent;
        the proxy builder calls it when a worker builds or commits a reload, and the guarded
        path on a first request for a cluster built otherwise."""
        if self._checker is not None:
            self._checker.start()

    def close(self) -> None:
        """Stop health checks and ejection timers; connections to endpoints no other cluster
        names drain (the pool is not this cluster's to close)."""
        if self._checker is not None:
            self._checker.stop()
        if self._outliers is not None:
            self._outliers.close()
        if not self._closed:
            self._closed = True
            self.pool.unuse(self._keys)

    def set_endpoints(self, endpoints: Sequence[Endpoint], draining: Sequence[Endpoint] = ()) -> None:
        """Balance over ``endpoints`` from now on (discovery changed the set; no reload).

        The balancer is rebuilt once here, so a pick costs what it did. An endpoint that
        stays (same pool key: scheme, host, port, path; its weight or metadata may change)
        keeps its health state and its pooled connections; a new one starts healthy and
        its active checks start; a removed one's checks stop and its connections drain:
        requests in flight on them finish, then they close (``Pool.unuse``). ``draining``
        endpoints count as removed but are listed by ``statistics``. An empty set makes
        every request a 503 until endpoints come back. Raises nothing.
        """
        eps = [self._shape(ep) for ep in endpoints]
        by_key = {st.endpoint.key: st for st in self._states}
        states: list[EndpointState] = []
        for ep in eps:
            st = by_key.get(ep.key)
            if st is None:
                st = EndpointState(ep)
            else:
                st.endpoint = ep
            states.append(st)
        old_keys = set(self._keys)
        new_keys = {ep.key for ep in eps}
        keys = list(new_keys)
        self.pool.use(new_keys - old_keys)
        self.pool.unuse(old_keys - new_keys)
        self.endpoints = eps
        self.draining = [self._shape(ep) for ep in draining]
        self._states[:] = states  # in place: the checker and outlier detector hold this list
        self._state_of = {id(ep): st for ep, st in zip(eps, states, strict=True)}
        self._keys = keys
        self._all = self._rebalance(eps) if eps else EmptyBalancer(self.name)
        self.updates += 1
        if self._outliers is not None:
            self._outliers.resize()
        self._refresh()
        if self._checker is not None:
            self._checker.sync()
        self.source_endpoints = list(endpoints)
        for follower in list(self.followers):
            try:
                follower.endpoints_changed(self.source_endpoints)
            except Exception:
                log.exception("cluster %s: a follower of its endpoint set failed", self.name)

    def _refresh(self) -> None:
        """Eligibility changed: balance over the eligible endpoints, or over all when none is."""
        eligible = [st.endpoint for st in self._states if st.eligible]
        if len(eligible) == len(self._states) or not eligible:
            if not eligible and self._states:
                log.warning("cluster %s: no healthy endpoint; balancing over all of them", self.name)
            self.balancer = self._all
        else:
            self.balancer = self._rebalance(eligible)
        self.track = type(self.balancer).started is not Balancer.started

    def eligible(self) -> list[Endpoint]:
        """Endpoints that are healthy and not ejected."""
        return [st.endpoint for st in self._states if st.eligible]

    def open_connections(self) -> int:
        """Open pooled connections to this cluster's endpoints (shared with other clusters
        that name the same endpoints)."""
        counts = self.pool.open if self.protocol == "http1" else self.pool.h2.open
        return sum(counts.get(k, 0) for k in self._keys)

    def statistics(self) -> dict[str, object]:
        """This worker's view of the cluster, for metrics and admin pages.

        ``endpoints`` maps ``str(endpoint)`` to {healthy, ejected_until (loop time, or
        None), ejections, active_requests, consecutive_5xx, consecutive_connect_failures}.
        Request counts (``active_requests``, ``pending``) move only on the guarded path:
        they stay 0 for a cluster without health checks, outlier detection, circuit
        breaker or retrying routes.
        """
        return {
            "name": self.name,
            "guarded": self.guarded,
            "eligible": len(self.eligible()),
            "active_requests": self.active,
            "pending": self.pending,
            "open_connections": self.open_connections(),
            "overflows": dict(self.overflows),
            "endpoints": {str(st.endpoint): st.statistics() for st in self._states},
            "draining": [str(ep) for ep in self.draining],
            "updates": self.updates,
        }

    def endpoint_states(self) -> dict[str, int]:
        """Endpoints by state: healthy (eligible), unhealthy (failing checks), ejected (outlier
        detection) and draining (marked by discovery), for the metrics."""
        out = {"healthy": 0, "unhealthy": 0, "ejected": 0, "draining": len(self.draining)}
        for st in self._states:
            out["healthy" if st.eligible else "unhealthy" if not st.healthy else "ejected"] += 1
        return out

    def _overflow(self, exc: _Overflow) -> Response:
        self.overflows[exc.limit] = self.overflows.get(exc.limit, 0) + 1
        now = self.pool.loop.time()
        if now - self._overflow_logged >= 1.0:
            more = f" ({self._suppressed} more since the last line)" if self._suppressed else ""
            log.warning(
                "circuit breaker open: cluster=%s %s=%d reached; answering 503%s", self.name, exc.limit, exc.value, more
            )
            self._overflow_logged = now
            self._suppressed = 0
        else:
            self._suppressed += 1
        return error_response(503)

    def _admit(self) -> Response | None:
        """Enter the guarded path: a 503 if ``max_requests`` are in flight, else None (counted)."""
        if self._checker is not None and not self._checker.running:
            self._checker.start()
        if self.max_requests is not None and self.active >= self.max_requests:
            return self._overflow(_Overflow("max_requests", self.max_requests))
        self.active += 1
        return None

    async def _forward_guarded(self, req: Request, host: bytes | None) -> Response:
        """``forward`` with health, outlier accounting and circuit breaking."""
        refused = self._admit()
        if refused is not None:
            return refused
        try:
            return await self._try(req, host, self.balancer.pick(req), None)
        except _Overflow as exc:
            return self._overflow(exc)
        finally:
            self.active -= 1

    async def guard(self, service: Service[Attempt, Response], a: Attempt) -> Response:
        """Run ``service`` (a route's retries over ``tries``) for ``a`` on the guarded path,
        its first try aimed by the balancer."""
        refused = self._admit()
        if refused is not None:
            return refused
        try:
            ep = a.endpoint = self.balancer.pick(a.req)
            a.tried.append(ep)
            return await service(a)
        except _Overflow as exc:
            return self._overflow(exc)
        finally:
            self.active -= 1

    def next_endpoint(self, req: Request, tried: list[Endpoint]) -> Endpoint:
        """Where a retry goes: an eligible endpoint not in ``tried``, else an ineligible one, else any."""
        ep = self.balancer.pick_excluding(req, tried)
        if ep is None and self.balancer is not self._all:
            ep = self._all.pick_excluding(req, tried)  # an ineligible one beats none
        return ep if ep is not None else self.balancer.pick(req)

    async def _try(self, req: Request, host: bytes | None, ep: Endpoint, per_try_timeout: float | None) -> Response:
        """One exchange with ``ep`` (``_exchange``: HTTP/1.1, or HTTP/2 for an h2 cluster) with the
        guarded path's accounting.

        Raises what ``forward`` raises, ReadTimeout when ``per_try_timeout`` passes before the
        response head (the attempt's connect included), and _Overflow for a circuit breaker limit.
        """
        req.ctx.endpoint = ep
        st = self._state_of.get(id(ep))
        outliers = self._outliers
        balancer = self.balancer
        track = self.track
        if track:
            balancer.started(ep)
        if st is not None:
            st.active_requests += 1
        try:
            if per_try_timeout is None:
                resp = await self._exchange(req, host, ep)
            else:
                try:
                    async with asyncio.timeout(per_try_timeout):
                        resp = await self._exchange(req, host, ep)
                except TimeoutError:
                    raise ReadTimeout(f"per-try timeout of {per_try_timeout:g}s exceeded") from None
        except (ConnectError, ConnectTimeout) as exc:
            log.warning("upstream connect failed: cluster=%s endpoint=%s: %s", self.name, ep, exc)
            if outliers is not None and st is not None:
                outliers.connect_failed(st)
            raise
        except (ReadError, WriteError, ReadTimeout, UpstreamError) as exc:
            log.warning("upstream exchange failed: cluster=%s endpoint=%s: %s", self.name, ep, exc)
            if outliers is not None and st is not None:
                outliers.failed(st, type(exc).__name__)
            raise
        finally:
            if st is not None:
                st.active_requests -= 1
            if track:
                balancer.finished(ep)
        if outliers is not None and st is not None:
            outliers.responded(st, resp.status)
        return resp

    async def _exchange_h1(self, req: Request, host: bytes | None, ep: Endpoint) -> Response:
        """One HTTP/1.1 request to ``ep`` on the guarded path (a fresh connection within the
        circuit breaker's limits when none is idle; one retry on a stale pooled one). A
        cancellation (the per-try timeout) closes the connection it was waiting on."""
        head, chunked = _h1_head(req, host, ep)
        body: Any = req.body
        head_only = req.method == b"HEAD"
        conn = self.pool.take_idle(ep, self.idle_timeout, self.max_idle)
        if conn is None:
            conn = await self._connect(ep)
            if conn.connect_time:
                _connected(req, conn)
        fut = conn.request(head, body, chunked=chunked, head_only=head_only, read_timeout=self.read_timeout)
        try:
            return await fut
        except ReadError as exc:
            if not (exc.retry_safe and body is None and req.method in IDEMPOTENT):
                raise
            log.info(
                "stale pooled connection to %s; retrying %s %s on a fresh one",
                ep,
                req.method.decode(),
                req.target.decode("latin-1"),
            )
            conn = await self._connect(ep)
            if conn.connect_time:
                _connected(req, conn)
            fut = conn.request(head, body, chunked=chunked, head_only=head_only, read_timeout=self.read_timeout)
            try:
                return await fut
            except asyncio.CancelledError:
                conn.close()
                raise
        except asyncio.CancelledError:
            conn.close()
            raise

    async def _connect(self, ep: Endpoint) -> UpstreamConnection:
        """A fresh pooled connection to ``ep`` within the circuit breaker's limits."""
        # Connects in progress count: they are connections a moment from now.
        if self.max_connections is not None and self.open_connections() + self.pending >= self.max_connections:
            raise _Overflow("max_connections", self.max_connections)
        if self.max_pending is not None and self.pending >= self.max_pending:
            raise _Overflow("max_pending", self.max_pending)
        self.pending += 1
        try:
            conn = await self.pool.connect(ep, connect_timeout=self.connect_timeout)
        finally:
            self.pending -= 1
        conn.idle_timeout = self.idle_timeout
        conn.max_idle = self.max_idle
        return conn


class _Tries:
    """A cluster's one-try service: ``Attempt`` in, the response of its endpoint out."""

    __slots__ = ("cluster",)

    def __init__(self, cluster: UpstreamCluster) -> None:
        self.cluster = cluster

    def __call__(self, a: Attempt) -> Coroutine[Any, Any, Response]:
        # A plain call returning ``_try``'s coroutine: no frame of its own per try.
        assert a.endpoint is not None  # aimed by ``guard``, then by ``Attempt.reroute``
        return self.cluster._try(a.req, a.host, a.endpoint, a.per_try_timeout)
