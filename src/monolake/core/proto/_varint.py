"""Unsigned base-128 varints (LEB128), as protobuf, the Thrift compact protocol and THeader write them.

One encoder for every codec that writes them (the streams framing, the Thrift compact codecs, the
OTLP span export). The decoders stay with their codecs: each answers a bad varint with its own
protocol's error, and each bounds its input differently.
"""

from __future__ import annotations

from typing import Final

SMALL: Final = tuple(bytes((i,)) for i in range(128))
"""The one-byte varints, 0..127: ``SMALL[n]`` without building bytes."""


def encode_varint(n: int) -> bytes:
    """``n`` (>= 0) as a varint."""
    if n < 0x80:
        return SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
