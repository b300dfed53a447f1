"""Timeout: the inner service must answer within a deadline.

When the deadline passes this raises ``errors.DeadlineExceeded``: the service's own
deadline, not an upstream's, so an HTTP driver answers 503 and logs "timed out" with
the server's name (source internal). A proxy's layer is built with ``gateway=True``:
its deadline bounds an upstream's answer, so it is answered 504 (source upstream), as
nginx and Envoy do. A timeout raised *inside* the inner service (its own upstream
read timeout, say) passes through unchanged. The deadline covers the inner call only:
for a proxy, until the response head; body streaming after it is bounded by the
upstream read timeout instead.

On the callback lane (``LaneService``): when the inner service offers ``dispatch``, so does
``Timeout``. A request the inner service takes is bounded by one timer (``_Deadline``): when it
fires first, the inner ``Taken`` is cancelled (as a cancellation would, on the coroutine path)
and the request fails with the same ``DeadlineExceeded``; an answer first cancels the timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, Generic, TypeVar

from ..._compiled import mypyc_attr
from ...errors import DeadlineExceeded, Source
from .._lane import Dispatch, Replier, Taken, lane_of
from .._service import Layer, Service

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled; users may subclass it
class Timeout(Generic[Req, Resp]):
    __slots__ = ("_lane", "gateway", "has_lane", "inner", "seconds")

    def __init__(self, inner: Service[Req, Resp], seconds: float, *, gateway: bool = False) -> None:
        self.inner = inner
        self.seconds = seconds
        self.gateway = gateway
        self._lane: Dispatch | None = lane_of(inner)
        self.has_lane = self._lane is not None

    def dispatch(self, req: Req, replier: Replier[Req, Resp]) -> Resp | Awaitable[Resp] | Taken:
        """``__call__`` on the callback lane (see the module docstring); without the inner
        service's lane, ``__call__``'s coroutine."""
        lane = self._lane
        if lane is None:
            return self(req)
        loop = asyncio.get_running_loop()
        bound = _Deadline(self, req, replier, loop.time() + self.seconds)
        out = lane(req, bound)
        if isinstance(out, Taken):
            if not bound.done:
                bound.taken = out
                bound.timer = loop.call_at(bound.deadline, bound.expire)
            return bound
        bound.done = True  # not taken: the inner service will not use ``bound``
        if isinstance(out, Awaitable):
            return self._within(out, bound.deadline)
        return out  # type: ignore[no-any-return]  # answered at once

    async def _within(self, pending: Awaitable[Resp], deadline: float) -> Resp:
        """The lane's slow path: ``pending`` within the deadline set when the request came."""
        try:
            async with asyncio.timeout_at(deadline) as scope:
                return await pending
        except TimeoutError:
            if not scope.expired():
                raise
            raise self._expired() from None

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


class _Deadline(Taken, Generic[Req, Resp]):
    """A request ``Timeout`` bounds on the callback lane: the inner service's replier, and the
    ``Taken`` the driver holds."""

    __slots__ = ("deadline", "done", "replier", "req", "taken", "timeout", "timer")

    def __init__(self, timeout: Timeout[Req, Resp], req: Req, replier: Replier[Req, Resp], deadline: float) -> None:
        self.timeout = timeout
        self.req = req
        self.replier = replier
        self.deadline = deadline
        self.done = False
        self.taken: Taken | None = None
        self.timer: asyncio.TimerHandle | None = None

    def _settle(self) -> bool:
        if self.done:
            return False
        self.done = True
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
        return True

    def reply(self, req: Req, resp: Resp) -> None:
        if self._settle():
            self.replier.reply(req, resp)

    def reply_error(self, req: Req, exc: BaseException) -> None:
        if self._settle():
            self.replier.reply_error(req, exc)  # an inner timeout passes unchanged, as in __call__

    def reply_later(self, req: Req, rest: Awaitable[Resp]) -> None:
        if self._settle():
            self.replier.reply_later(req, self.timeout._within(rest, self.deadline))
        elif isinstance(rest, Coroutine):
            rest.close()  # answered already (the deadline passed): never to run

    def expire(self) -> None:
        """The deadline passed first: what cancelling the inner call does on the coroutine path."""
        self.timer = None
        if self._settle():
            taken = self.taken
            self.taken = None
            if taken is not None:
                taken.cancel()
            self.replier.reply_error(self.req, self.timeout._expired())

    def cancel(self) -> None:
        if self._settle():
            taken = self.taken
            self.taken = None
            if taken is not None:
                taken.cancel()


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
