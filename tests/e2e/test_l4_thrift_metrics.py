"""L4 connections and Thrift calls in /metrics of the admin endpoint, through a real
proxy (2 workers: every worker's counts are summed) in front of a threaded TCP echo
server and a thriftpy2 server. Counts reach /metrics within a flush (1 s), so checks
poll (bounded) instead of expecting them at once.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx
import pytest
from thrift_peers import ThriftpyServer, calc, thriftpy_client
from thriftpy2.thrift import TApplicationException

from conftest import ProxyFactory

pytestmark = pytest.mark.e2e

T = TypeVar("T")
ADMIN_LINE = re.compile(r"admin endpoint on (http://127\.0\.0\.1:\d+)/")

CONFIG = """
[admin]
listen = "127.0.0.1:0"

[upstreams.echo]
endpoints = [{ endpoint = "{echo}" }]

[upstreams.gone]
endpoints = [{ endpoint = "{dead}" }]

[upstreams.calc]
endpoints = [{ endpoint = "{calc}" }]

[servers.relay]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "echo"

[servers.relay_dead]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "gone"

[servers.rpc]
listener = "127.0.0.1:0"
proxy_type = "thrift"
[[servers.rpc.routes]]
thrift_method = ["add", "get"]
upstream = "calc"
"""


class Echo:
    """A threaded TCP server that echoes until the client half-closes, then closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def peers() -> Iterator[tuple[Echo, ThriftpyServer]]:
    echo, tpy = Echo(), ThriftpyServer("calc")
    yield echo, tpy
    echo.close()
    tpy.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(what: str, fn: Callable[[], T | None], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last is not None and last is not False:
            return last
        time.sleep(0.05)  # polling a condition
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def sample(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def relay(address: str, payload: bytes) -> bytes:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def closed_at_once(address: str) -> bool:
    """Connect and read: the proxy closes a connection whose upstream refuses it."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True


def test_l4_and_thrift_metrics_in_admin(proxy: ProxyFactory, peers: tuple[Echo, ThriftpyServer]) -> None:
    echo, tpy = peers
    dead = f"127.0.0.1:{closed_port()}"
    p = proxy(CONFIG, workers=2, echo=echo.address, dead=dead, calc=tpy.address)
    admin = p.log.wait_line(ADMIN_LINE)[1]

    n, size = 6, 3000
    for i in range(n):
        assert relay(p.url_of("relay").removeprefix("http://"), bytes([i]) * size) == bytes([i]) * size
    for _ in range(2):
        assert closed_at_once(p.url_of("relay_dead").removeprefix("http://"))

    client = thriftpy_client(p.url_of("rpc").removeprefix("http://"))
    try:
        for i in range(5):
            assert client.add(i, 1) == i + 1
        with pytest.raises(calc.Boom):
            client.get(-3)  # a declared exception is a reply: "ok"
        with pytest.raises(TApplicationException):
            client.echo("no route")
    finally:
        client.close()

    with httpx.Client(trust_env=False, timeout=30) as c:

        def scraped() -> str | None:
            text = c.get(f"{admin}/metrics").text
            done = (
                sample(text, "monolake_l4_connections_total", server="relay") >= n
                and sample(text, "monolake_l4_connections_total", server="relay_dead") >= 2
                and sample(text, "monolake_thrift_calls_total", server="rpc") >= 7
            )
            return text if done else None

        text = poll("L4 and Thrift counts in /metrics", scraped)

    l4 = "monolake_l4_connections_total"
    assert sample(text, l4, server="relay", upstream="echo", outcome="ok") == n
    assert sample(text, l4, server="relay_dead", upstream="gone", outcome="connect_error") == 2
    assert sample(text, "monolake_l4_bytes_total", server="relay", direction="up") == n * size
    assert sample(text, "monolake_l4_bytes_total", server="relay", direction="down") == n * size
    assert sample(text, "monolake_l4_connection_duration_seconds_count", server="relay", upstream="echo") == n
    assert sample(text, "monolake_upstream_connect_errors_total", endpoint=dead) == 2

    calls = "monolake_thrift_calls_total"
    assert sample(text, calls, server="rpc", service="-", method="add", outcome="ok") == 5
    assert sample(text, calls, server="rpc", method="get", outcome="ok") == 1
    assert sample(text, calls, server="rpc", method="echo", outcome="no_route") == 1
    assert sample(text, "monolake_thrift_call_duration_seconds_count", server="rpc", method="add") == 5
    assert sample(text, "monolake_thrift_call_duration_seconds_count", server="rpc", method="echo") == 0
    # Open connections of the L4 and Thrift servers are sampled like the HTTP ones.
    assert 'monolake_active_connections{server="relay"}' in text
