"""How a server answers a request it could not serve, and the log lines that say why.

Shared by the HTTP/1.1 and HTTP/2 drivers: the status for each failure (a ``ProtocolError`` carries
its own; a shed request 503; an upstream that could not be reached 502, one too slow 504; anything
else 500), the plain-text answer, and for a gRPC call the trailers-only answer a gRPC client can
read. Lines a client can cause are logged at a bounded rate (``bad_request_log``).
"""

from __future__ import annotations

import logging

from .._ratelimit import RateLimitedLog
from ..errors import (
    ConnectError,
    ConnectTimeout,
    DeadlineExceeded,
    MonolakeError,
    NetworkError,
    Overloaded,
    ProtocolError,
    Source,
    TimeoutError,
    UpstreamError,
)
from ..proto.grpc import failure_response as grpc_failure
from ..proto.http1 import Headers, Request, Response
from ..proto.http1._serialize import reason_phrase

log = logging.getLogger("monolake.core.server")
bad_request_log = RateLimitedLog(log, "bad requests", level=logging.INFO, burst=10, interval=1.0)


def status_for(exc: BaseException) -> int:
    """The HTTP status a failed request is answered with."""
    if isinstance(exc, ProtocolError):
        return exc.status_hint
    if isinstance(exc, Overloaded):
        return 503
    if isinstance(exc, DeadlineExceeded):  # a service's own deadline (503), or a proxy's (504)
        return exc.status_hint
    if isinstance(exc, ConnectError | ConnectTimeout):
        return 502
    if isinstance(exc, TimeoutError):
        return 504
    if isinstance(exc, NetworkError | UpstreamError):
        return 502
    return 500


def error_response(status: int, *, close: bool = False) -> Response:
    body = b"%d %s\n" % (status, reason_phrase(status))
    headers = Headers([(b"Content-Type", b"text/plain"), (b"Server", b"monolake")])
    return Response(status, headers, body, keep_alive=not close)


def failure_response(req: Request, exc: BaseException, peer: str, server: str) -> Response:
    """Log why the service failed ``req`` and build its answer: ``error_response(status_for(exc))``
    (closing the connection after a downstream protocol error), or for a gRPC call, which
    cannot read a 502, a trailers-only response carrying the gRPC status (``proto.grpc``)."""
    status = status_for(exc)
    where = exc.source.value if isinstance(exc, MonolakeError) else "internal"
    level = logging.ERROR if status == 500 else logging.WARNING
    downstream = isinstance(exc, ProtocolError) and exc.source is Source.DOWNSTREAM
    args = (
        status,
        req.method.decode(),
        req.original_target.decode("latin-1"),
        peer,
        server,
        where,
        type(exc).__name__,
        exc,
    )
    if downstream:  # the client's doing (a body over the limit, too slow...): rate-limited
        bad_request_log.log("%d for %s %s peer=%s server=%s (%s error: %s: %s)", *args, level=level)
    else:
        log.log(level, "%d for %s %s peer=%s server=%s (%s error: %s: %s)", *args, exc_info=status == 500)
    ctype = req.headers.get(b"content-type")
    if ctype is not None and ctype[:16].lower() == b"application/grpc":
        return grpc_failure(exc)
    return error_response(status, close=downstream)
