"""HTTP/2 clients through the proxy to the HTTP/1.1 origin: h2c by prior knowledge, h2 by ALPN.

Real peers: httpx (h2), nghttp and h2load (nghttp2), and a raw frame writer
(hyperframe + hpack) for what well-behaved clients never send: more streams than
allowed, rapid resets, CONTINUATION floods, malformed requests. Every test runs on
each event loop and on each HTTP/2 codec (the native one is skipped where it is
not built).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import hpack
import httpx
import pytest
import trustme
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from conftest import TIMEOUT, Origin, Proxy, ProxyFactory, pattern_sha, proc_status_kb
from monolake.core.proto.http2 import PREFACE, codec_kinds

pytestmark = pytest.mark.e2e

REFUSED_STREAM = 0x7
ENHANCE_YOUR_CALM = 0xB
NO_ERROR = 0x0

CONFIG = """
[runtime]
drain_timeout = 10

[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "origin"

[servers.small]
listener = "127.0.0.1:0"
keepalive_timeout = 2

[servers.small.http2]
max_concurrent_streams = 2
max_resets_per_10s = 20
max_header_list_size = 8192

[[servers.small.routes]]
path = "/"
upstream = "origin"
"""


@pytest.fixture(scope="module", params=["h2", "native"])
def codec(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind not in codec_kinds():
        pytest.skip("the native HTTP/2 codec (libnghttp2 extension) is not built here")
    return kind


@pytest.fixture(scope="module")
def h2proxy(module_proxy: ProxyFactory, origin: Origin, codec: str) -> Proxy:
    return module_proxy(CONFIG, origin=origin.url, env={"MONOLAKE_H2_CODEC": codec})


def h2_client(**kw: object) -> httpx.Client:
    return httpx.Client(http1=False, http2=True, trust_env=False, timeout=TIMEOUT, **kw)  # type: ignore[arg-type]


def headers_of(echo: dict[str, object]) -> list[tuple[str, str]]:
    pairs = echo["headers"]
    assert isinstance(pairs, list)
    return [(k.lower(), v) for k, v in pairs]


# -- a raw HTTP/2 peer -------------------------------------------------------------


class RawH2:
    """A blocking socket that writes frames as told and reads frames back."""

    def __init__(self, address: str, *, window: int | None = None) -> None:
        """``window``: the receive window to announce (stream and connection; 0 stalls every
        stream), else the default 65535."""
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        self.buf = b""
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        settings = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: window} if window is not None else {})
        hello = PREFACE + settings.serialize()
        if window is not None and window > 65535:
            hello += WindowUpdateFrame(0, window_increment=window - 65535).serialize()
        self.send(hello)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def headers_block(self, path: str, extra: list[tuple[str, str]] | None = None, method: str = "GET") -> bytes:
        fields = [(":method", method), (":scheme", "http"), (":authority", "h2.test"), (":path", path)]
        return bytes(self.encoder.encode(fields + (extra or [])))

    def request(self, sid: int, path: str, *, end: bool = True, extra: list[tuple[str, str]] | None = None) -> None:
        f = HeadersFrame(sid, self.headers_block(path, extra))
        f.flags.add("END_HEADERS")
        if end:
            f.flags.add("END_STREAM")
        self.send(f.serialize())

    def frame(self, timeout: float = TIMEOUT) -> Frame | None:
        """The next frame, or None at EOF (or a reset connection)."""
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 9:
                f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) >= 9 + length:
                    f.parse_body(memoryview(self.buf[9 : 9 + length]))
                    self.buf = self.buf[9 + length :]
                    if isinstance(f, HeadersFrame | ContinuationFrame):
                        f.decoded = self.decoder.decode(f.data, raw=True)  # type: ignore[attr-defined]
                    if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                        with contextlib.suppress(OSError):  # the server may have closed already
                            self.send(SettingsFrame(0, flags=["ACK"]).serialize())
                    return f
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                data = b""
            if not data:
                return None
            self.buf += data

    def frames_until_closed(self, timeout: float = TIMEOUT) -> list[Frame]:
        out = []
        deadline = time.monotonic() + timeout
        while (f := self.frame(max(0.1, deadline - time.monotonic()))) is not None:
            out.append(f)
            assert time.monotonic() < deadline, f"connection still open after {timeout}s: {out[-5:]}"
        return out

    def until(self, kind: type[Frame], sid: int | None = None) -> Frame:
        while True:
            f = self.frame()
            assert f is not None, f"connection closed before a {kind.__name__}"
            if isinstance(f, kind) and (sid is None or f.stream_id == sid):
                return f


@pytest.fixture
def raw(h2proxy: Proxy) -> Iterator[list[RawH2]]:
    conns: list[RawH2] = []
    yield conns
    for c in conns:
        c.close()


def open_raw(conns: list[RawH2], address: str) -> RawH2:
    c = RawH2(address)
    conns.append(c)
    return c


def still_serves(proxy: Proxy, server: str = "web") -> None:
    """The worker survived: a new connection is answered."""
    with h2_client() as c:
        r = c.get(proxy.url_of(server) + "/echo")
        assert r.status_code == 200 and r.http_version == "HTTP/2"


# -- well-behaved clients ------------------------------------------------------------


def test_httpx_prior_knowledge_translates_headers(h2proxy: Proxy) -> None:
    with h2_client() as c:
        r = c.get(
            h2proxy.url + "/echo?x=1",
            headers=[("cookie", "a=1"), ("cookie", "b=2"), ("x-custom", "v")],
        )
    assert r.status_code == 200
    assert r.http_version == "HTTP/2"
    echo = r.json()
    assert echo["path"] == "/echo?x=1"
    assert echo["version"] == "1.1"  # the origin hop is HTTP/1.1
    hdrs = headers_of(echo)
    assert ("host", h2proxy.address) in hdrs  # :authority became Host
    assert ("cookie", "a=1; b=2") in hdrs  # RFC 9113 §8.2.3
    assert ("x-custom", "v") in hdrs
    assert not [n for n, _ in hdrs if n.startswith(":")]
    assert all(n == n.lower() for n in r.headers)
    assert r.headers["x-origin"] == "origin"


def test_response_connection_specific_fields_are_dropped(h2proxy: Proxy) -> None:
    # /hop answers with Connection-listed, Keep-Alive, Upgrade and Trailer fields; an h2
    # client (h2 validates inbound headers) would fail the stream if any came through.
    with h2_client() as c:
        r = c.get(h2proxy.url + "/hop")
    assert r.status_code == 200
    for name in ("connection", "keep-alive", "upgrade", "transfer-encoding", "proxy-connection"):
        assert name not in r.headers


def test_head_and_no_body_statuses(h2proxy: Proxy) -> None:
    with h2_client() as c:
        head = c.head(h2proxy.url + "/bytes/1000")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == "1000"
        assert c.get(h2proxy.url + "/status/204").status_code == 204
        assert c.get(h2proxy.url + "/status/404").status_code == 404


def test_nghttp_settings_and_frames(h2proxy: Proxy) -> None:
    out = subprocess.run(
        ["nghttp", "-nv", h2proxy.url_of("small") + "/echo", h2proxy.url_of("small") + "/bytes/100000"],
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    log = out.stdout
    assert "recv SETTINGS frame" in log
    assert "[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):2]" in log
    assert "[SETTINGS_MAX_HEADER_LIST_SIZE(0x06):8192]" in log
    assert log.count(":status: 200") == 2
    assert "recv DATA frame" in log and "END_STREAM" in log
    assert "RST_STREAM" not in log


def test_h2load_many_concurrent_streams(h2proxy: Proxy) -> None:
    out = subprocess.run(
        ["h2load", "-n", "2000", "-c", "4", "-m", "50", h2proxy.url + "/echo"],
        capture_output=True,
        timeout=120,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2000 succeeded, 0 failed, 0 errored, 0 timeout" in out.stdout, out.stdout
    assert "status codes: 2000 2xx" in out.stdout


def test_many_streams_on_one_connection_with_httpx(h2proxy: Proxy) -> None:
    import asyncio

    async def main() -> list[int]:
        async with httpx.AsyncClient(http1=False, http2=True, trust_env=False, timeout=TIMEOUT) as c:
            rs = await asyncio.gather(*(c.get(h2proxy.url + f"/bytes/{1000 + i}") for i in range(100)))
            return [len(r.content) for r in rs if r.http_version == "HTTP/2"]

    assert asyncio.run(main()) == [1000 + i for i in range(100)]


SIZE = 20 * 1024 * 1024


def test_large_upload_and_download_checksums(h2proxy: Proxy) -> None:
    payload = (bytes(range(251)) * (SIZE // 251 + 1))[:SIZE]
    with h2_client() as c:
        up = c.post(h2proxy.url + "/stream-sha", content=payload)
        assert up.status_code == 200
        assert up.json() == {"body_len": SIZE, "body_sha256": hashlib.sha256(payload).hexdigest()}
        # The origin reads slowly: the stream's window is withheld while it catches up.
        slow = c.post(h2proxy.url + "/slow-sha", content=payload[: 4 * 1024 * 1024])
        assert slow.json()["body_sha256"] == hashlib.sha256(payload[: 4 * 1024 * 1024]).hexdigest()
        for kind in ("bytes", "chunked"):
            h = hashlib.sha256()
            n = 0
            with c.stream("GET", h2proxy.url + f"/{kind}/{SIZE}") as r:
                assert r.status_code == 200 and r.http_version == "HTTP/2"
                for piece in r.iter_bytes():
                    n += len(piece)
                    h.update(piece)
            assert (n, h.hexdigest()) == (SIZE, pattern_sha(SIZE))


def test_nghttp_upload_download(h2proxy: Proxy, tmp_path: Path) -> None:
    src = tmp_path / "up.bin"
    data = (bytes(range(256)) * 4096) * 20  # 20 MiB
    src.write_bytes(data)
    out = subprocess.run(["nghttp", "-d", str(src), h2proxy.url + "/stream-sha"], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["body_sha256"] == hashlib.sha256(data).hexdigest()
    down = subprocess.run(["nghttp", h2proxy.url + f"/bytes/{SIZE}"], capture_output=True, timeout=60)
    assert down.returncode == 0
    assert hashlib.sha256(down.stdout).hexdigest() == pattern_sha(SIZE)


def test_slow_reader_backpressures_the_upstream(h2proxy: Proxy) -> None:
    """A client with a huge window that stops reading: the proxy's socket buffer fills, the
    stream stops asking the origin for more, and the worker does not hold the body."""
    size = 50 * 1024 * 1024
    (pid,) = h2proxy.workers()
    before = proc_status_kb(pid, "VmRSS")
    c = RawH2(h2proxy.address, window=2**31 - 1)
    try:
        c.request(1, f"/bytes/{size}")
        head = c.until(HeadersFrame, 1)
        assert (b":status", b"200") in head.decoded  # type: ignore[attr-defined]
        # Stall: without backpressure the origin's 50 MB would pile up in the worker
        # within this second (loopback moves it in a fraction of that).
        time.sleep(1.0)
        stalled_kb = proc_status_kb(pid, "VmRSS") - before
        h = hashlib.sha256()
        n = 0
        while True:
            f = c.until(DataFrame, 1)
            h.update(f.data)
            n += len(f.data)
            if "END_STREAM" in f.flags:
                break
    finally:
        c.close()
    assert (n, h.hexdigest()) == (size, pattern_sha(size))
    assert stalled_kb < 30 * 1024, f"the worker grew by {stalled_kb} KiB while the client stalled"


def test_http1_still_served_on_the_same_listener(h2proxy: Proxy) -> None:
    with httpx.Client(trust_env=False) as c:
        r = c.get(h2proxy.url + "/echo")
    assert r.status_code == 200 and r.http_version == "HTTP/1.1"


def test_h2c_upgrade_is_answered_over_http1(h2proxy: Proxy) -> None:
    # curl --http2 on http:// asks for the deprecated h2c upgrade (RFC 9113 §3.1): it names
    # the client's hop only, so it is neither honoured nor forwarded to the origin.
    out = subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "--http2", "-w", "\n%{http_version}", h2proxy.url + "/echo"],
        capture_output=True,
        timeout=60,
        text=True,
    )
    body, _, version = out.stdout.rpartition("\n")
    assert version == "1.1", out.stdout + out.stderr
    names = {n for n, _ in headers_of(json.loads(body))}
    assert not names & {"upgrade", "connection", "http2-settings"}


def test_preface_split_across_reads(h2proxy: Proxy, raw: list[RawH2]) -> None:
    host, _, port = h2proxy.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(PREFACE), 5):
            s.sendall(PREFACE[i : i + 5])
            time.sleep(0.01)  # separate segments, so the server reads the preface in pieces
        s.sendall(SettingsFrame(0).serialize())
        first = s.recv(9)
    assert first[3] == 0x4  # the server's SETTINGS: it took the connection as HTTP/2


def test_ping_is_answered(h2proxy: Proxy, raw: list[RawH2]) -> None:
    c = open_raw(raw, h2proxy.url.removeprefix("http://"))
    c.send(PingFrame(0, opaque_data=b"12345678").serialize())
    while True:
        f = c.until(PingFrame)
        if "ACK" in f.flags:
            break
    assert f.opaque_data == b"12345678"


PROXY_PROTOCOL_CONFIG = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"
proxy_protocol = "v1"

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


def test_h2c_behind_a_proxy_protocol_header(proxy: ProxyFactory, origin: Origin, codec: str) -> None:
    p = proxy(PROXY_PROTOCOL_CONFIG, origin=origin.url, env={"MONOLAKE_H2_CODEC": codec})
    host, _, port = p.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        s.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n")
        c = RawH2.__new__(RawH2)
        c.sock, c.buf, c.encoder, c.decoder = s, b"", hpack.Encoder(), hpack.Decoder()
        c.send(PREFACE + SettingsFrame(0).serialize())
        c.request(1, "/echo")
        body = b""
        while True:
            f = c.until(DataFrame, 1)
            body += f.data
            if "END_STREAM" in f.flags:
                break
    assert ["x-forwarded-for", "203.0.113.7"] in [[k.lower(), v] for k, v in json.loads(body)["headers"]]


# -- limits and defenses --------------------------------------------------------------


def test_stream_limit_refuses_streams_beyond(h2proxy: Proxy, raw: list[RawH2], codec: str) -> None:
    c = open_raw(raw, h2proxy.servers["small"])
    for sid in (1, 3, 5):  # the limit is 2; sent before reading the server's SETTINGS
        c.request(sid, "/delay/0.5")
    if codec == "h2":
        # The h2 library treats a stream beyond the limit as a connection error
        # (GOAWAY PROTOCOL_ERROR) where RFC 9113 §5.1.2 asks for a stream error: the
        # client loses its connection, the worker goes on.
        frames = c.frames_until_closed()
        goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
        assert goaways and goaways[-1].error_code == 0x1
        still_serves(h2proxy, "small")
        return
    reset = c.until(RstStreamFrame, 5)
    assert reset.error_code == REFUSED_STREAM
    for sid in (1, 3):
        h = c.until(HeadersFrame, sid)
        assert (b":status", b"200") in h.decoded  # type: ignore[attr-defined]
    still_serves(h2proxy, "small")


def test_rapid_reset_gets_goaway_enhance_your_calm(h2proxy: Proxy, raw: list[RawH2]) -> None:
    mark = h2proxy.log.mark()
    c = open_raw(raw, h2proxy.servers["small"])
    sid = 1
    try:
        for _ in range(40):  # the bound is 20 per 10 s
            c.request(sid, "/delay/1")
            c.send(RstStreamFrame(sid, error_code=0x8).serialize())
            sid += 2
    except (BrokenPipeError, ConnectionResetError):
        pass  # it closed on us mid-burst, after its GOAWAY (still ours to read)
    frames = c.frames_until_closed()
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaways and goaways[-1].error_code == ENHANCE_YOUR_CALM
    h2proxy.log.wait_line("reset more than 20 streams", after=mark)
    still_serves(h2proxy, "small")


def test_continuation_flood_is_bounded(h2proxy: Proxy, raw: list[RawH2]) -> None:
    # Header bytes beyond max_header_list_size, in CONTINUATION frames that never end.
    c = open_raw(raw, h2proxy.servers["small"])
    block = c.headers_block("/echo")
    c.send(HeadersFrame(1, block).serialize())  # no END_HEADERS
    literal = bytes(hpack.Encoder().encode([("x-flood", "v" * 4000)]))
    try:
        for _ in range(2000):
            c.send(ContinuationFrame(1, literal).serialize())
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed on us mid-flood: what we want
    frames = c.frames_until_closed()
    assert any(isinstance(f, GoAwayFrame) and f.error_code != NO_ERROR for f in frames)
    # Empty CONTINUATION frames carry no bytes, so only their count can bound them.
    c2 = open_raw(raw, h2proxy.servers["small"])
    c2.send(HeadersFrame(1, c2.headers_block("/echo")).serialize())
    try:
        for _ in range(100000):
            c2.send(ContinuationFrame(1, b"").serialize())
    except (BrokenPipeError, ConnectionResetError):
        pass
    frames = c2.frames_until_closed()
    assert any(isinstance(f, GoAwayFrame) and f.error_code != NO_ERROR for f in frames)
    still_serves(h2proxy, "small")


def test_header_list_too_large_is_refused(h2proxy: Proxy, raw: list[RawH2]) -> None:
    c = open_raw(raw, h2proxy.servers["small"])
    c.request(1, "/echo", extra=[("x-big", "b" * 10000)])  # the limit is 8192
    f = c.frame()
    while f is not None and not (
        isinstance(f, GoAwayFrame | RstStreamFrame) or (isinstance(f, HeadersFrame) and f.stream_id == 1)
    ):
        f = c.frame()
    assert f is not None
    if isinstance(f, HeadersFrame):
        assert (b":status", b"431") in f.decoded  # type: ignore[attr-defined]
    else:
        assert f.error_code != NO_ERROR
    still_serves(h2proxy, "small")


@pytest.mark.parametrize(
    "extra",
    [
        [("connection", "keep-alive")],
        [("transfer-encoding", "chunked")],
        [("te", "gzip")],
    ],
)
def test_malformed_requests_fail_the_stream_not_the_worker(
    h2proxy: Proxy, raw: list[RawH2], extra: list[tuple[str, str]]
) -> None:
    c = open_raw(raw, h2proxy.url.removeprefix("http://"))
    c.request(1, "/echo", extra=extra)
    f = c.frame()
    while f is not None and not isinstance(f, GoAwayFrame | RstStreamFrame | HeadersFrame):
        f = c.frame()
    assert f is not None
    if isinstance(f, HeadersFrame):
        assert (b":status", b"400") in f.decoded  # type: ignore[attr-defined]
    else:
        assert f.error_code != NO_ERROR
    still_serves(h2proxy)


def test_garbage_frames_get_goaway(h2proxy: Proxy, raw: list[RawH2]) -> None:
    c = open_raw(raw, h2proxy.url.removeprefix("http://"))
    # DATA on stream 0 is a connection error (RFC 9113 §6.1); hyperframe will not build it.
    c.send(b"\x00\x00\x04\x00\x00\x00\x00\x00\x00" + b"oops")
    frames = c.frames_until_closed()
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaways and goaways[-1].error_code == 0x1  # PROTOCOL_ERROR
    still_serves(h2proxy)


def test_request_body_flow_control_window_is_returned(h2proxy: Proxy, raw: list[RawH2]) -> None:
    # A client that sends exactly what the window allows gets WINDOW_UPDATEs as the
    # origin reads, and the whole body arrives.
    c = open_raw(raw, h2proxy.url.removeprefix("http://"))
    c.request(1, "/stream-sha", end=False, extra=[("content-length", str(1024 * 1024))])
    window = 65535  # until the server's SETTINGS are seen, the default applies
    conn_window = 65535
    sent = 0
    total = 1024 * 1024
    chunk = b"z" * 16384
    while sent < total:
        n = min(len(chunk), window, conn_window, total - sent)
        if n > 0:
            f = DataFrame(1, chunk[:n])
            if sent + n == total:
                f.flags.add("END_STREAM")
            c.send(f.serialize())
            sent += n
            window -= n
            conn_window -= n
            continue
        f2 = c.frame()
        assert f2 is not None
        if isinstance(f2, WindowUpdateFrame):
            if f2.stream_id == 0:
                conn_window += f2.window_increment
            else:
                window += f2.window_increment
        elif isinstance(f2, SettingsFrame) and "ACK" not in f2.flags:
            iw = f2.settings.get(SettingsFrame.INITIAL_WINDOW_SIZE)
            if iw is not None:
                window += iw - 65535
    body = b""
    while True:
        f3 = c.frame()
        assert f3 is not None
        if isinstance(f3, DataFrame) and f3.stream_id == 1:
            body += f3.data
            if "END_STREAM" in f3.flags:
                break
    assert json.loads(body)["body_sha256"] == hashlib.sha256(b"z" * total).hexdigest()


def test_idle_connection_gets_goaway(h2proxy: Proxy, raw: list[RawH2]) -> None:
    c = open_raw(raw, h2proxy.servers["small"])  # keepalive_timeout = 2
    c.request(1, "/echo")
    frames = c.frames_until_closed(timeout=15)
    assert any(isinstance(f, HeadersFrame) and f.stream_id == 1 for f in frames)
    last = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert last and last[-1].error_code == NO_ERROR and last[-1].last_stream_id == 1


# -- TLS (ALPN) ----------------------------------------------------------------------

TLS_CONFIG = """
[runtime]
drain_timeout = 1

[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[servers.web.tls]
backend = "{backend}"
alpn = ["h2", "http/1.1"]
certificates = [{ chain = "{chain}", key = "{key}" }]

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


@pytest.mark.parametrize("backend", ["openssl", "rustls"])
def test_h2_over_tls_by_alpn(proxy: ProxyFactory, origin: Origin, codec: str, tmp_path: Path, backend: str) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    key.write_bytes(cert.private_key_pem.bytes())
    chain.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    p = proxy(TLS_CONFIG, origin=origin.url, chain=chain, key=key, backend=backend, env={"MONOLAKE_H2_CODEC": codec})
    url = f"https://{p.address}"
    ctx = ssl.create_default_context(cafile=str(cafile))
    with httpx.Client(http2=True, verify=ctx, trust_env=False, timeout=TIMEOUT) as c:
        r = c.get(url + "/echo")
        assert r.status_code == 200 and r.http_version == "HTTP/2"
        up = c.post(url + "/stream-sha", content=b"q" * 3_000_000)
        assert up.json()["body_sha256"] == hashlib.sha256(b"q" * 3_000_000).hexdigest()
    with httpx.Client(verify=ctx, trust_env=False) as c1:  # ALPN http/1.1 on the same listener
        r1 = c1.get(url + "/echo")
        assert r1.status_code == 200 and r1.http_version == "HTTP/1.1"
    load = subprocess.run(
        ["h2load", "-n", "400", "-c", "2", "-m", "20", url + "/echo"], capture_output=True, text=True, timeout=120
    )
    assert "400 succeeded, 0 failed, 0 errored, 0 timeout" in load.stdout, load.stdout + load.stderr
    assert "TLS Protocol" in load.stdout and "Application protocol: h2" in load.stdout
    if shutil.which("nghttp"):
        out = subprocess.run(["nghttp", "-nv", url + "/echo"], capture_output=True, text=True, timeout=60)
        assert "The negotiated protocol: h2" in out.stdout and ":status: 200" in out.stdout, out.stdout + out.stderr


# -- drain ----------------------------------------------------------------------------


def test_sigterm_sends_goaway_and_finishes_streams(proxy: ProxyFactory, origin: Origin, codec: str) -> None:
    p = proxy(CONFIG, origin=origin.url, env={"MONOLAKE_H2_CODEC": codec})
    c = RawH2(p.address)
    try:
        c.request(1, "/delay/1")
        origin.log.wait_line(r"REQ GET /delay/1")
        p.proc.send_signal(signal.SIGTERM)
        frames = c.frames_until_closed()
    finally:
        c.close()
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaways and goaways[0].error_code == NO_ERROR
    data = b"".join(f.data for f in frames if isinstance(f, DataFrame) and f.stream_id == 1)
    assert data == b"delayed\n"
    assert any(isinstance(f, DataFrame) and "END_STREAM" in f.flags for f in frames)
    assert p.proc.wait(TIMEOUT) == 0
