"""``HttpAppBase``: the part of an HTTP server app that both connection kinds use.

``HttpServerApp`` (``_http.py``) makes the HTTP/1.1 connections and hands a connection
over to ``H2Connection`` (``_h2.py``) on h2c or ALPN ``h2``; both read the app's chain,
settings and in-flight count. Those live here, below both modules, so ``_h2`` types its
app without importing ``_http`` (compiled with mypyc, the attributes stay native).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

from ..proto.http1 import Request, Response
from ..service import Service, lane_of
from ..service._lane import Dispatch
from ..service.layers._catch_panic import CatchPanic
from ._lifecycle import Abortable, ConnectionServer
from ._settings import HttpSettings as ServerConfig

if TYPE_CHECKING:
    from ..tls import ServerTlsContexts

C = TypeVar("C", bound=Abortable)

OnComplete = Callable[[Request, Response, int], None]
"""Called once a response is fully written: (request, response, body bytes sent)."""


class HttpAppBase(ConnectionServer[C]):
    """One HTTP server's chain, settings and requests in flight (see ``HttpServerApp``)."""

    def __init__(
        self,
        name: str,
        cfg: ServerConfig,
        service: Service[Request, Response],
        *,
        on_complete: OnComplete | None = None,
        on_close: Callable[[], None] | None = None,
        tls: ServerTlsContexts | None = None,
    ) -> None:
        super().__init__(name, tls, 1.0)
        self.cfg = cfg
        self.service = service
        self.panic: CatchPanic[Request, Response] | None = None
        self.inner: Service[Request, Response] = service
        self.lane: Dispatch | None = None
        self.install(service)
        self.on_complete = on_complete
        self.on_close = on_close
        self.in_flight = 0

    def install(self, service: Service[Request, Response]) -> None:
        """Serve with ``service`` from now on, its shape resolved here once (not per request): an
        outermost ``CatchPanic`` is done by the HTTP/1 driver itself (``panic``, awaiting ``inner``:
        one coroutine level less; exact type, as a subclass may override ``__call__``), and
        ``lane`` is ``inner``'s callback lane (``LaneService.dispatch``) when it offers one."""
        self.service = service
        kind: object = type(service)
        panic = self.panic = cast("CatchPanic[Request, Response]", service) if kind is CatchPanic else None
        self.inner = service if panic is None else panic.inner
        self.lane = lane_of(self.inner)

    def request_done(self) -> None:
        self.in_flight -= 1
