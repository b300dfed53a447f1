"""TLS on ``proxy_type = "thrift"`` servers, over real sockets through ``monolake run``: a thriftpy2
client over TLS to a TLS listener in front of a plain thriftpy2 server, a plain client in front of a
thriftpy2 server that speaks only TLS, TLS on both sides, and an upstream whose certificate does not
verify (the call is answered with a TApplicationException and the failure logged).

Each runs on both TLS backends (openssl, rustls: the proxy's listener and upstream side) and every
loop kind. Peers come from tests/e2e/thrift_peers.py; the TLS server is thriftpy2's TThreadedServer
over its TSSLServerSocket.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trustme
from thrift_peers import Handler, ThriftpyServer, Upstream, _Counting, _Stop, calc
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.server import TThreadedServer
from thriftpy2.thrift import TApplicationException, TProcessor
from thriftpy2.transport import TFramedTransportFactory, TSocket, TSSLServerSocket

from conftest import TIMEOUT, Proxy, ProxyFactory

pytestmark = pytest.mark.e2e


class _TlsSock(_Counting, TSSLServerSocket):
    def listen(self) -> None:
        if self.sock is None:
            super().listen()

    def accept(self) -> Any:
        raw, _ = self.sock.accept()
        if self.stopped:  # the wake-up connection of Upstream.close: no handshake to wait for
            raw.close()
            self.close()
            raise _Stop
        self.accepted += 1
        try:
            return TSocket(sock=self.ssl_context.wrap_socket(raw, server_side=True))
        except (ssl.SSLError, OSError):
            raw.close()
            raise


class TlsThriftpyServer(Upstream):
    """The Calc service over framed binary Thrift inside TLS."""

    def __init__(self, name: str, ctx: ssl.SSLContext) -> None:
        self.handler = Handler(name)
        sock = _TlsSock(host="127.0.0.1", port=0, client_timeout=0, ssl_context=ctx)
        sock.listen()
        self._sock = sock
        self.port = sock.sock.getsockname()[1]
        server = TThreadedServer(
            TProcessor(calc.Calc, self.handler),
            sock,
            iprot_factory=TBinaryProtocolFactory(),
            itrans_factory=TFramedTransportFactory(),
            daemon=True,
        )
        self._start(server.serve)


def write_cert(cert: trustme.LeafCert, directory: Path, stem: str) -> tuple[Path, Path]:
    chain, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    key.write_bytes(cert.private_key_pem.bytes())
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return chain, key


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("thrift-tls-certs")
    chain, key = write_cert(ca.issue_cert("127.0.0.1"), d, "listener")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return {"chain": chain, "key": key, "cafile": d / "ca.pem"}


@pytest.fixture(scope="module")
def ups(ca: trustme.CA) -> Iterator[dict[str, Upstream]]:
    good = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("up.example").configure_cert(good)
    rogue = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(rogue)  # a CA the proxy does not trust
    started: dict[str, Upstream] = {
        "plain": ThriftpyServer("plain"),
        "secure": TlsThriftpyServer("secure", good),
        "rogue": TlsThriftpyServer("rogue", rogue),
    }
    yield started
    for up in started.values():
        up.close()


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

[upstreams.rogue]
endpoints = [{ endpoint = "{rogue}" }]

[upstreams.rogue.tls]
backend = "{backend}"
ca = "{cafile}"

[servers.tls_in]
listener = "127.0.0.1:0"
proxy_type = "thrift"
[servers.tls_in.tls]
backend = "{backend}"
certificates = [{ chain = "{chain}", key = "{key}" }]
[[servers.tls_in.routes]]
upstream = "plain"

[servers.tls_out]
listener = "127.0.0.1:0"
proxy_type = "thrift"
[[servers.tls_out.routes]]
upstream = "secure"

[servers.tls_both]
listener = "127.0.0.1:0"
proxy_type = "thrift"
[servers.tls_both.tls]
backend = "{backend}"
certificates = [{ chain = "{chain}", key = "{key}" }]
[[servers.tls_both.routes]]
upstream = "secure"

[servers.bad_out]
listener = "127.0.0.1:0"
proxy_type = "thrift"
[[servers.bad_out.routes]]
upstream = "rogue"
"""


@pytest.fixture(scope="module")
def front(module_proxy: ProxyFactory, backend: str, certs: dict[str, Path], ups: dict[str, Upstream]) -> Proxy:
    return module_proxy(CONFIG, backend=backend, **certs, **{name: up.address for name, up in ups.items()})


def client(proxy: Proxy, server: str, ctx: ssl.SSLContext | None = None) -> Any:
    host, _, port = proxy.servers[server].rpartition(":")
    return make_client(
        calc.Calc,
        host,
        int(port),
        proto_factory=TBinaryProtocolFactory(),
        trans_factory=TFramedTransportFactory(),
        timeout=int(TIMEOUT * 1000),
        ssl_context=ctx,
    )


def tls_ctx(certs: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs["cafile"]))


def calls(c: Any, who: str) -> None:
    """A few calls on one connection: plain values, a large string, a struct, an IDL exception."""
    try:
        assert c.add(2, 40) == 42
        big = "x" * 300_000 + "end"
        assert c.echo(big) == big
        item = c.get(7)
        assert item.id == 7 and item.name == "item7"
        with pytest.raises(calc.Boom):
            c.get(-3)
        assert c.who() == who
    finally:
        c.close()


def test_tls_client_to_plain_upstream(front: Proxy, certs: dict[str, Path]) -> None:
    calls(client(front, "tls_in", tls_ctx(certs)), "plain")


def test_plain_client_to_tls_upstream(front: Proxy, ups: dict[str, Upstream]) -> None:
    before = ups["secure"].connections
    calls(client(front, "tls_out"), "secure")
    assert ups["secure"].connections > before


def test_tls_both_sides_concurrent(front: Proxy, certs: dict[str, Path]) -> None:
    def one(i: int) -> int:
        c = client(front, "tls_both", tls_ctx(certs))
        try:
            return sum(int(c.add(i, j)) for j in range(20))
        finally:
            c.close()

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == [20 * i + sum(range(20)) for i in range(8)]


def test_plaintext_to_tls_listener_is_closed(front: Proxy) -> None:
    """A plain Thrift frame on the TLS listener fails the handshake: the connection closes."""
    host, _, port = front.servers["tls_in"].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        s.sendall(b"\x00\x00\x00\x10" + b"\x80\x01\x00\x01" + b"\x00" * 12)
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        assert not data.startswith(b"\x00\x00")  # no Thrift frame: at most a TLS alert


def test_bad_upstream_certificate_is_an_application_exception(front: Proxy) -> None:
    mark = front.log.mark()
    c = client(front, "bad_out")
    try:
        with pytest.raises(TApplicationException) as info:
            c.add(1, 2)
    finally:
        c.close()
    assert info.value.type == TApplicationException.INTERNAL_ERROR
    assert "certificate verify failed" in str(info.value.message)
    front.log.wait_line(
        r"thrift: upstream connect failed: endpoint=127\.0\.0\.1:\d+: TLS handshake with \S+ failed: "
        r"certificate verify failed",
        after=mark,
    )
