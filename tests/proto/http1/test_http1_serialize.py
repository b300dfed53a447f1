"""Heads and chunk framing as exact bytes, and what the readers make of them."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from monolake.core.proto.http._message import Headers, Request, Response
from monolake.core.proto.http1._parse import RequestReader, ResponseReader
from monolake.core.proto.http1._serialize import (
    CHUNKED_LINE,
    CLOSE_LINE,
    CONTINUE_100,
    CRLF,
    KEEP_ALIVE_LINE,
    LAST_CHUNK,
    chunk,
    content_length_line,
    reason_phrase,
    request_head,
    response_head,
    status_line,
)

# --- status lines -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (200, b"HTTP/1.1 200 OK\r\n"),
        (204, b"HTTP/1.1 204 No Content\r\n"),
        (404, b"HTTP/1.1 404 Not Found\r\n"),
        (413, b"HTTP/1.1 413 Request Entity Too Large\r\n"),
        (431, b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        (502, b"HTTP/1.1 502 Bad Gateway\r\n"),
        (504, b"HTTP/1.1 504 Gateway Timeout\r\n"),
    ],
)
def test_status_line_known(status: int, line: bytes) -> None:
    assert status_line(status) == line


@pytest.mark.parametrize("status", [299, 499, 599, 999, 100 + 50])
def test_status_line_unknown_code(status: int) -> None:
    assert status_line(status) == b"HTTP/1.1 %d Unknown\r\n" % status
    assert reason_phrase(status) == b"Unknown"


def test_status_line_with_explicit_reason() -> None:
    assert status_line(200, b"Fine") == b"HTTP/1.1 200 Fine\r\n"
    assert status_line(599, b"Custom") == b"HTTP/1.1 599 Custom\r\n"
    # The standard phrase given explicitly (a forwarded upstream's): the prebuilt line, same bytes.
    assert status_line(404, b"Not Found") == b"HTTP/1.1 404 Not Found\r\n"
    assert status_line(404, b"not found") == b"HTTP/1.1 404 not found\r\n"


def test_every_http_status_has_its_phrase() -> None:
    for s in HTTPStatus:
        assert status_line(s.value) == f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode()
        assert reason_phrase(s.value) == s.phrase.encode()


# --- heads --------------------------------------------------------------------------


def test_response_head_exact() -> None:
    h = Headers([(b"Content-Type", b"text/plain"), (b"x-trace", b"abc")])
    framing = content_length_line(5) + KEEP_ALIVE_LINE
    assert response_head(200, h, framing) == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain\r\n"
        b"x-trace: abc\r\n"
        b"Content-Length: 5\r\n"
        b"Connection: keep-alive\r\n"
        b"\r\n"
    )


def test_response_head_with_reason_and_no_framing() -> None:
    assert response_head(404, Headers(), b"", reason=b"Gone Fishing") == b"HTTP/1.1 404 Gone Fishing\r\n\r\n"


def test_response_head_chunked_close() -> None:
    assert response_head(500, Headers([(b"A", b"")]), CHUNKED_LINE + CLOSE_LINE) == (
        b"HTTP/1.1 500 Internal Server Error\r\nA: \r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )


def test_request_head_exact() -> None:
    h = Headers([(b"Host", b"example.com:8080"), (b"Accept", b"*/*"), (b"Accept", b"text/html")])
    assert request_head(b"POST", b"/a?b=c", h, CHUNKED_LINE) == (
        b"POST /a?b=c HTTP/1.1\r\n"
        b"Host: example.com:8080\r\n"
        b"Accept: */*\r\n"
        b"Accept: text/html\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n"
    )


def test_heads_write_an_untouched_block_verbatim() -> None:
    block = b"X-A:  1\r\nx-b: 2\r\n"
    assert response_head(200, Headers(block=block), content_length_line(0)) == (
        b"HTTP/1.1 200 OK\r\nX-A:  1\r\nx-b: 2\r\nContent-Length: 0\r\n\r\n"
    )
    assert request_head(b"GET", b"/", Headers(block=block), b"") == b"GET / HTTP/1.1\r\nX-A:  1\r\nx-b: 2\r\n\r\n"


def test_heads_write_edited_block_headers_as_pairs() -> None:
    h = Headers(block=b"X-A: 1\r\nX-B: 2\r\n")
    h.remove("x-a")
    assert response_head(204, h, b"") == b"HTTP/1.1 204 No Content\r\nX-B: 2\r\n\r\n"


def _python_request_head(method: bytes, target: bytes, pairs: list[tuple[bytes, bytes]], framing: bytes) -> bytes:
    lines = b"".join(n + b": " + v + b"\r\n" for n, v in pairs)
    return method + b" " + target + b" HTTP/1.1\r\n" + lines + framing + b"\r\n"


@pytest.mark.parametrize(
    "pairs",
    [
        [],
        [(b"Host", b"a")],
        [(b"Host", b"example.com"), (b"X-Empty", b""), (b"", b"odd"), (b"X-Forwarded-For", b"1.2.3.4, ::1")],
        [(b"N%d" % i, b"v" * i) for i in range(300)],
    ],
)
def test_native_request_head_matches_the_join(pairs: list[tuple[bytes, bytes]]) -> None:
    """``_h1req.request_head`` (the compiled path) writes the same bytes as the Python join, and so
    does ``request_head`` with or without it."""
    _h1req = pytest.importorskip("monolake.core.proto.http1._h1req", reason="C extension not built")
    for framing in (b"", content_length_line(12), CHUNKED_LINE):
        want = _python_request_head(b"PATCH", b"/p?q=1", pairs, framing)
        assert _h1req.request_head(b"PATCH", b"/p?q=1", list(pairs), framing) == want
        assert request_head(b"PATCH", b"/p?q=1", Headers(list(pairs)), framing) == want


class _Bytes(bytes):
    pass


@pytest.mark.parametrize(
    "pair",
    [[b"X-List", b"pair"], (b"X-Str", "value"), (_Bytes(b"X-Sub"), b"v"), (b"X-Three", b"a", b"b"), (b"X-One",)],
)
def test_native_request_head_declines_what_it_does_not_take(pair: object) -> None:
    """A pair the C path does not take as it is (a list, a str, a bytes subclass, a wrong size)
    answers None there, and ``request_head`` gives the Python path's answer: the bytes for a
    2-item pair of bytes, its error otherwise."""
    _h1req = pytest.importorskip("monolake.core.proto.http1._h1req", reason="C extension not built")
    pairs: list[object] = [(b"Host", b"h"), pair]
    assert _h1req.request_head(b"GET", b"/", pairs, b"") is None
    h = Headers()
    h.raw = pairs  # type: ignore[assignment]
    if isinstance(pair, list):
        # From source any 2-item pair is written; compiled, the pairs are typed tuples (as before).
        try:
            got = request_head(b"GET", b"/", h, b"")
        except TypeError:
            return
        assert got == b"GET / HTTP/1.1\r\nHost: h\r\nX-List: pair\r\n\r\n"
    elif len(pair) == 2 and all(isinstance(x, bytes) for x in pair):  # type: ignore[arg-type]
        assert request_head(b"GET", b"/", h, b"") == b"GET / HTTP/1.1\r\nHost: h\r\n%s: %s\r\n\r\n" % tuple(pair)
    else:
        with pytest.raises((TypeError, ValueError)):
            request_head(b"GET", b"/", h, b"")


def test_request_head_is_always_http11() -> None:
    assert request_head(b"GET", b"/", Headers([(b"Host", b"a")]), b"") == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def test_framing_lines() -> None:
    assert content_length_line(0) == b"Content-Length: 0\r\n"
    assert content_length_line(1234567890123) == b"Content-Length: 1234567890123\r\n"
    assert CHUNKED_LINE == b"Transfer-Encoding: chunked\r\n"
    assert CLOSE_LINE == b"Connection: close\r\n"
    assert KEEP_ALIVE_LINE == b"Connection: keep-alive\r\n"
    assert CRLF == b"\r\n"
    assert CONTINUE_100 == b"HTTP/1.1 100 Continue\r\n\r\n"


# --- chunks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (b"x", b"1"),
        (b"hello", b"5"),
        (b"a" * 15, b"f"),
        (b"a" * 16, b"10"),
        (b"a" * 255, b"ff"),
        (b"a" * 4096, b"1000"),
    ],
)
def test_chunk_framing(data: bytes, size: bytes) -> None:
    pieces = chunk(data)
    assert pieces == (size + b"\r\n", data, b"\r\n")
    assert pieces[1] is data  # never copied


def test_last_chunk() -> None:
    assert LAST_CHUNK == b"0\r\n\r\n"


# --- what the readers make of it ----------------------------------------------------


class _Req(RequestReader):
    def __init__(self) -> None:
        self.reader_init()
        self.got: list[tuple[Request, bool, int | None]] = []
        self.body = b""
        self.done = 0

    def request_received(self, req: Request, has_body: bool, content_length: int | None) -> None:
        self.got.append((req, has_body, content_length))

    def body_received(self, data: bytes) -> None:
        self.body += data

    def request_complete(self) -> None:
        self.done += 1


class _Resp(ResponseReader):
    def __init__(self) -> None:
        self.reader_init()
        self.got: list[Response] = []
        self.body = b""
        self.done = 0

    def response_received(self, resp: Response, has_body: bool) -> None:
        self.got.append(resp)

    def body_received(self, data: bytes) -> None:
        self.body += data

    def response_complete(self) -> None:
        self.done += 1


def test_chunked_request_round_trip() -> None:
    parts = [b"abc", b"\r\n0\r\n\r\n", b"x" * 300]
    wire = request_head(b"PUT", b"/u", Headers([(b"Host", b"h")]), CHUNKED_LINE)
    wire += b"".join(b"".join(chunk(p)) for p in parts) + LAST_CHUNK
    r = _Req()
    r.feed(wire)
    (req, has_body, cl), *_ = r.got
    assert (req.method, req.target, has_body, cl) == (b"PUT", b"/u", True, None)
    assert r.body == b"".join(parts)
    assert r.done == 1


def test_response_head_round_trip() -> None:
    h = Headers([(b"X-A", b"1"), (b"Server", b"monolake")])
    wire = response_head(201, h, content_length_line(2) + CLOSE_LINE) + b"ok"
    r = _Resp()
    r.feed(wire)
    resp = r.got[0]
    assert (resp.status, resp.reason, resp.content_length, resp.keep_alive) == (201, b"Created", 2, False)
    assert resp.headers.raw == h.raw
    assert (r.body, r.done) == (b"ok", 1)


def test_continue_100_is_an_interim_response() -> None:
    r = _Resp()
    r.feed(CONTINUE_100)
    assert r.got == [] and r.done == 0
    r.feed(response_head(204, Headers(), b""))
    assert [x.status for x in r.got] == [204] and r.done == 1
