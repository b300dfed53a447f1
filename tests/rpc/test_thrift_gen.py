"""The generated binary codecs (``rpc.thrift._gen``) against thriftpy2's own encoding: equal
bytes when writing, equal values when reading, and a raise (so thriftpy2 takes over) on
anything else; then a server and a client that use them, with thriftpy2 as the peer."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from hypothesis import given, settings
from hypothesis import strategies as st
from thrift_support import LoopThread, start_server, stop_server
from thriftpy2.protocol import TCompactProtocol, TCyBinaryProtocol
from thriftpy2.transport import TCyMemoryBuffer, TMemoryBuffer

from monolake.apps.config import Server
from monolake.apps.rpc.thrift._gen import args_decoder, field_encoder, struct_encoder
from monolake.rpc import ThriftClient, ThriftService, build_server

IDL = """\
namespace py gen
enum Color { RED = 1, GREEN = 2 }
struct Inner { 1: i32 a, 2: optional string b = "dflt", 3: list<i64> xs }
struct Outer {
  1: required Inner inner,
  2: map<string, Inner> by_name,
  3: set<i16> small,
  4: list<bool> flags,
  5: binary blob,
  6: double d = 1.5,
  7: byte by,
  8: Color color = Color.GREEN,
  9: list<list<string>> nested,
  10: map<i32, list<Inner>> deep,
  11: optional bool ok,
  12: i64 big,
}
exception Oops { 1: string why, 2: i32 code = 7 }
struct Node { 1: i32 v, 2: optional Node child }
service Gen {
  Outer big(1: Outer o, 2: i32 n = 3, 3: string s) throws (1: Oops oops),
  void nothing(),
  string echo(1: string s),
  binary raw(1: binary b),
  double half(1: double x),
  Node walk(1: Node n),
}
"""


@pytest.fixture(scope="module")
def idl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "gen.thrift"
    path.write_text(IDL)
    return path


@pytest.fixture(scope="module")
def mod(idl: Path) -> Any:
    return thriftpy2.load(str(idl), module_name="gen_codec_thrift")


def _write(obj: Any, compact: bool = False) -> bytes:
    if compact:
        cbuf = TMemoryBuffer()
        obj.write(TCompactProtocol(cbuf))
        cout: bytes = cbuf.getvalue()
        return cout
    buf = TCyMemoryBuffer()
    obj.write(TCyBinaryProtocol(buf))
    out: bytes = buf.getvalue()
    return out


def _read(cls: Any, data: bytes, compact: bool = False) -> Any:
    obj = cls()
    obj.read(TCompactProtocol(TMemoryBuffer(data)) if compact else TCyBinaryProtocol(TCyMemoryBuffer(data)))
    return obj


def _plain(x: Any) -> Any:
    """Structs and exceptions as (class, fields) recursively: thriftpy2 exceptions compare by identity."""
    if hasattr(x, "thrift_spec"):
        return (type(x), {k: _plain(v) for k, v in x.__dict__.items()})
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def _fields(obj: Any) -> list[Any]:
    return [getattr(obj, spec[1]) for spec in obj.thrift_spec.values()]


def _outer(mod: Any) -> Any:
    inner = mod.Inner(a=5, b="é ü", xs=[1, 2, -(2**63)])
    return mod.Outer(
        inner=inner, by_name={"k": mod.Inner(a=1), "": mod.Inner(b=None)}, small={1, -2}, flags=[True, False],
        blob=b"\x00\xff", d=-2.5, by=-128, color=1, nested=[["a", ""], []], deep={3: [inner], -1: []}, ok=False,
        big=2**62,
    )  # fmt: skip


def _through_thriftpy2(mod: Any, outer: Any) -> Any:
    """``outer`` as thriftpy2 would hand it over: sets as lists, missing fields at their default."""
    return _read(mod.Outer, _write(outer))


def _same_both_ways(cls: Any, obj: Any, compact: bool = False) -> None:
    data = _write(obj, compact)
    encode, decode = struct_encoder(cls, compact), args_decoder(cls, compact)
    assert encode is not None and decode is not None
    assert encode(_fields(obj)) == data
    assert _plain(decode(b"junk" + data, 4)) == _plain(_fields(_read(cls, data, compact)))


def _big(mod: Any) -> Any:
    """Past the compact protocol's short forms: field id gaps over 15, lists of 15 and more."""
    inner = mod.Inner(a=-1, b="é" * 20, xs=list(range(-20, 20)))
    return mod.Outer(
        inner=inner, by_name={str(i): mod.Inner(a=i) for i in range(20)}, small=set(range(17)), flags=[True] * 16,
        blob=b"\x00" * 300, d=-1e300, by=127, color=2, nested=[[]] * 16, deep={-5: [mod.Inner()] * 15}, ok=True,
        big=-(2**63),
    )  # fmt: skip


@pytest.mark.parametrize("compact", [False, True], ids=["binary", "compact"])
def test_args_and_results_equal_thriftpy2_both_ways(mod: Any, compact: bool) -> None:
    args, result = mod.Gen.big_args, mod.Gen.big_result
    outer = _outer(mod)
    for obj in [
        args(o=outer, n=9, s="hi"),
        args(),  # defaults only: n=3, the rest missing
        args(o=mod.Outer(inner=mod.Inner())),  # nested defaults (b="dflt", d=1.5, color=GREEN)
        args(o=outer, n=None, s=""),
        args(o=_big(mod), n=-(2**31), s="s"),
    ]:
        _same_both_ways(args, obj, compact)
    for obj in [
        result(success=outer), result(success=_big(mod)), result(oops=mod.Oops(why="no")),
        result(oops=mod.Oops(why="x", code=None)),
    ]:  # fmt: skip
        _same_both_ways(result, obj, compact)
    _same_both_ways(mod.Gen.nothing_result, mod.Gen.nothing_result(), compact)
    _same_both_ways(mod.Gen.raw_args, mod.Gen.raw_args(b=b"\x80\x01"), compact)
    # A result's value alone (the server's answer): field 0 and the stop byte.
    for cls, value in [(result, outer), (mod.Gen.echo_result, "hé"), (mod.Gen.echo_result, b"\xff"),
                       (mod.Gen.half_result, 0.25), (mod.Gen.raw_result, b"")]:  # fmt: skip
        enc = field_encoder(cls, 0, compact)
        assert enc is not None and enc(value) == _write(cls(success=value), compact)


def test_decoded_defaults_and_bytes_as_thriftpy2_reads_them(mod: Any) -> None:
    decode = args_decoder(mod.Gen.big_args)
    assert decode is not None
    assert decode(b"\x00", 0) == [None, 3, None]  # the IDL default of n, as thriftpy2's __init__ gives it
    # A string that is not UTF-8 stays bytes, as thriftpy2 leaves it.
    data = b"\x0b\x00\x03" + struct.pack("!i", 2) + b"\xff\xfe\x00"
    assert decode(data, 0) == [None, 3, b"\xff\xfe"] == _fields(_read(mod.Gen.big_args, data))


def test_anything_unusual_raises_so_thriftpy2_decides(mod: Any) -> None:
    decode = args_decoder(mod.Gen.big_args)
    assert decode is not None
    good = _write(mod.Gen.big_args(o=_outer(mod), n=1, s="s"))
    for cut in range(len(good)):  # a truncated struct never decodes (nor reads past the end)
        with pytest.raises(Exception):  # noqa: B017 - any error: the caller falls back
            decode(good[:cut], 0)
    unusual = [
        b"\x08\x00\x09\x00\x00\x00\x01\x00",  # a field id the IDL does not have (thriftpy2 skips it)
        b"\x0b\x00\x02\x00\x00\x00\x01x\x00",  # field 2 (an i32) sent as a string
        b"\x0b\x00\x03\xff\xff\xff\xff\x00",  # a negative length
        b"\x0c\x00\x01\x0d\x00\x02\x0b\x0c\x7f\xff\xff\xff\x00\x00",  # a map size past the end
        b"\x0c\x00\x01\x0f\x00\x04\x08\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00",  # list<bool> sent as i32s
    ]
    for data in unusual:
        with pytest.raises(Exception):  # noqa: B017
            decode(data, 0)
    encode = struct_encoder(mod.Gen.big_args)
    assert encode is not None
    for values in [
        [_outer(mod), 2**31, "s"],  # out of range for an i32
        [_outer(mod), 1, bytearray(b"s")],  # a class thriftpy2 writes its own way
        [mod.Inner(), 1, "s"],  # a struct of another class than the IDL says
        [_outer(mod), 1.5, "s"],  # a float for an integer
    ]:
        with pytest.raises(Exception):  # noqa: B017
            encode(values)


def test_compact_truncated_or_unusual_raises(mod: Any) -> None:
    decode = args_decoder(mod.Gen.big_args, compact=True)
    assert decode is not None
    good = _write(mod.Gen.big_args(o=_big(mod), n=1, s="s"), compact=True)
    for cut in range(len(good)):
        with pytest.raises(Exception):  # noqa: B017
            decode(good[:cut], 0)
    for data in [
        b"\x15\x02\x00",  # field 1 (a struct) sent as an i32
        b"\x95\x02\x00",  # field 9: not in the IDL (thriftpy2 skips it)
        b"\x1c\x39\x15\x02\x00\x00",  # Inner.xs (list<i64>) with i32 elements
        b"\x38" + b"\xff" * 11 + b"\x00",  # a varint over 10 bytes
    ]:
        with pytest.raises(Exception):  # noqa: B017
            decode(data, 0)


def test_recursive_types_are_left_to_thriftpy2(mod: Any) -> None:
    assert args_decoder(mod.Gen.walk_args) is None
    assert struct_encoder(mod.Gen.walk_args) is None
    assert field_encoder(mod.Gen.walk_result, 0) is None


_i32 = st.integers(-(2**31), 2**31 - 1)
_text = st.text(max_size=8)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), compact=st.booleans())
def test_random_values_equal_thriftpy2(mod: Any, data: st.DataObject, compact: bool) -> None:
    inner = st.builds(
        mod.Inner, a=st.none() | _i32, b=st.none() | _text, xs=st.none() | st.lists(st.integers(-(2**63), 2**63 - 1))
    )
    outer = st.builds(
        mod.Outer,
        inner=inner,
        by_name=st.none() | st.dictionaries(_text, inner, max_size=3),
        small=st.none() | st.sets(st.integers(-(2**15), 2**15 - 1), max_size=4),
        flags=st.none() | st.lists(st.booleans(), max_size=4),
        blob=st.none() | st.binary(max_size=8),
        d=st.none() | st.floats(allow_nan=False),
        by=st.none() | st.integers(-128, 127),
        color=st.none() | st.sampled_from([1, 2]),
        nested=st.none() | st.lists(st.lists(_text, max_size=3), max_size=3),
        deep=st.none() | st.dictionaries(_i32, st.lists(inner, max_size=2), max_size=2),
        ok=st.none() | st.booleans(),
        big=st.none() | st.integers(-(2**63), 2**63 - 1),
    )
    obj = mod.Gen.big_args(o=data.draw(st.none() | outer), n=data.draw(st.none() | _i32), s=data.draw(_text))
    _same_both_ways(mod.Gen.big_args, obj, compact)


# -- a server and a client that use them ---------------------------------------------------


class Handler:
    async def big(self, o: Any, n: int, s: str) -> Any:
        if s == "oops":
            raise self.mod.Oops(why=o.inner.b, code=n)
        o.big = n
        return o

    def nothing(self) -> None:
        return None

    def echo(self, s: str) -> Any:
        return s

    def raw(self, b: bytes) -> bytes:
        return b[::-1]

    def half(self, x: float) -> float:
        return x / 2

    def walk(self, n: Any) -> Any:
        return n.child


@pytest.fixture(scope="module")
def served(idl: Path, mod: Any) -> Iterator[tuple[LoopThread, int]]:
    lt = LoopThread()
    handler = Handler()
    handler.mod = mod  # type: ignore[attr-defined]
    service = ThriftService(str(idl), handler)
    assert service.bound["big"].decode is not None and service.bound["big"].encode_ok is not None
    assert service.bound["big"].cdecode is not None and service.bound["big"].cencode_ok is not None
    assert service.bound["walk"].decode is None  # recursive: thriftpy2's codec
    app = build_server("gen", Server(listener="127.0.0.1:0"), service)
    srv, port = start_server(lt, app)
    yield lt, port
    stop_server(lt, srv, app)
    lt.close()


@pytest.mark.parametrize("compact", [False, True], ids=["binary", "compact"])
def test_thriftpy2_client_against_our_server(served: tuple[LoopThread, int], mod: Any, compact: bool) -> None:
    from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
    from thriftpy2.rpc import make_client
    from thriftpy2.transport import TFramedTransportFactory

    _, port = served
    proto = TCompactProtocolFactory() if compact else TBinaryProtocolFactory()
    c = make_client(
        mod.Gen, "127.0.0.1", port, proto_factory=proto, trans_factory=TFramedTransportFactory(), timeout=30000
    )
    try:
        outer = _outer(mod)
        got = c.big(outer, 11, "s")
        outer.big = 11
        assert _plain(got) == _plain(_through_thriftpy2(mod, outer))
        with pytest.raises(mod.Oops) as err:
            c.big(mod.Outer(inner=mod.Inner()), 4, "oops")
        assert (err.value.why, err.value.code) == ("dflt", 4)
        assert c.nothing() is None
        assert c.echo("ü" * 300) == "ü" * 300
        assert c.raw(b"\x00\x01") == b"\x01\x00"
        assert c.half(3.0) == 1.5
        node = mod.Node(v=1, child=mod.Node(v=2))
        assert c.walk(node) == mod.Node(v=2)  # a recursive type: thriftpy2's codec on both ends
    finally:
        c.close()


@pytest.mark.parametrize("protocol", ["binary", "compact"])
async def test_our_client_against_our_server(served: tuple[LoopThread, int], idl: Path, protocol: str) -> None:
    _, port = served
    async with ThriftClient(str(idl), [f"127.0.0.1:{port}"], transport="framed", protocol=protocol) as c:
        m = c.definition.module
        outer = _outer(m)
        got = await c.big(outer, 5, "s")
        outer.big = 5
        assert _plain(got) == _plain(_through_thriftpy2(m, outer))
        with pytest.raises(m.Oops) as err:
            await c.big(m.Outer(inner=m.Inner(b="why")), 9, "oops")
        assert (err.value.why, err.value.code) == ("why", 9)
        assert await c.nothing() is None
        assert await c.echo("x") == "x"
        assert await c.half(-1.0) == -0.5
        assert await c.walk(m.Node(v=1, child=m.Node(v=2, child=None))) == m.Node(v=2)


def test_a_call_the_generated_decoder_refuses_is_read_by_thriftpy2(served: tuple[LoopThread, int]) -> None:
    _, port = served
    # echo("hi") with a field the IDL does not have in front (thriftpy2 skips it).
    msg = struct.pack("!Ii", 0x80010001, 4) + b"echo" + struct.pack("!i", 42)
    msg += b"\x08\x00\x09" + struct.pack("!i", 7) + b"\x0b\x00\x01" + struct.pack("!i", 2) + b"hi\x00"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(struct.pack("!I", len(msg)) + msg)
        size = struct.unpack("!I", _recv(sock, 4))[0]
        reply = _recv(sock, size)
    expect = struct.pack("!Ii", 0x80010002, 4) + b"echo" + struct.pack("!i", 42)
    assert reply == expect + b"\x0b\x00\x00" + struct.pack("!i", 2) + b"hi\x00"


def _recv(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "the server closed the connection"
        out += chunk
    return out


async def test_calls_issued_together_share_one_write(served: tuple[LoopThread, int], idl: Path) -> None:
    _, port = served
    async with ThriftClient(str(idl), [f"127.0.0.1:{port}"]) as c:  # TTHeader: one multiplexed connection
        assert await c.echo("warm") == "warm"
        before = c.statistics()["upstream_writes"]
        got = await asyncio.gather(*(c.echo(f"m{i}") for i in range(16)))
        assert got == [f"m{i}" for i in range(16)]
        assert c.statistics()["upstream_writes"] == before + 1
        assert c.statistics()["upstream_connections"] == 1
