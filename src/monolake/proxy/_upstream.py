"""Upstream clusters: choose an endpoint, take a pooled connection, exchange.

``UpstreamCluster.forward`` is the only coroutine between the server and the
upstream socket. It asks the balancer for an endpoint, gets a connection from the
worker's pool and waits for the response head. One retry, on a fresh connection,
covers the stale keep-alive race: a reused connection that died before the first
response byte, for an idempotent request without a body (RFC 9110 §9.2.2).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from ..client import Pool
from ..config import Cluster, Endpoint, parse_endpoint
from ..errors import ConnectError, ConnectTimeout, ReadError, ReadTimeout
from ..proto.http1 import Request, Response
from ..proto.http1._serialize import CHUNKED_LINE, content_length_line, request_head
from ._balancer import Balancer, make_balancer

log = logging.getLogger("monolake.proxy")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class UpstreamCluster:
    """A set of endpoints behind one balancer, with its timeouts."""

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

    @classmethod
    def from_config(cls, name: str, c: Cluster, pool: Pool) -> UpstreamCluster:
        eps = [parse_endpoint(u.endpoint, u.weight) for u in c.endpoints]
        return cls(
            name,
            eps,
            make_balancer(c.load_balancer, eps, hash_on=c.hash_on, hash_algorithm=c.hash_algorithm),
            connect_timeout=c.connect_timeout,
            read_timeout=c.read_timeout,
            idle_timeout=c.idle_timeout,
            max_idle=c.max_idle_per_key,
            pool=pool,
        )

    async def forward(self, req: Request, host: bytes | None) -> Response:
        """Send ``req`` to an endpoint and return the response head.

        ``host`` replaces the Host header when given; b"" means the endpoint's own
        authority. Raises ConnectError, ConnectTimeout, ReadError, ReadTimeout,
        UpstreamError, or the request body's error. On cancellation the upstream
        connection is closed (it is mid-exchange and cannot be reused).
        """
        ep = self.balancer.pick(req)
        req.ctx.endpoint = ep
        track = self.track
        if track:
            self.balancer.started(ep)
        try:
            if host is None and req.raw_host is None:
                host = b""  # an HTTP/1.0 client sent no Host; HTTP/1.1 upstreams need one
            if host is not None:
                req.headers.set(b"Host", host or ep.authority.encode())
            body = req.body
            if body is None:
                framing = b""
                chunked = False
            elif body.length is not None:
                framing = content_length_line(body.length)
                chunked = False
            else:
                framing = CHUNKED_LINE
                chunked = True
            head = request_head(req.method, req.target, req.headers, framing)
            head_only = req.method == b"HEAD"
            conn = self.pool.take_idle(ep, self.idle_timeout, self.max_idle) or await self.pool.acquire(
                ep, connect_timeout=self.connect_timeout, idle_timeout=self.idle_timeout, max_idle=self.max_idle
            )
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
