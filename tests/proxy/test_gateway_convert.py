"""Gateway converters and method compilation, without sockets: JSON → thriftpy2 objects
→ Thrift bytes → objects → JSON, and the errors that name a field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from hypothesis import given, settings
from hypothesis import strategies as st
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.utils import deserialize, serialize

from monolake.apps.proxy.gateway import Compiler, Invalid, load_methods
from monolake.core.proto.http1 import Headers, Request

REPO = Path(__file__).resolve().parents[2]
IDL = REPO / "examples" / "gateway" / "echo.thrift"
echo: Any = thriftpy2.load(str(IDL), module_name="echo_convert_test_thrift")

TYPES = """
enum E { A = 1, B = 2 }
struct Leaf { 1: required string s; 2: optional binary raw; 3: optional double d; 4: optional bool b }
struct Node {
  1: optional i64 big (api.js_conv = "true")
  2: optional list<Leaf> leaves
  3: optional map<i32, list<string>> index
  4: optional set<i16> small
  5: optional E e
  6: optional Node child
  7: optional i8 tiny
}
"""


@pytest.fixture(scope="module")
def types(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("idl") / "types.thrift"
    path.write_text(TYPES)
    return thriftpy2.load(str(path), module_name="gateway_types_test_thrift")


def test_round_trip_through_thrift_bytes(types: Any) -> None:
    c = Compiler()
    doc = {
        "big": "9223372036854775807",
        "leaves": [{"s": "x", "raw": "AAEC", "d": 1, "b": True}],
        "index": {"7": ["a", "b"]},
        "small": [1, 2],
        "e": "B",
        "child": {"tiny": -128, "child": {"leaves": []}},
    }
    obj = c.struct_from_json(types.Node)(doc, "body")
    assert obj.big == 2**63 - 1 and obj.leaves[0].raw == b"\x00\x01\x02" and obj.index == {7: ["a", "b"]}
    data = serialize(obj, TBinaryProtocolFactory())
    back = deserialize(types.Node(), data, TBinaryProtocolFactory())
    out = c.struct_to_json(types.Node)(back)
    assert out == {
        "big": "9223372036854775807",
        "leaves": [{"s": "x", "raw": "AAEC", "d": 1.0, "b": True}],
        "index": {"7": ["a", "b"]},
        "small": [1, 2],
        "e": 2,
        "child": {"tiny": -128, "child": {"leaves": []}},
    }


@pytest.mark.parametrize(
    ("doc", "field", "message"),
    [
        ({"big": 1.5}, "body.big", "expected an i64"),
        ({"big": "x"}, "body.big", "number or string"),
        ({"tiny": 200}, "body.tiny", "out of range"),
        ({"leaves": [{}]}, "body.leaves[0].s", "required"),
        ({"leaves": [{"s": 1}]}, "body.leaves[0].s", "expected a string, got a number"),
        ({"leaves": [{"s": "x", "raw": "!!"}]}, "body.leaves[0].raw", "base64"),
        ({"leaves": [{"s": "x", "b": 1}]}, "body.leaves[0].b", "expected a bool"),
        ({"leaves": {}}, "body.leaves", "expected an array"),
        ({"index": {"x": []}}, "body.index.x", "expected an integer"),
        ({"e": "C"}, "body.e", "expected a E"),
        ({"e": True}, "body.e", "expected a E"),
        ({"child": {"child": {"tiny": "1"}}}, "body.child.child.tiny", "expected an i8"),
        ([], "body", "expected an object"),
    ],
)
def test_errors_name_the_field(types: Any, doc: Any, field: str, message: str) -> None:
    with pytest.raises(Invalid) as info:
        Compiler().struct_from_json(types.Node)(doc, "body")
    assert info.value.field == field
    assert message in info.value.message


@given(st.integers(-(2**63), 2**63 - 1), st.lists(st.text(max_size=10), max_size=5))
@settings(max_examples=100, deadline=None)
def test_js_conv_and_lists_round_trip(big: int, names: list[str]) -> None:
    c = Compiler()
    doc = {"id": str(big), "text": "t", "tags": [{"name": n} for n in names]}
    obj = c.struct_from_json(echo.EchoRequest)(doc, "body")
    resp = echo.EchoResponse(id=obj.id, text=obj.text, tags=obj.tags)
    out = c.struct_to_json(echo.EchoResponse)(
        deserialize(echo.EchoResponse(), serialize(resp), TBinaryProtocolFactory())
    )
    assert out["id"] == str(big)
    assert out["tags"] == [{"name": n, "weight": 1} for n in names]


def request(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request(method, target, Headers(headers or []))


def test_methods_and_sources() -> None:
    methods = {m.name: m for m in load_methods(str(IDL), "EchoService", "gw")}
    assert {n: (m.http_method, m.pattern) for n, m in methods.items()} == {
        "Echo": (b"POST", "/echo/:id"),
        "Lookup": (b"GET", "/lookup/:key"),
        "Ping": (b"GET", "/ping"),
    }
    m = methods["Echo"]
    req = request(b"POST", b"/echo/5?lang=de", [(b"X-Trace", b"t"), (b"Cookie", b"a=1; session=s")])
    args = m.build({"id": "5"}, req, {"text": "hi", "secret": "no"}, b"")
    r = args.req
    assert (r.id, r.lang, r.trace, r.session, r.text, r.secret) == (5, "de", "t", "s", "hi", None)
    lookup = methods["Lookup"]
    args = lookup.build({"key": "3"}, request(b"GET", b"/lookup/3?also=1&also=2"), None, b"")
    assert (args.req.key, args.req.also) == (3, [1, 2])
    ping = methods["Ping"]
    assert ping.req_attr is None
    assert ping.build({}, request(b"GET", b"/ping?sleep=0.5"), None, b"").sleep == 0.5


def test_response_mapping() -> None:
    m = next(m for m in load_methods(str(IDL), "EchoService", "gw") if m.name == "Echo")
    result = echo.EchoService.Echo_result(
        success=echo.EchoResponse(id=1, text="t", trace="tr", code=202, internal="x", session="s")
    )
    resp = m.respond(result)
    assert resp.status == 202
    assert resp.headers.get(b"x-trace") == b"tr"
    assert resp.body == b'{"id":"1","text":"t","session":"s"}'


def test_raw_body_both_ways(tmp_path: Path) -> None:
    idl = tmp_path / "blob.thrift"
    idl.write_text(
        'struct Up { 1: binary data (api.raw_body = ""); 2: optional string name (api.query = "name") }\n'
        'struct Down { 1: binary data (api.raw_body = ""); 2: string ct (api.header = "Content-Type") }\n'
        'service S { Down put(1: Up req) (api.put = "/blob") }\n'
    )
    [m] = load_methods(str(idl), "S", "gw")
    assert (m.http_method, m.needs_raw, m.needs_body) == (b"PUT", True, False)
    args = m.build({}, request(b"PUT", b"/blob?name=n"), None, b"\x00\xffraw")
    assert (args.req.data, args.req.name) == (b"\x00\xffraw", "n")
    mod = thriftpy2.load(str(idl), module_name="blob_test_thrift")
    resp = m.respond(mod.S.put_result(success=mod.Down(data=b"\x01\x02", ct="application/octet-stream")))
    assert (resp.status, resp.body) == (200, b"\x01\x02")
    assert resp.headers.get(b"content-type") == b"application/octet-stream"
