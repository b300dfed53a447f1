"""Thrift framing: FrameReader fed whole, byte by byte and split everywhere; TTHeader and
THeader info blocks round-tripped (hypothesis) and checked against Apache's THeader
transport; sequence id rewrites; limits and rejections. Pure bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.transport.THeaderTransport import THeaderClientType, THeaderTransport
from thrift.transport.TTransport import TMemoryBuffer

from monolake.core.errors import LocalProtocolError, RemoteProtocolError
from monolake.core.proto.thrift import (
    FrameReader,
    FrameTooLarge,
    HeaderInfo,
    MessageType,
    ThriftProtocol,
    Transport,
    classify,
    encode_frame,
    encode_framed,
    encode_theader,
    encode_ttheader,
    message_begin,
    peek_message,
    read_header_info,
    rewrite_seq_id,
)

PROTOCOLS = [ThriftProtocol.BINARY, ThriftProtocol.COMPACT]
TRANSPORTS = list(Transport)
texts = st.text(max_size=30)
seq_ids = st.integers(min_value=-(2**31), max_value=2**31 - 1)


def message(protocol: ThriftProtocol, name: str = "echo", seq: int = 7, body: bytes = b"\x00") -> bytes:
    return message_begin(name, MessageType.CALL, seq, protocol) + body


def frame_of(transport: Transport, protocol: ThriftProtocol, payload: bytes, seq: int = 7, **kw: object) -> bytes:
    return encode_frame(transport, payload, seq_id=seq, protocol=protocol, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_detect_and_peek(transport: Transport, protocol: ThriftProtocol) -> None:
    payload = message(protocol, seq=123)
    data = frame_of(transport, protocol, payload, seq=123, headers={"isn": "Echo"})
    [f] = FrameReader().feed(data)
    assert (f.transport, f.protocol, f.transforms) == (transport, protocol, ())
    assert f.data == data
    assert f.data[f.payload :] == payload
    if transport is not Transport.FRAMED:
        assert f.seq_id == 123
        assert read_header_info(f).headers == {"isn": "Echo"}
    h = peek_message(f.data, f.payload, protocol)
    assert (h.name, h.seq_id) == ("echo", 123)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_byte_by_byte_and_every_split(transport: Transport, protocol: ThriftProtocol) -> None:
    frames = [frame_of(transport, protocol, message(protocol, seq=i, body=b"\x00" * i)) for i in range(3)]
    stream = b"".join(frames)
    r = FrameReader()
    got = []
    for i in range(len(stream)):
        got += r.feed(stream[i : i + 1])
    assert [f.data for f in got] == frames
    assert r.buffered == 0
    for cut in range(len(stream) + 1):
        r = FrameReader()
        got = r.feed(stream[:cut]) + r.feed(stream[cut:])
        assert [f.data for f in got] == frames


def test_trailing_partial_frame_is_kept() -> None:
    a = encode_framed(message(ThriftProtocol.BINARY))
    r = FrameReader()
    assert [f.data for f in r.feed(a + a[:5])] == [a]
    assert r.buffered == 5
    assert [f.data for f in r.feed(a[5:])] == [a]


def test_max_frame_size() -> None:
    data = encode_framed(message(ThriftProtocol.BINARY, body=b"\x00" * 100))
    assert FrameReader(max_frame_size=len(data) - 4).feed(data)
    r = FrameReader(max_frame_size=len(data) - 5)
    with pytest.raises(FrameTooLarge) as info:
        r.feed(data[:20])  # as soon as the length is in, not after the body
    assert info.value.size == len(data) - 4
    assert info.value.prefix == data[:20]
    # The prefix still tells who asked, so the proxy can answer that call.
    f = classify(info.value.prefix)
    assert peek_message(f.data, f.payload, ThriftProtocol.BINARY).name == "echo"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (message(ThriftProtocol.BINARY), "unframed"),
        (message(ThriftProtocol.COMPACT), "unframed"),
        (b"\x00\x00\x00\x04\x80\x02\x00\x01", "version"),
        (b"\x00\x00\x00\x02\x80\x01", "too short"),
        (b"\x00\x00\x00\x0c\x12\x34" + b"\x00" * 10, "not a Thrift frame"),
        (b"\x00\x00\x00\x0c\x10\x00\x00\x00\x00\x00\x00\x01\x00\x09\x00\x00", "header size"),
        (b"\x00\x00\x00\x0e\x10\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x05\x00\x00", "transform"),
    ],
)
def test_rejects(data: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        FrameReader().feed(data)


def test_unknown_protocol_and_transforms_are_reported_not_fatal() -> None:
    f = classify(encode_ttheader(b"\x00" * 8, seq_id=5, protocol=4))  # type: ignore[arg-type]
    assert f.protocol is None and f.seq_id == 5
    data = bytearray(encode_ttheader(b"\x00" * 8, seq_id=5))
    data[15] = 1  # one transform id, in what was padding
    f = classify(bytes(data))
    assert f.transforms == (0,)


# -- TTHeader info blocks ------------------------------------------------------------

tt_headers = st.dictionaries(texts, texts, max_size=6)
tt_ints = st.dictionaries(st.integers(0, 0xFFFF), texts, max_size=6)


@given(
    payload=st.binary(max_size=64),
    seq=seq_ids,
    flags=st.integers(0, 0xFFFF),
    headers=tt_headers,
    ints=tt_ints,
    acl=st.none() | texts,
    protocol=st.sampled_from(PROTOCOLS),
)
@settings(max_examples=200, deadline=None)
def test_ttheader_round_trip(
    payload: bytes,
    seq: int,
    flags: int,
    headers: dict[str, str],
    ints: dict[int, str],
    acl: str | None,
    protocol: ThriftProtocol,
) -> None:
    data = encode_ttheader(
        payload, seq_id=seq, flags=flags, protocol=protocol, headers=headers, int_headers=ints, acl_token=acl
    )
    assert data[4:6] == b"\x10\x00"
    assert (struct.unpack_from("!H", data, 12)[0] * 4) % 4 == 0
    [f] = FrameReader().feed(data)
    assert (f.transport, f.protocol, f.flags) == (Transport.TTHEADER, protocol, flags)
    assert f.seq_id == seq & 0xFFFFFFFF
    assert f.data[f.payload :] == payload
    assert read_header_info(f) == HeaderInfo(headers=headers, int_headers=ints, acl_token=acl)


def test_ttheader_exact_bytes() -> None:
    data = encode_ttheader(b"P", seq_id=1, headers={"k": "v"}, int_headers={9: "m"}, acl_token="t")
    header = b"\x00\x00" + b"\x01\x00\x01\x00\x01k\x00\x01v" + b"\x10\x00\x01\x00\x09\x00\x01m" + b"\x11\x00\x01t"
    header += b"\x00" * (-len(header) % 4)
    assert data == struct.pack("!IHHIH", 10 + len(header) + 1, 0x1000, 0, 1, len(header) // 4) + header + b"P"


def test_ttheader_non_utf8_round_trips() -> None:
    data = encode_ttheader(b"", seq_id=0, headers={"k\udcff": "\udc80"})
    assert b"k\xff" in data
    assert read_header_info(classify(data + b"\x00" * 4)).headers == {"k\udcff": "\udc80"}


@pytest.mark.parametrize(
    ("block", "why"),
    [
        (b"\x07", "info id"),
        (b"\x01\x00", "count"),
        (b"\x01\x00\x01\x00\x09k", "past the end"),
        (b"\x10\x00\x02\x00\x09\x00\x02mm", "int key"),
        (b"\x11\x00", "string length"),
    ],
)
def test_ttheader_bad_info(block: bytes, why: str) -> None:
    header = b"\x00\x00" + block
    header += b"\x00" * (-len(header) % 4)
    data = struct.pack("!IHHIH", 10 + len(header), 0x1000, 0, 1, len(header) // 4) + header
    f = classify(data + b"")
    with pytest.raises(RemoteProtocolError, match=why):
        read_header_info(f)


def test_ttheader_limits() -> None:
    with pytest.raises(LocalProtocolError):
        encode_ttheader(b"", seq_id=0, headers={"k": "v" * 70000})
    with pytest.raises(LocalProtocolError):
        encode_ttheader(b"", seq_id=0, headers={str(i): "v" * 60000 for i in range(5)})


# -- THeader ------------------------------------------------------------------------


@given(
    payload=st.binary(max_size=64),
    seq=seq_ids,
    headers=tt_headers,
    persistent=tt_headers,
    protocol=st.sampled_from(PROTOCOLS),
)
@settings(max_examples=150, deadline=None)
def test_theader_round_trip(
    payload: bytes, seq: int, headers: dict[str, str], persistent: dict[str, str], protocol: ThriftProtocol
) -> None:
    data = encode_theader(payload, seq_id=seq, protocol=protocol, headers=headers, persistent_headers=persistent)
    [f] = FrameReader().feed(data)
    assert (f.transport, f.protocol, f.seq_id) == (Transport.THEADER, protocol, seq)
    assert f.data[f.payload :] == payload
    assert read_header_info(f) == HeaderInfo(headers=headers, persistent_headers=persistent)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_theader_matches_apache(protocol: ThriftProtocol) -> None:
    mem = TMemoryBuffer()
    trans = THeaderTransport(mem, [THeaderClientType.HEADERS], default_protocol=protocol)
    trans.set_header(b"trace", b"abc")
    p = THeaderProtocol(trans, [THeaderClientType.HEADERS], default_protocol=protocol)
    p.writeMessageBegin("echo", MessageType.CALL, 99)
    p.writeStructBegin("a")
    p.writeFieldStop()
    p.writeStructEnd()
    p.writeMessageEnd()
    trans.flush()
    theirs = mem.getvalue()
    [f] = FrameReader().feed(theirs)
    payload = f.data[f.payload :]
    assert encode_theader(payload, seq_id=99, protocol=protocol, headers={"trace": "abc"}) == theirs
    # And Apache reads what we rewrite.
    h = peek_message(f.data, f.payload, protocol)
    mem2 = TMemoryBuffer(bytes(rewrite_seq_id(f, h, 300)))
    t2 = THeaderTransport(mem2, [THeaderClientType.HEADERS])
    assert THeaderProtocol(t2, [THeaderClientType.HEADERS]).readMessageBegin() == ("echo", 1, 300)
    assert t2.get_headers() == {b"trace": b"abc"}


# -- sequence id rewrite --------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@given(protocol=st.sampled_from(PROTOCOLS), old=seq_ids, new=seq_ids, body=st.binary(max_size=40))
@settings(max_examples=200, deadline=None)
def test_rewrite_seq_id(transport: Transport, protocol: ThriftProtocol, old: int, new: int, body: bytes) -> None:
    payload = message(protocol, seq=old, body=body)
    [f] = FrameReader().feed(frame_of(transport, protocol, payload, seq=old, headers={"a": "b"}))
    h = peek_message(f.data, f.payload, protocol)
    out = bytes(rewrite_seq_id(f, h, new))
    [g] = FrameReader().feed(out)
    h2 = peek_message(g.data, g.payload, protocol)
    assert (h2.name, h2.type, h2.seq_id) == ("echo", MessageType.CALL, new)
    assert g.data[h2.end :] == body
    if transport is not Transport.FRAMED:
        assert g.seq_id == (new & 0xFFFFFFFF if transport is Transport.TTHEADER else new)
        assert read_header_info(g).headers == {"a": "b"}
    assert f.data == frame_of(transport, protocol, payload, seq=old, headers={"a": "b"})  # input untouched
