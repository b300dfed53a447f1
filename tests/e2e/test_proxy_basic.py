"""The proxy's everyday HTTP/1.x behaviour, seen by real clients (curl, httpx, raw sockets)."""

from __future__ import annotations

import hashlib
import json
import subprocess

import httpx
import pytest

from conftest import Origin, Proxy, ProxyFactory, RawClient, pattern_bytes

pytestmark = pytest.mark.e2e

CONFIG = """
[runtime]
drain_timeout = 2

[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "origin"

# Only one exact path is routed here: everything else is a 404 from the proxy.
[servers.strict]
listener = "127.0.0.1:0"

[[servers.strict.routes]]
path_exact = "/only"
upstream = "origin"
"""


@pytest.fixture(scope="module")
def web(module_proxy: ProxyFactory, origin: Origin) -> Proxy:
    return module_proxy(CONFIG, origin=origin.url)


def client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=30)


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "30", *args], capture_output=True, timeout=60)


def headers_of(echo: dict[str, object]) -> dict[str, str]:
    """The echoed request headers, names lowercased (last value wins)."""
    pairs = echo["headers"]
    assert isinstance(pairs, list)
    return {k.lower(): v for k, v in pairs}


# -- plain requests ----------------------------------------------------------------


def test_curl_get(web: Proxy) -> None:
    out = curl("-i", web.url + "/echo?a=1&b=two")
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    echo = json.loads(body)
    assert echo["method"] == "GET"
    assert echo["path"] == "/echo?a=1&b=two"
    assert headers_of(echo)["user-agent"].startswith("curl/")


def test_curl_post(web: Proxy, tmp_path) -> None:
    data = pattern_bytes(200_000)
    f = tmp_path / "body.bin"
    f.write_bytes(data)
    out = curl("--data-binary", f"@{f}", "-H", "Content-Type: application/octet-stream", web.url + "/echo")
    assert out.returncode == 0, out.stderr
    echo = json.loads(out.stdout)
    assert echo["method"] == "POST"
    assert echo["body_len"] == len(data)
    assert echo["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_httpx_get_and_post(web: Proxy) -> None:
    with client() as c:
        r = c.get(web.url + "/echo/x", params={"q": "v"}, headers={"X-Custom": "abc"})
        assert r.status_code == 200
        echo = r.json()
        assert echo["path"] == "/echo/x?q=v"
        assert headers_of(echo)["x-custom"] == "abc"
        assert r.headers["x-origin"] == "origin"

        body = b"hello world" * 1000
        r = c.post(web.url + "/echo", content=body)
        assert r.status_code == 200
        assert r.json()["body_len"] == len(body)
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()

        for method in ("PUT", "PATCH", "DELETE", "OPTIONS"):
            r = c.request(method, web.url + "/echo", content=b"xyz" if method in ("PUT", "PATCH") else None)
            assert r.status_code == 200
            assert r.json()["method"] == method


def test_origin_status_codes_pass_through(web: Proxy) -> None:
    with client() as c:
        for code in (201, 301, 400, 404, 418, 500, 503):
            r = c.get(web.url + f"/status/{code}")
            assert r.status_code == code
            assert r.text == f"status {code}\n"


def test_no_route_is_404(web: Proxy) -> None:
    strict = web.url_of("strict")
    with client() as c:
        assert c.get(strict + "/only").status_code == 200
        r = c.get(strict + "/other")
        assert r.status_code == 404
        assert r.text == "404 Not Found\n"
        assert c.get(strict + "/only/more").status_code == 404


# -- keep-alive --------------------------------------------------------------------


def test_downstream_keepalive_reuses_one_connection(web: Proxy) -> None:
    with client() as c:
        local_ports = set()
        for i in range(20):
            r = c.get(web.url + f"/echo?i={i}")
            assert r.status_code == 200
            assert r.json()["path"] == f"/echo?i={i}"
            local_ports.add(r.extensions["network_stream"].get_extra_info("client_addr")[1])
        assert len(local_ports) == 1


def test_upstream_keepalive_reuses_one_connection(web: Proxy) -> None:
    with client() as c:
        conns = [c.get(web.url + "/conn").text for _ in range(10)]
    assert len(set(conns)) == 1, conns
    # Fresh client connections share the worker's pool too.
    again = [httpx.get(web.url + "/conn", trust_env=False).text for _ in range(3)]
    assert set(again) == set(conns)


def test_upstream_connection_close_is_not_reused(web: Proxy) -> None:
    with client() as c:
        first = c.get(web.url + "/conn").text
        r = c.get(web.url + "/close")
        assert r.status_code == 200
        closed = r.text.split()[1]
        assert closed == first  # the pooled connection served it, and the origin closed it
        after = c.get(web.url + "/conn").text
        assert after != closed
        # The client side stays open: Connection: close upstream is hop-by-hop.
        assert r.headers.get("connection") != "close"


# -- HEAD, 204, 304 ----------------------------------------------------------------


def test_head_keeps_content_length_without_body(web: Proxy) -> None:
    with RawClient(web.address) as c:
        c.send(b"HEAD /bytes/12345 HTTP/1.1\r\nHost: t\r\n\r\nGET /echo?after=head HTTP/1.1\r\nHost: t\r\n\r\n")
        head = c.read_response(head=True)
        assert head.status == 200
        assert head.header("Content-Length") == "12345"
        # The next response follows the HEAD head directly: no body bytes in between.
        nxt = c.read_response()
        assert nxt.status == 200
        assert json.loads(nxt.body)["path"] == "/echo?after=head"
    r = httpx.head(web.url + "/bytes/777", trust_env=False)
    assert r.status_code == 200
    assert r.headers["content-length"] == "777"
    assert r.content == b""


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_statuses(web: Proxy, code: int) -> None:
    with RawClient(web.address) as c:
        c.send(
            f"GET /status/{code} HTTP/1.1\r\nHost: t\r\n\r\nGET /echo?after={code} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        )
        resp = c.read_head()
        assert resp.status == code
        assert resp.header("Transfer-Encoding") is None
        assert resp.header("Content-Length") in (None, "0")
        nxt = c.read_response()
        assert nxt.status == 200
        assert json.loads(nxt.body)["path"] == f"/echo?after={code}"


# -- HTTP/1.0 ----------------------------------------------------------------------


def test_http10_closes_after_response(web: Proxy) -> None:
    with RawClient(web.address) as c:
        c.send(b"GET /echo?v=10 HTTP/1.0\r\nHost: t\r\n\r\n")
        resp = c.read_response()
        assert resp.status == 200
        echo = json.loads(resp.body)
        assert echo["path"] == "/echo?v=10"
        assert echo["version"] == "1.1"  # upstream always speaks HTTP/1.1
        assert resp.header("Connection") in (None, "close")
        assert c.is_closed()


def test_http10_without_host_is_forwarded_with_a_host(web: Proxy) -> None:
    # HTTP/1.0 allows no Host; the HTTP/1.1 request the proxy sends upstream must carry
    # one (RFC 9112 §3.2), else a conforming origin answers 400.
    with RawClient(web.address) as c:
        c.send(b"GET /echo?v=10 HTTP/1.0\r\n\r\n")
        resp = c.read_response()
        assert resp.status == 200, resp.body
        assert headers_of(json.loads(resp.body)).get("host")
        assert c.is_closed()


def test_http10_keepalive(web: Proxy) -> None:
    with RawClient(web.address) as c:
        for i in range(3):
            c.send(f"GET /echo?i={i} HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n".encode())
            resp = c.read_response()
            assert resp.status == 200
            assert (resp.header("Connection") or "").lower() == "keep-alive"
            assert json.loads(resp.body)["path"] == f"/echo?i={i}"
        c.send(b"GET /echo?i=last HTTP/1.0\r\nHost: t\r\n\r\n")
        assert c.read_response().status == 200
        assert c.is_closed()


def test_http10_chunked_origin_is_close_delimited(web: Proxy) -> None:
    with RawClient(web.address) as c:
        c.send(b"GET /chunked/300000 HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
        resp = c.read_response()
        assert resp.status == 200
        assert resp.header("Transfer-Encoding") is None
        assert resp.body == pattern_bytes(300_000)


# -- pipelining --------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(web: Proxy) -> None:
    with RawClient(web.address) as c:
        c.send(
            b"GET /echo?i=1 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /echo?i=2 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /echo?i=3 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        got = [c.read_response() for _ in range(3)]
        assert [r.status for r in got] == [200, 200, 200]
        echoes = [json.loads(r.body) for r in got]
        assert [e["path"] for e in echoes] == ["/echo?i=1", "/echo?i=2", "/echo?i=3"]
        assert echoes[1]["body_len"] == 5


def test_pipelined_beyond_max_pipelined(web: Proxy) -> None:
    # 80 requests in one write: more than limits.max_pipelined (32) wait in the socket.
    n = 80
    with RawClient(web.address) as c:
        c.send(b"".join(b"GET /echo?i=%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(n)))
        paths = [json.loads(c.read_response().body)["path"] for _ in range(n)]
    assert paths == [f"/echo?i={i}" for i in range(n)]


def test_pipelined_slow_first_response_keeps_order(web: Proxy) -> None:
    with RawClient(web.address) as c:
        c.send(
            b"GET /delay/0.3 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /echo?i=2 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /bytes/70000 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        first, second, third = (c.read_response() for _ in range(3))
        assert first.body == b"delayed\n"
        assert json.loads(second.body)["path"] == "/echo?i=2"
        assert third.body == pattern_bytes(70000)


# -- Expect: 100-continue ----------------------------------------------------------


def test_expect_continue_with_curl(web: Proxy, tmp_path) -> None:
    data = pattern_bytes(100_000)
    f = tmp_path / "body.bin"
    f.write_bytes(data)
    out = curl(
        "-v",
        "--expect100-timeout",
        "20",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        f"@{f}",
        web.url + "/echo",
    )
    assert out.returncode == 0, out.stderr
    assert b"HTTP/1.1 100 Continue" in out.stderr
    echo = json.loads(out.stdout)
    assert echo["body_len"] == len(data)
    assert echo["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert "expect" not in headers_of(echo)


def test_expect_continue_raw_waits_for_100(web: Proxy) -> None:
    body = b"0123456789" * 100
    with RawClient(web.address) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        interim = c.read_head()
        assert interim.status == 100
        c.send(body)
        resp = c.read_response()
        assert resp.status == 200
        echo = json.loads(resp.body)
        assert echo["body_len"] == len(body)
        assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_expect_continue_not_sent_when_answered_without_body(web: Proxy) -> None:
    with RawClient(web.servers["strict"]) as c:
        c.send(b"POST /nowhere HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
        resp = c.read_head()
        assert resp.status == 404


# -- hop-by-hop headers ------------------------------------------------------------


def test_request_hop_by_hop_headers_not_forwarded(web: Proxy) -> None:
    with RawClient(web.address) as c:
        c.send(
            b"GET /echo HTTP/1.1\r\nHost: t\r\n"
            b"Connection: keep-alive, X-Private-Hop\r\n"
            b"X-Private-Hop: secret\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"TE: trailers\r\n"
            b"Proxy-Connection: keep-alive\r\n"
            b"X-End-To-End: kept\r\n\r\n"
        )
        resp = c.read_response()
        assert resp.status == 200
        seen = headers_of(json.loads(resp.body))
        for name in ("x-private-hop", "keep-alive", "te", "proxy-connection"):
            assert name not in seen, name
        assert seen.get("connection", "keep-alive").lower() == "keep-alive"
        assert seen["x-end-to-end"] == "kept"


def test_upgrade_declined_by_the_origin_then_the_next_request(web: Proxy) -> None:
    # An upgrade request goes upstream with its Upgrade (a 101 would make a tunnel: see
    # test_websocket.py); the origin answers 200 instead, and the connection stays HTTP/1.1.
    with RawClient(web.address) as c:
        c.send(
            b"GET /echo?up=1 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            b"GET /echo?up=2 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        first = c.read_response()
        assert first.status == 200
        seen = headers_of(json.loads(first.body))
        assert seen["upgrade"] == "websocket"
        assert seen["connection"].lower() == "upgrade"
        second = c.read_response()
        assert json.loads(second.body)["path"] == "/echo?up=2"


def test_response_hop_by_hop_headers_not_forwarded(web: Proxy) -> None:
    r = httpx.get(web.url + "/hop", trust_env=False)
    assert r.status_code == 200
    assert r.headers["x-end-to-end"] == "kept"
    for name in ("x-private-hop", "keep-alive", "proxy-authenticate"):
        assert name not in r.headers, name
    assert r.headers.get("connection", "").lower() in ("", "keep-alive")
