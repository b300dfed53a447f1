"""Route retries as a layer: which failures are retried, and the budget that bounds them.

A route with a ``retry`` table forwards through a ``RetryingCluster``: a
``RetryLayer(policy)`` (a ``monolake.core.service.Layer``, tower-style) over the
cluster's one-try service (``UpstreamCluster.tries``), run under the cluster's
circuit breaker (``UpstreamCluster.guard``). The service between them takes an
``Attempt``: the request, the route's Host rewrite, the endpoint to try and those
tried before. Routes without a ``retry`` table call the cluster directly: no layer,
no ``Attempt``, nothing per request.

Safety (RFC 9110 §9.2.2): a request is retried only when its method is idempotent or
it has no body, and once a try has sent it upstream, only when it has no body (a
streamed body cannot be sent twice). A connect failure sent nothing, so any eligible
request is retried after it. A retry goes to an endpoint not tried yet when there is
one (an ineligible one before a repeat).

Budget (Envoy's retry budget): the retries in flight on a route may be at most
``budget_percent`` of its requests in flight, or ``min_retry_concurrency``, whichever
is larger; a retry over budget is not made and the last try's answer stands. The
counters are per worker, like the pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from ...core._body import Body
from ...core.client._client import IDEMPOTENT
from ...core.errors import ConnectError, ConnectTimeout, ReadError, ReadTimeout, UpstreamError
from ...core.proto.http1 import Request, Response
from ...core.service import Layer, Service
from ..config import Endpoint, Retry

log = logging.getLogger("monolake.apps.proxy")


class UpstreamCluster(Protocol):
    """What retries use of ``_upstream.UpstreamCluster`` (typed here so this module need not import it)."""

    @property
    def name(self) -> str: ...

    @property
    def tries(self) -> Service[Attempt, Response]: ...

    async def guard(self, service: Service[Attempt, Response], a: Attempt) -> Response: ...

    def next_endpoint(self, req: Request, tried: list[Endpoint]) -> Endpoint: ...

    def statistics(self) -> dict[str, object]: ...


RetryHook = Callable[[Request, Endpoint | None, str, Endpoint], None]
"""``hook(req, endpoint, why, nxt)``: the try to ``endpoint`` failed with ``why`` and is retried on
``nxt``, sending ``req`` (whose headers the hook may change, e.g. ``traceparent``)."""

RETRY_HOOKS: list[RetryHook] = []
"""Called on every retry. A module that wants to know registers once, at import (tracing does):
nothing is set per request, and a process without hooks loops over an empty list per retry."""


class RetryPolicy:
    """One route's retry settings and budget counters."""

    __slots__ = (
        "active",
        "attempts",
        "budget_exhausted",
        "budget_percent",
        "min_concurrency",
        "on_connect",
        "on_reset",
        "on_status",
        "on_timeout",
        "per_try_timeout",
        "retries",
        "retrying",
    )

    def __init__(self, cfg: Retry) -> None:
        self.attempts = cfg.attempts
        self.per_try_timeout = cfg.per_try_timeout
        self.on_connect = "connect_failure" in cfg.on
        self.on_reset = "reset" in cfg.on
        self.on_timeout = "timeout" in cfg.on
        self.on_status = frozenset(int(s) for s in cfg.on if s.isdigit())
        self.budget_percent = cfg.budget_percent
        self.min_concurrency = cfg.min_retry_concurrency
        self.active = 0
        """Requests of this route in flight."""
        self.retrying = 0
        """Retries of this route in flight."""
        self.retries = 0
        self.budget_exhausted = 0

    def admit(self) -> bool:
        """Whether one more retry fits the budget; counts it in ``retrying`` if so (the
        caller calls ``done`` when it ends)."""
        limit = max(self.min_concurrency, self.active * self.budget_percent / 100.0)
        if self.retrying + 1 > limit:
            self.budget_exhausted += 1
            return False
        self.retrying += 1
        self.retries += 1
        return True

    def done(self) -> None:
        self.retrying -= 1

    def statistics(self) -> dict[str, int]:
        return {
            "active": self.active,
            "retrying": self.retrying,
            "retries": self.retries,
            "budget_exhausted": self.budget_exhausted,
        }


class Attempt:
    """One request on its way through a cluster, as the retry layer drives it."""

    __slots__ = ("cluster", "endpoint", "host", "per_try_timeout", "req", "tried")

    def __init__(self, cluster: UpstreamCluster, req: Request, host: bytes | None) -> None:
        self.cluster = cluster
        self.req = req
        self.host = host
        """The route's Host rewrite, as ``UpstreamCluster.forward`` takes it."""
        self.endpoint: Endpoint | None = None
        """The endpoint of the next try (the cluster's balancer picks the first)."""
        self.tried: list[Endpoint] = []
        self.per_try_timeout: float | None = None

    def reroute(self) -> Endpoint:
        """Aim the next try at an endpoint not tried yet when there is one; return it."""
        ep = self.cluster.next_endpoint(self.req, self.tried)
        if ep not in self.tried:
            self.tried.append(ep)
        self.endpoint = ep
        return ep


class Retrying:
    """The service ``RetryLayer`` builds: tries ``inner`` until an answer stands."""

    __slots__ = ("inner", "policy")

    def __init__(self, inner: Service[Attempt, Response], policy: RetryPolicy) -> None:
        self.inner = inner
        self.policy = policy

    async def __call__(self, a: Attempt) -> Response:
        """The last try's response; raises what the last try raised."""
        policy = self.policy
        req = a.req
        body = req.body
        may_retry = body is None or req.method in IDEMPOTENT
        a.per_try_timeout = policy.per_try_timeout
        budgeted = False
        try:
            for attempt in range(policy.attempts + 1):
                last = attempt == policy.attempts or not may_retry
                error: BaseException | None = None
                resp: Response | None = None
                try:
                    resp = await self.inner(a)
                except (ConnectError, ConnectTimeout) as exc:
                    # Nothing was sent: a body is still whole.
                    if last or not policy.on_connect:
                        raise
                    error, why = exc, "connect failure"
                except ReadTimeout as exc:
                    if last or not policy.on_timeout or body is not None:
                        raise
                    error, why = exc, "timeout"
                except (ReadError, UpstreamError) as exc:
                    if last or not policy.on_reset or body is not None:
                        raise
                    error, why = exc, "reset"
                else:
                    if last or resp.status not in policy.on_status or body is not None:
                        return resp
                    why = f"status {resp.status}"
                ep = a.endpoint
                if not budgeted:
                    if not policy.admit():
                        log.info("retry budget exhausted: cluster=%s endpoint=%s: %s", a.cluster.name, ep, why)
                        if error is not None:
                            raise error
                        assert resp is not None
                        return resp
                    budgeted = True
                if resp is not None and isinstance(resp.body, Body):
                    resp.body.cancel()  # not wanted: drop it with its connection
                nxt = a.reroute()
                for hook in RETRY_HOOKS:
                    hook(req, ep, why, nxt)
                log.info(
                    "retrying %s %s: cluster=%s endpoint=%s: %s; try %d on %s",
                    req.method.decode(),
                    req.target.decode("latin-1"),
                    a.cluster.name,
                    ep,
                    why,
                    attempt + 2,
                    nxt,
                )
            raise AssertionError("unreachable: the last try returns or raises")
        finally:
            if budgeted:
                policy.done()


class RetryLayer(Layer[Attempt, Response]):
    """Retries a cluster's tries by one route's ``RetryPolicy`` (its budget counters are the layer's)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def layer(self, inner: Service[Attempt, Response]) -> Retrying:
        return Retrying(inner, self.policy)


class RetryingCluster:
    """A cluster as one route sees it: the same endpoints, with the route's retries."""

    __slots__ = ("cluster", "name", "policy", "service")

    def __init__(self, cluster: UpstreamCluster, policy: RetryPolicy) -> None:
        self.cluster = cluster
        self.policy = policy
        self.name = cluster.name
        self.service = RetryLayer(policy).layer(cluster.tries)

    async def forward(self, req: Request, host: bytes | None) -> Response:
        """``UpstreamCluster.forward`` with retries; raises what the last try raised."""
        policy = self.policy
        policy.active += 1
        try:
            return await self.cluster.guard(self.service, Attempt(self.cluster, req, host))
        finally:
            policy.active -= 1

    def statistics(self) -> dict[str, object]:
        return {**self.cluster.statistics(), "retry": self.policy.statistics()}
