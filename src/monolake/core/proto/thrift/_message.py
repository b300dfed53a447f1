"""Thrift message heads: peek, rewrite the sequence id, build exception replies. No I/O.

A proxy needs three things from a Thrift message and nothing else: the method
name (to route), the message type (a oneway call expects no reply) and the
sequence id (to match a reply to its call). ``peek_message`` reads exactly those
from the message head without decoding the arguments, and records where the
sequence id sits so that ``rewrite_seq_id`` (in ``_frame``) can replace it.

Binary protocol (strict): ``80 01 00 TT`` · i32 name length · name · i32 seq id;
the old non-strict form is i32 name length · name · i8 type · i32 seq id.
Compact protocol: ``82`` · ``TTT00001`` (type in the top three bits, version 1) ·
varint seq id · varint name length · name. Compact sequence ids are unsigned
32-bit varints on the wire, so rewriting one may change the frame's length.

A ``TApplicationException`` reply is the struct ``{1: string message, 2: i32
type}`` in a message of type EXCEPTION with the call's name and sequence id
(Apache Thrift ``TApplicationException``; the type codes are ``AppError``).
"""

from __future__ import annotations

import struct
from enum import IntEnum

from ...errors import RemoteProtocolError, Source
from .._varint import encode_varint as encode_varint


class ThriftProtocol(IntEnum):
    """A message encoding; the values are the protocol ids TTHeader and THeader carry."""

    BINARY = 0
    COMPACT = 2


class MessageType(IntEnum):
    CALL = 1
    REPLY = 2
    EXCEPTION = 3
    ONEWAY = 4


class AppError(IntEnum):
    """``TApplicationException`` type codes (Apache Thrift)."""

    UNKNOWN = 0
    UNKNOWN_METHOD = 1
    INVALID_MESSAGE_TYPE = 2
    WRONG_METHOD_NAME = 3
    BAD_SEQUENCE_ID = 4
    MISSING_RESULT = 5
    INTERNAL_ERROR = 6
    PROTOCOL_ERROR = 7
    INVALID_TRANSFORM = 8
    INVALID_PROTOCOL = 9
    UNSUPPORTED_CLIENT_TYPE = 10


# Enum members looked up on the class cost a dict walk each time; the hot paths use these.
_BINARY = ThriftProtocol.BINARY
_COMPACT = ThriftProtocol.COMPACT

_VERSION_1 = 0x80010000
_VERSION_MASK = 0xFFFF0000
_COMPACT_ID = 0x82
_COMPACT_VERSION = 1
_I32 = struct.Struct("!i")
_BIN_HEAD = struct.Struct("!Ii")  # version|type, name length


def _bad(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(why, source=Source.DOWNSTREAM)


class MessageHead:
    """What ``peek_message`` found. Offsets are absolute positions in the buffer peeked.

    A plain slotted class rather than a frozen dataclass: it is made once per
    message on the proxy's hot path, where a frozen dataclass's ``__init__``
    costs several times more.
    """

    __slots__ = ("end", "name", "seq_id", "seq_offset", "seq_size", "type")

    def __init__(self, name: str, type: int, seq_id: int, seq_offset: int, seq_size: int, end: int) -> None:
        self.name = name
        self.type = type
        """A ``MessageType`` value (kept as the plain int read)."""
        self.seq_id = seq_id
        self.seq_offset = seq_offset
        self.seq_size = seq_size
        """4 for binary; the varint's length for compact."""
        self.end = end
        """Where the message body (the arguments or result struct) starts."""

    def __repr__(self) -> str:
        return f"<MessageHead {self.name!r} type={self.type} seq={self.seq_id}>"


def _varint(data: bytes, i: int, end: int) -> tuple[int, int]:
    """An unsigned varint at ``i``: (value, next offset). At most 5 bytes (32 bits)."""
    value = 0
    shift = 0
    while True:
        if i >= end:
            raise _bad("truncated varint in a compact message head")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 28:
            raise _bad("varint longer than 5 bytes in a compact message head")


def _name(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise _bad("method name is not UTF-8") from None


def peek_message(
    data: bytes, offset: int, protocol: ThriftProtocol, end: int = -1, *, decode_name: bool = True
) -> MessageHead:
    """Read the message head at ``data[offset:end]`` (``end`` -1: the whole buffer).

    Raises RemoteProtocolError if the bytes are not a complete head in that
    protocol. Never reads past the head. With ``decode_name`` false the name is
    left "" (a reply is matched by its sequence id alone; decoding the name is a
    third of the cost).
    """
    if end < 0:
        end = len(data)
    if protocol is _BINARY:
        if end - offset < 8:
            raise _bad("truncated binary message head")
        word, n = _BIN_HEAD.unpack_from(data, offset)
        if word & _VERSION_MASK == _VERSION_1:
            mtype = word & 0xFF
            start = offset + 8
            seq_offset = start + n
            if n < 0 or seq_offset + 4 > end:
                raise _bad("bad method name length in a binary message head")
            if decode_name:
                try:
                    name = data[start:seq_offset].decode()
                except UnicodeDecodeError:
                    raise _bad("method name is not UTF-8") from None
            else:
                name = ""
        elif word < 0x80000000:  # non-strict: the first word is the name length
            n = word
            start = offset + 4
            if start + n + 5 > end:
                raise _bad("bad method name length in a non-strict binary message head")
            name = _name(data[start : start + n]) if decode_name else ""
            mtype = data[start + n]
            seq_offset = start + n + 1
        else:
            raise _bad(f"bad binary protocol version 0x{word >> 16:04x}")
        if not 1 <= mtype <= 4:
            raise _bad(f"bad message type {mtype}")
        (seq,) = _I32.unpack_from(data, seq_offset)
        return MessageHead(name, mtype, seq, seq_offset, 4, seq_offset + 4)
    if end - offset < 4:
        raise _bad("truncated compact message head")
    if data[offset] != _COMPACT_ID:
        raise _bad(f"bad compact protocol id 0x{data[offset]:02x}")
    b = data[offset + 1]
    if b & 0x1F != _COMPACT_VERSION:
        raise _bad(f"bad compact protocol version {b & 0x1F}")
    mtype = b >> 5
    if not 1 <= mtype <= 4:
        raise _bad(f"bad message type {mtype}")
    seq_offset = offset + 2
    seq, i = _varint(data, seq_offset, end)
    n = data[i] if i < end else 0x80
    if n < 0x80:  # the usual one-byte name length, without a call
        start = i + 1
    else:
        n, start = _varint(data, i, end)
    if start + n > end:
        raise _bad("bad method name length in a compact message head")
    if seq >= 0x80000000:
        seq -= 0x100000000  # an i32 on the wire as its unsigned bits
    name = _name(data[start : start + n]) if decode_name else ""
    return MessageHead(name, mtype, seq, seq_offset, i - seq_offset, start + n)


def encode_seq_id(protocol: ThriftProtocol, seq_id: int) -> bytes:
    """The wire form of a sequence id (an i32) in ``protocol``."""
    if protocol is _BINARY:
        return _I32.pack(seq_id)
    return encode_varint(seq_id & 0xFFFFFFFF)


def message_begin(name: str, mtype: int, seq_id: int, protocol: ThriftProtocol) -> bytes:
    """A strict message head, as Apache Thrift and thriftpy2 write it."""
    raw = name.encode()
    if protocol is _BINARY:
        return _BIN_HEAD.pack(_VERSION_1 | mtype, len(raw)) + raw + _I32.pack(seq_id)
    return (
        bytes((_COMPACT_ID, (mtype << 5) | _COMPACT_VERSION))
        + encode_varint(seq_id & 0xFFFFFFFF)
        + encode_varint(len(raw))
        + raw
    )


def application_exception(name: str, seq_id: int, protocol: ThriftProtocol, kind: int, message: str) -> bytes:
    """A complete EXCEPTION message carrying ``TApplicationException(kind, message)``."""
    text = message.encode()
    head = message_begin(name, MessageType.EXCEPTION, seq_id, protocol)
    if protocol is _BINARY:
        # field 1 string, field 2 i32, stop
        return head + b"\x0b\x00\x01" + _I32.pack(len(text)) + text + b"\x08\x00\x02" + _I32.pack(kind) + b"\x00"
    zigzag = (kind << 1) ^ (kind >> 31)
    # compact field headers: delta 1 | type 8 (binary), delta 1 | type 5 (i32)
    return head + b"\x18" + encode_varint(len(text)) + text + b"\x15" + encode_varint(zigzag & 0xFFFFFFFF) + b"\x00"


def parse_application_exception(data: bytes, offset: int, protocol: ThriftProtocol) -> tuple[int, str]:
    """(type, message) of the ``TApplicationException`` struct at ``offset`` (after the head).

    Unknown fields are not expected in these replies; a struct with any raises
    RemoteProtocolError, as does a truncated one.
    """
    kind = AppError.UNKNOWN.value
    message = ""
    binary = protocol is _BINARY
    string_type, i32_type = (11, 8) if binary else (8, 5)
    i = offset
    end = len(data)
    last = 0
    try:
        while True:
            b = data[i]
            i += 1
            if b == 0:
                return kind, message
            if binary:
                ftype = b
                fid = int.from_bytes(data[i : i + 2], "big")
                i += 2
            else:
                ftype = b & 0x0F
                delta = b >> 4
                if not delta:
                    raise _bad("long-form field header in a TApplicationException")
                fid = last + delta
                last = fid
            if fid == 1 and ftype == string_type:
                if binary:
                    (n,) = _I32.unpack_from(data, i)
                    i += 4
                else:
                    n, i = _varint(data, i, end)
                if i + n > end:
                    raise _bad("truncated TApplicationException message")
                message = data[i : i + n].decode(errors="replace")
                i += n
            elif fid == 2 and ftype == i32_type:
                if binary:
                    (kind,) = _I32.unpack_from(data, i)
                    i += 4
                else:
                    z, i = _varint(data, i, end)
                    kind = (z >> 1) ^ -(z & 1)
            else:
                raise _bad(f"unexpected field {fid} (type {ftype}) in a TApplicationException")
    except (IndexError, struct.error):
        raise _bad("truncated TApplicationException") from None
