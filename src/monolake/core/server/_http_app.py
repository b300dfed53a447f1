"""``HttpAppBase``: the part of an HTTP server app that both connection kinds use.

``HttpServerApp`` (``_http.py``) makes the HTTP/1.1 connections and hands a connection
over to ``H2Connection`` (``_h2.py``) on h2c or ALPN ``h2``; both read the app's chain,
settings and in-flight count. Those live here, below both modules, so ``_h2`` types its
app without importing ``_http`` (compiled with mypyc, the attributes stay native).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..proto.http1 import Request, Response
from ..service import Service
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
        self.on_complete = on_complete
        self.on_close = on_close
        self.in_flight = 0

    def request_done(self) -> None:
        self.in_flight -= 1
