"""WebSocket through the proxy: an HTTP/1.1 Upgrade relayed as a byte tunnel after the 101.

The upstream is a real ``websockets`` server on a background thread of this process; the
clients are ``websockets`` clients (sync for single sockets, asyncio for many at once).
What the server saw (close codes, message sizes) goes to a queue the tests read.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import signal
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from websockets.asyncio.client import connect as aconnect
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers as WsHeaders
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse
from websockets.sync.client import connect

from conftest import TIMEOUT, Origin, Proxy, ProxyFactory, RawClient, raw_request

pytestmark = pytest.mark.e2e

CONFIG = """
[runtime]
drain_timeout = 2

[log]
access_log = "stderr"
access_log_format = '$remote_addr "$request" $status $body_bytes_sent $bytes_received $upstream_addr'

[upstreams.ws]
endpoints = [{ endpoint = "{ws}" }]

[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"
idle_timeout = {idle}

[[servers.web.routes]]
path = "/plain"
upstream = "origin"

[[servers.web.routes]]
path = "/"
upstream = "ws"
"""


class WsServer:
    """A websockets server on its own loop and thread.

    Paths: ``/echo`` echoes every message; ``/close`` closes with 4000 after the first
    message; ``/reject`` answers 403 instead of switching. Every connection's end puts
    (path, close code, messages received) on ``records``.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.records: queue.Queue[tuple[str, int | None, list[int]]] = queue.Queue()
        self.server = asyncio.run_coroutine_threadsafe(self._start(ssl_context), self.loop).result(TIMEOUT)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _start(self, ssl_context: ssl.SSLContext | None) -> object:
        return await serve(self._handle, "127.0.0.1", 0, max_size=None, process_request=self._gate, ssl=ssl_context)

    def _gate(self, conn: ServerConnection, req: WsRequest) -> WsResponse | None:
        if req.path == "/reject":
            return WsResponse(403, "Forbidden", WsHeaders({"Content-Length": "9", "X-Why": "gate"}), b"rejected\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        sizes: list[int] = []
        try:
            async for msg in ws:
                sizes.append(len(msg))
                if path == "/close":
                    await ws.close(4000, "server says bye")
                    break
                await ws.send(msg)
        except ConnectionClosed:
            pass
        finally:
            await ws.wait_closed()
            rcvd = ws.protocol.close_rcvd
            code = rcvd.code if rcvd is not None else None
            self.records.put((path, code, sizes))

    def record(self) -> tuple[str, int | None, list[int]]:
        return self.records.get(timeout=TIMEOUT)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()  # type: ignore[attr-defined]
            await self.server.wait_closed()  # type: ignore[attr-defined]

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


@pytest.fixture(scope="module")
def ws_server() -> Iterator[WsServer]:
    s = WsServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def web(module_proxy: ProxyFactory, ws_server: WsServer, origin: Origin) -> Proxy:
    return module_proxy(CONFIG, ws=ws_server.address, origin=origin.url, idle=600)


def ws_url(proxy: Proxy, path: str) -> str:
    return f"ws://{proxy.address}{path}"


def test_text_and_binary_both_ways(web: Proxy, ws_server: WsServer) -> None:
    with connect(ws_url(web, "/echo"), open_timeout=TIMEOUT) as ws:
        ws.send("hello, tunnel")
        assert ws.recv(TIMEOUT) == "hello, tunnel"
        blob = bytes(range(256)) * 4
        ws.send(blob)
        assert ws.recv(TIMEOUT) == blob
        ws.send("ünïcode ✓")
        assert ws.recv(TIMEOUT) == "ünïcode ✓"
    assert ws_server.record() == ("/echo", 1000, [13, 1024, len("ünïcode ✓")])


def test_large_message_both_ways(web: Proxy, ws_server: WsServer) -> None:
    big = os.urandom(8 * 1024 * 1024)
    with connect(ws_url(web, "/echo"), open_timeout=TIMEOUT, max_size=None) as ws:
        ws.send(big)
        back = ws.recv(60)
    assert isinstance(back, bytes)
    assert hashlib.sha256(back).digest() == hashlib.sha256(big).digest()
    assert ws_server.record() == ("/echo", 1000, [len(big)])


def test_many_concurrent_sockets(web: Proxy, ws_server: WsServer) -> None:
    n = 100

    async def one(i: int) -> list[str]:
        async with aconnect(ws_url(web, "/echo"), open_timeout=TIMEOUT) as ws:
            got = []
            for j in range(5):
                await ws.send(f"{i}-{j}")
                got.append(str(await asyncio.wait_for(ws.recv(), TIMEOUT)))
            return got

    async def main() -> list[list[str]]:
        return await asyncio.gather(*(one(i) for i in range(n)))

    results = asyncio.run(main())
    assert results == [[f"{i}-{j}" for j in range(5)] for i in range(n)]
    records = [ws_server.record() for _ in range(n)]
    # Every socket ended with a clean close seen by the server, after its five messages.
    assert sorted((path, code, len(sizes)) for path, code, sizes in records) == [("/echo", 1000, 5)] * n


def test_server_close_reaches_the_client(web: Proxy, ws_server: WsServer) -> None:
    with connect(ws_url(web, "/close"), open_timeout=TIMEOUT) as ws:
        ws.send("bye?")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(TIMEOUT)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "server says bye")
    assert ws_server.record() == ("/close", 4000, [4])


def test_client_close_reaches_the_server(web: Proxy, ws_server: WsServer) -> None:
    mark = web.log.mark()
    # A path of its own (the server echoes on it): tunnels of earlier tests on this proxy may
    # close after the mark, and a "tunnel closed" line does not name its path.
    with connect(ws_url(web, "/echo?client-close"), open_timeout=TIMEOUT) as ws:
        ws.send("one")
        assert ws.recv(TIMEOUT) == "one"
        ws.close(4001, "client says bye")
    path, code, sizes = ws_server.record()
    assert (path, code, sizes) == ("/echo?client-close", 4001, [3])
    # Both sides closed: the tunnel gets an access log line and is logged with the same byte counts.
    m = web.log.wait_line(
        rf'127\.0\.0\.1 "GET /echo\?client-close HTTP/1.1" 101 (\d+) (\d+) {ws_server.address}', after=mark
    )
    down, up = m[1], m[2]
    assert int(up) > 0 and int(down) > 0
    web.log.wait_line(rf"tunnel closed: server=web client=127\.0\.0\.1 GET \S+ up={up} down={down} ", after=mark)


def test_non_101_answer_passes_through(web: Proxy) -> None:
    with pytest.raises(InvalidStatus) as info, connect(ws_url(web, "/reject"), open_timeout=TIMEOUT):
        pass
    resp = info.value.response
    assert resp.status_code == 403
    assert resp.headers["X-Why"] == "gate"
    assert resp.body == b"rejected\n"


def test_declined_upgrade_keeps_the_connection_http(web: Proxy) -> None:
    # aiohttp does not switch for /plain/echo: it answers 200, and the request the client
    # sent right behind the upgrade request is parsed and answered on the same connection.
    upgrade = raw_request("GET", "/plain/echo", {"Connection": "Upgrade", "Upgrade": "websocket"})
    with RawClient(web.address) as c:
        c.send(upgrade + raw_request("GET", "/plain/echo?second=1"))
        first = c.read_response()
        second = c.read_response()
    assert first.status == 200 and b'"path": "/plain/echo"' in first.body.replace(b'":"', b'": "')
    assert second.status == 200 and b"second=1" in second.body


def test_ordinary_requests_still_work(web: Proxy) -> None:
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as client:
        r = client.get(web.url + "/plain/echo", headers={"Upgrade": "websocket"})  # no Connection: upgrade
    assert r.status_code == 200
    assert "upgrade" not in {k.lower() for k, _ in r.json()["headers"]}


def test_idle_tunnel_is_closed(proxy: ProxyFactory, ws_server: WsServer, origin: Origin) -> None:
    p = proxy(CONFIG, ws=ws_server.address, origin=origin.url, idle=1)
    mark = p.log.mark()
    with connect(ws_url(p, "/echo"), open_timeout=TIMEOUT, ping_interval=None) as ws:
        ws.send("x")
        assert ws.recv(TIMEOUT) == "x"
        p.log.wait_line(r"tunnel idle timeout: server=web client=127\.0\.0\.1", after=mark)
        with pytest.raises(ConnectionClosed):
            ws.recv(TIMEOUT)
    path, _code, sizes = ws_server.record()
    assert (path, sizes) == ("/echo", [1])


TLS_CONFIG = """
[runtime]
drain_timeout = 2

[upstreams.ws]
endpoints = [{ endpoint = "{ws}" }]

[servers.wss]
listener = "127.0.0.1:0"

[servers.wss.tls]
certificates = [{ chain = "{chain}", key = "{key}" }]

[[servers.wss.routes]]
path = "/"
upstream = "ws"
"""


def test_wss_through_a_tls_listener(proxy: ProxyFactory, ws_server: WsServer, tmp_path: Path) -> None:
    # The client's side of the tunnel is a TLS transport: the relay takes it over like a plain one.
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    key.write_bytes(cert.private_key_pem.bytes())
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    p = proxy(TLS_CONFIG, ws=ws_server.address, chain=chain, key=key)
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    big = os.urandom(3 * 1024 * 1024)
    with connect(f"wss://{p.address}/echo", ssl=ctx, open_timeout=TIMEOUT, max_size=None) as ws:
        ws.send("over tls")
        assert ws.recv(TIMEOUT) == "over tls"
        ws.send(big)
        assert ws.recv(60) == big
    assert ws_server.record() == ("/echo", 1000, [8, len(big)])


def test_drain_lets_a_tunnel_run_until_drain_timeout(proxy: ProxyFactory, ws_server: WsServer, origin: Origin) -> None:
    p = proxy(CONFIG, ws=ws_server.address, origin=origin.url, idle=600)
    with connect(ws_url(p, "/echo"), open_timeout=TIMEOUT) as ws:
        ws.send("before")
        assert ws.recv(TIMEOUT) == "before"
        mark = p.log.mark()
        p.proc.send_signal(signal.SIGTERM)
        p.log.wait_line(r"drain|stopping|SIGTERM", after=mark)
        # Draining: new connections are refused, this tunnel still carries messages ...
        ws.send("during")
        assert ws.recv(TIMEOUT) == "during"
        # ... until runtime.drain_timeout (2 s) ends it and the worker exits cleanly.
        assert p.proc.wait(TIMEOUT) == 0
        with pytest.raises(ConnectionClosed):
            ws.recv(TIMEOUT)
    path, _code, sizes = ws_server.record()
    assert (path, sizes) == ("/echo", [6, 6])


TLS_UPSTREAM_CONFIG = """
[runtime]
drain_timeout = 2

[upstreams.wss]
endpoints = [{ endpoint = "https://{ws}" }]

[upstreams.wss.tls]
ca = "{ca}"

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "wss"
"""


def test_ws_to_a_tls_upstream(proxy: ProxyFactory, tmp_path: Path) -> None:
    # The upstream's side of the tunnel is a TLS transport, handed over after the 101.
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = WsServer(ctx)
    try:
        p = proxy(TLS_UPSTREAM_CONFIG, ws=server.address, ca=tmp_path / "ca.pem")
        big = os.urandom(3 * 1024 * 1024)
        with connect(ws_url(p, "/echo"), open_timeout=TIMEOUT, max_size=None) as ws:
            ws.send("to tls")
            assert ws.recv(TIMEOUT) == "to tls"
            ws.send(big)
            assert ws.recv(60) == big
        assert server.record() == ("/echo", 1000, [6, len(big)])
        with connect(ws_url(p, "/close"), open_timeout=TIMEOUT) as ws:
            ws.send("bye?")
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(TIMEOUT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4000
        assert server.record() == ("/close", 4000, [4])
    finally:
        server.close()
