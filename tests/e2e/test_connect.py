"""CONNECT tunnelling (forward-proxy use) through ``monolake run``, with curl and raw sockets.

Targets run on one background asyncio loop in this process: a TCP echo server (echoes
until EOF, then half-closes) and a TLS server (trustme certificate for 127.0.0.1)
that answers one HTTP request. The aiohttp origin is a plain HTTP target.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from conftest import TIMEOUT, Origin, Proxy, ProxyFactory, RawClient, refused_port

pytestmark = pytest.mark.e2e

CONFIG = """
[runtime]
drain_timeout = 2

[log]
level = "debug"          # for the "tunnel spliced" lines
access_log = "stderr"
access_log_format = '$remote_addr "$request" $status $body_bytes_sent $bytes_received $upstream_addr $route'

[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

# A forward proxy that also forwards ordinary requests to the origin.
[servers.fwd]
listener = "127.0.0.1:0"

[[servers.fwd.routes]]
upstream = "origin"
connect = { ports = [{ports}], connect_timeout = 5 }

# The same on the event loop path only.
[servers.loop]
listener = "127.0.0.1:0"
splice = false

[[servers.loop.routes]]
connect = { ports = [{ports}] }

# CONNECT only, default ports (443).
[servers.only]
listener = "127.0.0.1:0"

[[servers.only.routes]]
connect = true

# No route enables CONNECT.
[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""

TLS_BODY = b"hello over tls\n"
FLOOD = 128 * 1024 * 1024
FLOOD_CHUNK = os.urandom(1 << 20)


class Targets:
    """The echo and TLS targets on their own loop and thread."""

    def __init__(self, ca: trustme.CA) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(ctx)
        self.blocked: queue.Queue[int] = queue.Queue()
        self.servers = asyncio.run_coroutine_threadsafe(self._start(ctx), self.loop).result(TIMEOUT)
        self.echo_port, self.tls_port, self.flood_port = (s.sockets[0].getsockname()[1] for s in self.servers)

    async def _start(self, ctx: ssl.SSLContext) -> list[asyncio.Server]:
        echo = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        flood = await asyncio.start_server(self._flood, "127.0.0.1", 0)
        tls = await asyncio.start_server(self._tls, "127.0.0.1", 0, ssl=ctx)
        return [echo, tls, flood]

    async def _flood(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Writes FLOOD bytes as fast as the connection takes them; the first time the
        # transport's buffer has to wait for the peer, reports how much was written by then.
        written = 0
        reported = False
        try:
            while written < FLOOD:
                writer.write(FLOOD_CHUNK)
                written += len(FLOOD_CHUNK)
                if not reported and writer.transport.get_write_buffer_size() > 0:
                    reported = True
                    self.blocked.put(written)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(TLS_BODY)
            writer.write(head + TLS_BODY)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            for s in self.servers:
                s.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def targets(ca: trustme.CA) -> Iterator[Targets]:
    t = Targets(ca)
    yield t
    t.close()


@pytest.fixture(scope="module")
def dead_port() -> int:
    return refused_port()


@pytest.fixture(scope="module")
def fwd(module_proxy: ProxyFactory, origin: Origin, targets: Targets, dead_port: int) -> Proxy:
    ports = ", ".join(str(p) for p in (origin.port, targets.echo_port, targets.tls_port, targets.flood_port, dead_port))
    return module_proxy(CONFIG, origin=origin.url, ports=ports)


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True, timeout=60)


def connect_head(target: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


def test_curl_tunnels_plain_http(fwd: Proxy, origin: Origin) -> None:
    mark = fwd.log.mark()
    out = curl("-p", "-x", fwd.url_of("fwd"), f"{origin.url}/echo?via=tunnel")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["path"] == "/echo?via=tunnel"
    m = fwd.log.wait_line(
        rf"tunnel closed: server=fwd client=127\.0\.0\.1 CONNECT 127\.0\.0\.1:{origin.port} up=(\d+) down=(\d+) "
        r"duration=[\d.]+s",
        after=mark,
    )
    assert int(m[1]) > 0 and int(m[2]) > 0
    fwd.log.wait_line(
        rf'127\.0\.0\.1 "CONNECT 127\.0\.0\.1:{origin.port} HTTP/1\.1" 200 {m[2]} {m[1]} 127\.0\.0\.1:{origin.port} 0',
        after=mark,
    )


def test_curl_tunnels_https(fwd: Proxy, targets: Targets, ca: trustme.CA, tmp_path: Path) -> None:
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    out = curl("--cacert", str(cafile), "-p", "-x", fwd.url_of("fwd"), f"https://127.0.0.1:{targets.tls_port}/")
    assert out.returncode == 0, out.stderr
    assert out.stdout == TLS_BODY


def test_raw_socket_tunnel_with_half_close(fwd: Proxy, targets: Targets) -> None:
    with RawClient(fwd.servers["fwd"]) as c:
        c.send(connect_head(f"127.0.0.1:{targets.echo_port}"))
        resp = c.read_head()
        assert (resp.status, resp.reason) == (200, "Connection Established")
        assert resp.header("Content-Length") is None and resp.header("Transfer-Encoding") is None
        c.send(b"ping\n")
        c.sock.shutdown(socket.SHUT_WR)  # our EOF reaches the target, which then half-closes too
        assert c.read_until_close() == b"ping\n"


def test_bytes_sent_right_behind_the_connect_head_are_relayed(fwd: Proxy, targets: Targets) -> None:
    with RawClient(fwd.servers["fwd"]) as c:
        c.send(connect_head(f"127.0.0.1:{targets.echo_port}") + b"early bytes")
        assert c.read_head().status == 200
        c.sock.shutdown(socket.SHUT_WR)
        assert c.read_until_close() == b"early bytes"


def test_client_half_close_before_the_answer_is_passed_on(fwd: Proxy, targets: Targets) -> None:
    with RawClient(fwd.servers["fwd"]) as c:
        c.send(connect_head(f"127.0.0.1:{targets.echo_port}") + b"all I have")
        c.sock.shutdown(socket.SHUT_WR)  # before the 200: the proxy holds this EOF for the tunnel
        assert c.read_head().status == 200
        assert c.read_until_close() == b"all I have"


def read_all(c: RawClient) -> bytes:
    parts = [c.buf]
    c.buf = b""
    while data := c.sock.recv(1 << 20):
        parts.append(data)
    return b"".join(parts)


@pytest.mark.parametrize("server", ["fwd", "loop"])
def test_large_transfer_both_ways(fwd: Proxy, targets: Targets, loop_kind: str, server: str) -> None:
    # "fwd" moves to os.splice after 1 MiB (mid-stream, both directions busy); "loop" never does.
    data = os.urandom(32 * 1024 * 1024)
    mark = fwd.log.mark()
    with RawClient(fwd.servers[server], timeout=60) as c:
        c.send(connect_head(f"127.0.0.1:{targets.echo_port}"))
        assert c.read_head().status == 200
        errors: list[BaseException] = []

        def send() -> None:
            try:
                c.sock.sendall(data)
                c.sock.shutdown(socket.SHUT_WR)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        back = read_all(c)
        sender.join(60)
    assert not errors
    assert len(back) == len(data)
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    fwd.log.wait_line(rf"tunnel closed: server={server} ", after=mark)
    spliced = fwd.log.count(rf"tunnel spliced: server={server} ", after=mark)
    # The io_uring loop's transports read ahead, so its sockets cannot leave them.
    assert spliced == (1 if server == "fwd" and loop_kind != "io_uring" else 0)


def test_ordinary_requests_on_a_connect_route_are_forwarded(fwd: Proxy) -> None:
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as client:
        r = client.get(fwd.url_of("fwd") + "/echo")
    assert r.status_code == 200 and r.json()["path"] == "/echo"


def test_connect_only_route_refuses_other_methods(fwd: Proxy) -> None:
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as client:
        r = client.get(fwd.url_of("only") + "/echo")
    assert r.status_code == 405
    assert r.headers["allow"] == "CONNECT"


def test_disabled_route_is_405(fwd: Proxy, targets: Targets) -> None:
    mark = fwd.log.mark()
    with RawClient(fwd.servers["web"]) as c:
        c.send(connect_head(f"127.0.0.1:{targets.echo_port}"))
        resp = c.read_response()
        assert resp.status == 405
        assert c.is_closed()
    refused = rf"CONNECT 127\.0\.0\.1:{targets.echo_port} refused: server=web route=0 does not enable"
    fwd.log.wait_line(refused, after=mark)


def test_disallowed_port_is_403(fwd: Proxy, targets: Targets) -> None:
    mark = fwd.log.mark()
    with RawClient(fwd.servers["only"]) as c:
        c.send(connect_head(f"127.0.0.1:{targets.echo_port}"))
        resp = c.read_response()
        assert resp.status == 403
        assert c.is_closed()
    fwd.log.wait_line(rf"port {targets.echo_port} is not allowed \(connect.ports = \[443\]\)", after=mark)


def test_dead_target_is_502(fwd: Proxy, dead_port: int) -> None:
    mark = fwd.log.mark()
    out = curl("-p", "-x", fwd.url_of("fwd"), f"http://127.0.0.1:{dead_port}/")
    assert out.returncode != 0
    assert b"CONNECT tunnel failed, response 502" in out.stderr, out.stderr
    with RawClient(fwd.servers["fwd"]) as c:
        c.send(connect_head(f"127.0.0.1:{dead_port}"))
        assert c.read_response().status == 502
    failed = rf"502 for CONNECT 127\.0\.0\.1:{dead_port} .*ConnectError: CONNECT to 127\.0\.0\.1:{dead_port}"
    fwd.log.wait_line(failed, after=mark)


@pytest.mark.parametrize("target", ["/path", "no-port", "127.0.0.1:notaport", "127.0.0.1:0"])
def test_malformed_target_is_400(fwd: Proxy, target: str) -> None:
    with RawClient(fwd.servers["fwd"]) as c:
        c.send(connect_head(target))
        assert c.read_response().status == 400
        assert c.is_closed()


def test_backpressure_toward_a_client_that_does_not_read(fwd: Proxy, targets: Targets) -> None:
    # The target can write only as fast as the client reads: while the client reads nothing, the
    # target's writes stall after what the sockets' buffers (and a bounded amount in the proxy) hold,
    # not after the whole 128 MB. Then the client reads it all.
    with RawClient(fwd.servers["fwd"], timeout=60, rcvbuf=65536) as c:
        c.send(connect_head(f"127.0.0.1:{targets.flood_port}"))
        assert c.read_head().status == 200
        stalled_at = targets.blocked.get(timeout=60)
        assert stalled_at <= 32 * 1024 * 1024, stalled_at
        assert len(read_all(c)) == FLOOD
