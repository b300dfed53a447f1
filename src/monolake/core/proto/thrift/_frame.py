"""Thrift transports: framed, TTHeader, THeader. Bytes in, frames out; no I/O.

Every supported transport is length-prefixed: a frame is a 4-byte big-endian
length, then that many bytes. What follows the length tells the transport, which
is why a server can detect it from the first bytes of a connection (and
``FrameReader`` does it per frame, so a peer may switch):

====================  ===========================================================
bytes 4-5             transport
====================  ===========================================================
``10 00``             TTHeader (CloudWeGo): magic 0x1000 · u16 flags · u32 seq id ·
                      u16 header size/4 · u8 protocol id · u8 transform count ·
                      u8 transform ids · info blocks · zero padding · payload
``0F FF``             THeader (Apache): the same outer shape, but the protocol id,
                      transforms and info blocks are varints
``80 01``             framed binary (the payload starts at byte 4)
``82 ..``             framed compact
``00 ..``             framed non-strict binary (the payload starts with a name length)
====================  ===========================================================

An unframed ("buffered") message starts with ``80 01`` or ``82`` at byte 0; a
frame length never has its top bit set, so those are told apart from the first
byte and refused with a clear error (an unframed message can only be delimited
by decoding it whole).

TTHeader info blocks (u16 big-endian lengths and counts): ``0x01`` KEY_VALUE
(count, then key and value strings), ``0x10`` INT_KEY_VALUE (count, then u16 key
and value string), ``0x11`` ACL token (one string), ``0x00`` padding. THeader
info blocks (varints): ``0x01`` KEY_VALUE, ``0x02`` persistent KEY_VALUE.
Strings are UTF-8; bytes that are not round-trip through surrogate escapes.

``FrameReader`` only parses what every frame needs (transport, protocol, where the
payload starts, the header's sequence id); the info blocks are read on demand by
``read_header_info`` because they cost microseconds and most frames are
forwarded without them.
"""

from __future__ import annotations

import struct
from enum import Enum

from ...errors import LocalProtocolError, RemoteProtocolError, Source
from ._message import MessageHead, ThriftProtocol, encode_varint

DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
"""Largest frame (after the length field) accepted unless configured otherwise."""

TTHEADER_MAGIC = 0x1000
THEADER_MAGIC = 0x0FFF

INFO_PADDING = 0x00
INFO_KEY_VALUE = 0x01
INFO_INT_KEY_VALUE = 0x10
INFO_ACL_TOKEN = 0x11
THEADER_INFO_PERSISTENT_KEY_VALUE = 0x02

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_HEAD = struct.Struct("!IHHIH")  # length, magic, flags, seq id, header size / 4
_PROTOCOLS = {0: ThriftProtocol.BINARY, 2: ThriftProtocol.COMPACT}
# Enum members looked up on the class cost a dict walk each time; the hot paths use these.
_BINARY = ThriftProtocol.BINARY
_COMPACT = ThriftProtocol.COMPACT


class Transport(Enum):
    FRAMED = "framed"
    TTHEADER = "ttheader"
    THEADER = "theader"


_FRAMED = Transport.FRAMED
_TTHEADER = Transport.TTHEADER
_THEADER = Transport.THEADER


class FrameTooLarge(RemoteProtocolError):
    """A frame's length field is over the limit. ``prefix`` is what arrived of it so far."""

    def __init__(self, size: int, limit: int, prefix: bytes) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit}", source=Source.DOWNSTREAM)
        self.size = size
        self.limit = limit
        self.prefix = prefix


def _bad(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(why, source=Source.DOWNSTREAM)


class Frame:
    """One frame. ``data`` is the whole frame, length field included; offsets index it.

    Slotted plain class for the same reason as ``MessageHead``: one per message.
    ``protocol`` is None when a header names a protocol id other than binary (0)
    or compact (2); ``transforms`` lists a header's transform ids (zlib is 1):
    either makes the payload unreadable to a proxy, which answers such frames
    with an error instead of forwarding them blind.
    """

    __slots__ = ("data", "flags", "info", "payload", "protocol", "seq_id", "transforms", "transport")

    def __init__(
        self,
        data: bytes,
        transport: Transport,
        protocol: ThriftProtocol | None,
        payload: int,
        seq_id: int = 0,
        flags: int = 0,
        info: int = 0,
        transforms: tuple[int, ...] = (),
    ) -> None:
        # Not keyword-only: the hot callers pass these by position (a keyword call of a Python
        # __init__ cost ~0.25 µs more per frame on 3.11).
        self.data = data
        self.transport = transport
        self.protocol = protocol
        self.payload = payload
        self.seq_id = seq_id
        """The header's sequence id (TTHeader, THeader); 0 for framed."""
        self.flags = flags
        self.info = info
        """Where the info blocks start (header transports)."""
        self.transforms = transforms

    def __repr__(self) -> str:
        proto = self.protocol.name.lower() if self.protocol is not None else "?"
        return f"<Frame {self.transport.value}/{proto} {len(self.data)} bytes>"


def _read_varint(data: bytes, i: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if i >= end:
            raise _bad("truncated varint in a THeader")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 28:
            raise _bad("varint longer than 5 bytes in a THeader")


def classify(data: bytes) -> Frame:
    """The frame in ``data`` (a whole frame, length field included). Raises RemoteProtocolError.

    Also works on a truncated frame as far as its fixed header goes (used to
    describe an oversized frame from its first bytes).
    """
    size = len(data)
    if size < 8:
        raise _bad(f"frame of {size - 4} bytes is too short for a Thrift message")
    b4 = data[4]
    if b4 == 0x80:
        if data[5] != 0x01:
            raise _bad(f"bad binary protocol version 0x{b4:02x}{data[5]:02x}")
        return Frame(data, _FRAMED, _BINARY, 4)
    if b4 == 0x82:
        return Frame(data, _FRAMED, _COMPACT, 4)
    if b4 == 0x00:
        return Frame(data, _FRAMED, _BINARY, 4)  # non-strict binary
    if size < 16:
        raise _bad("truncated Thrift header")
    _, magic, flags, seq, hwords = _HEAD.unpack_from(data)
    payload = 14 + hwords * 4
    if payload > size:
        raise _bad(f"header size {hwords * 4} runs past the end of the frame")
    if magic == TTHEADER_MAGIC:
        pid = data[14]
        ntrans = data[15]
        info = 16 + ntrans
        if info > payload:
            raise _bad(f"{ntrans} transform ids run past the end of the header")
        transforms = tuple(data[16:info]) if ntrans else ()
        return Frame(data, _TTHEADER, _PROTOCOLS.get(pid), payload, seq, flags, info, transforms)
    if magic == THEADER_MAGIC:
        pid, i = _read_varint(data, 14, payload)
        ntrans, i = _read_varint(data, i, payload)
        ids = []
        for _ in range(ntrans):
            tid, i = _read_varint(data, i, payload)
            ids.append(tid)
        return Frame(
            data, _THEADER, _PROTOCOLS.get(pid), payload, seq - (1 << 32) if seq >> 31 else seq, flags, i, tuple(ids)
        )
    raise _bad(f"not a Thrift frame (bytes 4-5 are {data[4:6].hex()})")


class FrameReader:
    """Cuts a byte stream into frames. Feed it whatever arrived; it keeps partial frames.

    ``feed`` raises ``FrameTooLarge`` for a length over ``max_frame_size`` (as soon
    as the length field is in) and ``RemoteProtocolError`` for anything that is
    not a supported frame; both leave the stream unusable (framing is lost).
    """

    __slots__ = ("_buf", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buf = b""

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf + data if self._buf else data
        total = len(buf)
        # The usual case: exactly one whole frame arrived.
        if total >= 4:
            n = _U32.unpack_from(buf)[0]
            if n + 4 == total and n <= self.max_frame_size:
                self._buf = b""
                return [classify(buf)]
        out: list[Frame] = []
        i = 0
        while total - i >= 4:
            if buf[i] & 0x80:
                raise _bad("unframed (buffered) Thrift is not supported; use the framed transport or TTHeader")
            n = _U32.unpack_from(buf, i)[0]
            if n > self.max_frame_size:
                raise FrameTooLarge(n, self.max_frame_size, buf[i : i + 4 + min(n, 4096)])
            end = i + 4 + n
            if end > total:
                break
            out.append(classify(buf[i:end]))
            i = end
        if total - i and buf[i] & 0x80:
            raise _bad("unframed (buffered) Thrift is not supported; use the framed transport or TTHeader")
        self._buf = buf[i:] if i else buf
        return out


# -- rewriting ---------------------------------------------------------------------


def rewrite_seq_id(frame: Frame, head: MessageHead, seq_id: int) -> bytes | bytearray:
    """``frame.data`` with the message's (and the header's) sequence id set to ``seq_id``.

    Binary ids are fixed-size, so the frame is copied once and patched in place; a
    compact varint may change length, and then the length field is fixed too.
    ``head`` must come from ``peek_message`` on this frame.
    """
    data = frame.data
    off = head.seq_offset
    if frame.protocol is _BINARY:
        buf = bytearray(data)
        _I32.pack_into(buf, off, seq_id)
    else:
        new = encode_varint(seq_id & 0xFFFFFFFF)
        if len(new) == head.seq_size:
            buf = bytearray(data)
            buf[off : off + len(new)] = new
        else:
            buf = bytearray(data[:off])
            buf += new
            buf += memoryview(data)[off + head.seq_size :]
            _U32.pack_into(buf, 0, len(buf) - 4)
    if frame.transport is not _FRAMED:
        _U32.pack_into(buf, 8, seq_id & 0xFFFFFFFF)
    return buf


# -- info blocks -------------------------------------------------------------------


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class HeaderInfo:
    """The info blocks of a TTHeader or THeader frame.

    A plain slotted class rather than a frozen dataclass: reading the blocks is
    on the routing path of TTHeader calls, and the dataclass's construction cost
    a fifth of the parse.
    """

    __slots__ = ("acl_token", "headers", "int_headers", "persistent_headers")

    def __init__(
        self,
        *,
        headers: dict[str, str] | None = None,
        int_headers: dict[int, str] | None = None,
        acl_token: str | None = None,
        persistent_headers: dict[str, str] | None = None,
    ) -> None:
        self.headers = headers if headers is not None else {}
        """KEY_VALUE: string keys (TTHeader metadata such as ``RPC_PERSIST_*``, ``isn``)."""
        self.int_headers = int_headers if int_headers is not None else {}
        """TTHeader INT_KEY_VALUE (Kitex's ``transmeta`` keys: 6 to-service, 9 to-method, ...)."""
        self.acl_token = acl_token
        self.persistent_headers = persistent_headers if persistent_headers is not None else {}
        """THeader persistent KEY_VALUE (id 2)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HeaderInfo):
            return NotImplemented
        return (self.headers, self.int_headers, self.acl_token, self.persistent_headers) == (
            other.headers,
            other.int_headers,
            other.acl_token,
            other.persistent_headers,
        )

    def __repr__(self) -> str:
        return (
            f"HeaderInfo(headers={self.headers!r}, int_headers={self.int_headers!r}, "
            f"acl_token={self.acl_token!r}, persistent_headers={self.persistent_headers!r})"
        )


def read_header_info(frame: Frame) -> HeaderInfo:
    """Parse the info blocks of a header-transport frame. Raises RemoteProtocolError."""
    if frame.transport is _TTHEADER:
        return _read_tt_info(frame.data, frame.info, frame.payload)
    if frame.transport is _THEADER:
        return _read_t_info(frame.data, frame.info, frame.payload)
    return HeaderInfo()


def _read_tt_info(data: bytes, i: int, end: int) -> HeaderInfo:
    # One loop with the string reads inlined: a closure per string cost more than the decode.
    headers: dict[str, str] = {}
    ints: dict[int, str] = {}
    acl: str | None = None
    u16 = _U16.unpack_from
    while i < end:
        kind = data[i]
        i += 1
        if kind == INFO_PADDING:
            continue
        if kind == INFO_ACL_TOKEN:
            if i + 2 > end:
                raise _bad("truncated TTHeader string length")
            (n,) = u16(data, i)
            i += 2 + n
            if i > end:
                raise _bad("TTHeader string runs past the end of the header")
            acl = data[i - n : i].decode("utf-8", "surrogateescape")
            continue
        if kind != INFO_KEY_VALUE and kind != INFO_INT_KEY_VALUE:
            raise _bad(f"unknown TTHeader info id 0x{kind:02x}")
        if i + 2 > end:
            raise _bad("truncated TTHeader info count")
        (count,) = u16(data, i)
        i += 2
        strings = kind == INFO_KEY_VALUE
        for _ in range(count):
            if i + 2 > end:
                raise _bad("truncated TTHeader string length" if strings else "truncated TTHeader int key")
            (k,) = u16(data, i)
            i += 2
            if strings:
                i += k
                if i + 2 > end:
                    raise _bad(
                        "TTHeader string runs past the end of the header"
                        if i > end
                        else "truncated TTHeader string length"
                    )
                key = data[i - k : i].decode("utf-8", "surrogateescape")
            elif i + 2 > end:
                raise _bad("truncated TTHeader string length")
            (n,) = u16(data, i)
            i += 2 + n
            if i > end:
                raise _bad("TTHeader string runs past the end of the header")
            value = data[i - n : i].decode("utf-8", "surrogateescape")
            if strings:
                headers[key] = value
            else:
                ints[k] = value
    return HeaderInfo(headers=headers, int_headers=ints, acl_token=acl)


def _read_t_info(data: bytes, i: int, end: int) -> HeaderInfo:
    headers: dict[str, str] = {}
    persistent: dict[str, str] = {}
    while i < end:
        kind, i = _read_varint(data, i, end)
        if kind == INFO_PADDING:
            continue  # padding is zeros to the end
        if kind not in (INFO_KEY_VALUE, THEADER_INFO_PERSISTENT_KEY_VALUE):
            break  # unknown info: Apache readers stop here and skip to the payload
        target = headers if kind == INFO_KEY_VALUE else persistent
        count, i = _read_varint(data, i, end)
        for _ in range(count):
            pair = []
            for _ in range(2):
                n, i = _read_varint(data, i, end)
                if i + n > end:
                    raise _bad("THeader string runs past the end of the header")
                pair.append(_text(data[i : i + n]))
                i += n
            target[pair[0]] = pair[1]
    return HeaderInfo(headers=headers, persistent_headers=persistent)


# -- encoding ----------------------------------------------------------------------


def encode_framed(payload: bytes) -> bytes:
    return _U32.pack(len(payload)) + payload


def _finish_header(magic: int, header: bytearray, payload: bytes, seq_id: int, flags: int) -> bytes:
    header += b"\x00" * (-len(header) % 4)
    if len(header) > 0xFFFF * 4:
        raise LocalProtocolError(f"header of {len(header)} bytes is over the 262140 a frame can carry")
    head = _HEAD.pack(10 + len(header) + len(payload), magic, flags, seq_id & 0xFFFFFFFF, len(header) // 4)
    return head + bytes(header) + payload


def encode_ttheader(
    payload: bytes,
    *,
    seq_id: int,
    protocol: ThriftProtocol = ThriftProtocol.BINARY,
    flags: int = 0,
    headers: dict[str, str] | None = None,
    int_headers: dict[int, str] | None = None,
    acl_token: str | None = None,
) -> bytes:
    """A whole TTHeader frame around ``payload``. Raises LocalProtocolError if it cannot be encoded."""
    # Strings are packed inline (a helper call per string cost more than the packing);
    # struct.error from a length over 65535 becomes LocalProtocolError below.
    u16 = _U16.pack
    out = bytearray((protocol, 0))
    try:
        if headers:
            out += b"\x01" + u16(len(headers))
            for k, v in headers.items():
                kb = k.encode("utf-8", "surrogateescape")
                vb = v.encode("utf-8", "surrogateescape")
                out += u16(len(kb)) + kb + u16(len(vb)) + vb
        if int_headers:
            out += b"\x10" + u16(len(int_headers))
            for ik, v in int_headers.items():
                vb = v.encode("utf-8", "surrogateescape")
                out += u16(ik) + u16(len(vb)) + vb
        if acl_token is not None:
            tb = acl_token.encode("utf-8", "surrogateescape")
            out += b"\x11" + u16(len(tb)) + tb
    except struct.error:
        raise LocalProtocolError("a TTHeader count, key or string length is over 65535") from None
    return _finish_header(TTHEADER_MAGIC, out, payload, seq_id, flags)


def encode_theader(
    payload: bytes,
    *,
    seq_id: int,
    protocol: ThriftProtocol = ThriftProtocol.BINARY,
    flags: int = 0,
    headers: dict[str, str] | None = None,
    persistent_headers: dict[str, str] | None = None,
) -> bytes:
    """A whole Apache THeader frame around ``payload`` (no transforms)."""
    out = bytearray(encode_varint(protocol) + b"\x00")
    for kind, block in ((INFO_KEY_VALUE, headers), (THEADER_INFO_PERSISTENT_KEY_VALUE, persistent_headers)):
        if not block:
            continue
        out += encode_varint(kind) + encode_varint(len(block))
        for k, v in block.items():
            for raw in (_raw(k), _raw(v)):
                out += encode_varint(len(raw))
                out += raw
    return _finish_header(THEADER_MAGIC, out, payload, seq_id, flags)


def encode_frame(
    transport: Transport,
    payload: bytes,
    *,
    seq_id: int,
    protocol: ThriftProtocol,
    headers: dict[str, str] | None = None,
) -> bytes:
    """``payload`` in ``transport``; ``headers`` go into the KEY_VALUE block of header transports."""
    if transport is Transport.FRAMED:
        return encode_framed(payload)
    if transport is Transport.TTHEADER:
        return encode_ttheader(payload, seq_id=seq_id, protocol=protocol, headers=headers)
    return encode_theader(payload, seq_id=seq_id, protocol=protocol, headers=headers)
