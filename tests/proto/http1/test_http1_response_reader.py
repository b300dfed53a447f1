"""ResponseReader over httptools: pure bytes in, recorded hooks out.

Accepted inputs are parsed whole, byte by byte and split at every position and must
agree; malformed ones must be a ``RemoteProtocolError`` with ``status_hint`` 502 and
``source`` upstream, however they are fed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from monolake.core.errors import ProtocolError, RemoteProtocolError, Source
from monolake.core.proto.http._message import Response
from monolake.core.proto.http1._parse import ResponseReader


@dataclass
class Msg:
    resp: Response
    has_body: bool
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def summary(self) -> tuple[Any, ...]:
        r = self.resp
        return (
            r.status,
            r.reason,
            r.version,
            list(r.headers.raw),
            r.content_length,
            r.keep_alive,
            r.body,
            self.has_body,
            self.body,
            self.complete,
        )


class Recorder(ResponseReader):
    def __init__(self, **limits: int) -> None:
        for name, value in limits.items():
            setattr(self, name, value)
        self.reader_init()
        self.msgs: list[Msg] = []

    def response_received(self, resp: Response, has_body: bool) -> None:
        self.msgs.append(Msg(resp, has_body))

    def body_received(self, data: bytes) -> None:
        assert self.msgs and not self.msgs[-1].complete, "body outside a message"
        self.msgs[-1].chunks.append(bytes(data))

    def response_complete(self) -> None:
        assert self.msgs and not self.msgs[-1].complete, "complete twice"
        self.msgs[-1].complete = True


def splits(data: bytes) -> list[list[bytes]]:
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    ways += [[data[:i], data[i:]] for i in range(1, len(data))]
    return ways


def feed_pieces(pieces: list[bytes], *, head_only: bool = False, **limits: int) -> list[Msg]:
    r = Recorder(**limits)
    r.expect_no_body = head_only
    for p in pieces:
        r.feed(p)
    return r.msgs


def parse(data: bytes, *, head_only: bool = False, **limits: int) -> list[Msg]:
    expected = feed_pieces([data], head_only=head_only, **limits)
    want = [m.summary() for m in expected]
    for pieces in splits(data)[1:]:
        got = [m.summary() for m in feed_pieces(pieces, head_only=head_only, **limits)]
        assert got == want, f"differs when fed as {[len(p) for p in pieces]}"
    return expected


def parse_one(data: bytes, *, head_only: bool = False, complete: bool = True) -> Msg:
    msgs = parse(data, head_only=head_only)
    assert len(msgs) == 1
    assert msgs[0].complete is complete
    return msgs[0]


def reject(data: bytes, **limits: int) -> RemoteProtocolError:
    first: ProtocolError | None = None
    for pieces in splits(data):
        r = Recorder(**limits)
        with pytest.raises(ProtocolError) as info:
            for p in pieces:
                r.feed(p)
        assert info.value.status_hint == 502, (str(info.value), [len(p) for p in pieces])
        assert info.value.source is Source.UPSTREAM
        first = first or info.value
    assert isinstance(first, RemoteProtocolError)
    return first


def resp(*lines: str, body: bytes = b"", start: str = "HTTP/1.1 200 OK") -> bytes:
    return ("\r\n".join([start, *lines]) + "\r\n\r\n").encode("latin-1") + body


# --- status line --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "status", "reason", "version"),
    [
        ("HTTP/1.1 200 OK", 200, b"OK", b"1.1"),
        ("HTTP/1.1 404 Not Found", 404, b"Not Found", b"1.1"),
        ("HTTP/1.0 503 Service Unavailable", 503, b"Service Unavailable", b"1.0"),
        ("HTTP/1.1 599 Some Custom Thing", 599, b"Some Custom Thing", b"1.1"),
        ("HTTP/1.1 200 ", 200, b"", b"1.1"),
        ("HTTP/1.1 200", 200, b"", b"1.1"),
    ],
)
def test_status_reason_version(start: str, status: int, reason: bytes, version: bytes) -> None:
    m = parse_one(resp("Content-Length: 0", start=start))
    assert (m.resp.status, m.resp.reason, m.resp.version) == (status, reason, version)


def test_headers_keep_case_order_and_duplicates() -> None:
    m = parse_one(resp("Set-Cookie: a=1", "set-cookie: b=2", "X-Y: z", "Content-Length: 0"))
    assert m.resp.headers.raw == [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"X-Y", b"z")]


# --- framing ------------------------------------------------------------------------


def test_content_length_body() -> None:
    m = parse_one(resp("Content-Length: 5", body=b"hello"))
    assert (m.resp.content_length, m.has_body, m.body, m.resp.keep_alive) == (5, True, b"hello", True)
    assert m.resp.headers.raw == []
    assert m.resp.body is None  # the reader never attaches a body; the driver does


def test_content_length_zero() -> None:
    m = parse_one(resp("Content-Length: 0"))
    assert (m.resp.content_length, m.has_body, m.body) == (0, False, b"")


def test_chunked_body() -> None:
    m = parse_one(resp("Transfer-Encoding: chunked", body=b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"))
    assert (m.resp.content_length, m.has_body, m.body, m.resp.keep_alive) == (None, True, b"hello world", True)
    assert m.resp.headers.raw == []


def test_chunked_body_with_trailers_completes() -> None:
    m = parse_one(resp("Transfer-Encoding: chunked", body=b"1\r\nx\r\n0\r\nX-T: 1\r\n\r\n"))
    assert (m.body, m.complete) == (b"x", True)


def test_trailers_do_not_leak_into_delivered_headers() -> None:
    m = parse_one(resp("Transfer-Encoding: chunked", body=b"1\r\nx\r\n0\r\nX-T: 1\r\n\r\n"))
    assert m.resp.headers.raw == []


def test_close_delimited_body() -> None:
    # No Content-Length, no chunked: the body runs until the upstream closes (RFC 9112 §6.3 (8)).
    m = parse_one(resp("X: 1", body=b"some bytes"), complete=False)
    assert (m.resp.content_length, m.has_body, m.body) == (None, True, b"some bytes")
    assert m.resp.keep_alive is False


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    lines = ["Content-Length: 10"] if status == 304 else []
    data = resp(*lines, start=f"HTTP/1.1 {status} X") + resp("Content-Length: 2", body=b"ok")
    first, second = parse(data)
    assert (first.resp.status, first.has_body, first.body, first.complete) == (status, False, b"", True)
    assert first.resp.keep_alive is True
    assert (second.resp.status, second.body, second.complete) == (200, b"ok", True)


def test_sequential_responses_on_one_reader() -> None:
    # One request at a time per upstream connection: each response arrives in its own reads.
    messages = [
        resp("Content-Length: 1", body=b"a"),
        resp("Transfer-Encoding: chunked", body=b"1\r\nb\r\n0\r\n\r\n", start="HTTP/1.1 201 Created"),
        resp(start="HTTP/1.1 204 No Content"),
        resp("Content-Length: 1", "X-Last: 1", body=b"d", start="HTTP/1.1 404 Not Found"),
    ]
    want = [(200, b"a", True), (201, b"b", True), (204, b"", True), (404, b"d", True)]
    for way in range(3):
        r = Recorder()
        for data in messages:
            pieces = (
                [data]
                if way == 0
                else [data[i : i + 1] for i in range(len(data))]
                if way == 1
                else [
                    data[: len(data) // 2],
                    data[len(data) // 2 :],
                ]
            )
            for p in pieces:
                r.feed(p)
        assert [(m.resp.status, m.body, m.complete) for m in r.msgs] == want
        assert r.msgs[3].resp.headers.raw == [(b"X-Last", b"1")]


def test_back_to_back_responses_with_known_lengths_in_one_feed() -> None:
    data = resp("Content-Length: 1", body=b"a") + resp(
        "Content-Length: 2", "X-Last: 1", body=b"bc", start="HTTP/1.1 404 Not Found"
    )
    msgs = parse(data)
    assert [(m.resp.status, m.resp.reason, m.body, m.complete) for m in msgs] == [
        (200, b"OK", b"a", True),
        (404, b"Not Found", b"bc", True),
    ]
    assert msgs[1].resp.headers.raw == [(b"X-Last", b"1")]


def test_three_back_to_back_responses_in_one_feed() -> None:
    data = (
        resp("Content-Length: 1", body=b"a")
        + resp(start="HTTP/1.1 204 No Content")
        + resp("Content-Length: 10", start="HTTP/1.1 304 Not Modified")
    )
    msgs = feed_pieces([data])
    assert [(m.resp.status, m.resp.reason, m.complete) for m in msgs] == [
        (200, b"OK", True),
        (204, b"No Content", True),
        (304, b"Not Modified", True),
    ]


def test_data_after_a_chunked_response_in_the_same_feed_is_502() -> None:
    # Nothing tells where a next response would start; an upstream that was sent one
    # request has no business sending it.
    data = resp("Transfer-Encoding: chunked", body=b"1\r\nb\r\n0\r\n\r\n") + resp("Content-Length: 0")
    r = Recorder()
    with pytest.raises(ProtocolError) as info:
        r.feed(data)
    assert info.value.status_hint == 502
    assert [(m.resp.status, m.body, m.complete) for m in r.msgs] == [(200, b"b", True)]


def outcome(pieces: list[bytes]) -> tuple[Any, ...]:
    r = Recorder()
    try:
        for p in pieces:
            r.feed(p)
    except ProtocolError as exc:
        return ("error", exc.status_hint)
    return tuple(m.summary() for m in r.msgs)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\nA: b\r\n\r\nx", id="leading-crlf"),
        pytest.param(
            b"HTTP/1.1 100 Continue\r\n\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\nA: b\r\n\r\nx",
            id="crlf-after-interim",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\nA: b\r\n\r\ny",
            id="crlf-between-responses",
        ),
    ],
)
def test_empty_lines_before_a_status_line(data: bytes) -> None:
    whole = outcome([data])
    assert outcome([data[i : i + 1] for i in range(len(data))]) == whole
    if whole[0] != "error":
        last = whole[-1]
        assert (last[1], last[3]) == (b"OK", [(b"A", b"b")])  # reason, headers


# --- HEAD responses -----------------------------------------------------------------


@pytest.mark.parametrize(
    "lines",
    [["Content-Length: 1234"], ["Transfer-Encoding: chunked"], ["Content-Length: 0"], []],
    ids=["content-length", "chunked", "zero", "close-delimited"],
)
def test_head_response_completes_without_body(lines: list[str]) -> None:
    m = parse_one(resp(*lines, "ETag: x"), head_only=True)
    assert m.has_body is False
    assert m.body == b""
    assert m.resp.headers.raw == [(b"ETag", b"x")]
    assert m.resp.keep_alive is True
    if lines == ["Content-Length: 1234"]:
        assert m.resp.content_length == 1234  # what the GET would have carried


@pytest.mark.parametrize("first_lines", [["Content-Length: 10"], ["Transfer-Encoding: chunked"], []])
def test_next_response_after_head_parses_on_the_same_reader(first_lines: list[str]) -> None:
    second = resp("Content-Length: 3", body=b"abc", start="HTTP/1.1 201 Created")
    for cut in range(len(second) + 1):
        r = Recorder()
        r.expect_no_body = True
        r.feed(resp(*first_lines))
        assert len(r.msgs) == 1 and r.msgs[0].complete
        assert r.expect_no_body is False  # reset for the next exchange
        r.feed(second[:cut])
        r.feed(second[cut:])
        assert len(r.msgs) == 2
        assert (r.msgs[1].resp.status, r.msgs[1].body, r.msgs[1].complete) == (201, b"abc", True)


@pytest.mark.parametrize("status", [204, 304])
def test_head_with_no_body_status_resets_expect_no_body(status: int) -> None:
    r = Recorder()
    r.expect_no_body = True
    r.feed(resp(start=f"HTTP/1.1 {status} X"))
    assert r.msgs[0].complete and r.expect_no_body is False
    r.feed(resp("Content-Length: 1", body=b"z"))
    assert r.msgs[1].body == b"z" and r.msgs[1].complete


def test_head_response_followed_by_next_response_in_one_feed() -> None:
    data = resp("Content-Length: 10") + resp("Content-Length: 1", body=b"x", start="HTTP/1.1 201 Created")
    msgs = feed_pieces([data], head_only=True)
    assert [(m.resp.status, m.body, m.complete) for m in msgs] == [(200, b"", True), (201, b"x", True)]


# --- interim responses --------------------------------------------------------------


def test_interim_responses_are_skipped() -> None:
    data = (
        resp(start="HTTP/1.1 100 Continue")
        + resp("Link: </a.css>; rel=preload", start="HTTP/1.1 103 Early Hints")
        + resp("Content-Length: 2", "X-Final: 1", body=b"ok")
    )
    m = parse_one(data)
    assert m.resp.status == 200
    assert m.resp.headers.raw == [(b"X-Final", b"1")]  # no headers from the 103
    assert m.body == b"ok"


def test_interim_alone_produces_nothing() -> None:
    assert parse(resp(start="HTTP/1.1 100 Continue")) == []


def test_interim_before_head_response() -> None:
    m = parse_one(resp(start="HTTP/1.1 100 Continue") + resp("Content-Length: 5"), head_only=True)
    assert (m.resp.status, m.has_body) == (200, False)


# --- keep-alive ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "connection", "keep_alive"),
    [
        ("HTTP/1.1 200 OK", None, True),
        ("HTTP/1.1 200 OK", "close", False),
        ("HTTP/1.1 200 OK", "Close", False),
        ("HTTP/1.1 200 OK", "X-A, close", False),
        ("HTTP/1.1 200 OK", "keep-alive", True),
        ("HTTP/1.0 200 OK", None, False),
        ("HTTP/1.0 200 OK", "keep-alive", True),
        ("HTTP/1.0 200 OK", "Keep-Alive", True),
        ("HTTP/1.0 200 OK", "close", False),
    ],
)
def test_keep_alive(start: str, connection: str | None, keep_alive: bool) -> None:
    lines = ["Content-Length: 1"] + ([f"Connection: {connection}"] if connection else [])
    msgs = feed_pieces([resp(*lines, body=b"x", start=start)])
    assert msgs[0].resp.keep_alive is keep_alive
    assert msgs[0].resp.headers.raw == []
    assert msgs[0].complete


@pytest.mark.parametrize(
    ("start", "connections", "keep_alive"),
    [
        ("HTTP/1.1 200 OK", ["keep-alive", "close"], False),
        ("HTTP/1.1 200 OK", ["Keep-Alive , Close"], False),
        ("HTTP/1.1 200 OK", ["X-A", "X-B"], True),
        ("HTTP/1.0 200 OK", ["X-A", "keep-alive"], True),
        ("HTTP/1.0 200 OK", ["X-A, Keep-Alive"], True),
        ("HTTP/1.0 200 OK", ["X-A"], False),
    ],
)
def test_keep_alive_from_several_connection_lines(start: str, connections: list[str], keep_alive: bool) -> None:
    lines = ["Content-Length: 1", *(f"Connection: {c}" for c in connections)]
    msgs = feed_pieces([resp(*lines, body=b"x", start=start)])
    assert msgs[0].resp.keep_alive is keep_alive


@pytest.mark.parametrize(
    ("start", "line", "keep_alive"),
    [
        ("HTTP/1.1 200 OK", "Proxy-Connection: close", False),
        ("HTTP/1.0 200 OK", "Proxy-Connection: keep-alive", True),
        ("HTTP/1.1 200 OK", "Proxy-Connection: keep-alive", True),
    ],
)
def test_proxy_connection_counts_for_keep_alive_as_llhttp_reads_it(start: str, line: str, keep_alive: bool) -> None:
    msgs = feed_pieces([resp("Content-Length: 1", line, "X-A: 1", body=b"x", start=start)])
    assert msgs[0].resp.keep_alive is keep_alive
    assert msgs[0].resp.headers.raw == [(b"X-A", b"1")]  # and it names no field to drop


@pytest.mark.parametrize(
    ("start", "connection", "keep_alive"),
    [("HTTP/1.0 200 OK", "keep-alive-x", False), ("HTTP/1.1 200 OK", "closed", True)],
)
def test_keep_alive_tokens_are_whole_tokens(start: str, connection: str, keep_alive: bool) -> None:
    msgs = feed_pieces([resp("Content-Length: 1", f"Connection: {connection}", body=b"x", start=start)])
    assert msgs[0].resp.keep_alive is keep_alive


def test_hop_by_hop_and_connection_listed_headers_are_dropped() -> None:
    data = resp(
        "Connection: X-A, keep-alive",
        "X-A: 1",
        "X-B: 2",
        "Keep-Alive: timeout=5",
        "Proxy-Authenticate: Basic",
        "Trailer: X-T",
        "Content-Length: 1",
        body=b"x",
    )
    m = parse_one(data)
    assert m.resp.headers.raw == [(b"X-B", b"2")]
    # Set apart, not lost: a client that is not a proxy may read them.
    assert m.resp.hop_headers == [
        (b"connection", b"X-A, keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-authenticate", b"Basic"),
        (b"trailer", b"X-T"),
        (b"content-length", b"1"),
        (b"x-a", b"1"),
    ]
    assert parse_one(resp("X-B: 2", "Content-Length: 0")).resp.hop_headers == [(b"content-length", b"0")]


@pytest.mark.parametrize(
    "lines",
    [
        ["Content-Length: 0"],
        ["Content-Length: 0", "X-B: 2"],
        ["X-B: 2", "Content-Length: 0"],
        ["X-A: 1", "CONTENT-LENGTH: 0", "Connection: keep-alive", "X-B: 2"],
        ["Connection: close", "Content-Length: 0", "X-A: 1", "Upgrade: x", "Te: y", "x-b: 2"],
        ["keep-alive: timeout=5", "Content-Length:0", "TRAILER: X-T"],
        ["X-Content-Length: 3", "X-Connection: a", "Content-Type: a/b", "Content-Length: 0"],
    ],
)
def test_the_kept_wire_block_is_the_end_to_end_lines_as_sent(lines: list[str]) -> None:
    """Hop-by-hop lines first, last, together or alone: the block forwarded as it came holds
    exactly the other lines, in their case and order."""
    hop = {"connection", "content-length", "keep-alive", "upgrade", "te", "trailer"}
    (m,) = feed_pieces([resp(*lines)])  # one feed: a split feed still cuts one whole head
    kept = [line for line in lines if line.split(":")[0].lower() not in hop]
    assert m.resp.headers.block == "".join(f"{line}\r\n" for line in kept).encode()
    assert [name for name, _ in m.resp.hop_headers or ()] == [
        line.split(":")[0].lower().encode() for line in lines if line not in kept
    ]


def test_non_chunked_transfer_encoding_is_close_delimited() -> None:
    m = parse_one(resp("Transfer-Encoding: gzip", body=b"abc"), complete=False)
    assert (m.resp.keep_alive, m.resp.content_length, m.has_body, m.body) == (False, None, True, b"abc")


def test_chunked_as_final_coding_frames_the_body() -> None:
    m = parse_one(resp("Transfer-Encoding: gzip, chunked", body=b"3\r\nabc\r\n0\r\n\r\n"))
    assert (m.resp.keep_alive, m.body) == (True, b"abc")


def test_transfer_encoding_over_two_lines_uses_the_final_coding() -> None:
    msgs = feed_pieces([resp("Transfer-Encoding: chunked", "Transfer-Encoding: gzip", body=b"abc")])
    assert msgs[0].resp.keep_alive is False


# --- malformed ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"garbage\r\n\r\n", id="garbage"),
        pytest.param(b"HTTP/1.1 2000 OK\r\n\r\n", id="status-4-digits"),
        pytest.param(b"HTTP/1.1 OK\r\n\r\n", id="no-status"),
        pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", id="bare-lf"),
        pytest.param(resp("Content-Length: 1", "Content-Length: 2", body=b"xy"), id="duplicate-cl"),
        pytest.param(resp("Content-Length: 1", "Transfer-Encoding: chunked", body=b"x"), id="cl-and-te"),
        pytest.param(resp("Content-Length: -1"), id="negative-cl"),
        pytest.param(resp("Content-Length: +1", body=b"x"), id="plus-cl"),
        pytest.param(resp("X: a", " folded", "Content-Length: 0"), id="obs-fold"),
        pytest.param(resp("Transfer-Encoding: chunked", body=b"zz\r\nabc\r\n0\r\n\r\n"), id="bad-chunk-size"),
        pytest.param(resp("Transfer-Encoding: chunked", body=b"2\r\nabc\r\n0\r\n\r\n"), id="chunk-too-long"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX : y\r\nContent-Length: 0\r\n\r\n", id="space-before-colon"),
    ],
)
def test_malformed_is_502(data: bytes) -> None:
    reject(data)


def test_too_many_headers_is_502() -> None:
    ok = resp("Content-Length: 0", "A: 1", "B: 2")  # every field counts, hop-by-hop ones too
    assert feed_pieces([ok], max_headers=3)[0].resp.headers.raw == [(b"A", b"1"), (b"B", b"2")]
    exc = reject(resp("Content-Length: 0", "A: 1", "B: 2", "C: 3"), max_headers=3)
    assert "headers" in str(exc)
    reject(resp("A: 1", "B: 2", "Content-Length: 0"), max_headers=2)


def test_complete_oversized_head_is_502() -> None:
    data = resp("X: " + "y" * 5000, "Content-Length: 0")
    with pytest.raises(ProtocolError) as info:
        feed_pieces([data], max_header_bytes=4096)
    assert info.value.status_hint == 502


def test_endless_head_in_pieces_is_502() -> None:
    r = Recorder(max_header_bytes=4096)
    r.feed(b"HTTP/1.1 200 OK\r\nX: ")
    with pytest.raises(ProtocolError) as info:
        for _ in range(10_000):
            r.feed(b"y" * 256)
    assert info.value.status_hint == 502
    assert info.value.source is Source.UPSTREAM


def test_unexpected_101_is_a_protocol_error() -> None:
    # The proxy strips Upgrade from requests, so a 101 from the upstream is a protocol violation.
    with pytest.raises(ProtocolError) as info:
        Recorder().feed(resp("Upgrade: websocket", "Connection: upgrade", start="HTTP/1.1 101 Switching Protocols"))
    assert info.value.status_hint == 502
