"""Codecs: how messages become frames on a stream and back.

A ``Codec`` frames and serialises one message with ``encode`` and takes complete
messages out of received bytes with ``decode(view, out)``: it appends every whole
message at the front of ``view`` to ``out`` and returns the bytes it consumed,
leaving a partial frame for the next call (the connection keeps those bytes and
calls again once more arrive). ``decode`` is given a ``memoryview`` of the
connection's receive buffer, so a message is parsed from a slice of it, never
from a copy of the whole buffer; it must not keep the view. A frame whose length
prefix says more than ``max_message_size``, a malformed prefix or a body that does
not parse raises ``FrameError`` (the connection is closed with its reason logged).

The codecs shipped are stateless, so one object serves every connection:

- ``ProtobufCodec``: a varint length, then the message (protobuf's
  ``writeDelimitedTo``, prost's ``encode_length_delimited``; protosocket-prost's wire);
- ``MsgpackCodec``: a msgpack uint32 (0xce and 4 bytes big-endian) with the length,
  then the message as msgpack via msgspec (protosocket-messagepack's wire);
- ``BytesCodec``: a 4-byte big-endian length, then the bytes as they are.
"""

from __future__ import annotations

from struct import Struct
from typing import Any, Final, Generic, Protocol, TypeVar

import msgspec

from ...core.errors import RemoteProtocolError
from ...core.proto._varint import SMALL as _ONE_BYTE
from ...core.proto._varint import encode_varint

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

_U32: Final = Struct(">I")
DEFAULT_MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024
"""Bytes of one message (its body, without the length prefix) accepted by default."""
SMALL_READ: Final = 64 * 1024
SMALL_MESSAGE: Final = 1024
"""``BytesCodec`` copies received bytes up to SMALL_READ at once when the first message is under
SMALL_MESSAGE bytes (see its ``decode``)."""
_PREFIX: Final = [_U32.pack(n) for n in range(SMALL_MESSAGE)]
"""The length prefixes of small messages, made once (an index, not a pack call, per message)."""


class FrameError(RemoteProtocolError):
    """The peer sent bytes that are not a frame of this codec (the reason says why)."""


class Codec(Protocol[T]):
    """Frames messages of type ``T`` on a byte stream (see the module docstring)."""

    max_message_size: int

    def encode(self, message: Any, /) -> bytes:
        """The whole frame of ``message`` (its length prefix included)."""
        ...

    def decode(self, view: memoryview, out: list[T], /) -> int:
        """Append the whole messages at the start of ``view`` to ``out``; return the bytes they
        took. Raises FrameError."""
        ...

    # Optional: ``encode_into(message, buf: bytearray, /) -> int`` appends the frame to ``buf`` (the
    # write buffer of the frames of one loop iteration) and returns its size; a connection uses it
    # instead of ``encode`` when the codec has it (no bytes object per frame).


class ProtobufCodec(Generic[T]):
    """Varint length-delimited protobuf messages; decodes into ``message_type`` (a generated
    message class), encodes any protobuf message."""

    __slots__ = ("_parse", "max_message_size", "message_type")

    def __init__(self, message_type: type[T], *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.message_type = message_type
        self.max_message_size = max_message_size
        self._parse: Any = message_type.FromString  # type: ignore[attr-defined]

    def encode(self, message: Any, /) -> bytes:
        body: bytes = message.SerializeToString()
        n = len(body)
        if n < 0x80:
            return _ONE_BYTE[n] + body
        return encode_varint(n) + body

    def decode(self, view: memoryview, out: list[T], /) -> int:
        end = len(view)
        if end <= SMALL_READ:  # one copy of a small read, then bytes reads (compiled: no object per byte)
            return _split_varint(view.tobytes(), end, self.max_message_size, self._parse, self.message_type, out)
        pos = 0
        limit = self.max_message_size
        parse = self._parse
        while pos < end:
            b = view[pos]
            if b < 0x80:  # one-byte length: most small messages
                n = b
                start = pos + 1
            else:
                n = b & 0x7F
                shift = 7
                i = pos + 1
                while True:
                    if i >= end:
                        return pos  # the length itself is not all here yet
                    b = view[i]
                    n |= (b & 0x7F) << shift
                    i += 1
                    if b < 0x80:
                        break
                    shift += 7
                    if shift > 63:
                        raise FrameError("malformed varint length prefix (more than 10 bytes)")
                start = i
            if n > limit:
                raise FrameError(f"message of {n} bytes is over max_message_size ({limit})")
            stop = start + n
            if stop > end:
                return pos
            try:
                out.append(parse(view[start:stop]))
            except Exception as exc:  # the runtime's DecodeError, or a TypeError from a pure-Python one
                raise FrameError(f"undecodable {getattr(self.message_type, '__name__', 'message')}: {exc}") from None
            pos = stop
        return pos


def _split_varint(src: bytes, end: int, limit: int, parse: Any, message_type: Any, out: list[Any]) -> int:
    """``ProtobufCodec.decode`` of a small read, copied to ``src`` (the same loop, on bytes)."""
    pos = 0
    while pos < end:
        b = src[pos]
        if b < 0x80:
            n = b
            start = pos + 1
        else:
            n = b & 0x7F
            shift = 7
            i = pos + 1
            while True:
                if i >= end:
                    return pos
                b = src[i]
                n |= (b & 0x7F) << shift
                i += 1
                if b < 0x80:
                    break
                shift += 7
                if shift > 63:
                    raise FrameError("malformed varint length prefix (more than 10 bytes)")
            start = i
        if n > limit:
            raise FrameError(f"message of {n} bytes is over max_message_size ({limit})")
        stop = start + n
        if stop > end:
            return pos
        try:
            out.append(parse(src[start:stop]))
        except Exception as exc:
            raise FrameError(f"undecodable {getattr(message_type, '__name__', 'message')}: {exc}") from None
        pos = stop
    return pos


class MsgpackCodec(Generic[T]):
    """msgpack messages via msgspec, each after a msgpack uint32 length (0xce + 4 bytes).
    Decodes into ``message_type`` (a msgspec Struct, a dataclass, ``dict``, ``Any``...)."""

    __slots__ = ("_decode", "_encode", "max_message_size", "message_type")

    def __init__(self, message_type: type[T] | Any = Any, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.message_type = message_type
        self.max_message_size = max_message_size
        self._decode = msgspec.msgpack.Decoder(message_type).decode
        self._encode = msgspec.msgpack.Encoder().encode

    def encode(self, message: Any, /) -> bytes:
        body = self._encode(message)
        return b"\xce" + _U32.pack(len(body)) + body

    def decode(self, view: memoryview, out: list[T], /) -> int:
        end = len(view)
        pos = 0
        limit = self.max_message_size
        dec = self._decode
        while end - pos >= 5:
            if view[pos] != 0xCE:
                raise FrameError(f"length prefix is not a msgpack uint32 (0x{view[pos]:02x}, not 0xce)")
            (n,) = _U32.unpack_from(view, pos + 1)
            if n > limit:
                raise FrameError(f"message of {n} bytes is over max_message_size ({limit})")
            stop = pos + 5 + n
            if stop > end:
                break
            try:
                out.append(dec(view[pos + 5 : stop]))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise FrameError(f"undecodable message: {exc}") from None
            pos = stop
        return pos


class BytesCodec:
    """Raw messages: a 4-byte big-endian length, then the bytes (decoded as ``bytes``)."""

    __slots__ = ("max_message_size",)

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size

    def encode(self, message: Any, /) -> bytes:
        n = len(message)
        frame: bytes = (_PREFIX[n] if n < SMALL_MESSAGE else _U32.pack(n)) + message  # one copy: no bytes() first
        return frame

    def encode_into(self, message: Any, buf: bytearray, /) -> int:
        """Append the frame of ``message`` to ``buf`` (a connection frames ``BytesCodec``'s
        messages itself, the same way, and writes a large ``bytes`` without copying it)."""
        n = len(message)
        buf += _PREFIX[n] if n < SMALL_MESSAGE else _U32.pack(n)
        buf += message
        return n + 4

    def decode(self, view: memoryview, out: list[bytes], /) -> int:
        end = len(view)
        if end < 4:
            return 0
        limit = self.max_message_size
        if end <= SMALL_READ:
            # Small messages from a read of at most SMALL_READ bytes: one copy of the read, then a
            # bytes slice per message (cheaper than a memoryview slice and a bytes() of it).
            src = view.tobytes()
            if _u32_at(src, 0) < SMALL_MESSAGE:
                return _split(src, end, limit, out)
        # Larger ones are copied once each, straight from the view.
        unpack = _U32.unpack_from
        pos = 0
        while end - pos >= 4:
            (n,) = unpack(view, pos)
            if n > limit:
                raise FrameError(f"message of {n} bytes is over max_message_size ({limit})")
            stop = pos + 4 + n
            if stop > end:
                break
            out.append(bytes(view[pos + 4 : stop]))
            pos = stop
        return pos


def _u32_at(src: bytes, pos: int) -> int:
    """The big-endian u32 at ``pos`` (compiled: four byte reads, no tuple as from a Struct)."""
    return (src[pos] << 24) | (src[pos + 1] << 16) | (src[pos + 2] << 8) | src[pos + 3]


def _split(src: bytes, end: int, limit: int, out: list[bytes]) -> int:
    """``BytesCodec.decode`` of a small read, copied to ``src``: a slice of it per message."""
    pos = 0
    while end - pos >= 4:
        n = (src[pos] << 24) | (src[pos + 1] << 16) | (src[pos + 2] << 8) | src[pos + 3]
        if n > limit:
            raise FrameError(f"message of {n} bytes is over max_message_size ({limit})")
        stop = pos + 4 + n
        if stop > end:
            break
        out.append(src[pos + 4 : stop])
        pos = stop
    return pos
