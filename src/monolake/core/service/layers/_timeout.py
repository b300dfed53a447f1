"""Timeout: the inner service must answer within a deadline.

When the deadline passes this raises ``errors.DeadlineExceeded``: the service's own
deadline, not an upstream's, so an HTTP driver answers 503 and logs "timed out" with
the server's name (source internal). A proxy's layer is built with ``gateway=True``:
its deadline bounds an upstream's answer, so it is answered 504 (source upstream), as
nginx and Envoy do. A timeout raised *inside* the inner service (its own upstream
read timeout, say) passes through unchanged. The deadline covers the inner call only:
for a proxy, until the response head; body streaming after it is bounded by the
upstream read timeout instead.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

from ..._compiled import mypyc_attr
from ...errors import DeadlineExceeded, Source
from .._service import Layer, Service

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled; users may subclass it
class Timeout(Generic[Req, Resp]):
    __slots__ = ("gateway", "inner", "seconds")

    def __init__(self, inner: Service[Req, Resp], seconds: float, *, gateway: bool = False) -> None:
        self.inner = inner
        self.seconds = seconds
        self.gateway = gateway

    async def __call__(self, req: Req) -> Resp:
        try:
            async with asyncio.timeout(self.seconds) as scope:
                return await self.inner(req)
        except TimeoutError:
            if not scope.expired():
                raise  # the inner service's own timeout, not ours
            raise self._expired() from None

    def _expired(self) -> DeadlineExceeded:
        if self.gateway:
            return DeadlineExceeded(
                f"request timeout of {self.seconds:g}s exceeded", source=Source.UPSTREAM, status_hint=504
            )
        return DeadlineExceeded(f"service timed out: its deadline of {self.seconds:g}s passed")


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled; users may subclass it
class TimeoutLayer(Layer[Any, Any]):
    """``gateway=True``: the deadline bounds an upstream's answer (504, blamed on the upstream)."""

    def __init__(self, seconds: float, *, gateway: bool = False) -> None:
        if seconds <= 0:
            raise ValueError("timeout must be > 0")
        self.seconds = seconds
        self.gateway = gateway

    def layer(self, inner: Service[Req, Resp]) -> Timeout[Req, Resp]:
        return Timeout(inner, self.seconds, gateway=self.gateway)
