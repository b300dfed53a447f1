"""A route's header rewrite (``HeaderOps``) on list-backed headers (a request) and on an upstream
response's wire block, which stays a block unless a field it names is there."""

from __future__ import annotations

from monolake.apps.config._schema import HeaderRewrite
from monolake.apps.proxy._proxy import HeaderOps
from monolake.core.proto.http._message import Headers

OPS = HeaderOps(HeaderRewrite(add={"X-Added": "r1"}, set={"X-Origin": "masked"}, remove=["X-Conn"]))


def test_on_a_block_without_the_names_it_appends_lines() -> None:
    h = Headers(block=b"Content-Type: text/html\r\n")
    OPS.apply(h)
    assert h.block == b"Content-Type: text/html\r\nX-Origin: masked\r\nX-Added: r1\r\n"


def test_on_a_block_with_the_names_it_parses_and_rewrites() -> None:
    h = Headers(block=b"Content-Type: text/html\r\nX-Conn: 1\r\nx-origin: o\r\nX-Added: r0\r\n")
    OPS.apply(h)
    assert h.block is None
    assert h.pairs() == [
        (b"Content-Type", b"text/html"),
        (b"X-Added", b"r0"),
        (b"X-Origin", b"masked"),
        (b"X-Added", b"r1"),
    ]


def test_on_pairs() -> None:
    h = Headers([(b"X-Conn", b"1"), (b"A", b"b")])
    OPS.apply(h)
    assert h.pairs() == [(b"A", b"b"), (b"X-Origin", b"masked"), (b"X-Added", b"r1")]
    assert h.get("x-origin") == b"masked"
