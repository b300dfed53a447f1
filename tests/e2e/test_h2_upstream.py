"""HTTP/1.1 clients through the proxy to HTTP/2 origins: h2c (prior knowledge) and h2 over TLS
(ALPN), on every HTTP/2 codec. The origin is tests/e2e/h2_origin.py (the ``h2`` library) in its
own process; it prints ``CONN n`` per accepted connection, which is how these tests count the
proxy's upstream connections."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import trustme

from conftest import E2E, LineLog, Proxy, ProxyFactory, _stop_process, free_port, pattern, pattern_sha, refused_port
from monolake.core.proto.http2 import codec_kinds

pytestmark = pytest.mark.e2e


class H2OriginProcess:
    """h2_origin.py in a subprocess; ``log`` has its PORT and CONN lines."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(E2E / "h2_origin.py"), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.log = LineLog(self.proc.stdout, "h2 origin stdout")
        self.errors = LineLog(self.proc.stderr, "h2 origin stderr")
        try:
            self.port = int(self.log.wait_line(r"^PORT (\d+)$")[1])
        except AssertionError as exc:
            self.close()
            raise AssertionError(f"{exc}\nstderr:\n{self.errors.text}") from None

    def connections(self, after: int = 0, *, at_least: int = 1) -> int:
        """CONN lines since ``after``, once there are ``at_least`` (its stdout is read by a thread)."""
        i = after
        for _ in range(at_least):
            self.log.wait_line(r"^CONN \d+$", after=i)
            i = next(j for j, line in enumerate(self.log.lines) if j >= i and line.startswith("CONN ")) + 1
        return self.log.count(r"^CONN \d+$", after=after)

    def close(self) -> None:
        _stop_process(self.proc, 10)
        self.log.join()
        self.errors.join()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="module")
def h2c_origin() -> Iterator[H2OriginProcess]:
    o = H2OriginProcess()
    yield o
    o.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_origin(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[H2OriginProcess, Path]]:
    d = tmp_path_factory.mktemp("h2tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    (d / "chain.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    o = H2OriginProcess("--cert", str(d / "chain.pem"), "--key", str(d / "key.pem"))
    yield o, d / "ca.pem"
    o.close()


@pytest.fixture(params=codec_kinds())
def codec(request: pytest.FixtureRequest) -> str:
    return str(request.param)


H2C = """
[runtime]
drain_timeout = 1

[upstreams.h2]
endpoints = [{ endpoint = "127.0.0.1:{port}" }]
protocol = "h2c"
read_timeout = 30

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "h2"
"""

H2_TLS = """
[runtime]
drain_timeout = 1

[upstreams.h2]
endpoints = [{ endpoint = "https://127.0.0.1:{port}" }]
protocol = "h2"

[upstreams.h2.tls]
ca = "{ca}"

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "h2"
"""


@pytest.fixture
def h2c_proxy(proxy: ProxyFactory, h2c_origin: H2OriginProcess, codec: str) -> Proxy:
    return proxy(H2C, port=h2c_origin.port, env={"MONOLAKE_H2_CODEC": codec})


def client() -> httpx.Client:
    return httpx.Client(timeout=60, trust_env=False)


def test_get_through_h2c(h2c_proxy: Proxy) -> None:
    with client() as c:
        r = c.get(f"{h2c_proxy.url}/hello")
    assert r.status_code == 200
    assert r.text.startswith("hello from connection ")
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["content-length"] == str(len(r.content))


def test_request_headers_translated(h2c_proxy: Proxy) -> None:
    with client() as c:
        r = c.get(
            f"{h2c_proxy.url}/headers?x=1",
            headers={"Host": "app.example:8080", "Connection": "keep-alive", "X-Custom": "yes", "TE": "trailers"},
        )
    pairs = json.loads(r.content)
    h = {k: v for k, v in pairs}
    assert pairs[0][0] == ":method"
    assert h[":authority"] == "app.example:8080"  # the Host the proxy would send (host_header = keep)
    assert h[":path"] == "/headers?x=1" and h[":scheme"] == "http"
    assert h["x-custom"] == "yes" and h["x-forwarded-for"] == "127.0.0.1"
    for banned in ("host", "connection", "keep-alive", "transfer-encoding", "te"):
        assert banned not in h, banned


def test_large_bodies_both_ways(h2c_proxy: Proxy) -> None:
    n = 24 * 1024 * 1024 + 5
    with client() as c:
        r = c.post(f"{h2c_proxy.url}/sha", content=pattern(n))  # a generator: chunked upload
        assert r.status_code == 200
        assert r.json() == {"sha256": pattern_sha(n), "length": n}
        with c.stream("GET", f"{h2c_proxy.url}/bytes/{n}") as resp:
            assert resp.headers["content-length"] == str(n)
            h = hashlib.sha256()
            for piece in resp.iter_bytes():
                h.update(piece)
        assert h.hexdigest() == pattern_sha(n)


def test_concurrent_requests_share_one_upstream_connection(
    proxy: ProxyFactory, h2c_origin: H2OriginProcess, codec: str
) -> None:
    mark = h2c_origin.log.mark()
    p = proxy(H2C, port=h2c_origin.port, env={"MONOLAKE_H2_CODEC": codec})

    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    with httpx.Client(timeout=60, trust_env=False, limits=limits) as c, ThreadPoolExecutor(32) as pool:
        # 32 client connections at once, each waiting 300 ms on the origin: 32 concurrent streams
        codes = list(pool.map(lambda _: c.get(f"{p.url}/slow/300").status_code, range(32)))
    assert codes == [200] * 32
    assert h2c_origin.connections(after=mark) == 1


def test_goaway_reconnects(proxy: ProxyFactory, h2c_origin: H2OriginProcess, codec: str) -> None:
    mark = h2c_origin.log.mark()
    p = proxy(H2C, port=h2c_origin.port, env={"MONOLAKE_H2_CODEC": codec})
    with client() as c:
        assert c.get(f"{p.url}/hello").status_code == 200
        r = c.get(f"{p.url}/goaway")
        assert r.status_code == 200 and r.text == "goaway\n"
        for _ in range(3):
            assert c.get(f"{p.url}/hello").status_code == 200
    assert h2c_origin.connections(after=mark, at_least=2) == 2
    p.log.wait_line(r"sent GOAWAY")


def test_unprocessed_streams_after_goaway_are_retried(
    proxy: ProxyFactory, h2c_origin: H2OriginProcess, codec: str
) -> None:
    # Three concurrent GETs of /hold: the origin answers the first and sends GOAWAY naming it
    # as the last stream; the other two were not processed and are retried on a new connection.
    mark = h2c_origin.log.mark()
    p = proxy(H2C, port=h2c_origin.port, env={"MONOLAKE_H2_CODEC": codec})
    with client() as c:
        assert c.get(f"{p.url}/hello").status_code == 200  # the connection exists before the burst

    def one(i: int) -> int:
        with client() as c:
            return c.get(f"{p.url}/hold").status_code

    with ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(one, range(3)))
    assert codes == [200, 200, 200]
    assert h2c_origin.connections(after=mark, at_least=2) == 2
    p.log.wait_line(r"upstream sent GOAWAY before processing the stream; retrying GET /hold")


def test_trailers_to_an_http1_client_are_dropped(h2c_proxy: Proxy) -> None:
    with client() as c:
        r = c.get(f"{h2c_proxy.url}/trailers")
    assert r.status_code == 200 and r.text == "body before trailers\n"


def test_dead_upstream_is_502(proxy: ProxyFactory) -> None:
    p = proxy(H2C, port=free_port())  # nothing listens there
    with client() as c:
        assert c.get(f"{p.url}/hello").status_code == 502
    p.log.wait_line(r"upstream connect failed: cluster=h2")


def test_h2_over_tls_with_alpn(proxy: ProxyFactory, tls_origin: tuple[H2OriginProcess, Path], codec: str) -> None:
    origin, ca = tls_origin
    mark = origin.log.mark()
    p = proxy(H2_TLS, port=origin.port, ca=ca, env={"MONOLAKE_H2_CODEC": codec})
    n = 3 * 1024 * 1024
    with client() as c:
        r = c.get(f"{p.url}/headers")
        assert json.loads(r.content)[1] == [":scheme", "https"]
        assert c.post(f"{p.url}/sha", content=pattern(n)).json() == {"sha256": pattern_sha(n), "length": n}
        assert hashlib.sha256(c.get(f"{p.url}/bytes/{n}").content).hexdigest() == pattern_sha(n)
    assert origin.connections(after=mark) == 1


def test_h2_client_to_h2_upstream(proxy: ProxyFactory, h2c_origin: H2OriginProcess, codec: str) -> None:
    # h2 → h2: one client connection's concurrent streams become streams of one upstream connection,
    # and response trailers reach the HTTP/2 client.
    mark = h2c_origin.log.mark()
    p = proxy(H2C, port=h2c_origin.port, env={"MONOLAKE_H2_CODEC": codec})
    n = 6 * 1024 * 1024 + 1

    async def concurrent(count: int) -> list[int]:
        # Concurrent streams on one connection from an AsyncClient: httpx's sync HTTP/2 connection
        # is not thread-safe (threads can send HEADERS out of stream-id order, which the proxy
        # rightly answers with GOAWAY(PROTOCOL_ERROR), RFC 9113 §5.1.1).
        async with httpx.AsyncClient(http1=False, http2=True, trust_env=False, timeout=60) as ac:  # type: ignore[arg-type]
            assert (await ac.get(f"{p.url}/headers")).http_version == "HTTP/2"  # the connection, before the burst
            rs = await asyncio.gather(*(ac.get(f"{p.url}/slow/200") for _ in range(count)))
            return [r.status_code for r in rs]

    with httpx.Client(http1=False, http2=True, trust_env=False, timeout=60) as c:  # type: ignore[arg-type]
        r = c.get(f"{p.url}/headers")
        assert r.http_version == "HTTP/2"
        h = dict(json.loads(r.content))
        assert h[":authority"] == p.address and "host" not in h
        assert asyncio.run(concurrent(16)) == [200] * 16
        assert c.post(f"{p.url}/sha", content=pattern(n)).json() == {"sha256": pattern_sha(n), "length": n}
        with c.stream("GET", f"{p.url}/bytes/{n}") as resp:
            digest = hashlib.sha256()
            for piece in resp.iter_bytes():
                digest.update(piece)
        assert digest.hexdigest() == pattern_sha(n)
    assert h2c_origin.connections(after=mark) == 1


def test_trailers_reach_an_h2_client(h2c_proxy: Proxy) -> None:
    # httpx does not expose trailers; a raw h2 connection reads them.
    import socket as socket_

    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    host, port = h2c_proxy.address.rsplit(":", 1)
    trailers: list[tuple[bytes, bytes]] = []
    body = b""
    with socket_.create_connection((host, int(port)), timeout=20) as sock:
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/trailers")],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        while not trailers:
            data = sock.recv(65536)
            assert data, "the proxy closed the connection"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                elif isinstance(ev, h2.events.TrailersReceived):
                    trailers = list(ev.headers)
                elif isinstance(ev, h2.events.StreamReset):
                    raise AssertionError(f"stream reset: {ev}")
            sock.sendall(conn.data_to_send())
    assert body == b"body before trailers\n"
    assert trailers == [(b"x-checksum", b"abc123"), (b"x-done", b"yes")]


INLINE = """
[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstreams = [{ endpoint = "127.0.0.1:{port}" }]
protocol = "h2c"
"""


def test_inline_upstreams_over_h2c(proxy: ProxyFactory, h2c_origin: H2OriginProcess) -> None:
    p = proxy(INLINE, port=h2c_origin.port)
    with client() as c:
        r = c.get(f"{p.url}/headers")
    assert r.status_code == 200
    assert dict(json.loads(r.content))[":path"] == "/headers"


GUARDED = """
[upstreams.h2]
endpoints = [{ endpoint = "127.0.0.1:{dead}" }, { endpoint = "127.0.0.1:{port}" }]
protocol = "h2c"

[upstreams.h2.outlier_detection]
consecutive_connect_failures = 2

[upstreams.h2.circuit_breaker]
max_requests = 100

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "h2"
retry = { attempts = 1, on = ["connect_failure"] }
"""


def test_retries_and_outlier_ejection_over_h2(proxy: ProxyFactory, h2c_origin: H2OriginProcess) -> None:
    dead = refused_port()
    p = proxy(GUARDED, port=h2c_origin.port, dead=dead)
    with client() as c:
        codes = [c.get(f"{p.url}/hello").status_code for _ in range(8)]
    assert codes == [200] * 8  # connect failures on the dead endpoint are retried on the live one
    p.log.wait_line(rf"retrying GET /hello: cluster=h2 endpoint=127.0.0.1:{dead}: connect failure")
    p.log.wait_line(rf"endpoint ejected: cluster=h2 endpoint=127.0.0.1:{dead} .* 2 consecutive connect failures")
    # Ejected: the later requests went straight to the live endpoint.
    assert p.log.wait_count(rf"retrying GET /hello: cluster=h2 endpoint=127.0.0.1:{dead}", 2)
    assert p.log.count(rf"retrying GET /hello: cluster=h2 endpoint=127.0.0.1:{dead}") == 2
