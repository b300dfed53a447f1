"""Large bodies stream through the proxy in both directions without being held whole.

Bodies are 50 MB; the worker's peak RSS (VmHWM in /proc) may grow by well under
that while one passes. The slow-reader test stalls the client so that, without
backpressure, the proxy would have to buffer the whole body.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import BLOCK, Origin, Proxy, ProxyFactory, RawClient, pattern_bytes, pattern_sha, proc_status_kb

pytestmark = pytest.mark.e2e

SIZE = 50 * 1024 * 1024
MAX_GROWTH_KB = 30 * 1024

CONFIG = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


@pytest.fixture(scope="module")
def web(module_proxy: ProxyFactory, origin: Origin) -> Proxy:
    p = module_proxy(CONFIG, origin=origin.url)
    # Warm up: imports, pools and buffers a request touches are in the baseline.
    with httpx.Client(trust_env=False) as c:
        assert c.get(p.url + "/bytes/1000000").status_code == 200
        assert c.post(p.url + "/stream-sha", content=b"x" * 1_000_000).status_code == 200
    return p


class PeakRss:
    """VmHWM growth of the proxy's single worker across a block."""

    def __init__(self, proxy: Proxy) -> None:
        (self.pid,) = proxy.workers()

    def __enter__(self) -> PeakRss:
        self.before = proc_status_kb(self.pid, "VmHWM")
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth_kb = proc_status_kb(self.pid, "VmHWM") - self.before

    def check(self) -> None:
        assert self.growth_kb < MAX_GROWTH_KB, f"worker peak RSS grew by {self.growth_kb} KiB for a {SIZE} byte body"


def blocks(n: int) -> Iterator[bytes]:
    full, rest = divmod(n, len(BLOCK))
    for _ in range(full):
        yield BLOCK
    if rest:
        yield BLOCK[:rest]


@pytest.mark.parametrize("kind", ["chunked", "bytes"])
def test_download_50mb(web: Proxy, kind: str) -> None:
    h = hashlib.sha256()
    n = 0
    with (
        PeakRss(web) as peak,
        httpx.Client(trust_env=False, timeout=20) as c,
        c.stream("GET", f"{web.url}/{kind}/{SIZE}") as r,
    ):
        assert r.status_code == 200
        if kind == "chunked":
            assert r.headers["transfer-encoding"] == "chunked"
        else:
            assert r.headers["content-length"] == str(SIZE)
        origin_sha = r.headers["x-body-sha256"]
        for piece in r.iter_raw():
            h.update(piece)
            n += len(piece)
    assert n == SIZE
    assert h.hexdigest() == origin_sha == pattern_sha(SIZE)
    peak.check()


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_upload_50mb(web: Proxy, framing: str) -> None:
    headers = {"Content-Type": "application/octet-stream"}
    if framing == "content-length":
        headers["Content-Length"] = str(SIZE)
    with PeakRss(web) as peak, httpx.Client(trust_env=False, timeout=20) as c:
        r = c.post(web.url + "/stream-sha", content=blocks(SIZE), headers=headers)
        assert r.status_code == 200
        if framing == "chunked":
            assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.json() == {"body_len": SIZE, "body_sha256": pattern_sha(SIZE)}
    peak.check()


def test_slow_reader_is_backpressured(web: Proxy) -> None:
    with PeakRss(web) as peak, RawClient(web.address, timeout=20) as c:
        c.send(f"GET /bytes/{SIZE} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        resp = c.read_head()
        assert resp.status == 200
        # Stall: without backpressure the origin's 50 MB would pile up in the worker
        # within this second (loopback moves it in a fraction of that).
        time.sleep(1.0)
        stalled_rss = proc_status_kb(peak.pid, "VmRSS") - peak.before
        h = hashlib.sha256(c.buf)
        n = len(c.buf)
        c.buf = b""
        while n < SIZE:
            data = c.sock.recv(1 << 20)
            assert data, f"closed after {n} bytes"
            h.update(data)
            n += len(data)
    assert n == SIZE
    assert h.hexdigest() == pattern_sha(SIZE)
    assert stalled_rss < MAX_GROWTH_KB
    peak.check()


def test_upload_and_download_together(web: Proxy) -> None:
    """A 50 MB chunked upload to /echo answered by a JSON, then the same body back down."""
    with PeakRss(web) as peak, httpx.Client(trust_env=False, timeout=20) as c:
        r = c.post(web.url + "/echo", content=blocks(SIZE))
        echo = r.json()
        assert echo["body_len"] == SIZE
        assert echo["body_sha256"] == pattern_sha(SIZE)
        assert json.dumps(echo)  # the small response after a large request is intact
        h = hashlib.sha256()
        with c.stream("GET", f"{web.url}/chunked/{SIZE}") as down:
            for piece in down.iter_raw():
                h.update(piece)
        assert h.hexdigest() == echo["body_sha256"]
    peak.check()


def test_upstream_connection_reusable_after_body_buffered_before_pipe(proxy: ProxyFactory, origin: Origin) -> None:
    """A response body larger than the Body's high-water mark that arrives whole before
    the proxy starts piping it pauses the upstream connection; once the response is
    complete that connection goes back to the pool and must be read again."""
    web = proxy(CONFIG, origin=origin.url)
    for i in range(5):
        with httpx.Client(trust_env=False, timeout=10) as c:
            r = c.get(web.url + "/blob/300000")
            assert r.status_code == 200
            assert r.content == pattern_bytes(300000)
        try:
            r = httpx.get(web.url + "/conn", trust_env=False, timeout=5)
        except httpx.ReadTimeout:
            pytest.fail(f"request after /blob/300000 #{i + 1} hung: its pooled upstream connection is paused")
        assert r.status_code == 200


@pytest.fixture(scope="module")
def narrow_origin() -> Iterator[Origin]:
    """An origin whose connections have a small receive window, so the proxy's writes
    to it back up after a few kilobytes and backpressure reaches the client."""
    o = Origin("narrow", "--rcvbuf", "16384")
    yield o
    o.close()


def test_client_connection_reusable_after_backpressured_upload(proxy: ProxyFactory, narrow_origin: Origin) -> None:
    """An upload whose last piece fills the upstream socket's buffer ends with the client
    connection paused (backpressure from upstream); the next request on that keep-alive
    connection must still be read. Body sizes vary so the last read's size varies."""
    web = proxy(CONFIG, origin=narrow_origin.url)
    with RawClient(web.address, timeout=10) as c:
        for i in range(40):
            size = 4 * 1024 * 1024 - i * 37 * 1024
            c.send(f"POST /stream-sha HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode())
            c.send(pattern_bytes(size))
            resp = c.read_response()
            assert json.loads(resp.body)["body_len"] == size
            c.send(b"GET /conn HTTP/1.1\r\nHost: t\r\n\r\n")
            c.sock.settimeout(5)
            try:
                assert c.read_response().status == 200
            except TimeoutError:
                pytest.fail(f"request after upload #{i + 1} ({size} bytes) hung: the client connection is paused")
            c.sock.settimeout(10)


def read_chunks(c: RawClient, want: int) -> bytes:
    """Decode a chunked response body as it arrives until ``want`` bytes are in (or it ends)."""
    out = b""
    while len(out) < want:
        size = int(c._read_until(b"\r\n").split(b";")[0], 16)
        if size == 0:
            c._read_until(b"\r\n")
            break
        out += c._read_exact(size + 2)[:-2]
    return out


def test_full_duplex_upload_keeps_flowing_after_the_response_starts(web: Proxy) -> None:
    """An upstream that answers at once and echoes the upload as it arrives: each piece the
    client sends comes back before the next is sent, so the rest of the upload must keep
    reaching the upstream after the response has started."""
    with RawClient(web.address) as c:
        c.send(b"POST /duplex HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        head = c.read_head()
        assert head.status == 200
        for i in range(5):
            piece = (b"piece-%d;" % i) * 2000
            c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            assert read_chunks(c, len(piece)) == piece
        c.send(b"0\r\n\r\n")
        assert read_chunks(c, 1) == b""  # the response ends after the upload did
        assert not c._fill(), "the connection closes once both directions are done"
