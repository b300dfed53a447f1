"""ConcurrencyLimit: at most N calls in flight; beyond that, shed load at once.

Shedding instead of queueing keeps latency bounded under overload (the client
gets a fast 503 and may retry elsewhere) and costs two integer updates per call.
A shed call raises ``Overloaded`` (retry safe: the inner service never saw it), which
the drivers answer with 503, or gRPC's UNAVAILABLE, and log; with ``on_shed`` the
shed answer is ``on_shed(req)`` instead, logged here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from ..._compiled import mypyc_attr
from ...errors import Overloaded
from .._service import Layer, Service

log = logging.getLogger("monolake.limit")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled; users may subclass it
class ConcurrencyLimit(Generic[Req, Resp]):
    __slots__ = ("in_flight", "inner", "limit", "on_shed", "shed")

    def __init__(self, inner: Service[Req, Resp], limit: int, on_shed: Callable[[Req], Resp] | None = None) -> None:
        self.inner = inner
        self.limit = limit
        self.on_shed = on_shed
        self.in_flight = 0
        self.shed = 0

    async def __call__(self, req: Req) -> Resp:
        if self.in_flight >= self.limit:
            self.shed += 1
            on_shed = self.on_shed
            if on_shed is None:
                raise Overloaded(f"{self.in_flight} requests in flight (limit {self.limit})")
            log.warning(
                "load shed: %d requests in flight (limit %d), %d shed so far",
                self.in_flight,
                self.limit,
                self.shed,
            )
            return on_shed(req)
        self.in_flight += 1
        try:
            return await self.inner(req)
        finally:
            self.in_flight -= 1


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled; users may subclass it
class ConcurrencyLimitLayer(Layer[Req, Resp]):
    def __init__(self, limit: int, on_shed: Callable[[Req], Resp] | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.on_shed = on_shed

    def layer(self, inner: Service[Req, Resp]) -> ConcurrencyLimit[Req, Resp]:
        return ConcurrencyLimit(inner, self.limit, self.on_shed)
