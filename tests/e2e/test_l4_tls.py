"""TLS on ``proxy_type = "tcp"`` servers, over real sockets through ``monolake run``: a TLS listener
in front of a plain upstream, a plain listener in front of a TLS upstream, SNI choosing the
listener's certificate, and an upstream whose certificate does not verify.

Each runs on both TLS backends (openssl, rustls: the proxy's listener and upstream side) and every
loop kind. Every server relays with ``splice_after = 0``: a TLS side must keep the relay on the loop
path (spliced ciphertext would fail the checksums). Upstreams are asyncio servers on one background
thread: ``swap UP DOWN`` reads UP bytes while sending DOWN, then reports what it read and ends its
side; ``sink`` hashes what it gets until EOF and queues the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from conftest import TIMEOUT, Proxy, ProxyFactory, pattern, pattern_sha

pytestmark = pytest.mark.e2e

DOWN_BLOCK = hashlib.shake_256(b"monolake l4 tls downstream").digest(65536)
MB = 1 << 20


def down_pattern(n: int) -> Iterator[bytes]:
    full, rest = divmod(n, len(DOWN_BLOCK))
    for _ in range(full):
        yield DOWN_BLOCK
    if rest:
        yield DOWN_BLOCK[:rest]


def down_sha(n: int) -> str:
    h = hashlib.sha256()
    for piece in down_pattern(n):
        h.update(piece)
    return h.hexdigest()


def write_cert(cert: trustme.LeafCert, directory: Path, stem: str) -> tuple[Path, Path]:
    chain, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    key.write_bytes(cert.private_key_pem.bytes())
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return chain, key


def der_of(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def peer_cert(port: int, server_name: str | None) -> bytes:
    """The DER certificate the listener presents for ``server_name`` (None: no SNI; not verified)."""
    ctx = ssl._create_unverified_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


# -- upstreams ------------------------------------------------------------------------


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, records: queue.Queue[object]) -> None:
    tls = writer.get_extra_info("sslcontext") is not None
    cmd, *args = (await reader.readline()).split()
    h = hashlib.sha256()
    n = 0
    if cmd == b"swap":
        up_n, down_n = int(args[0]), int(args[1])

        async def send() -> None:
            for piece in down_pattern(down_n):
                writer.write(piece)
                await writer.drain()

        task = asyncio.create_task(send())
        while n < up_n and (data := await reader.read(min(1 << 18, up_n - n))):
            n += len(data)
            h.update(data)
        await task
        writer.write(f"got {n} {h.hexdigest()} tls={tls}\n".encode())
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # a half-close: the proxy passes it on as the end of the client's stream
            await reader.read()
    elif cmd == b"sink":
        while data := await reader.read(1 << 18):
            n += len(data)
            h.update(data)
        records.put((n, h.hexdigest(), tls))


class Upstreams:
    """Plain and TLS upstream servers on one asyncio loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.AbstractServer] = []
        self.records: queue.Queue[object] = queue.Queue()
        self.server_names: list[str | None] = []

    def serve(self, ctx: ssl.SSLContext | None = None) -> str:
        if ctx is not None:
            ctx.sni_callback = lambda obj, name, c: self.server_names.append(name)  # type: ignore[assignment]

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await _handle(reader, writer, self.records)
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await writer.wait_closed()

        async def start() -> str:
            # With TLS, asyncio sends its close_notify and holds the TCP connection open until the
            # peer answers with its own (here: longer than any test waits), so a relay that took only
            # the TCP FIN as the upstream's end would never see it.
            shutdown = {"ssl_shutdown_timeout": TIMEOUT * 6} if ctx is not None else {}
            srv = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=ctx, backlog=128, **shutdown)
            self.servers.append(srv)
            return f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(TIMEOUT)

    def close(self) -> None:
        async def stop() -> None:
            for srv in self.servers:
                srv.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("l4-tls-certs")
    default = ca.issue_cert("127.0.0.1", "localhost")
    a = ca.issue_cert("a.example", key_type=trustme.KeyType.ECDSA)
    chain, key = write_cert(default, d, "default")
    a_chain, a_key = write_cert(a, d, "a")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return {"dir": d, "default": default, "a": a, "chain": chain, "key": key, "a_chain": a_chain, "a_key": a_key}


@pytest.fixture(scope="module")
def upstreams(ca: trustme.CA) -> Iterator[tuple[Upstreams, dict[str, str]]]:
    ups = Upstreams()
    try:
        good = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("up.example").configure_cert(good)
        rogue = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        trustme.CA().issue_cert("127.0.0.1").configure_cert(rogue)  # signed by a CA the proxy does not trust
        yield ups, {"plain": ups.serve(), "secure": ups.serve(good), "badcert": ups.serve(rogue)}
    finally:
        ups.close()


@pytest.fixture(scope="module", params=["openssl", "rustls"])
def backend(request: pytest.FixtureRequest) -> str:
    """The TLS backend of the proxy's listener and upstream side."""
    return str(request.param)


CONFIG = """
[runtime]
drain_timeout = 1

[upstreams.plain]
endpoints = [{ endpoint = "{plain}" }]

[upstreams.secure]
endpoints = [{ endpoint = "{secure}" }]

[upstreams.secure.tls]
backend = "{backend}"
ca = "{cafile}"
sni = "up.example"

[upstreams.badcert]
endpoints = [{ endpoint = "{badcert}" }]
connect_timeout = 5

[upstreams.badcert.tls]
backend = "{backend}"
ca = "{cafile}"

[servers.tls_in]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "plain"
splice_after = 0

[servers.tls_in.tls]
backend = "{backend}"
certificates = [
  { chain = "{chain}", key = "{key}" },
  { chain = "{a_chain}", key = "{a_key}", server_names = ["a.example"] },
]

[servers.tls_out]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "secure"
splice_after = 0

[servers.bad_out]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "badcert"
"""


@pytest.fixture(scope="module")
def front(
    module_proxy: ProxyFactory,
    backend: str,
    certs: dict[str, object],
    upstreams: tuple[Upstreams, dict[str, str]],
) -> Proxy:
    _, addrs = upstreams
    d = certs["dir"]
    assert isinstance(d, Path)
    return module_proxy(CONFIG, backend=backend, cafile=d / "ca.pem", **addrs, **certs)


def port_of(proxy: Proxy, server: str) -> int:
    return int(proxy.servers[server].rpartition(":")[2])


def client_ctx(certs: dict[str, object]) -> ssl.SSLContext:
    d = certs["dir"]
    assert isinstance(d, Path)
    return ssl.create_default_context(cafile=str(d / "ca.pem"))


async def swap(
    port: int, up_n: int, down_n: int, ctx: ssl.SSLContext | None = None, server_hostname: str | None = None
) -> tuple[str, bytes, object]:
    """Send ``up_n`` bytes while reading ``down_n``; then read to EOF. Returns (sha of what came down,
    the upstream's report, the certificate the client was shown)."""
    async with asyncio.timeout(TIMEOUT * 2):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_hostname)
        obj = writer.get_extra_info("ssl_object")
        cert = obj.getpeercert(binary_form=True) if obj is not None else None
        writer.write(f"swap {up_n} {down_n}\n".encode())

        async def send() -> None:
            for piece in pattern(up_n):
                writer.write(piece)
                await writer.drain()

        task = asyncio.create_task(send())
        h = hashlib.sha256()
        got = 0
        while got < down_n:
            data = await reader.read(min(1 << 18, down_n - got))
            assert data, f"EOF after {got} of {down_n} bytes"
            got += len(data)
            h.update(data)
        report = await reader.read()  # to EOF: the upstream's end of stream reached us
        await task
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
        return h.hexdigest(), report, cert


# -- tests -------------------------------------------------------------------------------


def test_tls_client_to_plain_upstream(front: Proxy, certs: dict[str, object]) -> None:
    up_n, down_n = 3 * MB + 17, 4 * MB + 5
    sha, report, _ = asyncio.run(swap(port_of(front, "tls_in"), up_n, down_n, client_ctx(certs), "127.0.0.1"))
    assert sha == down_sha(down_n)
    assert report == f"got {up_n} {pattern_sha(up_n)} tls=False\n".encode()


def test_tls_client_close_reaches_plain_upstream(
    front: Proxy, certs: dict[str, object], upstreams: tuple[Upstreams, dict[str, str]]
) -> None:
    """The client's close_notify is the end of its stream: the upstream sees EOF after every byte."""
    ups, _ = upstreams
    n = 2 * MB + 3

    async def run() -> None:
        async with asyncio.timeout(TIMEOUT):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port_of(front, "tls_in"), ssl=client_ctx(certs), server_hostname="127.0.0.1"
            )
            writer.write(b"sink\n")
            for piece in pattern(n):
                writer.write(piece)
                await writer.drain()
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    asyncio.run(run())
    assert ups.records.get(timeout=TIMEOUT) == (n, pattern_sha(n), False)


def test_plain_client_to_tls_upstream(
    front: Proxy, upstreams: tuple[Upstreams, dict[str, str]], certs: dict[str, object]
) -> None:
    ups, _ = upstreams
    up_n, down_n = 4 * MB + 1, 3 * MB + 11
    before = len(ups.server_names)
    sha, report, _ = asyncio.run(swap(port_of(front, "tls_out"), up_n, down_n))
    assert sha == down_sha(down_n)
    assert report == f"got {up_n} {pattern_sha(up_n)} tls=True\n".encode()
    assert ups.server_names[before:] == ["up.example"]  # the cluster's tls.sni, verified against it


def test_sni_chooses_the_listener_certificate(front: Proxy, certs: dict[str, object]) -> None:
    port = port_of(front, "tls_in")
    cafile = certs["dir"]
    assert isinstance(cafile, Path)
    a, default = certs["a"], certs["default"]
    assert isinstance(a, trustme.LeafCert) and isinstance(default, trustme.LeafCert)
    assert peer_cert(port, "a.example") == der_of(a)
    assert peer_cert(port, None) == der_of(default)
    # and the relay works under the chosen certificate
    sha, report, cert = asyncio.run(swap(port, 1000, 2000, client_ctx(certs), "a.example"))
    assert cert == der_of(a) and sha == down_sha(2000)
    assert report == f"got 1000 {pattern_sha(1000)} tls=False\n".encode()


def test_bad_upstream_certificate_closes_client_and_logs(front: Proxy) -> None:
    mark = front.log.mark()
    with socket.create_connection(("127.0.0.1", port_of(front, "bad_out")), timeout=TIMEOUT) as s:
        s.sendall(b"swap 10 10\n")
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        assert data == b""  # closed without a byte from the upstream
    front.log.wait_line(
        r"l4 connect failed: server=bad_out client=127\.0\.0\.1:\d+ endpoint=\S+ cluster=badcert: "
        r"TLS handshake failed: certificate verify failed",
        after=mark,
    )


def test_failed_handshake_on_a_tcp_listener_is_one_line(front: Proxy) -> None:
    """Plain bytes to a tcp server's TLS listener: one log line with the peer, no traceback."""
    mark = front.log.mark()
    with socket.create_connection(("127.0.0.1", port_of(front, "tls_in")), timeout=TIMEOUT) as s:
        peer_port = s.getsockname()[1]
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(100)
    front.log.wait_line(
        rf"tls handshake failed from 127\.0\.0\.1:{peer_port}: .+ \(servers\.tls_in\.tls\)$", after=mark
    )
    assert not [line for line in front.log.since(mark) if "Traceback" in line]
