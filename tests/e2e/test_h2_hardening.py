"""HTTP/2 against misbehaving clients: slow readers, vanishing clients, malformed streams.

A raw frame writer (``RawH2`` from test_h2_server) over a real socket, against the
proxy and its own origin process, so the origin's connections can be counted from
/proc/net/tcp. Every test runs on each event loop and each HTTP/2 codec.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame, SettingsFrame
from test_h2_server import RawH2

from conftest import TIMEOUT, Origin, Proxy, ProxyFactory, proc_status_kb
from monolake.proto.http2 import PREFACE, codec_kinds

pytestmark = pytest.mark.e2e

PROTOCOL_ERROR = 0x1
CANCEL = 0x8
BIG = 64 * 1024 * 1024
"""A response far larger than anything the proxy may hold for a stalled stream."""

CONFIG = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]
read_timeout = 60

[servers.web]
listener = "127.0.0.1:0"

[servers.web.http2]
send_timeout = {send_timeout}
max_buffered_bytes = 1048576

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


@pytest.fixture(scope="module", params=["h2", "native"])
def codec(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind not in codec_kinds():
        pytest.skip("the native HTTP/2 codec (libnghttp2 extension) is not built here")
    return kind


@pytest.fixture
def own_origin() -> Iterator[Origin]:
    """An origin for this test alone: every connection it has comes from the proxy under test."""
    o = Origin("stall")
    yield o
    o.close()


def origin_connections(origin: Origin) -> int:
    """Established TCP connections to ``origin``, counted on the connecting side (remote address
    127.0.0.1:port): the origin's own side could be confused with another process's socket that
    happens to use the same local port number, on a machine shared with other test runs."""
    peer = f"0100007F:{origin.port:04X}"
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == peer and fields[3] == "01":
            n += 1
    return n


def wait_for(what: str, check: object, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"still waiting after {timeout}s: {what}"
        time.sleep(0.05)


def stalled_client(address: str) -> RawH2:
    """A client whose streams get a flow-control window of 0: it never reads a DATA byte."""
    return RawH2(address, window=0)


def open_stalled(c: RawH2, n: int) -> tuple[list[int], set[int]]:
    """Open ``n`` streams for a large body and read every response head; returns the stream
    ids and those already reset with CANCEL meanwhile (on a busy machine the first streams
    can reach a short send_timeout before the last heads arrive)."""
    sids = [1 + 2 * i for i in range(n)]
    for sid in sids:
        c.request(sid, f"/bytes/{BIG}")
    heads = set()
    resets = set()
    while len(heads) < n:
        f = c.frame()
        assert f is not None, "connection closed before every response head"
        assert not isinstance(f, DataFrame), "DATA sent beyond a zero window"
        if isinstance(f, HeadersFrame):
            assert (b":status", b"200") in f.decoded  # type: ignore[attr-defined]
            heads.add(f.stream_id)
        elif isinstance(f, RstStreamFrame):
            assert f.error_code == CANCEL
            resets.add(f.stream_id)
    return sids, resets


def upstream_blamed(p: Proxy) -> list[str]:
    return [line for line in p.log.lines if "upstream" in line and ("WARNING" in line or "ERROR" in line)]


STREAMS = 40


def test_stalled_streams_are_bounded_then_reset_after_send_timeout(
    proxy: ProxyFactory, own_origin: Origin, codec: str
) -> None:
    p = proxy(CONFIG, origin=own_origin.url, send_timeout=1, env={"MONOLAKE_H2_CODEC": codec})
    (pid,) = p.workers()
    before = proc_status_kb(pid, "VmRSS")
    c = stalled_client(p.address)
    try:
        sids, resets = open_stalled(c, STREAMS)
        # One upstream connection per stalled stream at most, and a bounded amount of memory:
        # the stream's share (16 KiB here) plus one upstream read. Before the bound this was
        # ~400 KiB per stream (256 KiB queued, then a read); 200 KiB is generous.
        assert origin_connections(own_origin) <= STREAMS
        per_stream_kb = (proc_status_kb(pid, "VmRSS") - before) / STREAMS
        if p.loop != "io_uring":
            # io_uring's multishot recv keeps reading ahead until its cancel lands (the chunks
            # wait in the transport's _pending): ~1.4 MiB per paused upstream on loopback, a
            # transport matter (runtime/uring/_transport.py) this driver cannot bound.
            assert per_stream_kb < 200, f"{per_stream_kb:.0f} KiB of RSS per stalled stream"
        # send_timeout = 1 s without window progress: every stream is reset with CANCEL...
        while len(resets) < STREAMS:
            f = c.frame()
            assert f is not None, f"connection closed instead of resetting the streams: {sorted(resets)}"
            if isinstance(f, RstStreamFrame):
                assert f.error_code == CANCEL
                resets.add(f.stream_id)
        assert resets == set(sids)
        # ...and their upstream connections are closed, long before read_timeout (60 s).
        wait_for("origin connections closed", lambda: origin_connections(own_origin) == 0, 10)
        dropped = p.log.wait_line(r"opened no window for 1 s: stream \d+ reset \(CANCEL\), (\d+) bytes dropped")
        assert int(dropped[1]) > 0
    finally:
        c.close()
    assert not upstream_blamed(p)
    with httpx.Client(http1=False, http2=True, trust_env=False, timeout=TIMEOUT) as h:
        assert h.get(p.url + "/bytes/100000").content.__len__() == 100000  # the worker is fine


def test_client_close_cancels_stalled_streams_at_once(proxy: ProxyFactory, own_origin: Origin, codec: str) -> None:
    # send_timeout and read_timeout are 60 s: only the client's close can free the upstreams.
    p = proxy(CONFIG, origin=own_origin.url, send_timeout=60, env={"MONOLAKE_H2_CODEC": codec})
    c = stalled_client(p.address)
    try:
        open_stalled(c, 10)
        assert origin_connections(own_origin) == 10
    finally:
        c.close()
    wait_for("origin connections closed", lambda: origin_connections(own_origin) == 0, 10)
    assert not upstream_blamed(p)


# -- malformed streams: a stream error on both codecs ---------------------------------

H2_CONFIG = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


@pytest.fixture(scope="module")
def h2proxy(module_proxy: ProxyFactory, origin: Origin, codec: str) -> Proxy:
    return module_proxy(H2_CONFIG, origin=origin.url, env={"MONOLAKE_H2_CODEC": codec})


def answered(c: RawH2, sid: int) -> bytes:
    """The status of ``sid``'s response, or b"reset" if the stream was reset (GOAWAY fails the test)."""
    while True:
        f = c.frame()
        assert f is not None, f"connection closed before stream {sid} was answered"
        if isinstance(f, HeadersFrame) and f.stream_id == sid:
            return dict(f.decoded)[b":status"]  # type: ignore[attr-defined]
        if isinstance(f, RstStreamFrame) and f.stream_id == sid:
            assert f.error_code == PROTOCOL_ERROR
            return b"reset"


@pytest.mark.parametrize(
    "malformed",
    [
        [("X-Upper", "v")],  # RFC 9113 §8.2.1: field names are lowercase
        [("connection", "keep-alive")],  # §8.2.2
        [(":bogus", "x")],  # §8.3
    ],
)
def test_malformed_stream_is_reset_alone(h2proxy: Proxy, malformed: list[tuple[str, str]]) -> None:
    c = RawH2(h2proxy.address)
    try:
        c.request(1, "/echo", extra=malformed)
        c.request(3, "/echo")
        statuses = {1: answered(c, 1), 3: answered(c, 3)}
    finally:
        c.close()
    assert statuses[3] == b"200"
    assert statuses[1] in (b"reset", b"400")  # never the whole connection


def test_body_longer_than_content_length_resets_the_stream_alone(h2proxy: Proxy) -> None:
    c = RawH2(h2proxy.address, window=1 << 20)
    try:
        c.request(1, "/stream-sha", end=False, extra=[("content-length", "3")])
        c.send(DataFrame(1, b"0123456789", flags=["END_STREAM"]).serialize())
        c.request(3, "/echo")
        statuses = {1: answered(c, 1), 3: answered(c, 3)}
    finally:
        c.close()
    assert statuses == {1: b"reset", 3: b"200"}


def test_host_differing_from_authority_resets_the_stream(h2proxy: Proxy) -> None:
    # RFC 9113 §8.3.1: malformed. The same on both codecs: RST_STREAM(PROTOCOL_ERROR).
    c = RawH2(h2proxy.address)
    try:
        c.request(1, "/echo", extra=[("host", "other.test")])
        c.request(3, "/echo", extra=[("host", "h2.test")])  # the same as :authority: fine
        statuses = {1: answered(c, 1), 3: answered(c, 3)}
    finally:
        c.close()
    assert statuses == {1: b"reset", 3: b"200"}


# -- TLS ------------------------------------------------------------------------------

TLS_CONFIG = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[servers.web.tls]
alpn = ["h2", "http/1.1"]
certificates = [{ chain = "{chain}", key = "{key}" }]

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


def test_tls_h2_close_logs_no_eof_received_warning(
    proxy: ProxyFactory, origin: Origin, codec: str, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    chain, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    key.write_bytes(cert.private_key_pem.bytes())
    chain.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    p = proxy(TLS_CONFIG, origin=origin.url, chain=chain, key=key, env={"MONOLAKE_H2_CODEC": codec})
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["h2"])
    host, _, port = p.address.rpartition(":")
    for _ in range(3):
        raw = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        assert tls.selected_alpn_protocol() == "h2"
        tls.sendall(PREFACE + SettingsFrame(0).serialize())
        tls.recv(65536)  # the server's SETTINGS
        with contextlib.suppress(ssl.SSLError, OSError):
            tls.unwrap()  # close_notify: the server sees EOF (its late frames may fail the unwrap)
        tls.close()
    with httpx.Client(http2=True, verify=ctx, trust_env=False, timeout=TIMEOUT) as h:
        assert h.get(p.url.replace("http://", "https://") + "/echo").status_code == 200  # after the closes
    assert not [line for line in p.log.lines if "eof_received" in line]
