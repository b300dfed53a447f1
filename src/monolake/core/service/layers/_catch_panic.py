"""CatchPanic: an unexpected exception becomes an answer and a log line.

Errors monolake raises on purpose (``MonolakeError``) pass through: the driver maps
them to statuses. Anything else (a bug in a user filter, say) is logged with its
traceback and turned into ``on_panic(req, exc)``, so one bad request never takes
the connection, let alone the worker, down. ``CancelledError`` always propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from ..._compiled import mypyc_attr
from ...errors import MonolakeError
from .._service import Layer, Service

log = logging.getLogger("monolake.panic")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled; users may subclass it
class CatchPanic(Generic[Req, Resp]):
    __slots__ = ("inner", "on_panic")

    def __init__(self, inner: Service[Req, Resp], on_panic: Callable[[Req, BaseException], Resp]) -> None:
        self.inner = inner
        self.on_panic = on_panic

    async def __call__(self, req: Req) -> Resp:
        try:
            return await self.inner(req)
        except MonolakeError:
            raise
        except Exception as exc:
            return self.panicked(req, exc)

    def panicked(self, req: Req, exc: Exception) -> Resp:
        """``exc`` (not a ``MonolakeError``) escaped ``inner``: log it, answer ``on_panic``. The
        HTTP/1 driver calls this itself when a ``CatchPanic`` is the outermost layer, awaiting
        ``inner`` directly (one coroutine less per request)."""
        log.error("panic while serving %r: %s: %s", req, type(exc).__name__, exc, exc_info=exc)
        return self.on_panic(req, exc)


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled; users may subclass it
class CatchPanicLayer(Layer[Req, Resp]):
    def __init__(self, on_panic: Callable[[Req, BaseException], Resp]) -> None:
        self.on_panic = on_panic

    def layer(self, inner: Service[Req, Resp]) -> CatchPanic[Req, Resp]:
        return CatchPanic(inner, self.on_panic)
