"""Timeout: the inner service must answer within a deadline.

Raises ``errors.TimeoutError`` (an HTTP driver answers 504). The deadline covers
the inner call only: for a proxy, until the response head; body streaming after
it is bounded by the upstream read timeout instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ...errors import TimeoutError as MonolakeTimeout
from .._service import Layer


class Timeout:
    __slots__ = ("inner", "seconds")

    def __init__(self, inner: Any, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds

    async def __call__(self, req: Any) -> Any:
        try:
            async with asyncio.timeout(self.seconds) as scope:
                return await self.inner(req)
        except TimeoutError:
            if not scope.expired():
                raise  # the inner service's own timeout, not ours
            raise MonolakeTimeout(f"request timeout of {self.seconds:g}s exceeded") from None


class TimeoutLayer(Layer):
    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("timeout must be > 0")
        self.seconds = seconds

    def layer(self, inner: Any) -> Timeout:
        return Timeout(inner, self.seconds)
