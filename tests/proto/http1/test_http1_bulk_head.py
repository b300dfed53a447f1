"""RequestReader's bulk head path (no Python call per header field) and its hand-overs to the
per-field path: what each must deliver, and that the bulk path is taken again afterwards.
The full contract (limits, framing, splits) is test_http1_request_reader's."""

from __future__ import annotations

import pytest

from monolake.core.errors import ProtocolError
from monolake.core.proto.http._message import Request
from monolake.core.proto.http1._parse import RequestReader


class Reader(RequestReader):
    def __init__(self, **limits: int) -> None:
        for name, value in limits.items():
            setattr(self, name, value)
        self.reader_init()
        self.reqs: list[Request] = []
        self.bodies: list[bytes] = []
        self.completed = 0

    def request_received(self, req: Request, has_body: bool, content_length: int | None) -> None:
        self.reqs.append(req)
        self.bodies.append(b"")

    def body_received(self, data: bytes) -> None:
        self.bodies[-1] += data

    def request_complete(self) -> None:
        self.completed += 1


CHUNKED = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"


def test_the_head_block_is_forwarded_as_it_came_without_hop_by_hop_lines() -> None:
    r = Reader()
    r.feed(
        b"GET /x?q=1 HTTP/1.1\r\nHost: Example.com:80\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\nAccept: */*\r\nTE: trailers\r\n\r\n"
    )
    (req,) = r.reqs
    assert r._fast
    assert (req.method, req.target, req.path, req.query, req.version) == (b"GET", b"/x?q=1", b"/x", b"q=1", b"1.1")
    assert (req.host, req.raw_host, req.keep_alive) == (b"example.com", b"Example.com:80", True)
    assert req.headers.pairs() == [(b"Host", b"Example.com:80"), (b"Accept", b"*/*")]
    assert req.hop_headers == [
        (b"connection", b"keep-alive, X-Hop"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"x-hop", b"1"),
    ]


def test_an_untouched_head_keeps_its_wire_block() -> None:
    r = Reader()
    r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n")
    assert r.reqs[0].headers.block == b"Host: a\r\nAccept: */*\r\n"


def test_a_chunked_request_hands_over_to_the_per_field_path_and_back() -> None:
    r = Reader()
    # The chunked body's end is not known to the bulk path: the GET pipelined behind it in the
    # same read is parsed per field; the next read starts between messages, in bulk again.
    r.feed(CHUNKED + b"GET /next HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n")
    assert not r._fast
    r.feed(b"GET /third HTTP/1.1\r\nHost: a\r\nX-B: 2\r\n\r\n")
    assert r._fast
    assert [q.target for q in r.reqs] == [b"/up", b"/next", b"/third"]
    assert r.bodies == [b"abc", b"", b""]
    assert r.completed == 3
    assert r.reqs[1].headers.pairs() == [(b"Host", b"a"), (b"X-A", b"1")]
    assert r.reqs[2].headers.pairs() == [(b"Host", b"a"), (b"X-B", b"2")]


def test_a_head_split_across_reads_is_handed_over_whole() -> None:
    r = Reader()
    r.feed(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHo")
    r.feed(b"st: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n")
    assert [q.target for q in r.reqs] == [b"/a", b"/b"]
    assert r.bodies == [b"", b"z"]
    assert r.completed == 2


def test_head_since_is_the_read_in_which_the_head_began() -> None:
    r = Reader()
    r.feed(b"GET / HT", 5.0)
    r.feed(b"TP/1.1\r\nHost: a\r\n", 6.0)
    assert (r.head_since, r._head_bytes) == (5.0, 25)
    r.feed(b"\r\nGET /2 HTTP/1.1\r\n", 7.0)  # one head ends, the next begins
    assert (len(r.reqs), r.head_since, r._head_bytes) == (1, 7.0, 17)
    r.feed(b"Host: a\r\n\r\n", 8.0)
    assert len(r.reqs) == 2
    assert r._head_bytes == 0  # between messages: the keep-alive timeout applies, not the head's


def test_a_long_request_line_is_414_before_the_head_ends() -> None:
    r = Reader(max_request_line_bytes=64)
    with pytest.raises(ProtocolError) as info:
        r.feed(b"GET /" + b"a" * 60 + b" HTTP/1.1\r\nHost: a\r\n")
    assert info.value.status_hint == 414
