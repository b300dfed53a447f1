"""Connection filters on tcp servers and call filters on thrift servers, through ``monolake
run`` on every loop: examples/filters/tcp_thrift.py."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest
from thrift_peers import ThriftpyServer, TTClient, TTHeaderServer, thriftpy_client
from thriftpy2.thrift import TApplicationException

from conftest import TIMEOUT, Proxy, ProxyFactory

pytestmark = pytest.mark.e2e


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.accepted += 1  # type: ignore[attr-defined]
        while data := self.request.recv(65536):
            self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.accepted = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(TIMEOUT)


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tpy() -> Iterator[ThriftpyServer]:
    server = ThriftpyServer("tpy", "binary")
    yield server
    server.close()


CONFIG = """
[servers.allowed]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstreams = [{ endpoint = "{echo}" }]
filters = [
    { use = "examples.filters.tcp_thrift:AllowList", args = { allow = ["127.0.0.1"] } },
    "examples.filters.tcp_thrift:ConnectionLog",
]

[servers.denied]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstreams = [{ endpoint = "{echo}" }]
filters = [
    { use = "examples.filters.tcp_thrift:AllowList", args = { allow = ["192.0.2.1"] } },
    "examples.filters.tcp_thrift:ConnectionLog",
]

[servers.rpc]
listener = "127.0.0.1:0"
proxy_type = "thrift"
filters = [
    { use = "examples.filters.tcp_thrift:DenyMethods", args = { methods = ["echo"] } },
    "examples.filters.tcp_thrift:CallLog",
]
[[servers.rpc.routes]]
upstreams = [{ endpoint = "{tpy}" }]

[servers.rpc_tt]
listener = "127.0.0.1:0"
proxy_type = "thrift"
filters = ["examples.filters.tcp_thrift:RequireHeader", "examples.filters.tcp_thrift:CallLog"]
[[servers.rpc_tt.routes]]
upstreams = [{ endpoint = "{tt}" }]
"""


@pytest.fixture(scope="module")
def tt() -> Iterator[TTHeaderServer]:
    server = TTHeaderServer("tt")
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxy_(module_proxy: ProxyFactory, echo: EchoServer, tpy: ThriftpyServer, tt: TTHeaderServer) -> Proxy:
    return module_proxy(CONFIG, echo=echo.address, tpy=tpy.address, tt=tt.address)


def _connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    return s


def test_tcp_on_connect_lets_a_listed_peer_through_and_on_close_sees_bytes(proxy_: Proxy) -> None:
    mark = proxy_.log.mark()
    with _connect(proxy_.servers["allowed"]) as s:
        s.sendall(b"hello, relay")  # 12 bytes up
        got = b""
        while len(got) < 12:
            data = s.recv(64)
            assert data, f"closed after {got!r}"
            got += data
        assert got == b"hello, relay"
        s.sendall(b"!")
        assert s.recv(64) == b"!"
        s.shutdown(socket.SHUT_WR)
        assert s.recv(64) == b""  # the echo server saw EOF and closed; the relay passed it on
    line = proxy_.log.wait_line(r"tcp-closed server=allowed ", after=mark).string
    assert "peer=127.0.0.1 outcome=ok up=13 down=13 endpoint=" in line


def test_tcp_on_connect_refusing_closes_before_connecting_upstream(proxy_: Proxy, echo: EchoServer) -> None:
    mark = proxy_.log.mark()
    before = echo.accepted
    with _connect(proxy_.servers["denied"]) as s:
        assert s.recv(64) == b""  # closed by the proxy, nothing sent
    proxy_.log.wait_line(r"servers\.denied: examples\.filters\.tcp_thrift:AllowList\.on_connect refused", after=mark)
    line = proxy_.log.wait_line(r"tcp-closed server=denied ", after=mark).string
    assert "outcome=refused up=0 down=0 endpoint=None" in line
    assert echo.accepted == before


def test_thrift_call_filter_refuses_a_method_and_call_done_sees_outcomes(proxy_: Proxy) -> None:
    mark = proxy_.log.mark()
    client = thriftpy_client(proxy_.servers["rpc"])
    try:
        assert client.add(2, 40) == 42
        with pytest.raises(TApplicationException) as info:
            client.echo("x")
        assert info.value.message == "method echo is not allowed here"
        assert client.add(1, 1) == 2  # the connection lives on
    finally:
        client.close()
    proxy_.log.wait_line(r"thrift: call refused: server=rpc client=127\.0\.0\.1 method=echo", after=mark)
    proxy_.log.wait_line(r"thrift-done method=echo seq=\d+ outcome=refused", after=mark)
    proxy_.log.wait_line(r"thrift-done method=add seq=\d+ outcome=ok", after=mark)
    assert proxy_.log.count(r"thrift-done method=add .*outcome=ok", after=mark) >= 1


def test_thrift_plain_call_filter_sees_ttheader_headers(proxy_: Proxy) -> None:
    mark = proxy_.log.mark()
    c = TTClient(proxy_.servers["rpc_tt"])
    try:
        assert c.call("add", headers={"RPC_PERSIST_CALLER": "svc-a"}, a=1, b=2)[0] == 3
        refused, _ = c.call("add", a=1, b=2)
        assert isinstance(refused, TApplicationException)
        assert (refused.type, refused.message) == (
            TApplicationException.PROTOCOL_ERROR,
            "RPC_PERSIST_CALLER is required",
        )
        assert c.call("add", headers={"RPC_PERSIST_CALLER": "svc-a"}, a=2, b=2)[0] == 4
    finally:
        c.close()
    proxy_.log.wait_line(r"thrift-done method=add seq=2 outcome=refused", after=mark)
    proxy_.log.wait_line(r"thrift-done method=add seq=3 outcome=ok", after=mark)
