"""gRPC over HTTP/2 as a server or proxy sees it: deadlines in, statuses out (no I/O).

A gRPC call is an HTTP/2 POST with ``content-type: application/grpc[+proto|...]``;
the proxy forwards it like any request (the HTTP/2 client keeps ``te: trailers``
and hands the upstream's trailers, with grpc-status and grpc-message, to the
client). Two things are gRPC-specific:

- ``grpc-timeout`` (the client's deadline) bounds the upstream stream: the
  HTTP/2 client resets the stream when it passes and ends the call with
  DEADLINE_EXCEEDED (``deadline_of``). The upstream is told what is left of it
  when the call goes out (``with_remaining_timeout``), not the original budget.
- When the proxy itself fails a call (no connection to the upstream, a timeout,
  an internal error), a gRPC client cannot read a 502 or 504: it gets HTTP 200 with
  a trailers-only response carrying the status (``failure_response``): 14
  UNAVAILABLE, 4 DEADLINE_EXCEEDED or 13 INTERNAL.
  See https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md.
"""

from __future__ import annotations

import math

from ..errors import (
    ConnectError,
    ConnectTimeout,
    DeadlineExceeded,
    NetworkError,
    Overloaded,
    ReadTimeout,
    Source,
    TimeoutError,
    UpstreamError,
)
from .http1 import Headers, Response
from .http2 import HeaderList

OK = 0
DEADLINE_EXCEEDED = 4
INTERNAL = 13
UNAVAILABLE = 14

_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def is_grpc(content_type: bytes | None) -> bool:
    """True for ``application/grpc`` and its ``+proto``/``;...`` variants."""
    return content_type is not None and content_type[:16].lower() == b"application/grpc"


def parse_timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value (1 to 8 digits and a unit); None when malformed."""
    digits = value[:-1]
    unit = _UNITS.get(value[-1]) if value else None
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


def deadline_of(headers: Headers, now: float) -> float | None:
    """The loop time at which the call's ``grpc-timeout`` passes, or None."""
    value = headers.get(b"grpc-timeout")
    if value is None:
        return None
    seconds = parse_timeout(value.strip())
    return None if seconds is None else now + seconds


_NOISE = 1e-7
"""Seconds of float noise ``encode_timeout`` does not round up."""


def encode_timeout(seconds: float) -> bytes:
    """A ``grpc-timeout`` value for ``seconds`` (> 0), in the finest unit that fits 8 digits,
    rounded up so the upstream never sees less time than is left, less float noise: up to 100 ns
    is not rounded up. A deadline of ``now + 0.3`` read back at the same ``now`` is 0.3 plus a few
    units in the last place of ``now``, a loop time that grows with uptime (7e-12 s after ten hours,
    4e-9 s after a year), and must go out as the client's own 300000u, not 300001u."""
    seconds -= _NOISE
    for unit, scale in ((b"u", 1e6), (b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60), (b"H", 1 / 3600)):
        n = math.ceil(seconds * scale)
        if n <= 99_999_999:
            return b"%d%s" % (max(n, 1), unit)
    return b"99999999H"


def with_remaining_timeout(headers: HeaderList, deadline: float, now: float) -> HeaderList:
    """``headers`` with grpc-timeout set to what is left of the call's deadline at ``now``
    (gRPC proxies pass the remaining time on, not the client's original budget).
    Raises ReadTimeout when nothing is left."""
    left = deadline - now
    if left <= 0:
        raise ReadTimeout("gRPC deadline passed before the call reached the upstream")
    value = encode_timeout(left)
    return [(name, value) if name == b"grpc-timeout" else (name, v) for name, v in headers]


def status_of(exc: BaseException) -> tuple[int, str]:
    """The gRPC status (and message) for a call the proxy failed with ``exc``."""
    if isinstance(exc, ConnectError | ConnectTimeout):
        return UNAVAILABLE, "monolake: cannot connect to the upstream"
    if isinstance(exc, DeadlineExceeded) and exc.source is not Source.UPSTREAM:
        return DEADLINE_EXCEEDED, "monolake: service deadline exceeded"  # the service's own, not an upstream's
    if isinstance(exc, TimeoutError):
        return DEADLINE_EXCEEDED, "monolake: upstream deadline exceeded"
    if isinstance(exc, NetworkError | UpstreamError):
        return UNAVAILABLE, "monolake: upstream failed"
    if isinstance(exc, Overloaded):
        return UNAVAILABLE, "monolake: overloaded"
    return INTERNAL, "monolake: internal error"


def _percent_encode(text: str) -> bytes:
    """grpc-message encoding: printable ASCII except '%' as is, other bytes %XX."""
    out = bytearray()
    for b in text.encode():
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def failure_response(exc: BaseException) -> Response:
    """A trailers-only gRPC response (HTTP 200, the status in the only HEADERS frame)."""
    code, message = status_of(exc)
    headers = Headers(
        [
            (b"content-type", b"application/grpc"),
            (b"grpc-status", b"%d" % code),
            (b"grpc-message", _percent_encode(message)),
        ]
    )
    return Response(200, headers, None)
