"""HTTP/1.1 heads and chunk framing as bytes, without I/O.

Heads are built as one ``bytes`` with a single join: status lines are precomputed
per status code, header lines are the pairs as received. Chunk framing returns the
pieces for ``writelines`` so a forwarded chunk is never copied (RFC 9112 §7.1).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Final

from ..http._message import Headers


def _native_head() -> Callable[[bytes, bytes, list[tuple[bytes, bytes]], bytes], bytes | None] | None:
    try:
        from ._h1req import request_head as native
    except ImportError:  # not built (no C compiler at install): the Python join below
        return None
    return native


_NATIVE_HEAD: Final = _native_head()
"""``_h1req.request_head``: a parsed request head sized and copied once, in C (or None)."""

# Final module constants: mypyc inlines them (here and in the compiled modules that import
# them) or keeps them in C statics; a plain module global is a dict lookup at every use.
_REASONS: Final[dict[int, bytes]] = {s.value: s.phrase.encode() for s in HTTPStatus}
_STATUS_LINES: Final[dict[int, bytes]] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in _REASONS.items()
}

CRLF: Final = b"\r\n"
_CRLF_JOIN: Final = CRLF.join
_SEP_JOIN: Final = b": ".join
LAST_CHUNK: Final = b"0\r\n\r\n"
CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def status_line(status: int, reason: bytes = b"") -> bytes:
    line = _STATUS_LINES.get(status)
    # A forwarded response carries the upstream's reason, most often the standard one: its
    # prebuilt line, not a format per response.
    if line is None or (reason and reason != _REASONS[status]):
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b"Unknown"))
    return line


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def response_head(status: int, headers: Headers, framing: bytes, reason: bytes = b"") -> bytes:
    """Status line, headers, then ``framing`` (prebuilt Content-Length/Transfer-Encoding/
    Connection lines, each ending in CRLF), then the blank line."""
    block = headers.block
    if block is not None:
        return b"".join((status_line(status, reason), block, framing, CRLF))
    pairs = headers.pairs()
    if not pairs:
        return b"".join((status_line(status, reason), framing, CRLF))
    lines = _CRLF_JOIN(map(_SEP_JOIN, pairs))
    return b"".join((status_line(status, reason), lines, CRLF, framing, CRLF))


def request_head(method: bytes, target: bytes, headers: Headers, framing: bytes) -> bytes:
    """Request line (always HTTP/1.1), headers, ``framing`` lines, blank line."""
    block = headers.block
    if block is not None:
        return b"".join((method, b" ", target, b" HTTP/1.1\r\n", block, framing, CRLF))
    pairs = headers.pairs()
    if _NATIVE_HEAD is not None:
        # One C call: no list of four parts per field, no join (~3x less than the loop below
        # for a 9-field head). None for pairs it does not take as they are (not bytes tuples).
        head = _NATIVE_HEAD(method, target, pairs, framing)
        if head is not None:
            return head
    # One flat list and one join: compiled, the loop is C and each field costs four appends,
    # not a bytes of its own per line plus a second join (~20% less for a browser-sized head).
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in pairs:
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(CRLF)
    parts.append(framing)
    parts.append(CRLF)
    return b"".join(parts)


def content_length_line(n: int) -> bytes:
    return b"Content-Length: %d\r\n" % n


CHUNKED_LINE: Final = b"Transfer-Encoding: chunked\r\n"
CLOSE_LINE: Final = b"Connection: close\r\n"
KEEP_ALIVE_LINE: Final = b"Connection: keep-alive\r\n"


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """The three pieces of one chunk; write them with writelines."""
    return (b"%x\r\n" % len(data), data, CRLF)
