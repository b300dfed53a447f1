"""What the proxy answers when something is wrong: upstream down or slow, hostile or
oversized requests, overload. After each, the same proxy keeps serving."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import socketserver
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import Origin, Proxy, ProxyFactory, RawClient, refused_port

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

[upstreams.scripted]
endpoints = [{ endpoint = "{scripted}" }]
read_timeout = 5

[servers.web]
listener = "127.0.0.1:0"
limits = { max_header_bytes = 4096, max_headers = 20, max_body_bytes = 10000 }

[[servers.web.routes]]
path = "/scripted/"
strip_prefix = true
upstream = "scripted"

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

[servers.impatient]
listener = "127.0.0.1:0"
keepalive_timeout = 1
header_timeout = 1

[[servers.impatient.routes]]
path = "/"
upstream = "origin"
"""

# What the scripted upstream answers, by path: bytes sent after reading the request
# head, then the connection is closed.
SCRIPTS: dict[str, bytes] = {
    "/close-now": b"",
    "/garbage": b"SURPRISE\r\n\r\n",
    "/bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\nhello",
    "/huge-head": b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"f" * 100_000 + b"\r\n\r\n",
    "/truncated": b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"t" * 10_000,
    "/until-close": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"u" * 300_000,
    "/early-hints": (
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhints"
    ),
}


class _Scripted(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data:
                piece = sock.recv(65536)
                if not piece:
                    return
                data += piece
            path = data.split(b" ", 2)[1].decode()
            sock.sendall(SCRIPTS.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))


@pytest.fixture(scope="module")
def scripted() -> Iterator[str]:
    """A raw upstream that answers each path with SCRIPTS[path], malformed on purpose."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Scripted)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture(scope="module")
def dead_port() -> int:
    return refused_port()


@pytest.fixture(scope="module")
def web(module_proxy: ProxyFactory, origin: Origin, dead_port: int, scripted: str) -> Proxy:
    return module_proxy(CONFIG, origin=origin.url, dead_port=dead_port, scripted=scripted)


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
    line = web.log.wait_line(r"timeout", after=mark)
    assert origin.address in line.string or "504" in line.string
    web.log.wait_line(r"504 for GET /read-timeout/delay/5 ", after=mark)
    still_serving(web)


def test_route_timeout_is_504(web: Proxy) -> None:
    mark = web.log.mark()
    r = httpx.get(web.url + "/route-timeout/delay/5", trust_env=False, timeout=10)
    assert r.status_code == 504
    web.log.wait_line(r"504 for GET /route-timeout/delay/5 .*route timeout", after=mark)
    # Fast requests on the same route are unaffected.
    assert httpx.get(web.url + "/route-timeout/echo", trust_env=False).status_code == 200


def test_server_request_timeout_is_504(web: Proxy) -> None:
    url = web.url_of("deadline")
    r = httpx.get(url + "/delay/5", trust_env=False, timeout=10)
    assert r.status_code == 504
    assert httpx.get(url + "/delay/0.01", trust_env=False).status_code == 200


@pytest.mark.parametrize("path", ["/close-now", "/garbage", "/bad-length", "/huge-head"])
def test_malformed_upstream_response_is_502(web: Proxy, path: str) -> None:
    mark = web.log.mark()
    r = httpx.get(web.url + "/scripted" + path, trust_env=False, timeout=10)
    assert r.status_code == 502
    web.log.wait_line(rf"502 for GET /scripted{path} ", after=mark)
    still_serving(web)


def test_upstream_closing_mid_body_closes_the_client_connection(web: Proxy) -> None:
    mark = web.log.mark()
    with RawClient(web.address) as c:
        c.send(b"GET /scripted/truncated HTTP/1.1\r\nHost: t\r\n\r\n")
        head = c.read_head()
        assert head.status == 200
        assert head.header("Content-Length") == "100000"
        # Headers are out: the only honest signal left is closing before the body's end.
        got = c.read_until_close()
        assert len(got) < 100_000
    web.log.wait_line(r"mid-response", after=mark)
    still_serving(web)


def test_close_delimited_upstream_body_is_reframed(web: Proxy) -> None:
    with RawClient(web.address) as c:
        c.send(
            b"GET /scripted/until-close HTTP/1.1\r\nHost: t\r\n\r\nGET /echo?after=close HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        resp = c.read_response()
        assert resp.status == 200
        assert resp.body == b"u" * 300_000
        assert resp.chunked  # an HTTP/1.1 client gets chunks, and its connection stays usable
        assert json.loads(c.read_response().body)["path"] == "/echo?after=close"


def test_interim_upstream_response_is_not_forwarded(web: Proxy) -> None:
    with RawClient(web.address) as c:
        c.send(b"GET /scripted/early-hints HTTP/1.1\r\nHost: t\r\n\r\n")
        first = c.read_head()
        assert first.status == 200
        assert c._read_exact(int(first.header("Content-Length") or 0)) == b"hints"


def test_idle_keepalive_connection_is_closed(web: Proxy) -> None:
    with RawClient(web.servers["impatient"]) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response().status == 200
        assert c.is_closed(timeout=10)  # keepalive_timeout = 1 (checked once a second)


def test_slow_request_head_is_408(web: Proxy) -> None:
    with RawClient(web.servers["impatient"]) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Slow")  # and nothing more
        resp = c.read_response()
        assert resp.status == 408
        assert c.is_closed(timeout=10)
    still_serving(web)


def test_client_disconnect_mid_download_and_mid_upload(web: Proxy) -> None:
    workers = web.workers()
    with RawClient(web.address) as c:
        c.send(b"GET /bytes/20000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_head().status == 200
        c.sock.recv(100_000)
    with RawClient(web.servers["deadline"]) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\n" + b"p" * 100_000)
    for _ in range(5):
        still_serving(web)
    assert web.workers() == workers


def test_max_concurrency_sheds_with_503(web: Proxy, origin: Origin) -> None:
    url = web.url_of("shed")
    mark = origin.log.mark()
    with ThreadPoolExecutor(4) as pool:
        slow = [pool.submit(httpx.get, url + "/delay/1.5", trust_env=False, timeout=20) for _ in range(2)]
        # Both slow requests are in flight once the origin has started handling them.
        origin.log.wait_line(r"REQ GET /delay/1\.5 ", after=mark)
        second = origin.log.mark()
        if origin.log.count(r"REQ GET /delay/1\.5 ", after=mark) < 2:
            origin.log.wait_line(r"REQ GET /delay/1\.5 ", after=second)
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
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            # The proxy may answer and close as soon as the limit is passed.
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
