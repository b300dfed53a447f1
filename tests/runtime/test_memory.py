"""Memory given back after a surge of connections: closed connections are freed at once, and the worker
trims its heap (runtime.trim_interval)."""

from __future__ import annotations

import re
import socket

import httpx
import pytest

from conftest import TIMEOUT, Origin, ProxyFactory

pytestmark = pytest.mark.e2e

CONFIG = """
[runtime]
trim_interval = 0.2

[log]
level = "debug"

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstreams = [{ endpoint = "{origin}" }]
"""

TRIMMED = re.compile(r"worker 0: heap trimmed, (\d+) KiB given back to the system")
CONNS = 800


def test_idle_connections_closed_then_heap_trimmed(proxy: ProxyFactory, origin: Origin) -> None:
    p = proxy(CONFIG, origin=origin.url)
    host, port = p.address.rsplit(":", 1)
    request = b"GET /echo HTTP/1.1\r\nHost: test.local\r\n\r\n"
    held: list[socket.socket] = []
    try:
        for _ in range(CONNS):
            s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
            held.append(s)
            s.sendall(request)
            got = b""
            while b"\r\n\r\n" not in got:
                data = s.recv(65536)
                assert data, "closed before the response"
                got += data
            assert got.startswith(b"HTTP/1.1 200 ")
        mark = p.log.mark()
    finally:
        for s in held:
            s.close()
    # The connections' memory is freed when they close (no reference cycle waits for a full
    # collection), so the heap's free space grows and the next check gives pages back.
    m = p.log.wait_line(TRIMMED, after=mark)
    assert int(m[1]) > 0
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        assert c.get(p.url + "/echo").status_code == 200
