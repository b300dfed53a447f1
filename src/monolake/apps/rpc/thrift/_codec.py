"""Struct bodies (thriftpy2) and unframed message boundaries (our own walk). No I/O.

Message heads are ours (``core.proto.thrift``: ``peek_message``, ``message_begin``).
Argument and result structs go through codecs generated per method (``_gen``) where
they can; this is the thriftpy2 path they fall back to, which stays the definition of
the bytes and of the errors (its Cython binary codec, its pure Python compact one).

Unframed ("buffered") Thrift has no length: a message ends where its struct ends.
``message_end`` walks a message's head and struct without building anything, to
find that end in a buffer, or None when the buffer holds only part of it.
"""

from __future__ import annotations

import struct
from typing import Any

from ....core.errors import RemoteProtocolError, Source
from ....core.proto.thrift import ThriftProtocol

_BINARY = ThriftProtocol.BINARY


def _make_codecs() -> tuple[Any, Any, Any, Any]:
    from thriftpy2.protocol import TCompactProtocol, TCyBinaryProtocol
    from thriftpy2.transport import TCyMemoryBuffer, TMemoryBuffer

    return TCyBinaryProtocol, TCyMemoryBuffer, TCompactProtocol, TMemoryBuffer


_CyBin, _CyBuf, _Compact, _Buf = _make_codecs()


def decode_struct(cls: Any, data: bytes, protocol: ThriftProtocol) -> Any:
    """An instance of ``cls`` read from ``data``. Raises whatever thriftpy2 raises on bad bytes."""
    obj = cls()
    if protocol is _BINARY:
        # thriftpy2's Cython reader trusts length fields: over a memory buffer it reads past
        # the end of the bytes (thriftpy2 0.7.1; a string length of 0x7fffffff returns
        # whatever memory follows, or crashes the process). Bounds are checked here first.
        try:
            _bin_struct(data, 0, 0)
        except _Short:
            raise _bad("truncated struct") from None
        obj.read(_CyBin(_CyBuf(data)))
    else:
        obj.read(_Compact(_Buf(data)))
    return obj


def encode_struct(obj: Any, protocol: ThriftProtocol) -> bytes:
    if protocol is _BINARY:
        buf = _CyBuf()
        obj.write(_CyBin(buf))
    else:
        buf = _Buf()
        obj.write(_Compact(buf))
    out: bytes = buf.getvalue()
    return out


class StructCodec:
    """``decode_struct`` / ``encode_struct`` keeping one binary buffer and protocol pair for
    reading and one for writing, instead of two new Cython objects per struct (~0.4 µs of a
    call). One per server or client, used from its one event loop's thread: a struct is read
    or written with no ``await`` in between, so calls of one loop never interleave on it."""

    __slots__ = ("_rbuf", "_rproto", "_wbuf", "_wproto")

    def __init__(self) -> None:
        self._rbuf = _CyBuf()
        self._rproto = _CyBin(self._rbuf)
        self._wbuf = _CyBuf()
        self._wproto = _CyBin(self._wbuf)

    def decode(self, cls: Any, data: bytes, protocol: ThriftProtocol) -> Any:
        if protocol is not _BINARY:
            return decode_struct(cls, data, protocol)
        try:
            _bin_struct(data, 0, 0)  # bounds first: see decode_struct
        except _Short:
            raise _bad("truncated struct") from None
        obj = cls()
        self._rbuf.setvalue(data)
        obj.read(self._rproto)
        return obj

    def encode(self, obj: Any, protocol: ThriftProtocol) -> bytes:
        if protocol is not _BINARY:
            return encode_struct(obj, protocol)
        buf = self._wbuf
        buf.clean()  # what a failed write left
        obj.write(self._wproto)
        out: bytes = buf.getvalue()
        return out


# -- unframed message boundaries ------------------------------------------------------

MAX_DEPTH = 64


class _Short(Exception):
    """The buffer ends inside the message."""


def _bad(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(why, source=Source.DOWNSTREAM)


_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
# binary type id -> fixed width (bool, byte, double, i16, i32, i64, uuid)
_BIN_FIXED = {2: 1, 3: 1, 4: 8, 6: 2, 8: 4, 10: 8, 16: 16}
# compact type id -> binary type id (elements of containers use these ids too)
_COMPACT_FIXED = {3: 1, 7: 8, 13: 16}


def _need(data: bytes, i: int, n: int) -> None:
    if i + n > len(data):
        raise _Short


def _bin_value(data: bytes, i: int, t: int, depth: int) -> int:
    w = _BIN_FIXED.get(t)
    if w is not None:
        _need(data, i, w)
        return i + w
    if t == 11:  # string / binary
        _need(data, i, 4)
        n: int = _I32.unpack_from(data, i)[0]
        if n < 0:
            raise _bad("negative string length")
        _need(data, i + 4, n)
        return i + 4 + n
    if depth > MAX_DEPTH:
        raise _bad("structs nested too deep")
    if t == 12:
        return _bin_struct(data, i, depth + 1)
    if t == 13:
        _need(data, i, 6)
        kt, vt = data[i], data[i + 1]
        n = _I32.unpack_from(data, i + 2)[0]
        if n < 0:
            raise _bad("negative map size")
        i += 6
        for _ in range(n):
            i = _bin_value(data, i, kt, depth + 1)
            i = _bin_value(data, i, vt, depth + 1)
        return i
    if t in (14, 15):
        _need(data, i, 5)
        et = data[i]
        n = _I32.unpack_from(data, i + 1)[0]
        if n < 0:
            raise _bad("negative list size")
        i += 5
        w = _BIN_FIXED.get(et)
        if w is not None:
            _need(data, i, w * n)
            return i + w * n
        for _ in range(n):
            i = _bin_value(data, i, et, depth + 1)
        return i
    raise _bad(f"unknown binary type id {t}")


def _bin_struct(data: bytes, i: int, depth: int) -> int:
    # Strings and fixed-width fields (most of any struct) are stepped over inline: this walk
    # runs on every binary call's arguments, before thriftpy2 decodes them.
    end = len(data)
    fixed = _BIN_FIXED
    while True:
        if i >= end:
            raise _Short
        t = data[i]
        if t == 0:
            return i + 1
        i += 3  # type id, field id
        if t == 11:
            if i + 4 > end:
                raise _Short
            n: int = _I32.unpack_from(data, i)[0]
            if n < 0:
                raise _bad("negative string length")
            i += 4 + n
            if i > end:
                raise _Short
            continue
        w = fixed.get(t)
        if w is not None:
            i += w
            if i > end:
                raise _Short
            continue
        _need(data, i, 0)  # the field header itself
        i = _bin_value(data, i, t, depth)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        _need(data, i, 1)
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise _bad("varint longer than 10 bytes")


def _compact_value(data: bytes, i: int, t: int, depth: int, in_container: bool = False) -> int:
    if t in (1, 2):  # bool: no bytes in a field header, one byte as a container element
        if in_container:
            _need(data, i, 1)
            return i + 1
        return i
    w = _COMPACT_FIXED.get(t)
    if w is not None:
        _need(data, i, w)
        return i + w
    if t in (4, 5, 6):
        return _varint(data, i)[1]
    if t == 8:
        n, i = _varint(data, i)
        _need(data, i, n)
        return i + n
    if depth > MAX_DEPTH:
        raise _bad("structs nested too deep")
    if t == 12:
        return _compact_struct(data, i, depth + 1)
    if t in (9, 10):
        _need(data, i, 1)
        b = data[i]
        n, et = b >> 4, b & 0x0F
        i += 1
        if n == 15:
            n, i = _varint(data, i)
        for _ in range(n):
            i = _compact_value(data, i, et, depth + 1, True)
        return i
    if t == 11:
        n, i = _varint(data, i)
        if n == 0:
            return i
        _need(data, i, 1)
        kt, vt = data[i] >> 4, data[i] & 0x0F
        i += 1
        for _ in range(n):
            i = _compact_value(data, i, kt, depth + 1, True)
            i = _compact_value(data, i, vt, depth + 1, True)
        return i
    raise _bad(f"unknown compact type id {t}")


def _compact_struct(data: bytes, i: int, depth: int) -> int:
    while True:
        _need(data, i, 1)
        b = data[i]
        i += 1
        if b == 0:
            return i
        if not b >> 4:  # long form: the field id follows as a zigzag varint
            i = _varint(data, i)[1]
        i = _compact_value(data, i, b & 0x0F, depth)


def message_end(data: bytes, protocol: ThriftProtocol, max_name: int = 65536) -> int | None:
    """Where the unframed message at the start of ``data`` ends, or None if it is incomplete.

    Raises RemoteProtocolError when the bytes are not a message in ``protocol``.
    """
    try:
        if protocol is _BINARY:
            _need(data, 0, 8)
            word, n = struct.unpack_from("!Ii", data)
            if word & 0xFFFF0000 != 0x80010000:
                raise _bad(f"bad binary protocol version 0x{word >> 16:04x}")
            if not 0 <= n <= max_name:
                raise _bad(f"bad method name length {n}")
            return _bin_struct(data, 8 + n + 4, 0)
        _need(data, 0, 2)
        if data[0] != 0x82:
            raise _bad(f"bad compact protocol id 0x{data[0]:02x}")
        if data[1] & 0x1F != 1:
            raise _bad(f"bad compact protocol version {data[1] & 0x1F}")
        i = _varint(data, 2)[1]
        n, i = _varint(data, i)
        if n > max_name:
            raise _bad(f"bad method name length {n}")
        return _compact_struct(data, i + n, 0)
    except _Short:
        return None
