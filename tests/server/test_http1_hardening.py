"""The HTTP/1.1 server against hostile or odd clients (issue 17): a head trickled a byte at a
time, a stalled body, HTTP/1.0 with Transfer-Encoding, bad Host values, HTTP/2.0 in a request
line, an overlong request line, a flood of malformed requests in the log, and TLS closes.
Every case runs through the proxy process on each loop backend, with raw sockets."""

from __future__ import annotations

import re
import select
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme

from conftest import TIMEOUT, Origin, Proxy, ProxyFactory, RawClient

pytestmark = pytest.mark.e2e

CONFIG = """
[runtime]
drain_timeout = 1

[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"
header_timeout = 1
body_timeout = 1

[[servers.web.routes]]
path = "/"
upstream = "origin"

[servers.line]
listener = "127.0.0.1:0"
limits = { max_request_line_bytes = 1024 }

[[servers.line.routes]]
path = "/"
upstream = "origin"
"""


@pytest.fixture(scope="module")
def web(module_proxy: ProxyFactory, origin: Origin) -> Proxy:
    return module_proxy(CONFIG, origin=origin.url)


def exchange(address: str, data: bytes) -> tuple[int, bool, RawClient]:
    """Send raw bytes; return (status, closed after the response, client)."""
    c = RawClient(address)
    c.send(data)
    resp = c.read_response()
    closed = c.is_closed(timeout=10)
    c.close()
    return resp.status, closed, c


def trickle(c: RawClient, data: bytes, pause: float) -> int:
    """Send ``data`` a byte at a time, ``pause`` seconds apart, until the server answers; return
    how many bytes went out."""
    for i in range(len(data)):
        readable, _, _ = select.select([c.sock], [], [], pause)
        if readable:
            return i
        c.send(data[i : i + 1])
    readable, _, _ = select.select([c.sock], [], [], TIMEOUT)
    return len(data)


# -- A: slowloris --------------------------------------------------------------------


def test_trickled_head_gets_408_at_the_deadline(web: Proxy, origin: Origin) -> None:
    """header_timeout bounds the whole head from its first byte: bytes arriving every 0.3 s do not
    extend it (they did: the timeout restarted on each read)."""
    head = b"GET /echo?slow=loris HTTP/1.1\r\nHost: t\r\nX-A: " + b"a" * 30 + b"\r\n\r\n"
    mark = origin.log.mark()
    with RawClient(web.address) as c:
        sent = trickle(c, head, 0.3)
        resp = c.read_response()
        assert resp.status == 408
        assert c.is_closed(timeout=10)
    assert sent < len(head), "the server waited for the whole trickled head"
    assert origin.log.count(r"slow=loris", after=mark) == 0


def test_second_request_head_on_keepalive_has_its_own_deadline(web: Proxy) -> None:
    with RawClient(web.address) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response().status == 200
        sent = trickle(c, b"GET /echo HTTP/1.1\r\nHost: t\r\nX-B: " + b"b" * 30 + b"\r\n\r\n", 0.3)
        assert sent > 0
        assert c.read_response().status == 408
        assert c.is_closed(timeout=10)


def test_stalled_body_gets_408(web: Proxy) -> None:
    with RawClient(web.address) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)  # then nothing
        assert c.read_response().status == 408
        assert c.is_closed(timeout=10)


def test_slow_body_that_progresses_is_served(web: Proxy) -> None:
    """body_timeout is a progress timeout, not a deadline: a body whose bytes keep coming (each
    gap well under the 1 s timeout) is served however long it takes."""
    body = b"0123456789"
    with RawClient(web.address) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert trickle(c, body, 0.25) == len(body)
        resp = c.read_response()
        assert resp.status == 200
        assert b'"body_len": 10' in resp.body


def test_stalled_body_after_the_response_started_is_closed(web: Proxy) -> None:
    """A full-duplex exchange (the origin answers while reading): once the response started, a stalled
    upload can only end with the connection."""
    with RawClient(web.address) as c:
        c.send(b"POST /duplex HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nhello")
        resp = c.read_head()
        assert resp.status == 200
        # Whatever of the body arrives, the connection then closes without a complete response.
        c.read_until_close()


STUCK = """
[upstreams.stuck]
endpoints = [{ endpoint = "http://127.0.0.1:{port}" }]
connect_timeout = 2.5

[servers.web]
listener = "127.0.0.1:0"
body_timeout = 1

[[servers.web.routes]]
path = "/"
upstream = "stuck"
"""


def test_body_timeout_waits_for_our_100_continue(proxy: ProxyFactory) -> None:
    """A client that asked for 100 Continue sends nothing until it gets one: while the proxy
    has not sent it (its upstream connect hangs here), the body is not late."""
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        # One connection fills the accept queue: the proxy's SYNs are dropped and its connect hangs.
        with socket.create_connection(lst.getsockname(), timeout=10):
            p = proxy(STUCK, port=lst.getsockname()[1])
            with RawClient(p.address) as c:
                c.send(b"POST /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
                resp = c.read_response(head=True)
    assert resp.status in (502, 504)
    # The request failed on its connect, not on a body timeout (which it got before: the
    # answer was the same, but the request was doomed whatever the upstream did next).
    p.log.wait_line(r"\d{3} for POST /x ")
    assert p.log.count(r"body timeout") == 0, "\n".join(p.log.lines)


KEEPALIVE = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"
keepalive_timeout = 1.5

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


def test_keepalive_idle_time_counts_from_the_response_end(proxy: ProxyFactory, origin: Origin) -> None:
    """A response slower than keepalive_timeout (2 s against 1.5 s) leaves the connection open for
    the next request; it was closed at the first sweep after the response, the idle time counted
    from the request's arrival."""
    p = proxy(KEEPALIVE, origin=origin.url)
    with RawClient(p.address) as c:
        c.send(b"GET /delay/2 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response().status == 200
        assert not c.is_closed(timeout=1.1)  # two sweeps
        c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response().status == 200


# -- 2: HTTP/1.0 with Transfer-Encoding --------------------------------------------------


def test_http10_with_transfer_encoding_is_400_and_closed(web: Proxy, origin: Origin) -> None:
    data = (
        b"POST /echo?first HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    mark = origin.log.mark()
    with RawClient(web.address) as c:
        c.send(data)
        assert c.read_response().status == 400
        assert c.read_until_close() == b""  # answered once, then closed
    assert origin.log.count(r"/smuggled|first", after=mark) == 0


# -- 3: Host ------------------------------------------------------------------------------

BAD_HOSTS = {
    "list": b"Host: a, b\r\n",
    "list-no-space": b"Host: a,b\r\n",
    "space": b"Host: a b\r\n",
    "empty": b"Host:\r\n",
    "empty-ows": b"Host:   \r\n",
    "slash": b"Host: a/b\r\n",
    "unclosed-ipv6": b"Host: [::1\r\n",
    "bad-port": b"Host: a:80x\r\n",
    "two": b"Host: a\r\nHost: b\r\n",
    "missing": b"",
}


@pytest.mark.parametrize("case", list(BAD_HOSTS))
def test_bad_host_is_400(web: Proxy, origin: Origin, case: str) -> None:
    mark = origin.log.mark()
    status, closed, _ = exchange(
        web.address, b"GET /echo?host=" + case.encode() + b" HTTP/1.1\r\n" + BAD_HOSTS[case] + b"\r\n"
    )
    assert (status, closed) == (400, True)
    assert origin.log.count(r"host=", after=mark) == 0


@pytest.mark.parametrize("host", ["Example.COM:8080", "[::1]:80", "127.0.0.1", "a-b.c_d~e"])
def test_good_host_is_forwarded(web: Proxy, host: str) -> None:
    with RawClient(web.address) as c:
        c.send(f"GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        resp = c.read_response()
    assert resp.status == 200
    assert f'["X-Forwarded-Host", "{host}"]'.encode() in resp.body


def test_http10_without_host_is_served(web: Proxy) -> None:
    status, closed, _ = exchange(web.address, b"GET /echo HTTP/1.0\r\n\r\n")
    assert (status, closed) == (200, True)


# -- 4: versions --------------------------------------------------------------------------


def test_http2_request_line_is_505(web: Proxy, origin: Origin) -> None:
    mark = origin.log.mark()
    status, closed, _ = exchange(web.address, b"GET /echo?v2 HTTP/2.0\r\nHost: t\r\n\r\n")
    assert (status, closed) == (505, True)
    assert origin.log.count(r"v2", after=mark) == 0


# -- 5: request line length ----------------------------------------------------------------


def test_16k_target_is_414(web: Proxy) -> None:
    status, closed, _ = exchange(web.address, b"GET /echo?" + b"q" * 16384 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (status, closed) == (414, True)


def test_16k_target_in_pieces_is_414(web: Proxy) -> None:
    with RawClient(web.address) as c:
        c.send(b"GET /echo?")
        for _ in range(16):
            try:
                c.send(b"q" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                break  # answered and closed as soon as the limit passed
        assert c.read_response().status == 414


def test_max_request_line_bytes_is_configurable(web: Proxy) -> None:
    addr = web.servers["line"]
    # "GET " + target + " HTTP/1.1" is exactly the limit: served.
    fits = b"/echo?" + b"f" * (1024 - 4 - 9 - 6)
    with RawClient(addr) as c:
        c.send(b"GET " + fits + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response().status == 200
    status, closed, _ = exchange(addr, b"GET " + fits + b"f HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (status, closed) == (414, True)


# -- I: log volume --------------------------------------------------------------------------

PLAIN = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


def test_malformed_request_flood_is_logged_at_a_bounded_rate(proxy: ProxyFactory, origin: Origin) -> None:
    p = proxy(PLAIN, origin=origin.url)
    mark = p.log.mark()
    n = 200
    for _ in range(n):
        status, closed, _ = exchange(p.address, b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
        assert (status, closed) == (400, True)
    # Every request is accounted for: a line of its own or a count in a "suppressed" line,
    # written by the sweep once the window is over.
    suppressed_rx = re.compile(r"bad requests: (\d+) more suppressed")
    deadline = time.monotonic() + TIMEOUT
    while True:
        lines = p.log.since(mark)
        logged = sum(1 for line in lines if "bad request from" in line)
        suppressed = sum(int(m[1]) for line in lines if (m := suppressed_rx.search(line)))
        if logged + suppressed >= n or time.monotonic() > deadline:
            break
        p.log.wait_line(suppressed_rx, after=mark + len(lines))
    assert logged + suppressed == n
    assert suppressed > 0
    assert logged < n


# -- 6: TLS close -------------------------------------------------------------------------

TLS = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.tls]
listener = "127.0.0.1:0"
[servers.tls.tls]
certificates = [{ chain = "{chain}", key = "{key}" }]

[[servers.tls.routes]]
path = "/"
upstream = "origin"

[servers.plain]
listener = "127.0.0.1:0"

[[servers.plain.routes]]
path = "/"
upstream = "origin"
"""


def test_tls_close_logs_no_eof_warning(proxy: ProxyFactory, origin: Origin, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    chain, key = tmp_path / "c.pem", tmp_path / "c.key"
    key.write_bytes(cert.private_key_pem.bytes())
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    p = proxy(TLS, origin=origin.url, chain=chain, key=key)
    host, _, port = p.servers["tls"].rpartition(":")
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    mark = p.log.mark()
    for unwrap in (True, False):
        raw = socket.create_connection((host, int(port)), timeout=10)
        tls = ctx.wrap_socket(raw, server_hostname=host)
        tls.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        got = b""
        while b'"conn"' not in got:
            piece = tls.recv(65536)
            assert piece
            got += piece
        assert got.startswith(b"HTTP/1.1 200")
        if unwrap:
            tls.unwrap()  # close_notify, then FIN
        tls.close()
    # The worker sees those closes before a request on a later connection; its log line
    # marks that the earlier ones were handled.
    with RawClient(p.servers["plain"]) as c:
        c.send(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
        assert c.read_response().status == 400
    p.log.wait_line(r"bad request from", after=mark)
    assert p.log.count(r"eof_received", after=mark) == 0, "\n".join(p.log.since(mark))
