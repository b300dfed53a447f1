"""Request targets as filters, routes and the origin see them: normalised paths and absolute-form.

Raw sockets send the exact bytes (httpx and curl clean up paths themselves); the
origin's echo reports ``raw_path``, the request-target exactly as it arrived, so
what the proxy forwarded is checked, not what aiohttp made of it. Absolute-form
goes through real curl as a forward proxy (``-x``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from conftest import TIMEOUT, Origin, Proxy, ProxyFactory, RawClient

pytestmark = pytest.mark.e2e

CONFIG = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.filtered]
listener = "127.0.0.1:0"
filters = [{ use = "examples.filters.add_header:DenyPath", args = { prefix = "/big" } }]

[[servers.filtered.routes]]
path = "/"
upstream = "origin"

[servers.routed]
listener = "127.0.0.1:0"

[[servers.routed.routes]]
path = "/big"
upstream = "origin"
request_headers = { set = { "X-Route" = "big" } }

[[servers.routed.routes]]
host = "public.test"
path = "/"
upstream = "origin"
request_headers = { set = { "X-Route" = "public" } }

[[servers.routed.routes]]
host = "internal.test"
path = "/"
upstream = "origin"
request_headers = { set = { "X-Route" = "internal" } }

[[servers.routed.routes]]
path_regex = "^/rx/[a-z]+$"
upstream = "origin"
request_headers = { set = { "X-Route" = "regex" } }

[[servers.routed.routes]]
path = "/"
upstream = "origin"
request_headers = { set = { "X-Route" = "default" } }

[servers.off]
listener = "127.0.0.1:0"
normalize_path = false
merge_slashes = false
filters = [{ use = "examples.filters.add_header:DenyPath", args = { prefix = "/big" } }]

[[servers.off.routes]]
path = "/"
upstream = "origin"

[servers.nomerge]
listener = "127.0.0.1:0"
merge_slashes = false

[[servers.nomerge.routes]]
path = "/"
upstream = "origin"

[servers.forward]
listener = "127.0.0.1:0"

[[servers.forward.routes]]
connect = true
"""

BYPASSES = ["//big", "/x/../big", "/./big", "/%62ig", "/%2e/big", "/x/y/%2E%2e/../big", "///./big/"]


@pytest.fixture(scope="module")
def rp(module_proxy: ProxyFactory, origin: Origin) -> Proxy:
    return module_proxy(CONFIG, origin=origin.url)


def address(proxy: Proxy, server: str) -> str:
    return proxy.servers[server]


def get(proxy: Proxy, server: str, target: str, host: str = "test.local") -> tuple[int, Any]:
    """One raw HTTP/1.1 GET; (status, echo JSON or body text)."""
    with RawClient(address(proxy, server)) as c:
        c.send(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        resp = c.read_response()
    body = resp.body.decode("latin-1")
    if resp.status == 200 and resp.header("Content-Type") == "application/json; charset=utf-8":
        return resp.status, json.loads(body)
    return resp.status, body


def header(echo: dict[str, Any], name: str) -> str | None:
    return next((v for k, v in echo["headers"] if k.lower() == name), None)


@pytest.mark.parametrize("target", BYPASSES)
def test_filter_on_big_is_not_bypassed(rp: Proxy, origin: Origin, target: str) -> None:
    mark = origin.log.mark()
    status, _ = get(rp, "filtered", target)
    assert status == 403
    # The origin logs requests in order: once /echo is there, nothing can still be on its way.
    assert get(rp, "filtered", "/echo")[0] == 200
    origin.log.wait_line(r"^REQ GET /echo ", after=mark)
    assert origin.log.count(r"big", after=mark) == 0


@pytest.mark.parametrize("target", BYPASSES)
def test_route_sees_and_origin_gets_the_normalised_path(rp: Proxy, target: str) -> None:
    status, echo = get(rp, "routed", target)
    assert status == 200, echo
    assert header(echo, "x-route") == "big"
    assert echo["raw_path"] in ("/big", "/big/")


@pytest.mark.parametrize(
    ("target", "seen"),
    [
        ("/a/./b/../c?x=/../y&%62=%2e", "/a/c?x=/../y&%62=%2e"),  # the query is left as it came
        ("/a%2fb/%7e%41", "/a%2Fb/~A"),  # an encoded slash stays encoded (hex uppercased)
        ("/a//b///c", "/a/b/c"),
        ("/.well-known/x", "/.well-known/x"),
    ],
)
def test_forwarded_path(rp: Proxy, target: str, seen: str) -> None:
    status, echo = get(rp, "routed", target)
    assert status == 200, echo
    assert echo["raw_path"] == seen


def test_regex_route_matches_the_normalised_path(rp: Proxy) -> None:
    status, echo = get(rp, "routed", "/rx/%61b/../cd")
    assert (status, header(echo, "x-route"), echo["raw_path"]) == (200, "regex", "/rx/cd")


@pytest.mark.parametrize("target", ["/demo/../../etc/passwd", "/..", "/%2e%2e/etc/passwd", "/a%zz"])
def test_bad_paths_are_400_and_logged(rp: Proxy, origin: Origin, target: str) -> None:
    mark, omark = rp.log.mark(), origin.log.mark()
    with RawClient(address(rp, "routed")) as c:
        c.send(f"GET {target} HTTP/1.1\r\nHost: test.local\r\n\r\n".encode())
        assert c.read_response().status == 400
        assert c.is_closed()
    rp.log.wait_line(r"400 for GET .* \(downstream error: RemoteProtocolError", after=mark)
    assert get(rp, "routed", "/echo")[0] == 200  # the worker goes on
    assert origin.log.count(r"etc/passwd|/a%zz", after=omark) == 0


def test_settings_off_keep_the_path_as_sent(rp: Proxy) -> None:
    for target in ("//big", "/x/../big", "/%62ig", "/a/./b"):
        status, echo = get(rp, "off", target)
        assert status == 200, (target, echo)
        assert echo["raw_path"] == target
    assert get(rp, "off", "/big")[0] == 403


def test_merge_slashes_off_keeps_empty_segments(rp: Proxy) -> None:
    status, echo = get(rp, "nomerge", "/a//b/./c/%2e%2e")
    assert (status, echo["raw_path"]) == (200, "/a//b/")


# -- HTTP/2 ----------------------------------------------------------------------------


def h2_get(addr: str, path: str, authority: str = "test.local") -> tuple[int, bytes]:
    """One HTTP/2 (prior knowledge) GET with ``:path`` exactly as given, with the h2 library."""
    host, _, port = addr.rpartition(":")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", authority.encode()), (b":path", path.encode())],
        end_stream=True,
    )
    status, body = 0, b""
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            assert data, "connection closed before the response ended"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset) and ev.stream_id == sid:
                    return status, body
            sock.sendall(conn.data_to_send())


@pytest.mark.parametrize("path", BYPASSES)
def test_http2_filter_and_route_see_the_normalised_path(rp: Proxy, path: str) -> None:
    assert h2_get(address(rp, "filtered"), path)[0] == 403
    status, body = h2_get(address(rp, "routed"), path)
    echo = json.loads(body)
    assert (status, header(echo, "x-route")) == (200, "big")
    assert echo["raw_path"] in ("/big", "/big/")


def test_http2_bad_paths_are_400(rp: Proxy) -> None:
    assert h2_get(address(rp, "routed"), "/demo/../../etc/passwd")[0] == 400
    # :path is origin-form only (RFC 9113 §8.3.1): libnghttp2 resets such a stream itself (status 0
    # here), the h2 codec passes it on and the proxy answers 400; neither routes it.
    assert h2_get(address(rp, "routed"), "http://public.test/echo")[0] in (0, 400)


# -- absolute-form ---------------------------------------------------------------------

curl_missing = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def curl_via(proxy_addr: str, url: str, *args: str) -> tuple[int, str]:
    out = subprocess.run(
        ["curl", "-sS", "--noproxy", "", "-x", f"http://{proxy_addr}", "-w", "\n%{http_code}", *args, url],
        capture_output=True,
        timeout=TIMEOUT,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout.decode()
    body, _, code = out.rpartition("\n")
    return int(code), body


@curl_missing
def test_curl_forward_proxy_gets_200_and_origin_sees_origin_form(rp: Proxy, origin: Origin) -> None:
    code, body = curl_via(address(rp, "routed"), f"{origin.url}/echo/hello?q=1")
    assert code == 200, body
    echo = json.loads(body)
    assert echo["raw_path"] == "/echo/hello?q=1"
    assert header(echo, "host") == origin.address  # host_header = "keep": the URL's authority
    assert header(echo, "x-route") == "default"


@curl_missing
def test_url_authority_decides_the_route_not_the_host_header(rp: Proxy) -> None:
    # curl sends the URL's authority in the request line and our Host header beside it.
    code, body = curl_via(address(rp, "routed"), "http://public.test/echo", "-H", "Host: internal.test")
    assert code == 200, body
    echo = json.loads(body)
    assert (header(echo, "x-route"), header(echo, "host")) == ("public", "public.test")
    assert header(echo, "x-forwarded-host") == "public.test"


def test_absolute_form_raw(rp: Proxy) -> None:
    status, echo = get(rp, "routed", "HTTP://Public.Test:8080?x=1", host="internal.test")
    assert status == 200
    assert (header(echo, "x-route"), header(echo, "host"), echo["raw_path"]) == ("public", "Public.Test:8080", "/?x=1")
    # The absolute-form path is normalised like any other.
    status, echo = get(rp, "routed", "http://a.test/x/..//%62ig")
    assert (status, header(echo, "x-route"), echo["raw_path"]) == (200, "big", "/big")
    for bad in ("ftp://public.test/", "http://user@public.test/", "http:///echo", "http://public.test/../x"):
        assert get(rp, "routed", bad)[0] == 400, bad


@curl_missing
def test_proxy_style_get_on_a_connect_route_is_405(rp: Proxy) -> None:
    code, _ = curl_via(address(rp, "forward"), "http://example.invalid/x")
    assert code == 405
