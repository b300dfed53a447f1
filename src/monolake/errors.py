"""One exception tree for the whole project.

Every error says where it came from (``source``: downstream, upstream or internal)
and whether retrying the operation is safe (``retry_safe``), following Pingora's
ErrorSource / RetryType split. Library exceptions are translated to these once, at
the I/O boundary (server/ and client/), never deeper.
"""

from __future__ import annotations

from enum import Enum


class Source(Enum):
    DOWNSTREAM = "downstream"
    UPSTREAM = "upstream"
    INTERNAL = "internal"


class MonolakeError(Exception):
    """Base of every error monolake raises on purpose."""

    source: Source = Source.INTERNAL
    retry_safe: bool = False

    def __init__(self, message: str = "", *, source: Source | None = None, retry_safe: bool | None = None):
        super().__init__(message)
        if source is not None:
            self.source = source
        if retry_safe is not None:
            self.retry_safe = retry_safe


class ConfigError(MonolakeError):
    """A configuration is invalid. ``path`` is the key path (``servers.web.routes[0].path``)."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class ConfigErrors(ConfigError):
    """Several config errors found in one pass; ``errors`` lists each in file order.

    ``path`` and ``reason`` are the first's (so code that shows one error still can);
    the message names them all on one line (a log line).
    """

    def __init__(self, errors: list[ConfigError]):
        self.errors = errors
        super().__init__(errors[0].path, errors[0].reason)
        self.args = (f"{len(errors)} errors: " + "; ".join(str(e) for e in errors),)


class ProtocolError(MonolakeError):
    """The peer or we broke the wire protocol. ``status_hint`` is the HTTP status to answer with."""

    status_hint: int = 400

    def __init__(self, message: str = "", *, status_hint: int | None = None, source: Source | None = None):
        super().__init__(message, source=source)
        if status_hint is not None:
            self.status_hint = status_hint


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


class NetworkError(MonolakeError):
    """A socket operation failed."""

    source = Source.UPSTREAM


class ConnectError(NetworkError):
    """Could not open a connection; nothing was sent, so a retry is always safe."""

    retry_safe = True


class ReadError(NetworkError):
    """Reading from a peer failed or hit EOF early."""


class WriteError(NetworkError):
    """Writing to a peer failed (it closed or reset the connection while we were sending).
    Not retry safe: part of the request may have been sent, and a streamed body is spent."""


class TimeoutError(MonolakeError):
    """A deadline passed. Shadows the builtin on purpose, as httpcore does."""

    source = Source.UPSTREAM


class ConnectTimeout(TimeoutError):
    retry_safe = True


class ReadTimeout(TimeoutError):
    """The peer sent nothing for too long."""


class PoolTimeout(TimeoutError):
    """No connection of the pool's key became free within ``pool_timeout``; nothing was sent."""

    source = Source.INTERNAL
    retry_safe = True


class DeadlineExceeded(TimeoutError):
    """A service's own deadline passed (a ``Timeout`` layer's, a server's ``request_timeout``):
    not an upstream's doing, so source internal and answered 503 (``status_hint``). A proxy's
    deadline bounds its upstream's answer: raised there with source upstream and 504."""

    source = Source.INTERNAL
    status_hint: int = 503

    def __init__(self, message: str = "", *, source: Source | None = None, status_hint: int | None = None):
        super().__init__(message, source=source)
        if status_hint is not None:
            self.status_hint = status_hint


class UpstreamError(MonolakeError):
    """The upstream answered in a way we cannot forward (bad response framing, reset mid-body)."""

    source = Source.UPSTREAM


class Overloaded(MonolakeError):
    """Shed by a concurrency limit before the inner service saw the request (so a retry,
    elsewhere or later, is safe). Drivers answer it with 503 (gRPC: UNAVAILABLE)."""

    retry_safe = True
