"""``HttpApp`` and ``StreamApp``: a user's own service and where it listens, as ``serve``
(``_serve.py``) runs it. Kept apart from ``serve`` so that the app builders below it (a gRPC
servicer served as an ``HttpApp``) need not import the module that imports them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..core.proto.http1 import Request, Response
from ..core.server._service_app import HttpService
from ..core.server._stream_app import Connection, StreamService
from ..core.service import Factory, Layer
from .config import Server, ServerTls

H = TypeVar("H", bound=HttpService)
T = TypeVar("T", bound=StreamService)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpApp(Generic[H]):
    """An HTTP server running ``factory``'s service (HTTP/1.1, and HTTP/2 by h2c or ALPN).

    ``listen``: "host:port" or "unix:/path"; ``layers``: outermost first; ``tls``: the
    listener's certificates (``monolake.apps.config.ServerTls``); ``settings``: a
    ``monolake.apps.config.Server`` for limits and timeouts (``request_timeout`` is the
    handler's deadline: 503 past it; ``max_concurrency`` sheds with 503), its
    ``listener``, ``proxy_type`` and ``tls`` being replaced by this app's.
    """

    name: str
    listen: str
    factory: Factory[H]
    layers: Sequence[Layer[Request, Response]] = ()
    tls: ServerTls | None = None
    settings: Server | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamApp(Generic[T]):
    """A raw byte-stream server: ``factory``'s service is called once per connection
    with a ``Connection``. ``listen``, ``layers``, ``tls`` and ``settings`` as ``HttpApp``'s
    (of ``settings``, ``backlog`` applies)."""

    name: str
    listen: str
    factory: Factory[T]
    layers: Sequence[Layer[Connection, None]] = ()
    tls: ServerTls | None = None
    settings: Server | None = None
