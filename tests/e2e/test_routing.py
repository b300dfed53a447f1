"""Routing and request/response rewriting, checked at the origin.

Every route of the shared config sets ``X-Route: <tag>`` on the request it forwards,
so the origin's echo says which route matched.
"""

from __future__ import annotations

import httpx
import pytest

from conftest import Origin, Proxy, ProxyFactory

pytestmark = pytest.mark.e2e


def route(tag: str, matchers: str, extra: str = "") -> str:
    return f"""
[[servers.r.routes]]
{matchers}
upstream = "origin"
request_headers = {{ set = {{ "X-Route" = "{tag}" }} }}
{extra}
"""


CONFIG = (
    """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.r]
listener = "127.0.0.1:0"
"""
    + route("host-exact", 'host = "api.example.com"\npath = "/"')
    + route("host-wild", 'host = "*.wild.example"\npath = "/"')
    + route("exact", 'path_exact = "/exact"')
    + route("regex", 'path_regex = "^/items/[0-9]+$"')
    + route("method-write", 'path = "/m"\nmethods = ["POST", "PUT"]')
    + route("method-other", 'path = "/m"')
    + route("header-canary", 'path = "/canary"\nheaders = { "X-Canary" = "yes" }')
    + route("header-none", 'path = "/canary"')
    + route("strip", 'path = "/strip/"\nstrip_prefix = true')
    + route("rewrite", 'path = "/old/"\nprefix_rewrite = "/new/"')
    + route("host-upstream", 'path = "/hostup"\nhost_header = "upstream"')
    + route("host-literal", 'path = "/hostlit"\nhost_header = "backend.internal"')
    + route("keep", 'path = "/keep"')
    + """
[[servers.r.routes]]
path = "/hdrs"
upstream = "origin"
request_headers = { add = { "X-Added" = "a1" }, set = { "X-Set" = "s1", "X-Route" = "hdrs" }, remove = ["X-Remove-Me"] }
response_headers = { add = { "X-Resp-Added" = "r1" }, set = { "X-Origin" = "masked" }, remove = ["X-Conn"] }

[servers.fwd]
listener = "127.0.0.1:0"
forwarded = { forwarded = true }

[[servers.fwd.routes]]
path = "/"
upstream = "origin"

[servers.nofwd]
listener = "127.0.0.1:0"
forwarded = { x_forwarded_for = false, x_forwarded_proto = false, x_forwarded_host = false }

[[servers.nofwd.routes]]
path = "/"
upstream = "origin"
"""
)


@pytest.fixture(scope="module")
def rp(module_proxy: ProxyFactory, origin: Origin) -> Proxy:
    return module_proxy(CONFIG, origin=origin.url)


@pytest.fixture(scope="module")
def client() -> httpx.Client:
    with httpx.Client(trust_env=False, timeout=20) as c:
        yield c


class Echo:
    def __init__(self, resp: httpx.Response) -> None:
        assert resp.status_code == 200, (resp.status_code, resp.text)
        self.resp = resp
        data = resp.json()
        self.path: str = data["path"]
        self.method: str = data["method"]
        self.pairs: list[list[str]] = data["headers"]
        self.headers = {k.lower(): v for k, v in self.pairs}

    @property
    def route(self) -> str | None:
        return self.headers.get("x-route")

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.pairs if k.lower() == name.lower()]


def send(client: httpx.Client, proxy: Proxy, method: str, path: str, *, server: str = "r", **kw) -> httpx.Response:
    return client.request(method, proxy.url_of(server) + path, **kw)


def echo(client: httpx.Client, proxy: Proxy, path: str, *, method: str = "GET", **kw) -> Echo:
    return Echo(send(client, proxy, method, path, **kw))


# -- matching ----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["api.example.com", "API.Example.COM", "api.example.com:8080"])
def test_exact_host(rp: Proxy, client: httpx.Client, host: str) -> None:
    e = echo(client, rp, "/anything/at/all", headers={"Host": host})
    assert e.route == "host-exact"
    assert e.path == "/anything/at/all"


@pytest.mark.parametrize("host", ["a.wild.example", "deep.er.wild.example", "X.WILD.EXAMPLE:81"])
def test_wildcard_host(rp: Proxy, client: httpx.Client, host: str) -> None:
    assert echo(client, rp, "/w", headers={"Host": host}).route == "host-wild"


@pytest.mark.parametrize("host", ["wild.example", "notwild.example", "api.example.com.evil", "example.com"])
def test_hosts_that_match_no_host_route(rp: Proxy, client: httpx.Client, host: str) -> None:
    r = send(client, rp, "GET", "/nothing-here", headers={"Host": host})
    assert r.status_code == 404


def test_path_exact(rp: Proxy, client: httpx.Client) -> None:
    e = echo(client, rp, "/exact?q=1")
    assert (e.route, e.path) == ("exact", "/exact?q=1")
    assert send(client, rp, "GET", "/exact/").status_code == 404
    assert send(client, rp, "GET", "/exactly").status_code == 404


def test_path_regex(rp: Proxy, client: httpx.Client) -> None:
    assert echo(client, rp, "/items/42").route == "regex"
    assert echo(client, rp, "/items/7?x=y").route == "regex"
    for path in ("/items/abc", "/items/42/more", "/items/"):
        assert send(client, rp, "GET", path).status_code == 404, path


@pytest.mark.parametrize(
    ("method", "tag"),
    [("POST", "method-write"), ("PUT", "method-write"), ("GET", "method-other"), ("DELETE", "method-other")],
)
def test_method(rp: Proxy, client: httpx.Client, method: str, tag: str) -> None:
    e = echo(client, rp, "/m/x", method=method, content=b"b" if method in ("POST", "PUT") else None)
    assert (e.route, e.method) == (tag, method)


@pytest.mark.parametrize(
    ("headers", "tag"),
    [
        ({"X-Canary": "yes"}, "header-canary"),
        ({"x-canary": "yes"}, "header-canary"),
        ({"X-Canary": "no"}, "header-none"),
        ({"X-Canary": "YES"}, "header-none"),
        ({}, "header-none"),
    ],
)
def test_header(rp: Proxy, client: httpx.Client, headers: dict[str, str], tag: str) -> None:
    assert echo(client, rp, "/canary", headers=headers).route == tag


def test_first_match_wins_over_later_routes(rp: Proxy, client: httpx.Client) -> None:
    # /exact also starts with "/e..." but no prefix route precedes it; the host route
    # comes first in the config, so a matching host beats every path route.
    assert echo(client, rp, "/exact", headers={"Host": "api.example.com"}).route == "host-exact"
    assert echo(client, rp, "/items/1", headers={"Host": "z.wild.example"}).route == "host-wild"


# -- rewrites ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "seen"),
    [("/strip/foo/bar?x=1", "/foo/bar?x=1"), ("/strip/", "/"), ("/strip/a%20b", "/a%20b")],
)
def test_strip_prefix(rp: Proxy, client: httpx.Client, sent: str, seen: str) -> None:
    e = echo(client, rp, sent)
    assert (e.route, e.path) == ("strip", seen)


@pytest.mark.parametrize(("sent", "seen"), [("/old/a/b?q=2", "/new/a/b?q=2"), ("/old/", "/new/")])
def test_prefix_rewrite(rp: Proxy, client: httpx.Client, sent: str, seen: str) -> None:
    e = echo(client, rp, sent)
    assert (e.route, e.path) == ("rewrite", seen)


def test_host_header_keep(rp: Proxy, client: httpx.Client) -> None:
    e = echo(client, rp, "/keep", headers={"Host": "client.test:1234"})
    assert e.headers["host"] == "client.test:1234"
    assert e.headers["x-forwarded-host"] == "client.test:1234"


def test_host_header_upstream(rp: Proxy, client: httpx.Client, origin: Origin) -> None:
    e = echo(client, rp, "/hostup", headers={"Host": "client.test"})
    assert e.all("host") == [origin.address]
    assert e.headers["x-forwarded-host"] == "client.test"


def test_host_header_literal(rp: Proxy, client: httpx.Client) -> None:
    e = echo(client, rp, "/hostlit", headers={"Host": "client.test"})
    assert e.all("host") == ["backend.internal"]
    assert e.headers["x-forwarded-host"] == "client.test"


def test_request_and_response_header_rewrites(rp: Proxy, client: httpx.Client) -> None:
    r = send(
        client,
        rp,
        "GET",
        "/hdrs",
        headers=[
            ("X-Added", "from-client"),
            ("X-Set", "client-1"),
            ("X-Set", "client-2"),
            ("X-Remove-Me", "gone"),
            ("X-Untouched", "same"),
        ],
    )
    e = Echo(r)
    assert e.route == "hdrs"
    assert e.all("x-added") == ["from-client", "a1"]
    assert e.all("x-set") == ["s1"]
    assert e.all("x-remove-me") == []
    assert e.all("x-untouched") == ["same"]
    assert r.headers["x-resp-added"] == "r1"
    assert r.headers.get_list("x-origin") == ["masked"]
    assert "x-conn" not in r.headers


# -- forwarding headers --------------------------------------------------------------


def test_x_forwarded_headers_default(rp: Proxy, client: httpx.Client) -> None:
    e = echo(client, rp, "/keep", headers={"Host": "client.test"})
    assert e.headers["x-forwarded-for"] == "127.0.0.1"
    assert e.headers["x-forwarded-proto"] == "http"
    assert e.headers["x-forwarded-host"] == "client.test"
    assert "forwarded" not in e.headers


def test_x_forwarded_for_appends_to_clients_chain(rp: Proxy, client: httpx.Client) -> None:
    e = echo(client, rp, "/keep", headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.1"})
    assert e.all("x-forwarded-for") == ["203.0.113.7, 198.51.100.1, 127.0.0.1"]


def test_x_forwarded_proto_and_host_are_not_spoofable(rp: Proxy, client: httpx.Client) -> None:
    e = echo(
        client, rp, "/keep", headers={"Host": "real.test", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil"}
    )
    assert e.all("x-forwarded-proto") == ["http"]
    assert e.all("x-forwarded-host") == ["real.test"]


def test_rfc7239_forwarded(rp: Proxy, client: httpx.Client) -> None:
    e = echo(client, rp, "/", server="fwd", headers={"Host": "client.test"})
    assert e.all("forwarded") == ['for=127.0.0.1;proto=http;host="client.test"']
    assert e.headers["x-forwarded-for"] == "127.0.0.1"
    e = echo(client, rp, "/", server="fwd", headers={"Host": "client.test", "Forwarded": "for=192.0.2.60"})
    assert e.all("forwarded") == ['for=192.0.2.60, for=127.0.0.1;proto=http;host="client.test"']


def test_forwarding_headers_off(rp: Proxy, client: httpx.Client) -> None:
    e = echo(client, rp, "/", server="nofwd", headers={"X-Forwarded-For": "203.0.113.7"})
    assert e.all("x-forwarded-for") == ["203.0.113.7"]  # passed through untouched
    for name in ("x-forwarded-proto", "x-forwarded-host", "forwarded"):
        assert name not in e.headers, name
