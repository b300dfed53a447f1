"""Codecs, bytes only: frames built by Google's protobuf runtime and by msgspec, fed whole,
split at every byte, many to a read; bad prefixes and bodies raise FrameError."""

# ruff: noqa: E402  (the example directory goes on sys.path before its modules are imported)
from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Any, cast

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "streams"
sys.path.insert(0, str(EXAMPLES))  # echo_pb2 and echo_server, as the example imports them

import echo_pb2
import msgspec
import pytest
from google.protobuf.internal.decoder import _DecodeVarint
from google.protobuf.internal.encoder import _VarintBytes
from hypothesis import given, settings
from hypothesis import strategies as st

from monolake.streams import BytesCodec, FrameError, MessageConnection, MsgpackCodec, ProtobufCodec


def delimited(msg: echo_pb2.Request) -> bytes:
    """protobuf's writeDelimitedTo, with Google's own varint encoder."""
    body = msg.SerializeToString()
    return _VarintBytes(len(body)) + body


def requests(n: int, size: int = 5) -> list[echo_pb2.Request]:
    return [
        echo_pb2.Request(request_id=i + 1, body=echo_pb2.EchoRequest(message="x" * (size * i), nanotime=i * 7))
        for i in range(n)
    ]


def feed(codec: object, chunks: list[bytes]) -> list[object]:
    """Feed chunks as a connection does: unread bytes kept, the codec sees them again with more."""
    buf = b""
    out: list[object] = []
    for c in chunks:
        buf += c
        used = codec.decode(memoryview(buf), out)  # type: ignore[attr-defined]
        buf = buf[used:]
    assert buf == b""
    return out


def test_protobuf_encode_is_writeDelimitedTo() -> None:
    codec = ProtobufCodec(echo_pb2.Request)
    for msg in requests(40, size=7):  # lengths up to ~280: one- and two-byte varints
        frame = codec.encode(msg)
        assert frame == delimited(msg)
        n, pos = _DecodeVarint(frame, 0)
        assert echo_pb2.Request.FromString(frame[pos : pos + n]) == msg


def test_protobuf_decodes_many_per_read_and_split_at_every_byte() -> None:
    msgs = requests(6, size=30)  # 0..150 byte bodies
    wire = b"".join(delimited(m) for m in msgs)
    codec = ProtobufCodec(echo_pb2.Request)
    assert feed(codec, [wire]) == msgs
    for cut in range(1, len(wire)):
        assert feed(codec, [wire[:cut], wire[cut:]]) == msgs
    assert feed(codec, [bytes([b]) for b in wire]) == msgs


@settings(deadline=None)  # a busy machine: timing is not what this checks
@given(st.lists(st.text(max_size=300), max_size=8), st.data())
def test_protobuf_any_split(texts: list[str], data: st.DataObject) -> None:
    msgs = [echo_pb2.Request(request_id=i, body=echo_pb2.EchoRequest(message=t)) for i, t in enumerate(texts)]
    wire = b"".join(delimited(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert feed(ProtobufCodec(echo_pb2.Request), chunks) == msgs


def test_protobuf_bad_input() -> None:
    codec = ProtobufCodec(echo_pb2.Request, max_message_size=100)
    out: list[object] = []
    with pytest.raises(FrameError, match="over max_message_size"):
        codec.decode(memoryview(_VarintBytes(101)), out)  # refused from the prefix alone
    with pytest.raises(FrameError, match="malformed varint"):
        codec.decode(memoryview(b"\xff" * 11), out)
    with pytest.raises(FrameError, match="undecodable Request"):
        codec.decode(memoryview(b"\x03\xff\xff\xff"), out)
    # A partial varint or body is not an error: nothing is consumed yet.
    assert codec.decode(memoryview(b"\x80"), out) == 0
    assert codec.decode(memoryview(b"\x05ab"), out) == 0
    assert out == []


def test_protobuf_reads_over_small_read() -> None:
    """A read of more than SMALL_READ bytes takes the memoryview path; a smaller one is copied once
    and parsed from bytes: the same messages and the same errors either way."""
    big = echo_pb2.Request(request_id=9, body=echo_pb2.EchoRequest(message="x" * 70_000))
    msgs = [echo_pb2.Request(request_id=1), big, echo_pb2.Request(request_id=2)]
    wire = b"".join(delimited(m) for m in msgs)
    codec = ProtobufCodec(echo_pb2.Request, max_message_size=100_000)
    for cut in (0, 1, 5, 70_000, len(wire) - 1):
        assert feed(codec, [wire[:cut], wire[cut:]]) == msgs
    out: list[object] = []
    head = delimited(big)
    with pytest.raises(FrameError, match="over max_message_size"):
        codec.decode(memoryview(head + _VarintBytes(100_001)), out)
    with pytest.raises(FrameError, match="malformed varint"):
        codec.decode(memoryview(head + b"\xff" * 11), out)
    with pytest.raises(FrameError, match="undecodable Request"):
        codec.decode(memoryview(head + b"\x03\xff\xff\xff"), out)


def test_msgpack_is_protosocket_messagepacks_framing() -> None:
    class Msg(msgspec.Struct):
        request_id: int
        code: int = 0
        body: str | None = None

    codec = MsgpackCodec(Msg, max_message_size=1000)
    msgs = [Msg(i, 0, "b" * i) for i in range(20)]
    wire = b"".join(codec.encode(m) for m in msgs)
    # 0xce, a big-endian u32 length, then msgpack (rmp's write_u32 + rmp_serde)
    body = msgspec.msgpack.encode(msgs[3])
    assert codec.encode(msgs[3]) == b"\xce" + len(body).to_bytes(4, "big") + body
    assert feed(codec, [wire]) == msgs
    assert feed(codec, [bytes([b]) for b in wire]) == msgs
    with pytest.raises(FrameError, match="not a msgpack uint32"):
        codec.decode(memoryview(b"\x01\x00\x00\x00\x00"), [])
    with pytest.raises(FrameError, match="over max_message_size"):
        codec.decode(memoryview(b"\xce\x00\x00\x10\x00"), [])
    with pytest.raises(FrameError, match="undecodable"):
        codec.decode(memoryview(b"\xce\x00\x00\x00\x01\xc1"), [])


def test_bytes_codec() -> None:
    codec = BytesCodec(max_message_size=64)
    msgs = [b"", b"a", b"x" * 64]
    wire = b"".join(codec.encode(m) for m in msgs)
    assert wire[:4] == b"\x00\x00\x00\x00" and wire[4:9] == b"\x00\x00\x00\x01a"
    assert feed(codec, [wire]) == msgs
    assert feed(codec, [bytes([b]) for b in wire]) == msgs
    with pytest.raises(FrameError, match="over max_message_size"):
        codec.decode(memoryview(b"\x00\x00\x00\x41"), [])


def test_bytes_codec_small_and_large_reads_split_anywhere() -> None:
    """Reads of small messages are copied once and sliced; large ones are sliced from the view:
    both give the same messages, as bytes, for any split (messages, reads, sizes mixed)."""
    codec = BytesCodec()
    msgs = [bytes([i % 251]) * n for i, n in enumerate((3, 0, 900, 1024, 5000, 70_000, 7, 64, 1023))]
    wire = b"".join(codec.encode(m) for m in msgs)
    for cut in (*range(0, 12), 907, 908, 1940, 7000, 77_000, len(wire) - 3):
        out = feed(codec, [wire[:cut], wire[cut:]])
        assert out == msgs and all(type(m) is bytes for m in out)
    big = b"z" * 100_000  # a read over SMALL_READ starting with a small message
    assert feed(codec, [codec.encode(b"a") + codec.encode(big) + codec.encode(b"b")]) == [b"a", big, b"b"]
    assert codec.encode(bytearray(b"ab")) == codec.encode(memoryview(b"ab")) == b"\x00\x00\x00\x02ab"
    buf = bytearray()
    body, mutable = b"q" * 5000, bytearray(b"r" * 5000)
    assert codec.encode_into(b"ab", buf) == 6 and codec.encode_into(body, buf) == 5004
    assert codec.encode_into(mutable, buf) == 5004
    assert buf == codec.encode(b"ab") + codec.encode(body) + codec.encode(b"r" * 5000)


class _Writes:
    """A transport that keeps what it is given to write."""

    def __init__(self) -> None:
        self.writes: list[list[Any]] = []

    def write(self, data: Any) -> None:
        self.writes.append([data])

    def writelines(self, items: Any) -> None:
        self.writes.append(list(items))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@pytest.mark.parametrize("codec", [BytesCodec(), ProtobufCodec(echo_pb2.Request)], ids=["bytes", "protobuf"])
def test_a_connection_writes_small_frames_together_and_a_large_body_as_it_is(codec: Any) -> None:
    async def test() -> None:
        conn: MessageConnection[Any] = MessageConnection(codec)
        t = _Writes()
        conn.connection_made(cast(Any, t))
        if isinstance(codec, BytesCodec):
            small, large, mutable = b"ab", b"q" * 20_000, bytearray(b"r" * 5000)
            msgs: list[Any] = [small, b"", large, mutable, small]
        else:
            small = echo_pb2.Request(request_id=1, body=echo_pb2.EchoRequest(message="hi"))
            large = echo_pb2.Request(request_id=2, body=echo_pb2.EchoRequest(message="x" * 20_000))
            msgs = [small, small, large, small]
        for m in msgs:
            conn.send(m)
        if isinstance(codec, BytesCodec):
            mutable[0] = 0  # queued frames do not share a caller's mutable buffer
            msgs[3] = b"r" * 5000
        conn._flush()
        assert len(t.writes) == 1  # one write for the whole batch
        parts = t.writes[0]
        assert b"".join(parts) == b"".join(codec.encode(m) for m in msgs)
        assert len(parts) == 3  # the small frames before the large one, it, the ones after
        if isinstance(codec, BytesCodec):
            assert parts[1] is large  # a large bytes goes out as it is, after its prefix
        assert conn.statistics()["messages_out"] == len(msgs)

    asyncio.run(test())


def test_fuzz_rule() -> None:
    """fuzz/fuzz_streams.py's rule, for a bounded number of examples: messages, a partial frame or
    FrameError, never another error, and the same result whole or split in two."""
    path = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_streams.py"
    spec = importlib.util.spec_from_file_location("fuzz_streams", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod._run_hypothesis(300)


def test_fields_reads_the_envelope_and_the_older_body_only_shape() -> None:
    from monolake.streams import Fields

    f = Fields(echo_pb2.Request)
    assert f.control_code(echo_pb2.Request(request_id=3, code=1)) == 1
    assert f.cancelled(4) == echo_pb2.Request(request_id=4, code=1)
    assert f.ended(5) == echo_pb2.Request(request_id=5, code=2)
    assert f.control_code(echo_pb2.Request(code=9)) == 1  # unknown codes read as cancel, as in protosocket

    class Old(msgspec.Struct):  # protosocket's first example-proto: no code, a message without a body cancels
        request_id: int = 0
        body: str | None = None

    old = Fields(Old, code_field=None, body_field="body")
    assert old.control_code(Old(1, "hi")) == 0
    assert old.control_code(Old(1)) == 1
    assert old.cancelled(7) == Old(7)


def test_public_names_resolve_with_docstrings() -> None:
    import monolake.streams as streams

    for name in streams.__all__:
        assert getattr(streams, name).__doc__, name
