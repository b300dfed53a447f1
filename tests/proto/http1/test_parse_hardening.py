"""RequestReader's checks from issue 17, with bytes only: each rejected input is rejected
with the same status whether fed whole, byte by byte or split anywhere; and the head's
start time (``head_since``) is the ``now`` of the feed in which the head began."""

from __future__ import annotations

import pytest

from monolake.core.errors import ProtocolError
from monolake.core.proto.http._message import Request
from monolake.core.proto.http1._parse import RequestReader


class Recorder(RequestReader):
    def __init__(self, **limits: int) -> None:
        for name, value in limits.items():
            setattr(self, name, value)
        self.reader_init()
        self.reqs: list[Request] = []
        self.completed = 0

    def request_received(self, req: Request, has_body: bool, content_length: int | None) -> None:
        self.reqs.append(req)

    def body_received(self, data: bytes) -> None:
        pass

    def request_complete(self) -> None:
        self.completed += 1


def splits(data: bytes) -> list[list[bytes]]:
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    return ways + [[data[:i], data[i:]] for i in range(1, len(data))]


def reject(data: bytes, status: int, **limits: int) -> None:
    for pieces in splits(data):
        r = Recorder(**limits)
        with pytest.raises(ProtocolError) as info:
            for p in pieces:
                r.feed(p)
        assert info.value.status_hint == status, (str(info.value), [len(p) for p in pieces])
        assert not r.reqs, "a rejected request reached the hook"


def accept(data: bytes, **limits: int) -> Request:
    r = Recorder(**limits)
    for p in splits(data)[1]:
        r.feed(p)
    assert len(r.reqs) == 1 and r.completed == 1
    return r.reqs[0]


# -- RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 ----------------------------------------


@pytest.mark.parametrize("coding", [b"chunked", b"gzip, chunked", b"identity"])
def test_transfer_encoding_in_http10_is_400(coding: bytes) -> None:
    reject(b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: " + coding + b"\r\n\r\n0\r\n\r\n", 400)


def test_http10_smuggling_shape_never_reaches_the_hook() -> None:
    data = (
        b"POST /a HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    reject(data, 400)


# -- Host ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"a, b", b"a,b", b"a b", b"", b"   ", b"a/b", b"a@b", b"[::1", b"[::1]x", b"a:80x", b"a:b:c", b"a\\b", b"\x7f"],
)
def test_invalid_host_is_400(value: bytes) -> None:
    reject(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n", 400)


@pytest.mark.parametrize(
    ("value", "host"),
    [
        (b"Example.COM", b"example.com"),
        (b"example.com:8080", b"example.com"),
        (b"example.com:", b"example.com"),
        (b"[::1]:80", b"[::1]"),
        (b"[2001:DB8::1]", b"[2001:db8::1]"),
        (b"10.0.0.1:443", b"10.0.0.1"),
        (b"xn--bcher-kva.example", b"xn--bcher-kva.example"),
        (b"a_b~c%41", b"a_b~c%41"),
    ],
)
def test_valid_host(value: bytes, host: bytes) -> None:
    req = accept(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n")
    assert req.host == host
    assert req.raw_host == value


def test_invalid_host_on_connect_is_400() -> None:
    r = Recorder()
    r.tunnels = True
    with pytest.raises(ProtocolError) as info:
        r.feed(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert info.value.status_hint == 400


# -- versions ------------------------------------------------------------------------------


def test_http2_request_line_is_505() -> None:
    reject(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505)


@pytest.mark.parametrize("connection", [b"keep-alive", b"close", b"X-A, keep-alive"])
def test_http2_request_line_with_connection_is_505(connection: bytes) -> None:
    # The version is read from llhttp's keep-alive answer when there is no Connection field; with
    # one, HTTP/2.0 must still be told apart from 1.x.
    reject(b"GET / HTTP/2.0\r\nHost: a\r\nConnection: " + connection + b"\r\n\r\n", 505)


def test_version_per_pipelined_request() -> None:
    # Each message's version is its own, whatever the one before it was.
    r = Recorder()
    r.feed(
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: a\r\n\r\nGET /d HTTP/0.9\r\nHost: a\r\n\r\n"
    )
    assert [(q.target, q.version, q.keep_alive) for q in r.reqs] == [
        (b"/a", b"1.1", True),
        (b"/b", b"1.0", True),
        (b"/c", b"1.1", True),
        (b"/d", b"1.0", False),
    ]


def test_http2_connect_is_505() -> None:
    r = Recorder()
    r.tunnels = True
    with pytest.raises(ProtocolError) as info:
        r.feed(b"CONNECT a.example:443 HTTP/2.0\r\nHost: a\r\n\r\n")
    assert info.value.status_hint == 505


# -- request line length -----------------------------------------------------------------------


def test_request_line_at_the_limit_is_accepted() -> None:
    target = b"/" + b"x" * (100 - len(b"GET  HTTP/1.1") - 1)
    assert len(b"GET " + target + b" HTTP/1.1") == 100
    assert accept(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", max_request_line_bytes=100).target == target


@pytest.mark.parametrize("method", [b"GET", b"DELETE"])
def test_request_line_over_the_limit_is_414(method: bytes) -> None:
    target = b"/" + b"x" * (100 - len(method) - 10)  # one byte over
    assert len(method + b" " + target + b" HTTP/1.1") == 101
    reject(method + b" " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, max_request_line_bytes=100)


def test_request_line_limit_is_checked_before_the_line_ends() -> None:
    r = Recorder(max_request_line_bytes=100)
    r.feed(b"GET /")
    with pytest.raises(ProtocolError) as info:
        for _ in range(20):
            r.feed(b"y" * 10)
    assert info.value.status_hint == 414


def test_default_request_line_limit_is_8192() -> None:
    reject(b"GET /" + b"q" * 16384 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414)


# -- head_since ------------------------------------------------------------------------------


def test_head_since_is_the_feed_time_of_the_heads_first_byte() -> None:
    r = Recorder()
    r.feed(b"GET / HT", now=5.0)
    r.feed(b"TP/1.1\r\nHo", now=6.0)
    r.feed(b"st: a\r\n", now=7.0)
    assert r.head_since == 5.0
    # The head completes and the next begins in the same feed: its clock starts there.
    r.feed(b"\r\nGET /2 HTTP/1.1\r\n", now=8.0)
    assert len(r.reqs) == 1
    assert r.head_since == 8.0
    r.feed(b"Host: a\r\n", now=9.0)
    assert r.head_since == 8.0
    r.feed(b"\r\n", now=10.0)
    assert len(r.reqs) == 2
    # A later head on the same connection starts its own clock.
    r.feed(b"G", now=20.0)
    r.feed(b"ET", now=21.0)
    assert r.head_since == 20.0
