"""RequestReader over httptools: pure bytes in, recorded hooks out.

Every accepted input is parsed three ways (whole, byte by byte, split at every
position) and the three must agree; every rejected input must be rejected all three
ways with the same ``status_hint``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from monolake.core.errors import ProtocolError, RemoteProtocolError, Source
from monolake.core.proto.http._message import Request
from monolake.core.proto.http1._parse import HOP_BY_HOP, RequestReader

# --- recording reader ---------------------------------------------------------------


@dataclass
class Msg:
    req: Request
    has_body: bool
    content_length: int | None
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def summary(self) -> tuple[Any, ...]:
        r = self.req
        return (
            r.method,
            r.target,
            r.path,
            r.query,
            r.version,
            r.host,
            r.raw_host,
            list(r.headers.raw),
            r.keep_alive,
            r.expect_continue,
            r.upgrade,
            self.has_body,
            self.content_length,
            self.body,
            self.complete,
        )


class Recorder(RequestReader):
    """Records hooks as Msg objects; limits are set before ``reader_init``."""

    def __init__(self, **limits: int) -> None:
        for name, value in limits.items():
            setattr(self, name, value)
        self.reader_init()
        self.msgs: list[Msg] = []

    def request_received(self, req: Request, has_body: bool, content_length: int | None) -> None:
        self.msgs.append(Msg(req, has_body, content_length))

    def body_received(self, data: bytes) -> None:
        assert self.msgs and not self.msgs[-1].complete, "body outside a message"
        self.msgs[-1].chunks.append(bytes(data))

    def request_complete(self) -> None:
        assert self.msgs and not self.msgs[-1].complete, "complete twice"
        self.msgs[-1].complete = True


def feed_pieces(pieces: list[bytes], **limits: int) -> list[Msg]:
    r = Recorder(**limits)
    for p in pieces:
        r.feed(p)
    return r.msgs


def splits(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, then two pieces split at every position."""
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    ways += [[data[:i], data[i:]] for i in range(1, len(data))]
    return ways


def parse(data: bytes, **limits: int) -> list[Msg]:
    """Parse every way; all must agree. Returns the messages of the whole feed."""
    expected = feed_pieces([data], **limits)
    want = [m.summary() for m in expected]
    for pieces in splits(data)[1:]:
        got = [m.summary() for m in feed_pieces(pieces, **limits)]
        assert got == want, f"differs when fed as {[len(p) for p in pieces]}"
    return expected


def parse_one(data: bytes, **limits: int) -> Msg:
    msgs = parse(data, **limits)
    assert len(msgs) == 1
    assert msgs[0].complete
    return msgs[0]


def reject(data: bytes, status: int = 400, **limits: int) -> ProtocolError:
    """Every way of feeding ``data`` raises ProtocolError with ``status``."""
    first: ProtocolError | None = None
    for pieces in splits(data):
        r = Recorder(**limits)
        with pytest.raises(ProtocolError) as info:
            for p in pieces:
                r.feed(p)
        assert info.value.status_hint == status, (str(info.value), [len(p) for p in pieces])
        first = first or info.value
    assert first is not None
    return first


def head(*lines: str, body: bytes = b"", start: str = "GET / HTTP/1.1") -> bytes:
    return ("\r\n".join([start, *lines]) + "\r\n\r\n").encode("latin-1") + body


# --- the basics ---------------------------------------------------------------------


def test_minimal_get() -> None:
    m = parse_one(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    r = m.req
    assert (r.method, r.target, r.path, r.query, r.version) == (b"GET", b"/", b"/", b"", b"1.1")
    assert r.host == b"example.com"
    assert r.raw_host == b"example.com"
    assert r.headers.raw == [(b"Host", b"example.com")]
    assert r.keep_alive is True
    assert r.expect_continue is False
    assert r.upgrade is None
    assert r.body is None and r.ctx is None
    assert (m.has_body, m.content_length, m.body) == (False, None, b"")


def test_target_is_split_into_path_and_query() -> None:
    r = parse_one(head("Host: a", start="GET /a/b?x=1&y=%20 HTTP/1.1")).req
    assert (r.target, r.path, r.query) == (b"/a/b?x=1&y=%20", b"/a/b", b"x=1&y=%20")


def test_absolute_form_target_is_kept_verbatim() -> None:
    r = parse_one(head("Host: example.com", start="GET http://example.com/x?q HTTP/1.1")).req
    assert r.target == b"http://example.com/x?q"
    assert r.host == b"example.com"


def test_asterisk_form() -> None:
    r = parse_one(head("Host: a", start="OPTIONS * HTTP/1.1")).req
    assert (r.method, r.target, r.path) == (b"OPTIONS", b"*", b"*")


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"])
def test_methods(method: bytes) -> None:
    assert parse_one(method + b" /m HTTP/1.1\r\nHost: a\r\n\r\n").req.method == method


def test_header_names_keep_case_and_order_and_duplicates() -> None:
    data = head("Host: a", "X-One: 1", "x-one: 2", "Accept: */*", "Set-Thing: a=b; c", "X-Empty:")
    r = parse_one(data).req
    assert r.headers.raw == [
        (b"Host", b"a"),
        (b"X-One", b"1"),
        (b"x-one", b"2"),
        (b"Accept", b"*/*"),
        (b"Set-Thing", b"a=b; c"),
        (b"X-Empty", b""),
    ]
    assert r.headers.get_all("X-ONE") == [b"1", b"2"]


def test_leading_whitespace_of_values_is_trimmed() -> None:
    r = parse_one(b"GET / HTTP/1.1\r\nHost:   a\r\nX:\tv w\r\n\r\n").req
    assert r.headers.raw == [(b"Host", b"a"), (b"X", b"v w")]
    assert r.host == b"a"


def test_trailing_whitespace_of_values_is_trimmed() -> None:
    r = parse_one(b"GET / HTTP/1.1\r\nHost: a  \r\nX: v w\t\r\n\r\n").req
    assert r.host == b"a"
    assert r.headers.raw == [(b"Host", b"a"), (b"X", b"v w")]


def test_leading_empty_lines_are_ignored() -> None:
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line.
    m = parse_one(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert m.req.target == b"/"


# --- bodies -------------------------------------------------------------------------


def test_post_with_content_length() -> None:
    m = parse_one(head("Host: a", "Content-Length: 11", start="POST /up HTTP/1.1", body=b"hello world"))
    assert (m.has_body, m.content_length, m.body) == (True, 11, b"hello world")
    assert m.req.headers.raw == [(b"Host", b"a")]


def test_content_length_zero_has_no_body() -> None:
    m = parse_one(head("Host: a", "Content-Length: 0", start="POST / HTTP/1.1"))
    assert (m.has_body, m.content_length, m.body) == (False, 0, b"")


def test_binary_body_with_crlf_and_nul() -> None:
    body = b"\r\n\r\n\x00\xffGET / HTTP/1.1\r\n\r\n"
    m = parse_one(head("Host: a", f"Content-Length: {len(body)}", start="PUT /b HTTP/1.1", body=body))
    assert m.body == body


def test_chunked_body() -> None:
    data = head(
        "Host: a",
        "Transfer-Encoding: chunked",
        start="POST / HTTP/1.1",
        body=b"5\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\n\r\n",
    )
    m = parse_one(data)
    assert (m.has_body, m.content_length, m.body) == (True, None, b"hello 0123456789")


def test_chunked_with_extensions() -> None:
    body = b'3;name=value\r\nabc\r\n2;a;b=1;c="quoted"\r\nde\r\n0;last=1\r\n\r\n'
    m = parse_one(head("Host: a", "Transfer-Encoding: chunked", start="POST / HTTP/1.1", body=body))
    assert m.body == b"abcde"


def test_chunked_hex_sizes_in_both_cases() -> None:
    payload = bytes(range(256)) * 2
    body = b"1fF\r\n" + payload[:0x1FF] + b"\r\n1\r\n" + payload[0x1FF:] + b"\r\n0\r\n\r\n"
    m = parse_one(head("Host: a", "Transfer-Encoding: chunked", start="POST / HTTP/1.1", body=body))
    assert m.body == payload


def test_chunked_with_trailers_completes() -> None:
    body = b"1\r\na\r\n0\r\nX-Checksum: 1\r\n\r\n"
    m = parse_one(head("Host: a", "Transfer-Encoding: chunked", start="POST / HTTP/1.1", body=body))
    assert m.body == b"a"


def test_trailers_do_not_leak_into_delivered_headers() -> None:
    body = b"1\r\na\r\n0\r\nX-Checksum: 1\r\n\r\n"
    m = parse_one(head("Host: a", "Transfer-Encoding: chunked", start="POST / HTTP/1.1", body=body))
    assert m.req.headers.raw == [(b"Host", b"a")]


def test_empty_chunked_body() -> None:
    m = parse_one(head("Host: a", "Transfer-Encoding: chunked", start="POST / HTTP/1.1", body=b"0\r\n\r\n"))
    assert (m.has_body, m.content_length, m.body) == (True, None, b"")


def test_transfer_encoding_value_is_case_insensitive() -> None:
    m = parse_one(head("Host: a", "Transfer-Encoding: Chunked", start="POST / HTTP/1.1", body=b"1\r\nx\r\n0\r\n\r\n"))
    assert m.body == b"x"


# --- pipelining and trailing data ---------------------------------------------------


def test_pipelined_requests_of_every_framing() -> None:
    data = (
        head("Host: a", start="GET /1 HTTP/1.1")
        + head("Host: b", "Content-Length: 3", start="POST /2 HTTP/1.1", body=b"abc")
        + head("Host: c", "Transfer-Encoding: chunked", start="POST /3 HTTP/1.1", body=b"2\r\nde\r\n0\r\n\r\n")
        + head("Host: d", "Connection: close", start="GET /4 HTTP/1.1")
    )
    msgs = parse(data)
    assert [m.req.target for m in msgs] == [b"/1", b"/2", b"/3", b"/4"]
    assert [m.req.host for m in msgs] == [b"a", b"b", b"c", b"d"]
    assert [m.body for m in msgs] == [b"", b"abc", b"de", b""]
    assert [m.content_length for m in msgs] == [None, 3, None, None]
    assert [m.req.keep_alive for m in msgs] == [True, True, True, False]
    assert all(m.complete for m in msgs)


def test_state_does_not_leak_between_pipelined_requests() -> None:
    data = head(
        "Host: a", "Connection: X-Secret", "X-Secret: 1", "Expect: 100-continue", "Content-Length: 1",
        "Upgrade: h2c", start="POST /1 HTTP/1.1", body=b"x",
    ) + head("Host: b", "X-Secret: 2", start="GET /2 HTTP/1.1")  # fmt: skip
    first, second = parse(data)
    assert first.req.expect_continue is True and first.req.upgrade == b"h2c"
    assert first.req.headers.raw == [(b"Host", b"a")]
    assert second.req.upgrade is None
    assert second.req.keep_alive is True and second.req.expect_continue is False
    assert second.req.headers.raw == [(b"Host", b"b"), (b"X-Secret", b"2")]
    assert (second.has_body, second.content_length) == (False, None)


def test_trailing_partial_request_waits_for_more() -> None:
    first = head("Host: a", "Content-Length: 2", start="POST /1 HTTP/1.1", body=b"ok")
    second = head("Host: b", start="GET /2 HTTP/1.1")
    for cut in range(len(second)):
        r = Recorder()
        r.feed(first + second[:cut])
        assert len(r.msgs) == 1 and r.msgs[0].complete and r.msgs[0].body == b"ok"
        r.feed(second[cut:])
        assert [m.req.target for m in r.msgs] == [b"/1", b"/2"]
        assert r.msgs[1].complete


def test_incomplete_body_is_not_complete() -> None:
    r = Recorder()
    r.feed(head("Host: a", "Content-Length: 10", start="POST / HTTP/1.1", body=b"12345"))
    assert r.msgs[0].body == b"12345"
    assert not r.msgs[0].complete


# --- keep-alive (RFC 9112 §9.3) -----------------------------------------------------


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("1.1", None, True),
        ("1.1", "close", False),
        ("1.1", "Close", False),
        ("1.1", "keep-alive", True),
        ("1.1", "X-Foo, close", False),
        ("1.1", "X-Foo", True),
        ("1.0", None, False),
        ("1.0", "keep-alive", True),
        ("1.0", "Keep-Alive", True),
        ("1.0", "X-Foo, keep-alive", True),
        ("1.0", "close", False),
        ("1.0", "X-Foo", False),
    ],
)
def test_keep_alive_rules(version: str, connection: str | None, keep_alive: bool) -> None:
    lines = ["Host: a"] + ([f"Connection: {connection}"] if connection else [])
    r = parse_one(head(*lines, start=f"GET / HTTP/{version}")).req
    assert r.version == version.encode()
    assert r.keep_alive is keep_alive
    assert r.headers.raw == [(b"Host", b"a")]


def test_connection_close_in_a_second_connection_header() -> None:
    r = parse_one(head("Host: a", "Connection: X-A", "Connection: close", "X-A: 1")).req
    assert r.keep_alive is False
    assert r.headers.raw == [(b"Host", b"a")]


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [("1.0", "keep-alive-please", False), ("1.1", "closed", True), ("1.1", "x-close", True)],
)
def test_connection_tokens_are_whole_tokens(version: str, connection: str, keep_alive: bool) -> None:
    r = parse_one(head("Host: a", f"Connection: {connection}", start=f"GET / HTTP/{version}")).req
    assert r.keep_alive is keep_alive


def test_data_after_connection_close_is_rejected() -> None:
    # The connection ends with that request (RFC 9112 §9.6); llhttp refuses what follows.
    data = head("Host: a", "Connection: close", start="GET /1 HTTP/1.1") + head("Host: a", start="GET /2 HTTP/1.1")
    r = Recorder()
    with pytest.raises(ProtocolError) as info:
        r.feed(data)
    assert info.value.status_hint == 400
    assert [m.req.target for m in r.msgs] == [b"/1"]
    assert r.msgs[0].complete


# --- Host (RFC 9112 §3.2) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "host"),
    [
        (b"example.com", b"example.com"),
        (b"Example.COM", b"example.com"),
        (b"Example.COM:8080", b"example.com"),
        (b"127.0.0.1:80", b"127.0.0.1"),
        (b"[::1]", b"[::1]"),
        (b"[::1]:8443", b"[::1]"),
        (b"[2001:DB8::A]:80", b"[2001:db8::a]"),
        (b"xn--bcher-kva.example", b"xn--bcher-kva.example"),
    ],
)
def test_host_is_lowercased_without_port(value: bytes, host: bytes) -> None:
    r = parse_one(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n").req
    assert r.host == host
    assert r.raw_host == value
    assert r.headers.raw == [(b"Host", value)]  # forwarded as received


def test_host_header_name_is_case_insensitive() -> None:
    r = parse_one(b"GET / HTTP/1.1\r\nhOsT: A.b\r\n\r\n").req
    assert r.host == b"a.b"


def test_http10_without_host_is_fine() -> None:
    r = parse_one(b"GET / HTTP/1.0\r\n\r\n").req
    assert (r.version, r.host, r.raw_host, r.keep_alive) == (b"1.0", b"", None, False)


def test_missing_host_on_http11_is_400() -> None:
    exc = reject(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400)
    assert isinstance(exc, RemoteProtocolError)
    assert exc.source is Source.DOWNSTREAM
    assert "Host" in str(exc)


def test_missing_host_hook_is_never_called() -> None:
    r = Recorder()
    with pytest.raises(ProtocolError):
        r.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert r.msgs == []


@pytest.mark.parametrize("second", [b"Host: a", b"host: b", b"HOST: a:80"])
def test_duplicate_host_is_400(second: bytes) -> None:
    exc = reject(b"GET / HTTP/1.1\r\nHost: a\r\n" + second + b"\r\n\r\n", 400)
    assert "Host" in str(exc)


# --- hop-by-hop headers (RFC 9110 §7.6.1) -------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "Connection: keep-alive",
        "Keep-Alive: timeout=5, max=100",
        "TE: trailers",
        "Trailer: X-Checksum",
        "Upgrade: h2c",
        "Proxy-Connection: keep-alive",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "Proxy-Authenticate: Basic",
        "Content-Length: 0",
        "Expect: 100-continue",
        "Transfer-Encoding: chunked",
    ],
)
def test_hop_by_hop_headers_are_dropped(line: str) -> None:
    body = b"0\r\n\r\n" if line.startswith("Transfer-Encoding") else b""
    r = parse_one(head("Host: a", "X-Before: 1", line, "X-After: 2", start="POST / HTTP/1.1", body=body)).req
    assert r.headers.raw == [(b"Host", b"a"), (b"X-Before", b"1"), (b"X-After", b"2")]


def test_hop_by_hop_set_is_what_the_docs_say() -> None:
    assert {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    } == HOP_BY_HOP


def test_hop_by_hop_names_are_case_insensitive() -> None:
    r = parse_one(head("Host: a", "KEEP-ALIVE: 1", "tE: trailers", "x-keep: 1")).req
    assert r.headers.raw == [(b"Host", b"a"), (b"x-keep", b"1")]


def test_headers_named_in_connection_are_dropped() -> None:
    data = head(
        "Host: a",
        "Connection: X-Foo, x-bar ,keep-alive",
        "X-Foo: 1",
        "X-BAR: 2",
        "X-Baz: 3",
        "Connection: X-Qux",
        "X-Qux: 4",
    )
    r = parse_one(data).req
    assert r.headers.raw == [(b"Host", b"a"), (b"X-Baz", b"3")]
    assert r.keep_alive is True


def test_hop_by_hop_headers_are_set_apart_for_services() -> None:
    # The proxy forwards ``headers`` only; a service answering itself may read the rest.
    data = head(
        "Host: a",
        "Proxy-Authorization: Basic Zm9vOmJhcg== ",
        "TE: trailers",
        "Connection: X-Foo, keep-alive",
        "X-Foo: 1",
        "X-Keep: 2",
    )
    r = parse_one(data).req
    assert r.headers.raw == [(b"Host", b"a"), (b"X-Keep", b"2")]
    assert r.hop_headers == [
        (b"proxy-authorization", b"Basic Zm9vOmJhcg=="),
        (b"te", b"trailers"),
        (b"connection", b"X-Foo, keep-alive"),
        (b"x-foo", b"1"),
    ]
    assert parse_one(head("Host: a", "X-Keep: 2")).req.hop_headers is None


def test_connection_naming_host_drops_host_header_but_keeps_req_host() -> None:
    # A client may name any field; the parsed host survives for routing.
    r = parse_one(head("Host: a", "Connection: Host")).req
    assert r.headers.raw == []
    assert r.host == b"a"


def test_connection_listed_header_before_connection_is_dropped_too() -> None:
    r = parse_one(head("Host: a", "X-Early: 1", "Connection: x-early")).req
    assert r.headers.raw == [(b"Host", b"a")]


def test_upgrade_request_without_body_is_served_as_plain_http_and_next_request_parses() -> None:
    data = head("Host: a", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Key: k") + head(
        "Host: b", start="GET /next HTTP/1.1"
    )
    first, second = parse(data)
    assert first.req.upgrade == b"websocket"
    assert first.req.headers.raw == [(b"Host", b"a"), (b"Sec-WebSocket-Key", b"k")]
    assert (first.has_body, first.complete) == (False, True)
    assert second.req.target == b"/next" and second.complete


def test_upgrade_without_connection_upgrade_is_recorded_and_dropped() -> None:
    r = parse_one(head("Host: a", "Upgrade: h2c")).req
    assert r.upgrade == b"h2c"
    assert r.headers.raw == [(b"Host", b"a")]


def test_upgrade_request_body_is_not_parsed_as_a_request() -> None:
    # httptools skips the body of an upgrade request; the reader must pass it through
    # as body, not parse it as the next request (a smuggling vector).
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    data = head(
        "Host: a", "Connection: upgrade", "Upgrade: foo", f"Content-Length: {len(smuggled)}",
        start="POST / HTTP/1.1", body=smuggled,
    )  # fmt: skip
    m = parse_one(data)
    assert m.req.target == b"/"
    assert (m.has_body, m.content_length, m.body) == (True, len(smuggled), smuggled)
    assert m.req.upgrade == b"foo"


def test_upgrade_request_body_then_pipelined_request() -> None:
    data = head(
        "Host: a", "Connection: upgrade", "Upgrade: foo", "Content-Length: 5", start="POST /1 HTTP/1.1", body=b"hello"
    ) + head("Host: b", "Content-Length: 2", start="POST /2 HTTP/1.1", body=b"ok")
    first, second = parse(data)
    assert (first.req.target, first.body, first.complete) == (b"/1", b"hello", True)
    assert (second.req.target, second.body, second.complete) == (b"/2", b"ok", True)


def test_upgrade_request_body_respects_max_body_bytes() -> None:
    data = head("Host: a", "Connection: upgrade", "Upgrade: foo", "Content-Length: 5", start="POST / HTTP/1.1")
    reject(data + b"hello", 413, max_body_bytes=4)


def test_upgrade_request_with_chunked_body_is_501() -> None:
    data = head("Host: a", "Connection: upgrade", "Upgrade: foo", "Transfer-Encoding: chunked", start="POST / HTTP/1.1")
    reject(data + b"1\r\nx\r\n0\r\n\r\n", 501)


def test_error_after_upgrade_in_same_feed_is_a_protocol_error() -> None:
    data = head("Host: a", "Connection: upgrade", "Upgrade: websocket") + b"GET /2 HTTP/1.1\r\n\r\n"
    exc = reject(data, 400)
    assert "Host" in str(exc)


@pytest.mark.parametrize("extra", ["Expect: nope", "Transfer-Encoding: gzip", "Host: again"])
def test_our_own_errors_after_upgrade_in_same_feed(extra: str) -> None:
    status = {"Expect": 417, "Transfer-Encoding": 501, "Host": 400}[extra.split(":")[0]]
    data = head("Host: a", "Connection: upgrade", "Upgrade: websocket") + head(
        "Host: a", extra, start="POST / HTTP/1.1"
    )
    reject(data, status)


def test_connect_is_405() -> None:
    exc = reject(head("Host: a:443", start="CONNECT a:443 HTTP/1.1"), 405)
    assert exc.source is Source.DOWNSTREAM


# --- Expect (RFC 9110 §10.1.1) ------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "start", "body", "expect"),
    [
        (["Content-Length: 1"], "POST / HTTP/1.1", b"x", True),
        (["Transfer-Encoding: chunked"], "POST / HTTP/1.1", b"1\r\nx\r\n0\r\n\r\n", True),
        ([], "GET / HTTP/1.1", b"", False),
        (["Content-Length: 0"], "POST / HTTP/1.1", b"", False),
        (["Content-Length: 1"], "POST / HTTP/1.0", b"x", False),
    ],
)
def test_expect_continue_only_with_a_body(lines: list[str], start: str, body: bytes, expect: bool) -> None:
    m = parse_one(head("Host: a", "Expect: 100-continue", *lines, start=start, body=body))
    assert m.req.expect_continue is expect
    assert m.req.headers.raw == [(b"Host", b"a")]


def test_expect_continue_is_case_insensitive() -> None:
    m = parse_one(head("Host: a", "Expect: 100-Continue", "Content-Length: 1", start="POST / HTTP/1.1", body=b"x"))
    assert m.req.expect_continue is True


@pytest.mark.parametrize("value", ["foo", "100-continue-ish", "200-ok", "100-continue, foo"])
def test_other_expectations_are_417(value: str) -> None:
    exc = reject(head("Host: a", f"Expect: {value}"), 417)
    assert exc.source is Source.DOWNSTREAM


# --- request smuggling shapes -------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            head("Host: a", "Content-Length: 5", "Transfer-Encoding: chunked", start="POST / HTTP/1.1") + b"0\r\n\r\n",
            id="cl-then-te",
        ),
        pytest.param(
            head("Host: a", "Transfer-Encoding: chunked", "Content-Length: 5", start="POST / HTTP/1.1") + b"0\r\n\r\n",
            id="te-then-cl",
        ),
        pytest.param(
            head("Host: a", "Content-Length: 3", "Content-Length: 3", start="POST / HTTP/1.1", body=b"abc"),
            id="duplicate-cl-same",
        ),
        pytest.param(
            head("Host: a", "Content-Length: 3", "Content-Length: 4", start="POST / HTTP/1.1", body=b"abcd"),
            id="duplicate-cl-differ",
        ),
        pytest.param(head("Host: a", "Content-Length: 3, 3", start="POST / HTTP/1.1", body=b"abc"), id="cl-list"),
        pytest.param(head("Host: a", "X: a", " folded"), id="obs-fold-space"),
        pytest.param(head("Host: a", "X: a", "\tfolded"), id="obs-fold-tab"),
        pytest.param(
            head("Host: a", "Transfer-Encoding: chunked", start="POST / HTTP/1.1", body=b"zz\r\nabc\r\n0\r\n\r\n"),
            id="chunk-size-not-hex",
        ),
        pytest.param(
            head("Host: a", "Transfer-Encoding: chunked", start="POST / HTTP/1.1", body=b"-3\r\nabc\r\n0\r\n\r\n"),
            id="chunk-size-negative",
        ),
        pytest.param(
            head("Host: a", "Transfer-Encoding: chunked", start="POST / HTTP/1.1", body=b"3\nabc\r\n0\r\n\r\n"),
            id="chunk-size-bare-lf",
        ),
        pytest.param(
            head("Host: a", "Transfer-Encoding: chunked", start="POST / HTTP/1.1", body=b"3\r\nabcX\r\n0\r\n\r\n"),
            id="chunk-data-too-long",
        ),
        pytest.param(
            head(
                "Host: a",
                "Transfer-Encoding: chunked",
                start="POST / HTTP/1.1",
                body=b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
            ),
            id="chunk-size-overflow",
        ),
        pytest.param(
            head("Host: a", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked", start="POST / HTTP/1.1")
            + b"0\r\n\r\n",
            id="te-chunked-twice",
        ),
        pytest.param(
            head("Host: a", "Transfer-Encoding: chunked, gzip", start="POST / HTTP/1.1") + b"0\r\n\r\n",
            id="chunked-not-last",  # RFC 9112 §6.3: the length cannot be determined
        ),
        pytest.param(b"GET / HTTP/1.1\nHost: a\n\n", id="bare-lf-everywhere"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", id="bare-lf-in-header"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\n", id="bare-lf-ending-head"),
        pytest.param(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", id="space-in-name"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", id="nul-in-value"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: \x7f\r\n\r\n", id="del-in-value"),
        pytest.param(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", id="space-in-target"),
        pytest.param(b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", id="space-after-version"),
        pytest.param(b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", id="bad-version"),
        pytest.param(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", id="bad-method"),
        pytest.param(b"garbage\r\n\r\n", id="garbage"),
    ],
)
def test_smuggling_and_malformed_shapes_are_400(data: bytes) -> None:
    exc = reject(data, 400)
    assert isinstance(exc, RemoteProtocolError)
    assert exc.source is Source.DOWNSTREAM


@pytest.mark.parametrize("value", ["-1", "+1", "1x", "0x10", " ", "", "1 2", "99999999999999999999999"])
def test_bad_content_length_values_are_400(value: str) -> None:
    reject(head("Host: a", f"Content-Length: {value}", start="POST / HTTP/1.1", body=b"a"), 400)


@pytest.mark.parametrize("value", ["gzip", "gzip, chunked", "identity", "deflate"])
def test_transfer_codings_other_than_chunked_are_501(value: str) -> None:
    exc = reject(head("Host: a", f"Transfer-Encoding: {value}", start="POST / HTTP/1.1") + b"0\r\n\r\n", 501)
    assert exc.source is Source.DOWNSTREAM


def test_request_received_is_not_called_for_a_rejected_head() -> None:
    r = Recorder()
    with pytest.raises(ProtocolError):
        r.feed(head("Host: a", "Content-Length: 5", "Transfer-Encoding: chunked", start="POST / HTTP/1.1"))
    assert r.msgs == []


# --- limits -------------------------------------------------------------------------


def test_head_within_max_header_bytes_in_pieces_is_accepted() -> None:
    data = head("Host: a", "X: " + "v" * 900)
    assert len(data) < 1024
    msgs = feed_pieces([data[i : i + 100] for i in range(0, len(data), 100)], max_header_bytes=1024)
    assert len(msgs) == 1 and msgs[0].complete


def test_endless_header_fed_in_pieces_is_431() -> None:
    r = Recorder(max_header_bytes=4096)
    r.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    fed = 0
    with pytest.raises(ProtocolError) as info:
        while fed < 1_000_000:  # bounded: must fail long before this
            r.feed(b"x" * 500)
            fed += 500
    assert info.value.status_hint == 431
    assert info.value.source is Source.DOWNSTREAM
    assert fed <= 4096
    assert r.msgs == []


def test_endless_header_lines_fed_in_pieces_is_431() -> None:
    r = Recorder(max_header_bytes=4096, max_headers=10_000)
    r.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    with pytest.raises(ProtocolError) as info:
        for i in range(10_000):
            r.feed(b"X-%d: v\r\n" % i)
    assert info.value.status_hint == 431


def test_endless_request_line_fed_in_pieces_is_431() -> None:
    r = Recorder(max_header_bytes=2048)
    r.feed(b"GET /")
    with pytest.raises(ProtocolError) as info:
        for _ in range(10_000):
            r.feed(b"a" * 100)
    assert info.value.status_hint == 431


def test_oversized_partial_head_fed_whole_is_431() -> None:
    with pytest.raises(ProtocolError) as info:
        Recorder(max_header_bytes=1024).feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"x" * 2000)
    assert info.value.status_hint == 431


@pytest.mark.parametrize("piece", [None, 16384])
def test_complete_oversized_head_is_431(piece: int | None) -> None:
    data = head("Host: a", "X: " + "x" * 40_000)
    pieces = [data] if piece is None else [data[i : i + piece] for i in range(0, len(data), piece)]
    r = Recorder()  # default max_header_bytes = 32768
    with pytest.raises(ProtocolError) as info:
        for p in pieces:
            r.feed(p)
    assert info.value.status_hint == 431


def test_large_body_then_start_of_next_head_in_one_feed_is_not_431() -> None:
    data = head("Host: a", "Content-Length: 40000", start="POST / HTTP/1.1", body=b"x" * 40_000)
    r = Recorder()  # default max_header_bytes = 32768, max_body_bytes = 0
    r.feed(data + b"GET /next HTTP/1.1\r\n")
    r.feed(b"Host: a\r\n\r\n")
    assert [m.req.target for m in r.msgs] == [b"/", b"/next"]


def test_max_headers() -> None:
    ok = head("Host: a", "X-1: 1", "X-2: 2")
    assert parse_one(ok, max_headers=3).req.headers.get("X-2") == b"2"
    exc = reject(head("Host: a", "X-1: 1", "X-2: 2", "X-3: 3"), 431, max_headers=3)
    assert exc.source is Source.DOWNSTREAM


def test_max_headers_does_not_depend_on_header_order() -> None:
    def outcome(data: bytes) -> int:
        try:
            feed_pieces([data], max_headers=3)
        except ProtocolError as exc:
            return exc.status_hint
        return 0

    hop_first = head("Connection: keep-alive", "Host: a", "X-1: 1", "X-2: 2")
    hop_last = head("Host: a", "X-1: 1", "X-2: 2", "Connection: keep-alive")
    assert outcome(hop_first) == outcome(hop_last)


def test_hop_by_hop_headers_count_toward_max_headers() -> None:
    reject(head("Host: a", "Connection: keep-alive", "Keep-Alive: 5", "TE: trailers"), 431, max_headers=3)


def test_max_headers_default_is_100() -> None:
    lines = ["Host: a", *(f"X-{i}: {i}" for i in range(99))]
    assert len(parse_one(head(*lines)).req.headers) == 100
    with pytest.raises(ProtocolError) as info:
        Recorder().feed(head(*lines, "X-Last: 1"))
    assert info.value.status_hint == 431


def test_max_body_bytes_content_length_over_is_413_before_the_body() -> None:
    data = head("Host: a", "Content-Length: 11", start="POST / HTTP/1.1")
    exc = reject(data, 413, max_body_bytes=10)
    assert exc.source is Source.DOWNSTREAM
    r = Recorder(max_body_bytes=10)
    with pytest.raises(ProtocolError):
        r.feed(data)
    assert r.msgs == []  # rejected at the head, not after buffering the body


def test_max_body_bytes_content_length_at_limit_is_fine() -> None:
    m = parse_one(head("Host: a", "Content-Length: 10", start="POST / HTTP/1.1", body=b"0123456789"), max_body_bytes=10)
    assert m.body == b"0123456789"


def test_max_body_bytes_chunked_accumulation_is_413() -> None:
    body = b"4\r\nabcd\r\n4\r\nefgh\r\n3\r\nijk\r\n0\r\n\r\n"
    data = head("Host: a", "Transfer-Encoding: chunked", start="POST / HTTP/1.1", body=body)
    reject(data, 413, max_body_bytes=10)
    m = parse_one(data, max_body_bytes=11)
    assert m.body == b"abcdefghijk"


def test_max_body_bytes_chunked_delivers_at_most_the_limit() -> None:
    data = head("Host: a", "Transfer-Encoding: chunked", start="POST / HTTP/1.1", body=b"10\r\n" + b"x" * 16)
    r = Recorder(max_body_bytes=10)
    with pytest.raises(ProtocolError):
        for i in range(len(data)):
            r.feed(data[i : i + 1])
    assert len(r.msgs) == 1
    assert len(r.msgs[0].body) == 10


def test_max_body_bytes_counts_per_request() -> None:
    one = head("Host: a", "Transfer-Encoding: chunked", start="POST / HTTP/1.1", body=b"8\r\n12345678\r\n0\r\n\r\n")
    msgs = parse(one * 3, max_body_bytes=10)
    assert [m.body for m in msgs] == [b"12345678"] * 3


def test_max_body_bytes_zero_means_unlimited() -> None:
    body = b"x" * 200_000
    msgs = feed_pieces([head("Host: a", f"Content-Length: {len(body)}", start="POST / HTTP/1.1", body=body)])
    assert msgs[0].body == body


# --- field names: the lowered-name cache -------------------------------------------------------


def test_field_names_past_the_lowered_name_cache() -> None:
    # The reader keeps a bounded number of lowered names (of bounded length) per worker; names past
    # the bound, long names and hop-by-hop names in any case are handled as any other.
    many = [f"X-Name-{i}: {i}" for i in range(700)]
    long = "X-" + "Long" * 40
    data = head("Host: a", *many, f"{long}: v", "CONNECTION: X-Name-3", "Te: trailers")
    msgs = feed_pieces([data, data], max_headers=1000, max_header_bytes=1 << 20)
    assert len(msgs) == 2
    for m in msgs:
        h = m.req.headers
        assert h.get("x-name-699") == b"699" and h.get(long.lower()) == b"v"
        assert b"x-name-3" not in h and h.names()[:2] == [b"host", b"x-name-0"]
        assert len(h) == 1 + 699 + 1
        assert m.req.hop_headers is not None and {n for n, _ in m.req.hop_headers} == {
            b"connection",
            b"te",
            b"x-name-3",
        }
        assert m.req.keep_alive and m.req.version == b"1.1"
