"""User services without the proxy: examples/services/ served from Python (``monolake.serve``)
and from TOML (``handler = "module:attr"``), with real clients, on every loop backend.

The Python side runs an example's ``main`` in a subprocess on a port-0 listener and
reads the port from the ready line, as ``conftest.Proxy`` does for ``monolake run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from conftest import READY, REPO, TIMEOUT, LineLog, Proxy, ProxyFactory, RawClient, _stop_process

EXAMPLES = REPO / "examples" / "services"

pytestmark = pytest.mark.e2e


class Served:
    """``python examples/services/NAME.py --listen 127.0.0.1:0 --loop LOOP [args]``."""

    def __init__(self, name: str, loop: str, *args: str) -> None:
        cmd = [sys.executable, str(EXAMPLES / f"{name}.py"), "--listen", "127.0.0.1:0", "--loop", loop, *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        self.log = LineLog(self.proc.stderr, f"{name}.py stderr")
        try:
            m = self.log.wait_line(READY)
        except AssertionError:
            self.close()
            raise
        self.address = m["servers"].split("=", 1)[1]
        self.url = f"http://{self.address}"

    def close(self) -> None:
        _stop_process(self.proc)
        self.log.join()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def served(loop_kind: str) -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for s in started:
        s.close()


def from_toml(proxy: ProxyFactory, directory: Path, name: str, **replace: str) -> Proxy:
    """Serve examples/services/NAME.toml with ``monolake run``; the module is copied beside
    the config (the working directory), where a handler module is looked up."""
    shutil.copy(EXAMPLES / f"{name}.py", directory / f"{name}.py")
    text = (EXAMPLES / f"{name}.toml").read_text()
    text = text.replace('listener = "127.0.0.1:8080"', 'listener = "127.0.0.1:0"')
    text = text.replace('listener = "127.0.0.1:7000"', 'listener = "127.0.0.1:0"')
    for old, new in replace.items():
        text = text.replace(old, new)
    return proxy(text)


# -- HTTP: hello_stream ------------------------------------------------------------------


def check_hello(url: str, log: LineLog) -> None:
    with httpx.Client(base_url=url, timeout=TIMEOUT) as c:
        assert c.get("/count").text == "1\n"
        r = c.get("/stream")
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.text == "".join(f"chunk {i}\n" for i in range(5))
        assert c.post("/echo", content=b"x" * 100_000).content == b"x" * 100_000
        # SSE: each event arrives as it is sent; the next one waits for /release.
        with c.stream("GET", "/events") as events:
            assert events.headers["content-type"] == "text/event-stream"
            lines = events.iter_lines()
            assert next(lines) == "data: hello"
            assert next(lines) == ""
            for i in (1, 2):
                with httpx.Client(base_url=url, timeout=TIMEOUT) as other:
                    assert other.post("/release").status_code == 204
                assert next(lines) == f"data: event {i}"
                assert next(lines) == ""
        mark = log.mark()
        r = c.get("/fail")
        assert r.status_code == 500
        line = log.wait_line(r"500 for GET /fail .*server=hello handler=\S+ failed: RuntimeError", after=mark)
        assert "upstream" not in line.string
    # The same streamed body over HTTP/2 (h2c, prior knowledge), as DATA frames.
    out = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-w", "%{http_version}", f"{url}/stream"],
        capture_output=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert out.stdout == b"".join(b"chunk %d\n" % i for i in range(5)) + b"2"


def test_http_service_from_python(served: list[Served], loop_kind: str) -> None:
    s = Served("hello_stream", loop_kind)
    served.append(s)
    check_hello(s.url, s.log)


def test_http_service_from_toml(proxy: ProxyFactory, tmp_path: Path) -> None:
    p = from_toml(proxy, tmp_path, "hello_stream", **{"request_timeout = 30": "request_timeout = 1"})
    check_hello(p.url, p.log)
    # The handler's own deadline: 503 and "handler timed out", not a 504 upstream timeout.
    mark = p.log.mark()
    r = httpx.get(f"{p.url}/slow", timeout=TIMEOUT)
    assert r.status_code == 503
    p.log.wait_line(
        r"503 for GET /slow .*server=hello handler=hello_stream:HelloFactory: handler timed out", after=mark
    )


def count(url: str) -> int:
    return int(httpx.get(f"{url}/count", timeout=TIMEOUT).text)


def test_reload_keeps_state_from_python(served: list[Served], loop_kind: str) -> None:
    if loop_kind != "uvloop":
        pytest.skip("the runtime's reload is the same on every loop")
    s = Served("hello_stream", loop_kind)
    served.append(s)
    assert [count(s.url) for _ in range(3)] == [1, 2, 3]
    mark = s.log.mark()
    s.proc.send_signal(signal.SIGHUP)
    s.log.wait_line(r"reload \d+ \(SIGHUP\) done: rebuilt=hello", after=mark)
    assert count(s.url) == 4


def test_reload_keeps_state_from_toml(proxy: ProxyFactory, tmp_path: Path, loop_kind: str) -> None:
    if loop_kind != "uvloop":
        pytest.skip("the runtime's reload is the same on every loop")
    p = from_toml(proxy, tmp_path, "hello_stream")
    assert [count(p.url) for _ in range(3)] == [1, 2, 3]
    # Unchanged config and module: the app stays as it is.
    mark = p.log.mark()
    p.proc.send_signal(signal.SIGHUP)
    p.log.wait_line(r"reload \d+ \(SIGHUP\) done: unchanged=hello", after=mark)
    assert count(p.url) == 4
    # A changed server and a changed handler module: rebuilt with make(old), the new code
    # serves and the count goes on.
    module = tmp_path / "hello_stream.py"
    module.write_text(module.read_text().replace('b"%d\\n" % self.count', 'b"%d (v2)\\n" % self.count'))
    p.config_path.write_text(p.config_path.read_text().replace("request_timeout = 30", "request_timeout = 20"))
    mark = p.log.mark()
    p.proc.send_signal(signal.SIGHUP)
    p.log.wait_line(r"reload \d+ \(SIGHUP\) done: changed=hello", after=mark)
    assert httpx.get(f"{p.url}/count", timeout=TIMEOUT).text == "5 (v2)\n"


# -- TCP: echo_tcp -------------------------------------------------------------------------


def check_echo(address: str | Path, *, tls: ssl.SSLContext | None = None) -> None:
    asyncio.run(asyncio.wait_for(_echo(address, tls), TIMEOUT))


async def _echo(address: str | Path, tls: ssl.SSLContext | None) -> None:
    # One thread, reading and writing at once: an SSLSocket must not be read in one thread while
    # another writes it (OpenSSL's connection object is not thread-safe; it read "closed early").
    name = "localhost" if tls is not None else None
    if isinstance(address, Path):
        reader, writer = await asyncio.open_unix_connection(str(address), ssl=tls, server_hostname=name)
    else:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), ssl=tls, server_hostname=name)
    try:
        greeting = await reader.readline()
        assert greeting.startswith(b"hello ") and b"connection 1\n" in greeting
        payload = os.urandom(3_000_000)  # more than the socket buffers: the service's drain() waits
        writer.write(payload)
        sender = asyncio.ensure_future(writer.drain())
        got = await reader.readexactly(len(payload))  # IncompleteReadError if it closed early
        await sender
        assert got == payload
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def test_tcp_service_from_python(served: list[Served], loop_kind: str) -> None:
    s = Served("echo_tcp", loop_kind)
    served.append(s)
    check_echo(s.address)


def test_tcp_service_from_toml_on_unix(proxy: ProxyFactory, tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    p = from_toml(proxy, tmp_path, "echo_tcp", **{'listener = "127.0.0.1:0"': f'listener = "unix:{path}"'})
    assert p.servers["echo"]
    check_echo(path)


TlsFiles = tuple[trustme.CA, Path, Path]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    d = tmp_path_factory.mktemp("certs")
    chain, key = d / "chain.pem", d / "key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return ca, chain, key


def client_ctx(ca: trustme.CA, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def test_tcp_service_over_tls(
    served: list[Served],
    loop_kind: str,
    proxy: ProxyFactory,
    tmp_path: Path,
    tls_files: TlsFiles,
) -> None:
    ca, chain, key = tls_files
    ctx = client_ctx(ca)
    s = Served("echo_tcp", loop_kind, "--cert", str(chain), "--key", str(key))
    served.append(s)
    check_echo(s.address, tls=ctx)
    s.close()  # the client's close_notify seen and the worker stopped: what it logged is all there
    assert not s.log.count("eof_received"), s.log.text  # no half-close on TLS, and no warning about one
    tls = f'\n[servers.echo.tls]\ncertificates = [{{ chain = "{chain}", key = "{key}" }}]\n'
    shutil.copy(EXAMPLES / "echo_tcp.py", tmp_path / "echo_tcp.py")
    text = (EXAMPLES / "echo_tcp.toml").read_text().replace("127.0.0.1:7000", "127.0.0.1:0") + tls
    p = proxy(text)
    check_echo(p.address, tls=ctx)


# -- a custom Layer ----------------------------------------------------------------------


def check_layer(url: str) -> None:
    with httpx.Client(base_url=url, timeout=TIMEOUT) as c:
        seen = [c.get("/").headers["x-request-count"] for _ in range(3)]
        assert seen == ["1", "2", "3"]
        assert c.get("/").text == "hi\n"


def test_layer_from_python_and_toml(served: list[Served], loop_kind: str, proxy: ProxyFactory, tmp_path: Path) -> None:
    s = Served("layer", loop_kind)
    served.append(s)
    check_layer(s.url)
    check_layer(from_toml(proxy, tmp_path, "layer").url)


# -- backpressure on a streamed body -------------------------------------------------------

FLOOD = """
from monolake import Headers, Response


class Flood:
    def __init__(self) -> None:
        self.produced = 0
        self.closed = 0

    async def __call__(self, req):
        if req.path == b"/stats":
            return Response(200, Headers(), b"%d %d" % (self.produced, self.closed))
        return Response(200, Headers(), self.chunks())

    async def chunks(self):
        try:
            while self.produced < 4000:  # 250 MiB: what an unpaused iterator would reach
                self.produced += 1
                yield b"x" * 65536
        finally:
            self.closed += 1
"""


def test_a_client_that_does_not_read_stops_the_iterator(proxy: ProxyFactory, tmp_path: Path) -> None:
    (tmp_path / "flood.py").write_text(FLOOD)
    p = proxy('[servers.web]\nlistener = "127.0.0.1:0"\nhandler = "flood:Flood"\n')

    def stats() -> tuple[int, int]:
        produced, closed = httpx.get(f"{p.url}/stats", timeout=TIMEOUT).text.split()
        return int(produced), int(closed)

    with RawClient(p.address, rcvbuf=65536) as client:
        client.send(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        client.read_head()
        # Wait until the producer stops (paused by the full transport), polling its count.
        seen: list[int] = []
        deadline = time.monotonic() + TIMEOUT
        while (len(seen) < 5 or len(set(seen[-5:])) > 1) and time.monotonic() < deadline:
            seen.append(stats()[0])
            time.sleep(0.05)  # polling a condition: the producer's count settling
        assert seen[-1] * 65536 < 32 * 1024 * 1024, f"{seen[-1]} chunks made for a client that reads nothing"
    # The client went away: the iterator is cancelled and its finally runs.
    deadline = time.monotonic() + TIMEOUT
    while stats()[1] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats()[1] == 1


BROKEN = """
from monolake import Headers, Response


async def broken(req):
    async def chunks():
        yield b"first\\n"
        raise ValueError("the stream broke")

    return Response(200, Headers(), chunks())
"""


def test_a_body_failing_mid_stream_is_the_handlers_not_an_upstreams(proxy: ProxyFactory, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    p = proxy('[servers.web]\nlistener = "127.0.0.1:0"\nhandler = "broken:broken"\n')
    mark = p.log.mark()
    with RawClient(p.address) as client:
        client.send(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        head = client.read_head()
        assert head.status == 200
        assert b"first\n" in client.read_until_close()  # chunked, never terminated: closed instead
    p.log.wait_line(r"server=web handler=broken:broken: response body failed mid-stream: ValueError", after=mark)
    p.log.wait_line(r"response body failed mid-response: GET /b", after=mark)
    assert not p.log.count("upstream", after=mark)


def test_http_service_over_tls_and_http2(proxy: ProxyFactory, tmp_path: Path, tls_files: TlsFiles) -> None:
    ca, chain, key = tls_files
    ctx = client_ctx(ca, ["h2", "http/1.1"])
    certs = f'certificates = [{{ chain = "{chain}", key = "{key}" }}]\nalpn = ["h2", "http/1.1"]\n'
    tls = "\n[servers.hello.tls]\n" + certs
    shutil.copy(EXAMPLES / "hello_stream.py", tmp_path / "hello_stream.py")
    text = (EXAMPLES / "hello_stream.toml").read_text().replace("127.0.0.1:8080", "127.0.0.1:0") + tls
    p = proxy(text)
    url = f"https://localhost:{p.address.rsplit(':', 1)[1]}"
    with httpx.Client(base_url=url, http2=True, verify=ctx, timeout=TIMEOUT) as c:
        r = c.get("/stream")
        assert r.http_version == "HTTP/2"
        assert r.text == "".join(f"chunk {i}\n" for i in range(5))
        with c.stream("GET", "/events") as events:
            lines = events.iter_lines()
            assert next(lines) == "data: hello"  # sent before the next event exists


def test_a_stream_in_flight_is_served_through_a_stop(served: list[Served], loop_kind: str) -> None:
    s = Served("echo_tcp", loop_kind)
    served.append(s)
    host, port = s.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"hello ")
        mark = s.log.mark()
        s.proc.send_signal(signal.SIGTERM)
        s.log.wait_line(r"worker 0 draining", after=mark)
        sock.sendall(b"still here\n")  # the service keeps its connection while the worker drains
        assert f.readline() == b"still here\n"
        f.close()
    assert s.proc.wait(TIMEOUT) == 0  # the client closed: the drain ends without the timeout
    assert not s.log.count(r"closing requests still in flight", after=mark)


def greeting(address: str) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock, sock.makefile("rb") as f:
        return f.readline()


def test_a_tcp_handler_keeps_state_across_a_changed_reload(proxy: ProxyFactory, tmp_path: Path, loop_kind: str) -> None:
    if loop_kind != "uvloop":
        pytest.skip("the runtime's reload is the same on every loop")
    p = from_toml(proxy, tmp_path, "echo_tcp")
    assert greeting(p.address).endswith(b"connection 1\n")
    p.config_path.write_text(p.config_path.read_text() + "backlog = 512\n")
    mark = p.log.mark()
    p.proc.send_signal(signal.SIGHUP)
    p.log.wait_line(r"reload \d+ \(SIGHUP\) done: changed=echo", after=mark)  # rebuilt with make(old), adopted
    assert greeting(p.address).endswith(b"connection 2\n")
