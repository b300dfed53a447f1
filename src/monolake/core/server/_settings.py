"""What each server driver reads of its settings, as read-only protocols.

The drivers know nothing of TOML: they take any object with these attributes. The proxy passes its
config tables (``apps.config.Server`` satisfies every protocol here as it is, with no copy), and a
user's own service passes whatever it builds. Typing only: nothing here runs per request.
"""

from __future__ import annotations

from typing import Protocol

from ..tls_settings import ServerTls


class HttpLimits(Protocol):
    """Sizes a client's request may have (HTTP/1.1 and HTTP/2)."""

    @property
    def max_header_bytes(self) -> int:
        """Request line plus headers; more is answered 431."""
        ...

    @property
    def max_request_line_bytes(self) -> int:
        """Request line alone; more is answered 414."""
        ...

    @property
    def max_headers(self) -> int: ...

    @property
    def max_body_bytes(self) -> int:
        """Larger bodies are answered 413; 0 means unlimited."""
        ...

    @property
    def max_pipelined(self) -> int:
        """Queued pipelined requests (or Thrift calls) before a connection stops reading."""
        ...


class Http2Settings(Protocol):
    """HTTP/2 on an HTTP listener (RFC 9113 §6.5.2 settings and abuse bounds)."""

    @property
    def enabled(self) -> bool: ...

    @property
    def max_concurrent_streams(self) -> int: ...

    @property
    def initial_window_size(self) -> int: ...

    @property
    def max_frame_size(self) -> int: ...

    @property
    def max_header_list_size(self) -> int: ...

    @property
    def max_resets_per_10s(self) -> int: ...

    @property
    def max_buffered_bytes(self) -> int:
        """Response bytes a connection may hold waiting for the client's flow-control window."""
        ...

    @property
    def max_worker_buffered_bytes(self) -> int:
        """The same, for all connections of a worker (beyond it, stalled streams are reset)."""
        ...

    @property
    def send_timeout(self) -> float:
        """Seconds without window progress before a stalled stream is reset."""
        ...


class StreamSettings(Protocol):
    """A raw byte-stream listener (tcp relay): timeouts in seconds and the PROXY protocol."""

    @property
    def header_timeout(self) -> float:
        """Seconds for a PROXY protocol header to arrive."""
        ...

    @property
    def idle_timeout(self) -> float:
        """Seconds without a byte either way before a connection is closed."""
        ...

    @property
    def proxy_protocol(self) -> str:
        """ "off", "v1", "v2" or "optional"."""
        ...

    @property
    def splice_after(self) -> int: ...


class HttpSettings(Protocol):
    """An HTTP/1.1 (+ HTTP/2) listener. Timeouts are seconds."""

    @property
    def keepalive_timeout(self) -> float: ...

    @property
    def header_timeout(self) -> float:
        """Deadline for a whole request head from its first byte (408)."""
        ...

    @property
    def body_timeout(self) -> float:
        """Seconds without request body progress (408, or a close once a response started)."""
        ...

    @property
    def idle_timeout(self) -> float:
        """Seconds without a byte either way in a WebSocket/CONNECT tunnel."""
        ...

    @property
    def splice(self) -> bool: ...

    @property
    def splice_after(self) -> int: ...

    @property
    def proxy_protocol(self) -> str:
        """ "off", "v1", "v2" or "optional": a PROXY header before the first request."""
        ...

    @property
    def limits(self) -> HttpLimits: ...

    @property
    def http2(self) -> Http2Settings: ...


class ThriftSettings(Protocol):
    """A Thrift framing listener."""

    @property
    def header_timeout(self) -> float: ...

    @property
    def idle_timeout(self) -> float: ...

    @property
    def proxy_protocol(self) -> str: ...

    @property
    def max_frame_size(self) -> int: ...

    @property
    def limits(self) -> HttpLimits: ...


class ServiceSettings(HttpSettings, Protocol):
    """A user's own HTTP service: the listener's settings, plus its bounds and TLS."""

    @property
    def max_concurrency(self) -> int | None:
        """Requests in flight per worker; beyond it they are answered 503."""
        ...

    @property
    def request_timeout(self) -> float | None:
        """Seconds a request may take (503 "handler timed out" beyond it)."""
        ...

    @property
    def tls(self) -> ServerTls | None: ...


class TlsListenerSettings(Protocol):
    """A listener that may serve TLS (a user's raw stream service)."""

    @property
    def tls(self) -> ServerTls | None: ...
