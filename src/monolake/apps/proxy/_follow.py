"""Balancers outside ``UpstreamCluster`` that follow a discovered endpoint set.

Tcp servers, thrift routes and gateway routes pick with a balancer of their own (no HTTP
pool, no health state). Over a cluster with ``discovery`` they register a ``Follower`` on
the worker's ``UpstreamCluster``; each ``set_endpoints`` hands it the new set, and it builds
the balancer once and installs it (a pick costs what it did). Connections already relayed
or calls in flight keep their endpoint; ``on_removed`` lets a thrift pool drain the
endpoints that left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...core.address import Endpoint
from ._balancer import Balancer, EmptyBalancer, make_balancer


def _not_yet(balancer: Balancer) -> None:
    """``install`` until the owner sets its own (it builds the first balancer itself)."""


class Follower:
    """Rebuilds a balancer from each endpoint set and passes it to ``install``."""

    __slots__ = (
        "__weakref__",
        "cluster",
        "hash_algorithm",
        "hash_on",
        "install",
        "keys",
        "kind",
        "on_removed",
        "shape",
    )

    def __init__(
        self,
        cluster: str,
        kind: str,
        *,
        hash_on: str,
        hash_algorithm: str,
        install: Callable[[Balancer], None] = _not_yet,
        shape: Callable[[list[Endpoint]], list[Endpoint]] = list,
        on_removed: Callable[[list[Endpoint]], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.kind = kind
        self.hash_on = hash_on
        self.hash_algorithm = hash_algorithm
        self.install = install
        self.shape = shape
        self.on_removed = on_removed
        self.keys: dict[tuple[str, str, int, str], Endpoint] = {}
        """The endpoints balanced over now (their keys: what left is drained)."""

    def build(self, endpoints: Sequence[Endpoint]) -> Balancer:
        """A balancer over ``endpoints`` (shaped; none: every pick is refused)."""
        if not endpoints:
            return EmptyBalancer(self.cluster)
        return make_balancer(self.kind, endpoints, hash_on=self.hash_on, hash_algorithm=self.hash_algorithm)

    def endpoints_changed(self, endpoints: Sequence[Endpoint]) -> None:
        eps = self.shape(list(endpoints))
        self.install(self.build(eps))
        keys = {ep.key: ep for ep in eps}
        gone = [ep for k, ep in self.keys.items() if k not in keys]
        self.keys = keys
        if gone and self.on_removed is not None:
            self.on_removed(gone)
