"""The server name (SNI) of a TLS ClientHello, read from the first bytes of a connection, without I/O.

Theory of operation. A TLS server that picks its certificate by server name needs the
name before it builds its handshake state. The stdlib ``ssl`` module asks OpenSSL for a
callback; the rustls backend (``rtls``) offers none, so its listener reads the
ClientHello itself: ``server_name(data)`` looks at the bytes received so far and
returns ``(True, name)`` once it has the whole ClientHello (``name`` None when it sends
no host name), or ``(False, None)`` while more bytes are needed. Bytes that are not a
ClientHello, or a malformed one, give ``(True, None)``: the TLS library then sees the
same bytes and rejects them with its own alert, so this module never has to.

Layout (RFC 8446 §5.1 records, §4 handshake messages, §4.1.2 ClientHello; RFC 6066 §3
server_name): a ClientHello may be split over several handshake records (§5.1), which
are joined here; the message is bounded by ``MAX_HELLO`` bytes.
"""

from __future__ import annotations

MAX_HELLO = 1 << 16
"""A ClientHello longer than this is left to the TLS library (no name is read from it)."""

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_SERVER_NAME = 0x0000
_HOST_NAME = 0x00


def server_name(data: bytes | bytearray) -> tuple[bool, str | None]:
    """``(complete, name)`` for the bytes a client sent first (see the module docstring)."""
    hello = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            return False, None
        if data[pos] != _HANDSHAKE:
            return True, None
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if length == 0:  # RFC 8446 §5.1: no zero-length handshake fragments
            return True, None
        hello += data[pos + 5 : pos + 5 + length]  # a record still arriving counts with what it has
        if len(hello) >= 4:
            if hello[0] != _CLIENT_HELLO:
                return True, None
            size = int.from_bytes(hello[1:4], "big")
            if size > MAX_HELLO:
                return True, None
            if len(hello) >= 4 + size:
                return True, _name_in(memoryview(hello)[4 : 4 + size])
        if len(data) - pos - 5 < length:
            return False, None
        pos += 5 + length


def _name_in(body: memoryview) -> str | None:
    try:
        i = 2 + 32  # legacy_version, random
        i += 1 + body[i]  # legacy_session_id
        i += 2 + int.from_bytes(body[i : i + 2], "big")  # cipher_suites
        i += 1 + body[i]  # legacy_compression_methods
        end = i + 2 + int.from_bytes(body[i : i + 2], "big")
        i += 2
        while i + 4 <= end:
            kind = int.from_bytes(body[i : i + 2], "big")
            size = int.from_bytes(body[i + 2 : i + 4], "big")
            i += 4
            if kind == _SERVER_NAME:
                j, stop = i + 2, i + size
                while j + 3 <= stop:
                    name_type, length = body[j], int.from_bytes(body[j + 1 : j + 3], "big")
                    if name_type == _HOST_NAME:
                        return bytes(body[j + 3 : j + 3 + length]).decode("ascii").lower()
                    j += 3 + length
                return None
            i += size
    except (IndexError, UnicodeDecodeError):
        return None
    return None
