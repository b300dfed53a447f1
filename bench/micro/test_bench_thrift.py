"""Thrift codec and gateway conversion costs without sockets.

Run: python -m pytest bench/micro/test_bench_thrift.py --benchmark-columns=min,median,mean
(bench/ is outside testpaths, so CI's test run never times these.)

- peek: method name, type and sequence id of a binary/compact message head;
- rewrite: the sequence id of a whole frame replaced (what the proxy does twice per call);
- feed: FrameReader cutting and classifying one frame;
- TTHeader encode / info decode with three string keys and one int key;
- gateway: JSON bytes → Thrift binary for a ~1 KB request: the object path (compiled
  converter → thriftpy2 objects → thriftpy2's binary codec), the generated binary fast
  path that replaced it for binary upstreams, both per struct and per method (path,
  query, header, cookie and body → message payload), and the naive reflective walk.
  ``bench/micro/gateway_convert.py`` is the interleaved A/B of the same conversions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.utils import serialize

from monolake.apps.proxy.gateway import Compiler
from monolake.apps.proxy.gateway._binary import BinaryCompiler
from monolake.core.proto.thrift import (
    FrameReader,
    MessageType,
    ThriftProtocol,
    classify,
    encode_framed,
    encode_ttheader,
    message_begin,
    peek_message,
    read_header_info,
    rewrite_seq_id,
)

REPO = Path(__file__).resolve().parents[2]
echo: Any = thriftpy2.load(str(REPO / "examples" / "gateway" / "echo.thrift"), module_name="echo_bench_thrift")
BODY = b"\x0b\x00\x01\x00\x00\x00\x40" + b"x" * 64 + b"\x00"
HEADERS = {"isn": "EchoService", "RPC_PERSIST_TRACE_ID": "0af7651916cd43dd8448eb211c80319c", "RPC_TRANSIT_X": "1"}


@pytest.mark.parametrize("protocol", [ThriftProtocol.BINARY, ThriftProtocol.COMPACT])
def test_peek(benchmark: Any, protocol: ThriftProtocol) -> None:
    frame = classify(encode_framed(message_begin("GetUserProfile", MessageType.CALL, 123456, protocol) + BODY))
    benchmark(peek_message, frame.data, frame.payload, protocol)


@pytest.mark.parametrize("protocol", [ThriftProtocol.BINARY, ThriftProtocol.COMPACT])
def test_rewrite(benchmark: Any, protocol: ThriftProtocol) -> None:
    payload = message_begin("GetUserProfile", MessageType.CALL, 5, protocol) + BODY
    frame = classify(encode_ttheader(payload, seq_id=5, protocol=protocol, headers=HEADERS))
    head = peek_message(frame.data, frame.payload, protocol)
    benchmark(rewrite_seq_id, frame, head, 70000)  # compact: the varint grows, so the frame is rebuilt


def test_feed_one_frame(benchmark: Any) -> None:
    data = encode_framed(message_begin("GetUserProfile", MessageType.CALL, 5, ThriftProtocol.BINARY) + BODY)
    reader = FrameReader()
    benchmark(reader.feed, data)


def test_ttheader_encode(benchmark: Any) -> None:
    payload = message_begin("GetUserProfile", MessageType.CALL, 5, ThriftProtocol.BINARY) + BODY
    benchmark(encode_ttheader, payload, seq_id=5, headers=HEADERS, int_headers={9: "GetUserProfile"})


def test_ttheader_decode(benchmark: Any) -> None:
    payload = message_begin("GetUserProfile", MessageType.CALL, 5, ThriftProtocol.BINARY) + BODY
    frame = classify(encode_ttheader(payload, seq_id=5, headers=HEADERS, int_headers={9: "GetUserProfile"}))
    benchmark(read_header_info, frame)


REQUEST = msgspec.json.encode(
    {
        "id": "1234567890123",
        "text": "lorem ipsum dolor sit amet " * 8,
        "lang": "en",
        "tags": [{"name": f"tag-{i}", "weight": i} for i in range(20)],
        "counts": {f"k{i}": i for i in range(12)},
        "mood": "HAPPY",
        "status": 200,
    }
)


def naive(cls: Any, doc: dict[str, Any]) -> Any:
    """The reflective walk a gateway without compiled converters does per request."""
    obj = cls()
    for spec in cls.thrift_spec.values():
        ttype, name = spec[0], spec[1]
        value = doc.get(name)
        if value is None:
            continue
        if ttype == 12:
            value = naive(spec[2], value)
        elif ttype == 15 and isinstance(spec[2], tuple) and spec[2][0] == 12:
            value = [naive(spec[2][1], v) for v in value]
        elif ttype == 8 and isinstance(spec[2], type) and isinstance(value, str):
            value = spec[2]._NAMES_TO_VALUES[value]
        elif ttype == 10 and isinstance(value, str):
            value = int(value)
        setattr(obj, name, value)
    return obj


def test_gateway_json_to_struct(benchmark: Any) -> None:
    assert len(REQUEST) > 900
    conv = Compiler().struct_from_json(echo.EchoRequest)
    decode = msgspec.json.Decoder().decode
    benchmark(lambda: conv(decode(REQUEST), "body"))


def test_gateway_json_to_thrift_bytes(benchmark: Any) -> None:
    conv = Compiler().struct_from_json(echo.EchoRequest)
    decode = msgspec.json.Decoder().decode
    factory = TBinaryProtocolFactory()
    benchmark(lambda: serialize(echo.EchoService.Echo_args(req=conv(decode(REQUEST), "body")), factory))


def test_naive_json_to_struct(benchmark: Any) -> None:
    decode = msgspec.json.Decoder().decode
    benchmark(lambda: naive(echo.EchoRequest, decode(REQUEST)))


def test_gateway_json_to_thrift_bytes_fast(benchmark: Any) -> None:
    fast = BinaryCompiler(Compiler()).struct_converter(echo.EchoRequest)
    conv = Compiler().struct_from_json(echo.EchoRequest)
    assert fast(REQUEST) == serialize(conv(msgspec.json.decode(REQUEST), "body"), TBinaryProtocolFactory())
    benchmark(fast, REQUEST)


@pytest.mark.parametrize("path", ["object", "fast"])
def test_gateway_method_payload(benchmark: Any, path: str) -> None:
    import gateway_convert

    fn = gateway_convert.variants()["method old" if path == "object" else "method new"]
    benchmark(fn)
