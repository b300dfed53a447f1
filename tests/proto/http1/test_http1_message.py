"""Headers, Request and Response: the mutable message objects filters rewrite."""

from __future__ import annotations

import pytest

from monolake.core.proto.http._message import Headers, Request, Response, parse_block

# --- Headers ------------------------------------------------------------------------


def sample() -> Headers:
    return Headers([(b"Host", b"a"), (b"X-Tag", b"1"), (b"Accept", b"*/*"), (b"x-tag", b"2")])


@pytest.mark.parametrize("name", ["x-tag", "X-TAG", b"X-Tag", b"x-TaG"])
def test_get_is_case_insensitive_and_returns_the_first(name: str | bytes) -> None:
    assert sample().get(name) == b"1"


def test_get_default() -> None:
    h = sample()
    assert h.get("missing") is None
    assert h.get("missing", b"d") == b"d"
    assert Headers().get("x") is None


@pytest.mark.parametrize("name", ["x-tag", "X-TAG", b"X-TAG"])
def test_get_all_in_order(name: str | bytes) -> None:
    assert sample().get_all(name) == [b"1", b"2"]
    assert sample().get_all("nope") == []


def test_contains() -> None:
    h = sample()
    assert "HOST" in h
    assert b"accept" in h
    assert "x" not in h
    assert 42 not in h
    assert None not in h


def test_add_keeps_existing() -> None:
    h = sample()
    h.add("X-Tag", "3")
    assert h.get_all("x-tag") == [b"1", b"2", b"3"]
    assert h.raw[-1] == (b"X-Tag", b"3")


def test_set_replaces_every_instance_and_appends() -> None:
    h = sample()
    h.set("X-TAG", b"9")
    assert h.get_all("x-tag") == [b"9"]
    assert h.raw == [(b"Host", b"a"), (b"Accept", b"*/*"), (b"X-TAG", b"9")]


def test_set_new_header() -> None:
    h = Headers()
    h.set(b"Via", "1.1 monolake")
    assert h.raw == [(b"Via", b"1.1 monolake")]


def test_remove_returns_count() -> None:
    h = sample()
    assert h.remove("X-TAG") == 2
    assert h.remove("x-tag") == 0
    assert h.raw == [(b"Host", b"a"), (b"Accept", b"*/*")]


def test_remove_keeps_the_list_object() -> None:
    raw = [(b"A", b"1"), (b"B", b"2")]
    h = Headers(raw)
    h.remove("a")
    assert h.raw is raw and raw == [(b"B", b"2")]


def test_str_values_are_latin1_encoded() -> None:
    h = Headers()
    h.add("X-Name", "caf\xe9")
    assert h.raw == [(b"X-Name", b"caf\xe9")]
    assert h.get("x-name") == b"caf\xe9"


def test_iteration_len_repr() -> None:
    h = sample()
    assert list(h) == h.raw
    assert len(h) == 4
    assert repr(Headers([(b"A", b"1")])) == "Headers([(b'A', b'1')])"


def test_default_lists_are_not_shared() -> None:
    a, b = Headers(), Headers()
    a.add("x", "1")
    assert len(b) == 0


# --- Headers over a wire block ---------------------------------------------------------

BLOCK = b"Content-Type: text/html\r\nX-Tag:  1 \r\nx-tag:2\r\nEmpty:\r\n"


def test_block_is_kept_until_something_reads_a_field() -> None:
    h = Headers(block=BLOCK)
    assert h.block == BLOCK
    assert h.get("x-tag") == b"1"  # values lose their surrounding whitespace
    assert h.block is None  # parsed now: the list is the truth
    assert h.raw == [(b"Content-Type", b"text/html"), (b"X-Tag", b"1"), (b"x-tag", b"2"), (b"Empty", b"")]


@pytest.mark.parametrize(
    "use",
    [
        lambda h: h.get_all("x-tag"),
        lambda h: "x-tag" in h,
        lambda h: h.get("X-TAG"),
        lambda h: len(h),
        lambda h: list(h),
        lambda h: h.set("X-Tag", "3"),
        lambda h: h.remove("x-tag"),
        lambda h: h.get("x"),  # a name some line starts with: the pairs decide
        repr,
    ],
)
def test_a_use_of_a_field_that_is_there_parses_the_block(use: object) -> None:
    h = Headers(block=BLOCK)
    use(h)  # type: ignore[operator]
    assert h.block is None
    assert h.raw[0] == (b"Content-Type", b"text/html")


def test_add_and_names_the_block_lacks_keep_the_block() -> None:
    h = Headers(block=BLOCK)
    assert h.get("via") is None and h.get("via", b"d") == b"d"
    assert h.get_all("via") == [] and "via" not in h and h.remove("via") == 0
    h.add("Via", "monolake")
    h.set(b"X-New", b"1")
    assert h.block == BLOCK + b"Via: monolake\r\nX-New: 1\r\n"
    assert h.get("x-new") == b"1"  # now there: parsed
    assert h.block is None
    assert h.raw[-2:] == [(b"Via", b"monolake"), (b"X-New", b"1")]


def test_edits_on_a_block_backed_headers() -> None:
    h = Headers(block=BLOCK)
    h.set("x-tag", "9")
    h.add("Via", "monolake")
    assert h.raw == [(b"Content-Type", b"text/html"), (b"Empty", b""), (b"x-tag", b"9"), (b"Via", b"monolake")]


def test_assigning_raw_drops_the_block() -> None:
    h = Headers(block=BLOCK)
    h.raw = [(b"A", b"1")]
    assert h.block is None and h.get("a") == b"1"


def test_empty_block() -> None:
    h = Headers(block=b"")
    assert h.block == b""
    assert len(h) == 0


def test_list_backed_headers_have_no_block() -> None:
    assert Headers().block is None
    assert Headers([(b"A", b"1")]).block is None


def test_parse_block() -> None:
    assert parse_block(b"") == []
    assert parse_block(b"A: 1\r\n") == [(b"A", b"1")]
    assert parse_block(b"A:\t x y \t\r\nB: c:d\r\n") == [(b"A", b"x y"), (b"B", b"c:d")]


# --- Request ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/", b"/", b""),
        (b"/a/b", b"/a/b", b""),
        (b"/a?x=1", b"/a", b"x=1"),
        (b"/a?", b"/a", b""),
        (b"/a?x=1?y=2", b"/a", b"x=1?y=2"),
        (b"*", b"*", b""),
    ],
)
def test_request_path_and_query(target: bytes, path: bytes, query: bytes) -> None:
    r = Request(b"GET", target, Headers())
    assert (r.target, r.path, r.query) == (target, path, query)


def test_request_defaults() -> None:
    r = Request(b"GET", b"/", Headers())
    assert (r.version, r.host, r.raw_host, r.keep_alive, r.body, r.expect_continue, r.upgrade, r.ctx) == (
        b"1.1",
        b"",
        None,
        True,
        None,
        False,
        None,
        None,
    )


def test_set_path_keeps_query() -> None:
    r = Request(b"GET", b"/api/users?page=2", Headers())
    r.set_path(b"/users")
    assert (r.path, r.query, r.target) == (b"/users", b"page=2", b"/users?page=2")


def test_set_path_without_query() -> None:
    r = Request(b"GET", b"/api/users", Headers())
    r.set_path(b"/")
    assert (r.path, r.query, r.target) == (b"/", b"", b"/")


def test_request_is_slotted_and_repr() -> None:
    r = Request(b"POST", b"/x?y", Headers())
    with pytest.raises(AttributeError):
        r.nope = 1  # type: ignore[attr-defined]
    assert repr(r) == "<Request POST /x?y>"


# --- Response -----------------------------------------------------------------------


def test_response_content_length_from_bytes_body() -> None:
    assert Response(200, body=b"hello").content_length == 5
    assert Response(200, body=b"").content_length == 0


def test_response_content_length_unknown_for_streams_and_none() -> None:
    assert Response(200).content_length is None
    assert Response(200, body=object()).content_length is None


def test_response_explicit_content_length_wins() -> None:
    assert Response(200, body=b"abc", content_length=10).content_length == 10


def test_response_defaults_and_repr() -> None:
    r = Response(404)
    assert (r.status, r.reason, r.version, r.keep_alive, r.body) == (404, b"", b"1.1", True, None)
    assert len(r.headers) == 0
    assert Response(200).headers is not r.headers
    assert repr(r) == "<Response 404>"
