"""Thrift message heads: peek, sequence id encoding, TApplicationException build and parse.

Pure bytes. The oracles are thriftpy2's and Apache Thrift's own protocol writers
and readers: what they write, ``peek_message`` must read; what
``application_exception`` builds, they must read.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.Thrift import TApplicationException
from thrift.transport.TTransport import TMemoryBuffer

from monolake.core.errors import RemoteProtocolError
from monolake.core.proto.thrift import (
    AppError,
    MessageType,
    ThriftProtocol,
    application_exception,
    encode_seq_id,
    message_begin,
    parse_application_exception,
    peek_message,
)

PROTOCOLS = [ThriftProtocol.BINARY, ThriftProtocol.COMPACT]
names = st.text(min_size=0, max_size=40)
seq_ids = st.integers(min_value=-(2**31), max_value=2**31 - 1)
mtypes = st.sampled_from(list(MessageType))


def apache(protocol: ThriftProtocol, buf: TMemoryBuffer) -> TBinaryProtocol | TCompactProtocol:
    return TBinaryProtocol(buf) if protocol is ThriftProtocol.BINARY else TCompactProtocol(buf)


def apache_head(protocol: ThriftProtocol, name: str, mtype: int, seq: int) -> bytes:
    buf = TMemoryBuffer()
    p = apache(protocol, buf)
    p.writeMessageBegin(name, mtype, seq)
    return buf.getvalue()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@given(name=names, mtype=mtypes, seq=seq_ids)
@settings(max_examples=150, deadline=None)
def test_peek_reads_what_apache_writes(protocol: ThriftProtocol, name: str, mtype: int, seq: int) -> None:
    head = apache_head(protocol, name, mtype, seq)
    body = b"\x00"
    data = b"PREFIX" + head + body
    h = peek_message(data, 6, protocol)
    assert (h.name, h.type, h.seq_id) == (name, mtype, seq)
    assert h.end == 6 + len(head)
    assert data[h.seq_offset : h.seq_offset + h.seq_size] == encode_seq_id(protocol, seq)
    assert message_begin(name, mtype, seq, protocol) == head
    quick = peek_message(data, 6, protocol, decode_name=False)
    assert (quick.name, quick.seq_id, quick.seq_offset, quick.end) == ("", seq, h.seq_offset, h.end)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_peek_needs_the_whole_head(protocol: ThriftProtocol) -> None:
    head = message_begin("method", MessageType.CALL, 1 << 20, protocol)
    for i in range(len(head)):
        with pytest.raises(RemoteProtocolError):
            peek_message(head[:i], 0, protocol)
    assert peek_message(head, 0, protocol).name == "method"
    # ``end`` bounds the read even when the buffer goes on.
    with pytest.raises(RemoteProtocolError):
        peek_message(head + b"\x00" * 8, 0, protocol, len(head) - 1)


def test_peek_non_strict_binary() -> None:
    buf = TMemoryBuffer()
    TBinaryProtocol(buf, strictWrite=False).writeMessageBegin("ping", MessageType.ONEWAY, 42)
    h = peek_message(buf.getvalue(), 0, ThriftProtocol.BINARY)
    assert (h.name, h.type, h.seq_id, h.seq_size) == ("ping", 4, 42, 4)


@pytest.mark.parametrize(
    ("data", "protocol", "why"),
    [
        (b"\x80\x02\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00", ThriftProtocol.BINARY, "version"),
        (b"\x80\x01\x00\x07\x00\x00\x00\x00\x00\x00\x00\x00", ThriftProtocol.BINARY, "message type"),
        (b"\x80\x01\x00\x01\xff\xff\xff\xff\x00\x00\x00\x00", ThriftProtocol.BINARY, "name length"),
        (b"\x80\x01\x00\x01\x00\x00\x00\x02\xff\xfe\x00\x00\x00\x00", ThriftProtocol.BINARY, "UTF-8"),
        (b"\x83\x21\x00\x00", ThriftProtocol.COMPACT, "protocol id"),
        (b"\x82\x22\x00\x00", ThriftProtocol.COMPACT, "version"),
        (b"\x82\xa1\x00\x00", ThriftProtocol.COMPACT, "message type"),
        (b"\x82\x21\xff\xff\xff\xff\xff\x00", ThriftProtocol.COMPACT, "varint"),
        (b"\x82\x21\x00\x05ab", ThriftProtocol.COMPACT, "name length"),
    ],
)
def test_peek_rejects(data: bytes, protocol: ThriftProtocol, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        peek_message(data, 0, protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@given(name=names, seq=seq_ids, kind=st.sampled_from(list(AppError)), message=st.text(max_size=200))
@settings(max_examples=100, deadline=None)
def test_application_exception_read_by_apache(
    protocol: ThriftProtocol, name: str, seq: int, kind: int, message: str
) -> None:
    data = application_exception(name, seq, protocol, kind, message)
    p = apache(protocol, TMemoryBuffer(data))
    assert p.readMessageBegin() == (name, MessageType.EXCEPTION, seq)
    exc = TApplicationException()
    exc.read(p)
    assert (exc.type, exc.message or "") == (kind, message)
    h = peek_message(data, 0, protocol)
    assert parse_application_exception(data, h.end, protocol) == (kind, message)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_parse_application_exception_written_by_apache(protocol: ThriftProtocol) -> None:
    buf = TMemoryBuffer()
    p = apache(protocol, buf)
    p.writeMessageBegin("m", MessageType.EXCEPTION, 9)
    TApplicationException(TApplicationException.UNKNOWN_METHOD, "no such method").write(p)
    data = buf.getvalue()
    h = peek_message(data, 0, protocol)
    assert parse_application_exception(data, h.end, protocol) == (1, "no such method")
    for cut in range(h.end, len(data)):
        with pytest.raises(RemoteProtocolError):
            parse_application_exception(data[:cut], h.end, protocol)


@given(seq=seq_ids)
def test_compact_seq_id_is_the_unsigned_varint(seq: int) -> None:
    raw = encode_seq_id(ThriftProtocol.COMPACT, seq)
    assert 1 <= len(raw) <= 5
    assert raw[-1] < 0x80 and all(b & 0x80 for b in raw[:-1])
    assert encode_seq_id(ThriftProtocol.BINARY, seq) == seq.to_bytes(4, "big", signed=True)
