"""Route retries: which failures are retried, and the budget that bounds them.

A route with a ``retry`` table forwards through a ``RetryingCluster``: the route's
``RetryPolicy`` plus the cluster, whose ``forward`` runs the retry loop
(``UpstreamCluster._forward_guarded``). Routes without one call the cluster directly
and pay nothing.

Safety (RFC 9110 §9.2.2): a request is retried only when its method is idempotent or
it has no body, and once a try has sent it upstream, only when it has no body (a
streamed body cannot be sent twice). A connect failure sent nothing, so any eligible
request is retried after it.

Budget (Envoy's retry budget): the retries in flight on a route may be at most
``budget_percent`` of its requests in flight, or ``min_retry_concurrency``, whichever
is larger; a retry over budget is not made and the last try's answer stands. The
counters are per worker, like the pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.proto.http1 import Request, Response
from ..config import Retry

if TYPE_CHECKING:
    from ._upstream import UpstreamCluster


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


class RetryingCluster:
    """A cluster as one route sees it: the same endpoints, with the route's retries."""

    __slots__ = ("cluster", "name", "policy")

    def __init__(self, cluster: UpstreamCluster, policy: RetryPolicy) -> None:
        self.cluster = cluster
        self.policy = policy
        self.name = cluster.name

    async def forward(self, req: Request, host: bytes | None) -> Response:
        """``UpstreamCluster.forward`` with retries; raises what the last try raised."""
        policy = self.policy
        policy.active += 1
        try:
            return await self.cluster._forward_guarded(req, host, policy)
        finally:
            policy.active -= 1

    def statistics(self) -> dict[str, object]:
        return {**self.cluster.statistics(), "retry": self.policy.statistics()}
