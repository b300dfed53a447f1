"""Router: every matcher, first-match order, and a naive reference as the oracle."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monolake.apps.config._schema import Route
from monolake.apps.proxy._router import Router, _literal_prefix
from monolake.core.proto.http._message import Headers, Request


def req(
    path: bytes = b"/",
    host: bytes = b"x",
    method: bytes = b"GET",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Request:
    r = Request(method, path, Headers([(b"Host", host), *(headers or [])]), host=host)
    r.ctx = SimpleNamespace(peer="10.0.0.1")
    return r


def router(*routes: Route) -> Router[int]:
    return Router([(r, i) for i, r in enumerate(routes)])


# --- path matchers ------------------------------------------------------------------


def test_default_path_matches_everything_under_slash() -> None:
    r = router(Route())
    assert r.match(req(b"/")) == 0
    assert r.match(req(b"/a/b/c")) == 0
    assert r.match(req(b"*", method=b"OPTIONS")) is None  # default is the "/" prefix, nothing more


def test_prefix_is_a_plain_byte_prefix() -> None:
    r = router(Route(path="/api"))
    assert r.match(req(b"/api")) == 0
    assert r.match(req(b"/api/v1")) == 0
    assert r.match(req(b"/apix")) == 0  # plain prefix, not segment-aware
    assert r.match(req(b"/ap")) is None
    assert r.match(req(b"/API")) is None  # paths are case-sensitive


def test_prefix_ignores_query() -> None:
    r = router(Route(path_exact="/a"))
    assert r.match(req(b"/a?x=1")) == 0


def test_exact() -> None:
    r = router(Route(path_exact="/health"))
    assert r.match(req(b"/health")) == 0
    assert r.match(req(b"/health/")) is None
    assert r.match(req(b"/healthz")) is None
    assert r.match(req(b"/")) is None


def test_regex_is_fullmatch() -> None:
    r = router(Route(path_regex=r"/users/\d+"))
    assert r.match(req(b"/users/42")) == 0
    assert r.match(req(b"/users/42/posts")) is None  # search() or match() would accept this
    assert r.match(req(b"/x/users/42")) is None
    assert r.match(req(b"/users/")) is None


def test_regex_with_alternation_is_anchored_as_a_whole() -> None:
    r = router(Route(path_regex=r"/a|/b"))
    assert r.match(req(b"/a")) == 0
    assert r.match(req(b"/b")) == 0
    assert r.match(req(b"/ab")) is None


def test_non_ascii_path_config_is_utf8() -> None:
    r = router(Route(path="/café"))
    assert r.match(req("/café/x".encode())) == 0


def test_regex_invalid_as_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="bytes pattern"):
        router(Route(path_regex=r"/\N{LATIN SMALL LETTER E WITH ACUTE}"))


def test_two_path_matchers_are_refused() -> None:
    with pytest.raises(ValueError, match="only one"):
        router(Route(path="/a", path_exact="/a"))


# --- host ---------------------------------------------------------------------------


def test_exact_host_case_insensitive_config() -> None:
    r = router(Route(host="Example.COM"))
    assert r.match(req(host=b"example.com")) == 0
    assert r.match(req(host=b"www.example.com")) is None
    assert r.match(req(host=b"")) is None


def test_wildcard_host() -> None:
    r = router(Route(host="*.example.com"))
    assert r.match(req(host=b"a.example.com")) == 0
    assert r.match(req(host=b"a.b.example.com")) == 0
    assert r.match(req(host=b"example.com")) is None  # not the bare suffix
    assert r.match(req(host=b"badexample.com")) is None  # label boundary
    assert r.match(req(host=b".example.com")) is None  # empty label
    assert r.match(req(host=b"example.com.evil")) is None
    assert r.match(req(host=b"")) is None


def test_nested_wildcards_keep_config_order() -> None:
    r = router(Route(host="*.example.com", path="/x"), Route(host="*.b.example.com"), Route(host="*.example.com"))
    assert r.match(req(b"/x", host=b"a.b.example.com")) == 0
    assert r.match(req(b"/y", host=b"a.b.example.com")) == 1
    assert r.match(req(b"/y", host=b"b.example.com")) == 2  # not under *.b.example.com
    assert r.match(req(b"/y", host=b"c.example.com")) == 2


def test_exact_host_also_sees_wildcards_and_any_in_order() -> None:
    r = router(
        Route(path="/w", host="*.example.com"),
        Route(path="/any"),
        Route(host="www.example.com"),
        Route(host="*.example.com"),
    )
    assert r.match(req(b"/w", host=b"www.example.com")) == 0
    assert r.match(req(b"/any", host=b"www.example.com")) == 1
    assert r.match(req(b"/other", host=b"www.example.com")) == 2
    assert r.match(req(b"/other", host=b"api.example.com")) == 3
    assert r.match(req(b"/any", host=b"other.org")) == 1
    assert r.match(req(b"/other", host=b"other.org")) is None


def test_exact_host_that_is_a_wildcard_suffix_target() -> None:
    # "example.com" named exactly must not pick up "*.example.com" routes.
    r = router(Route(host="*.example.com"), Route(host="example.com"))
    assert r.match(req(host=b"example.com")) == 1
    assert r.match(req(host=b"a.example.com")) == 0


# --- methods and headers ------------------------------------------------------------


def test_methods_case_insensitive() -> None:
    r = router(Route(methods=["get", "HEAD"]), Route())
    assert r.match(req(method=b"GET")) == 0
    assert r.match(req(method=b"get")) == 0
    assert r.match(req(method=b"Head")) == 0
    assert r.match(req(method=b"POST")) == 1


def test_headers_all_required_exact_value() -> None:
    r = router(Route(headers={"X-Env": "canary", "x-team": "a"}), Route())
    both = [(b"x-env", b"canary"), (b"X-Team", b"a")]
    assert r.match(req(headers=both)) == 0
    assert r.match(req(headers=both[:1])) == 1
    assert r.match(req(headers=[(b"X-Env", b"Canary"), (b"X-Team", b"a")])) == 1  # values are exact
    assert r.match(req(headers=[(b"X-Env", b"canary "), (b"X-Team", b"a")])) == 1


def test_header_any_of_repeated_values() -> None:
    r = router(Route(headers={"x-a": "2"}))
    assert r.match(req(headers=[(b"x-a", b"1"), (b"x-a", b"2")])) == 0


def test_methods_and_headers_together() -> None:
    r = router(Route(methods=["POST"], headers={"x-a": "1"}))
    assert r.match(req(method=b"POST", headers=[(b"x-a", b"1")])) == 0
    assert r.match(req(method=b"GET", headers=[(b"x-a", b"1")])) is None
    assert r.match(req(method=b"POST")) is None


def test_failed_check_falls_through_in_order() -> None:
    r = router(
        Route(path="/a", methods=["POST"]),
        Route(path="/a/b", headers={"x": "1"}),
        Route(path_regex="/a/.*"),
        Route(path="/"),
    )
    assert r.match(req(b"/a/b", method=b"POST")) == 0
    assert r.match(req(b"/a/b", headers=[(b"x", b"1")])) == 1
    assert r.match(req(b"/a/b")) == 2
    assert r.match(req(b"/a")) == 3


def test_regex_groups_do_not_confuse_route_numbering() -> None:
    r = router(Route(path_regex=r"/(x)(y)?"), Route(path_regex=r"/((a)|b)"), Route(path_exact="/c"))
    assert r.match(req(b"/x")) == 0
    assert r.match(req(b"/xy")) == 0
    assert r.match(req(b"/a")) == 1
    assert r.match(req(b"/b")) == 1
    assert r.match(req(b"/c")) == 2


def test_uncombinable_regexes_keep_order() -> None:
    backref = Route(path_regex=r"/(\d)\1")
    named = Route(path_regex=r"/(?P<n>[a-z]+)")
    verbose = Route(path_regex=r"(?x) /v  \d+  # digits")
    r = router(backref, named, verbose, Route(path="/"))
    assert r.match(req(b"/11")) == 0
    assert r.match(req(b"/12")) == 3
    assert r.match(req(b"/abc")) == 1
    assert r.match(req(b"/v12")) == 2
    assert r.match(req(b"/v1x")) == 3


def test_global_flags_in_regex() -> None:
    r = router(Route(path_regex=r"(?i)/Docs/.*"), Route(path="/"))
    assert r.match(req(b"/docs/x")) == 0
    assert r.match(req(b"/DOCS/")) == 0
    assert r.match(req(b"/doc")) == 1


# --- order and misses ---------------------------------------------------------------


def test_first_match_wins_even_if_less_specific() -> None:
    r = router(Route(path="/"), Route(path="/api"), Route(path_exact="/api"))
    assert r.match(req(b"/api")) == 0


def test_more_specific_first() -> None:
    r = router(Route(path_exact="/api"), Route(path="/api"), Route(path="/"))
    assert r.match(req(b"/api")) == 0
    assert r.match(req(b"/api/x")) == 1
    assert r.match(req(b"/x")) == 2


def test_no_routes_and_no_match() -> None:
    assert router().match(req()) is None
    assert len(router(Route(), Route())) == 2
    assert router(Route(path="/a"), Route(host="h")).match(req(b"/b", host=b"x")) is None


def test_values_are_returned_as_given() -> None:
    svc = object()
    r: Router[object] = Router([(Route(path="/a"), svc)])
    assert r.match(req(b"/a")) is svc


# --- properties ---------------------------------------------------------------------

_seg = st.sampled_from(["a", "b", "A", "ab", "1", "x.y"])
_paths = st.lists(_seg, max_size=4).map(lambda segs: "/" + "/".join(segs))


@given(prefix=_paths, path=_paths)
def test_prefix_route_matches_exactly_paths_starting_with_it(prefix: str, path: str) -> None:
    r = router(Route(path=prefix))
    assert (r.match(req(path.encode())) == 0) == path.startswith(prefix)


_HOSTS = ["a.com", "B.a.com", "*.a.com", "*.b.a.com", "c.org", "*.org"]
_REGEXES = [
    r"/a(/.*)?",
    r"/\d+",
    r"/[ab]+/.*",
    r".*b",
    r"/(a|b)+(/(1))?",  # inner groups shift the numbering of later routes
    r"/(a|b)/\1(/.*)?",  # backreference: matched outside the combined regex
    r"(?i)/A(/.*)?",  # global flag, rewritten to a scoped one
    r"(?P<first>/a)/(?P=first)?.*",  # named groups: outside the combined regex
    r"(?x) /b  (/.*)?  # verbose",  # verbose: outside the combined regex
    r"/a|/b",
    r"",
    r"^/a/[0-9]+(/.*)?",  # a literal prefix: matched in the literal loop, behind "/a/"
    r"\A/bb?/.*",
    r"/ab(?i:C)",  # a scoped flag after the prefix
]


@st.composite
def _routes(draw: Any) -> Route:
    host = draw(st.none() | st.sampled_from(_HOSTS))
    which = draw(st.sampled_from(["none", "path", "exact", "regex"]))
    path = draw(_paths)
    methods = draw(st.none() | st.lists(st.sampled_from(["GET", "post", "Put"]), min_size=1, max_size=2))
    headers = draw(st.none() | st.dictionaries(st.sampled_from(["X-A", "x-b"]), st.sampled_from(["1", "2"])))
    return Route(
        host=host,
        path=path if which == "path" else None,
        path_exact=path if which == "exact" else None,
        path_regex=draw(st.sampled_from(_REGEXES)) if which == "regex" else None,
        methods=methods,
        headers=headers,
    )


@st.composite
def _requests(draw: Any) -> Request:
    host = draw(st.sampled_from(["", "a.com", "b.a.com", "x.b.a.com", "y.a.com", "c.org", "org", "z.c.org", "q.net"]))
    hdrs = draw(
        st.lists(
            st.tuples(st.sampled_from([b"x-a", b"X-A", b"X-B", b"x-c"]), st.sampled_from([b"1", b"2"])), max_size=3
        )
    )
    method = draw(st.sampled_from([b"GET", b"POST", b"put", b"DELETE"]))
    return req(draw(_paths).encode(), host.encode(), method, hdrs)


def _reference(routes: list[Route], r: Request) -> int | None:
    """The spec, written as plainly as possible."""
    for i, route in enumerate(routes):
        if route.host is not None:
            h = route.host.lower().encode()
            if h.startswith(b"*."):
                if not (r.host.endswith(h[1:]) and r.host != h[1:]):
                    continue
            elif r.host != h:
                continue
        if route.path_exact is not None:
            if r.path != route.path_exact.encode():
                continue
        elif route.path_regex is not None:
            if re.fullmatch(route.path_regex.encode(), r.path) is None:
                continue
        elif not r.path.startswith((route.path or "/").encode()):
            continue
        if route.methods is not None and r.method.upper() not in {m.upper().encode() for m in route.methods}:
            continue
        if route.headers and not all(
            any(n.lower() == k.lower().encode() and v == val.encode() for n, v in r.headers.raw)
            for k, val in route.headers.items()
        ):
            continue
        return i
    return None


@given(routes=st.lists(_routes(), max_size=8), requests=st.lists(_requests(), min_size=1, max_size=8))
def test_first_match_equals_reference(routes: list[Route], requests: list[Request]) -> None:
    r = router(*routes)
    for rq in requests:
        assert r.match(rq) == _reference(routes, rq)


@settings(max_examples=50)
@given(
    routes=st.lists(_routes().filter(lambda r: r.path_regex is None), max_size=12),
    requests=st.lists(_requests(), min_size=1, max_size=8),
)
def test_prefix_and_exact_tables_equal_reference_either_side_of_the_loop_limit(
    routes: list[Route], requests: list[Request]
) -> None:
    # Up to 8 prefix/exact routes per host are matched by a loop, more by the regex.
    r = router(*routes)
    for rq in requests:
        assert r.match(rq) == _reference(routes, rq)


def test_regex_behind_its_literal_prefix_keeps_order_and_fullmatch() -> None:
    """bench.load's table: a prefix, a host, a regex with a literal prefix, then "/". The regex
    sits in the literal loop (its prefix "/v" tested first), and the answers stay first-match."""
    r = router(
        Route(path="/api/"),
        Route(host="admin.example.com"),
        Route(path_regex=r"^/v[0-9]+/items/"),
        Route(path="/"),
    )
    assert r._any.literals is not None  # the loop, not the combined regex
    assert r.match(req(b"/v2/items/")) == 2
    assert r.match(req(b"/v2/items/x")) == 3  # fullmatch: the regex has no tail
    assert r.match(req(b"/vx/items/")) == 3
    assert r.match(req(b"/body/128")) == 3
    assert r.match(req(b"/api/x")) == 0
    assert r.match(req(b"/v2/items/", host=b"admin.example.com")) == 1


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        (r"^/v[0-9]+/items/", b"/v"),
        (r"/api/.*", b"/api/"),
        (r"\A/q", b"/q"),
        (r"/a|/b", b"/"),
        (r"(?i)/abc", b""),
        (r".*b", b""),
        (r"/a$", b"/a"),
        (r"(?x) /b  (/.*)?  # verbose", b"/b"),
    ],
)
def test_literal_prefix_of_a_regex(pattern: str, prefix: bytes) -> None:
    assert _literal_prefix(pattern.encode()) == prefix
    # Every fullmatch starts with it.
    for path in (b"/v1/items/", b"/api/x", b"/q", b"/a", b"/b", b"/ABC", b"/b/c", b"xb"):
        if re.fullmatch(pattern.encode(), path):
            assert path.startswith(prefix)


def test_a_regex_without_a_literal_prefix_keeps_the_combined_regex() -> None:
    r = router(Route(path="/x/"), Route(path_regex=r"(?i)/abc"), Route(path="/"))
    assert r._any.literals is None
    assert r.match(req(b"/ABC")) == 1
    assert r.match(req(b"/abd")) == 2
