"""What the proxy answers when something is wrong: upstream down or slow, hostile or
oversized requests, overload. After each, the same proxy keeps serving."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import Origin, Proxy, ProxyFactory, RawClient, free_port

pytestmark = pytest.mark.e2e

CONFIG = """
[runtime]
drain_timeout = 1

[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[upstreams.dead]
endpoints = [{ endpoint = "http://127.0.0.1:{dead_port}" }]
connect_timeout = 2

[upstreams.slow]
endpoints = [{ endpoint = "{origin}" }]
read_timeout = 0.5

[servers.web]
listener = "127.0.0.1:0"
limits = { max_header_bytes = 4096, max_headers = 20, max_body_bytes = 10000 }

[[servers.web.routes]]
path = "/dead"
upstream = "dead"

[[servers.web.routes]]
path = "/read-timeout/"
strip_prefix = true
upstream = "slow"

[[servers.web.routes]]
path = "/route-timeout/"
strip_prefix = true
timeout = 0.5
upstream = "origin"

[[servers.web.routes]]
path = "/"
upstream = "origin"

[servers.deadline]
listener = "127.0.0.1:0"
request_timeout = 0.5

[[servers.deadline.routes]]
path = "/"
upstream = "origin"

[servers.shed]
listener = "127.0.0.1:0"
max_concurrency = 2

[[servers.shed.routes]]
path = "/"
upstream = "origin"
"""


@pytest.fixture(scope="module")
def dead_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def web(module_proxy: ProxyFactory, origin: Origin, dead_port: int) -> Proxy:
    return module_proxy(CONFIG, origin=origin.url, dead_port=dead_port)


def still_serving(proxy: Proxy) -> None:
    workers = proxy.workers()
    r = httpx.get(proxy.url + "/echo?still=serving", trust_env=False, timeout=10)
    assert r.status_code == 200
    assert r.json()["path"] == "/echo?still=serving"
    assert proxy.workers() == workers, "a worker died"


def exchange(proxy: Proxy, data: bytes, server: str = "web") -> tuple[int, bool, RawClient]:
    """Send raw bytes; return (status, connection closed after, client)."""
    c = RawClient(proxy.servers[server])
    c.send(data)
    resp = c.read_response()
    closed = c.is_closed(timeout=10)
    c.close()
    return resp.status, closed, c


# -- upstream failures -------------------------------------------------------------


def test_connect_refused_is_502_with_log_line(web: Proxy, dead_port: int) -> None:
    mark = web.log.mark()
    r = httpx.get(web.url + "/dead/x", trust_env=False, timeout=10)
    assert r.status_code == 502
    line = web.log.wait_line(rf"127\.0\.0\.1:{dead_port}", after=mark)
    assert "connect" in line.string.lower()
    web.log.wait_line(r"502 for GET /dead/x", after=mark)
    still_serving(web)


def test_cluster_read_timeout_is_504(web: Proxy, origin: Origin) -> None:
    mark = web.log.mark()
    r = httpx.get(web.url + "/read-timeout/delay/5", trust_env=False, timeout=10)
    assert r.status_code == 504
    assert r.elapsed.total_seconds() < 4
    line = web.log.wait_line(r"timeout", after=mark)
    assert origin.address in line.string or "504" in line.string
    web.log.wait_line(r"504 for GET /delay/5 ", after=mark)
    still_serving(web)


def test_route_timeout_is_504(web: Proxy) -> None:
    mark = web.log.mark()
    r = httpx.get(web.url + "/route-timeout/delay/5", trust_env=False, timeout=10)
    assert r.status_code == 504
    assert r.elapsed.total_seconds() < 4
    web.log.wait_line(r"504 for GET /delay/5 .*route timeout", after=mark)
    # Fast requests on the same route are unaffected.
    assert httpx.get(web.url + "/route-timeout/echo", trust_env=False).status_code == 200


def test_server_request_timeout_is_504(web: Proxy) -> None:
    url = web.url_of("deadline")
    r = httpx.get(url + "/delay/5", trust_env=False, timeout=10)
    assert r.status_code == 504
    assert r.elapsed.total_seconds() < 4
    assert httpx.get(url + "/delay/0.01", trust_env=False).status_code == 200


def test_max_concurrency_sheds_with_503(web: Proxy, origin: Origin) -> None:
    url = web.url_of("shed")
    mark = origin.log.mark()
    with ThreadPoolExecutor(4) as pool:
        slow = [pool.submit(httpx.get, url + "/delay/2.5", trust_env=False, timeout=20) for _ in range(2)]
        # Both slow requests are in flight once the origin has started handling them.
        origin.log.wait_line(r"REQ GET /delay/2\.5 ", after=mark)
        second = origin.log.mark()
        if origin.log.count(r"REQ GET /delay/2\.5 ", after=mark) < 2:
            origin.log.wait_line(r"REQ GET /delay/2\.5 ", after=second)
        shed = [httpx.get(url + f"/echo?shed={i}", trust_env=False, timeout=10) for i in range(3)]
        assert [r.status_code for r in shed] == [503, 503, 503]
        assert [f.result().status_code for f in slow] == [200, 200]
    assert origin.log.count(r"REQ GET /echo\?shed=", after=mark) == 0
    assert httpx.get(url + "/echo", trust_env=False).status_code == 200


# -- hostile requests --------------------------------------------------------------

SMUGGLING = {
    "cl-and-te": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    ),
    "te-and-cl": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    ),
    "duplicate-differing-cl": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\n"
        b"helloGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    ),
    "obs-fold": b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n",
    "space-before-colon": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello",
    "invalid-chunk-size": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    ),
    "negative-cl": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\nhello",
    "non-numeric-cl": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5x\r\n\r\nhello",
    "duplicate-host": b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "missing-host-http11": b"GET /echo HTTP/1.1\r\n\r\n",
    "bare-lf": b"GET /echo HTTP/1.1\nHost: t\n\n",
    # RFC 9112 §6.3: chunked that is not the final coding cannot be framed: 400, not 501.
    "chunked-not-final": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ),
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
}


@pytest.mark.parametrize("case", list(SMUGGLING))
def test_malformed_request_is_400_and_closed(web: Proxy, origin: Origin, case: str) -> None:
    mark = origin.log.mark()
    status, closed, _ = exchange(web, SMUGGLING[case])
    assert status == 400
    assert closed
    still_serving(web)
    assert origin.log.count(r"/smuggled", after=mark) == 0


@pytest.mark.parametrize("coding", ["gzip", "gzip, chunked", "identity", "xchunked"])
def test_unsupported_transfer_coding_is_501(web: Proxy, coding: str) -> None:
    data = f"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode()
    status, closed, _ = exchange(web, data)
    assert status == 501
    assert closed
    still_serving(web)


# -- limits ------------------------------------------------------------------------


def test_oversize_header_is_431(web: Proxy) -> None:
    status, closed, _ = exchange(web, b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    assert (status, closed) == (431, True)
    # Just under the limit is fine.
    r = httpx.get(web.url + "/echo", headers={"X-Big": "a" * 3000}, trust_env=False)
    assert r.status_code == 200
    still_serving(web)


def test_oversize_header_sent_in_pieces_is_431(web: Proxy) -> None:
    with RawClient(web.address) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n")
        for _ in range(10):
            c.send(b"X-Piece: " + b"b" * 600 + b"\r\n")
        c.send(b"\r\n")
        assert c.read_response().status == 431
    still_serving(web)


def test_long_request_line_is_rejected(web: Proxy) -> None:
    status, closed, _ = exchange(web, b"GET /echo?" + b"q" * 6000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status in (414, 431)
    assert closed
    still_serving(web)


def test_too_many_headers_is_431(web: Proxy) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(25))
    status, closed, _ = exchange(web, b"GET /echo HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n")
    assert (status, closed) == (431, True)
    few = {f"X-H{i}": "v" for i in range(15)}
    assert httpx.get(web.url + "/echo", headers=few, trust_env=False).status_code == 200
    still_serving(web)


def test_content_length_over_limit_is_413(web: Proxy, origin: Origin) -> None:
    mark = origin.log.mark()
    with RawClient(web.address) as c:
        # Only the head: the proxy must answer without waiting for the body.
        c.send(b"POST /echo?too=big HTTP/1.1\r\nHost: t\r\nContent-Length: 20000\r\n\r\n")
        assert c.read_response().status == 413
        assert c.is_closed()
    assert origin.log.count(r"too=big", after=mark) == 0
    body = b"z" * 10000
    r = httpx.post(web.url + "/echo", content=body, trust_env=False)
    assert r.status_code == 200
    assert r.json()["body_len"] == 10000
    still_serving(web)


def test_chunked_body_over_limit_is_413(web: Proxy) -> None:
    with RawClient(web.address) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"y" * 4000
        try:
            for _ in range(5):
                c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            c.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy may answer and close before we finish sending
        resp = c.read_response()
        assert resp.status == 413
        assert c.is_closed()
    still_serving(web)


def test_chunked_body_under_limit_passes(web: Proxy) -> None:
    def gen():
        for _ in range(4):
            yield b"w" * 2000

    r = httpx.post(web.url + "/echo", content=gen(), trust_env=False)
    assert r.status_code == 200
    echo = r.json()
    assert echo["body_len"] == 8000
    assert ["Transfer-Encoding", "chunked"] in echo["headers"] or any(
        re.fullmatch("(?i)transfer-encoding", k) for k, _ in echo["headers"]
    )
    assert json.dumps(echo)
