"""A tcp server and a thrift route whose clusters use a file source follow the discovered set.

In process, the worker's real path: the discovery hub watches the files and publishes each set,
the proxy builder applies it (``on_message`` -> ``UpstreamCluster.set_endpoints``), and the tcp
server's and the thrift route's own balancers follow. After the file changes, new connections
and calls go to the new endpoint, a relayed connection opened before keeps working, a call in
flight on the removed endpoint is answered, and the thrift pool's connection to it then closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from thriftpy2.thrift import TApplicationException

sys.path.insert(0, str(Path(__file__).parent.parent / "rpc"))
from thrift_support import Handler, LoopThread, start_server, stop_server, write_idl

from monolake.apps.config import Server, parse_config
from monolake.apps.discovery import DiscoveryHub
from monolake.apps.proxy._builder import ProxyBuilder
from monolake.apps.rpc.thrift._server import build_server
from monolake.rpc import ThriftClient, ThriftService

TIMEOUT = 20.0
GATEWAY_IDL = Path(__file__).parent.parent.parent / "examples" / "gateway" / "echo.thrift"


def wait_for(pred: Any, timeout: float = TIMEOUT) -> bool:
    """Poll ``pred`` until it holds (a readiness wait)."""
    until = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > until:
            return False
        threading.Event().wait(0.02)
    return True


class Named(Handler):
    def __init__(self, name: str) -> None:
        super().__init__(None)
        self.name = name

    async def echo(self, msg: str) -> str:
        return f"{self.name}:{msg}"

    async def slow(self, seconds: float, tag: str) -> str:
        await asyncio.sleep(seconds)
        return f"{self.name}:{tag}"


class Pinged:
    """The gateway example's service; ``Ping`` answers the instance's name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.now = 0
        """Calls in progress."""

    async def Ping(self, sleep: float) -> str:
        self.now += 1
        try:
            await asyncio.sleep(sleep or 0)
        finally:
            self.now -= 1
        return self.name

    def Echo(self, req: Any) -> Any:
        raise NotImplementedError

    def Lookup(self, req: Any) -> Any:
        raise NotImplementedError


def _greeter(name: bytes) -> Any:
    """A TCP backend that says its name, then echoes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name + b"\n")
        try:
            while data := await reader.read(65536):
                writer.write(data)
        finally:
            writer.close()

    return serve


def _write(path: Path, ports: list[int]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"address": f"127.0.0.1:{p}"} for p in ports]))
    tmp.rename(path)


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.lt = LoopThread()
        self.mod = thriftpy2.load(str(write_idl(tmp)), module_name="echo_follow_thrift")
        self.closers: list[Any] = []
        self.tcp_ports: dict[str, int] = {}
        self.thrift_ports: dict[str, int] = {}
        self.gw_ports: dict[str, int] = {}
        self.pinged: dict[str, Pinged] = {}
        gw_mod = thriftpy2.load(str(GATEWAY_IDL), module_name="echo_follow_gateway_thrift")
        for name in ("a", "b"):
            self.pinged[name] = Pinged(name)
            app = build_server(
                name, Server(listener="127.0.0.1:0"), ThriftService(gw_mod.EchoService, self.pinged[name])
            )
            tsrv, port = start_server(self.lt, app)
            self.closers.append((tsrv, app))
            self.gw_ports[name] = port
            srv = self.lt.run(asyncio.start_server(_greeter(name.encode()), "127.0.0.1", 0))
            self.closers.append(srv)
            self.tcp_ports[name] = srv.sockets[0].getsockname()[1]
            app = build_server(name, Server(listener="127.0.0.1:0"), ThriftService(self.mod.Echo, Named(name)))
            tsrv, port = start_server(self.lt, app)
            self.closers.append((tsrv, app))
            self.thrift_ports[name] = port
        self.tcp_file, self.thrift_file = tmp / "tcp.json", tmp / "thrift.json"
        _write(self.tcp_file, [self.tcp_ports["a"]])
        _write(self.thrift_file, [self.thrift_ports["a"]])
        self.gw_file = tmp / "gw.json"
        _write(self.gw_file, [self.gw_ports["a"]])
        raw = {
            "upstreams": {
                "tcpc": {"discovery": {"kind": "file", "path": "tcp.json"}},
                "thr": {"discovery": {"kind": "file", "path": "thrift.json"}},
                "gwc": {"discovery": {"kind": "file", "path": "gw.json"}},
            },
            "servers": {
                "l4": {"listener": "127.0.0.1:0", "proxy_type": "tcp", "upstream": "tcpc"},
                "rpc": {"listener": "127.0.0.1:0", "proxy_type": "thrift", "routes": [{"upstream": "thr"}]},
                "gw": {
                    "listener": "127.0.0.1:0",
                    "routes": [{"upstream": "gwc", "gateway": {"idl": str(GATEWAY_IDL), "service": "EchoService"}}],
                },
            },
        }
        cfg = parse_config(raw, tmp)
        self.builder = ProxyBuilder()

        async def build() -> dict[str, Any]:
            return self.builder(cfg)

        self.apps = self.lt.run(build())
        self.hub = DiscoveryHub(cfg, lambda topic, msg: self.lt.loop.call_soon_threadsafe(self.builder.on_message, msg))
        self.hub.start()
        self.ports: dict[str, int] = {}
        for name, app in self.apps.items():

            async def listen(app: Any = app) -> Any:
                return await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0)

            srv = self.lt.run(listen())
            self.closers.append((srv, app))
            self.ports[name] = srv.sockets[0].getsockname()[1]
        # Ready once the hub's first sets reached the worker's clusters.
        assert wait_for(
            lambda: self.lt.call(lambda: all(self.cluster(n).source_endpoints for n in ("tcpc", "thr", "gwc")))
        )

    def cluster(self, name: str) -> Any:
        return self.builder._clusters[name][1]

    def close(self) -> None:
        self.hub.close()
        for c in reversed(self.closers):
            if isinstance(c, tuple):
                stop_server(self.lt, *c)
            else:
                self.lt.call(c.close)
        self.lt.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("follow"))
    yield e
    e.close()


async def _until(pred: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + TIMEOUT
    while not await pred():
        assert loop.time() < until, what
        await asyncio.sleep(0.05)


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    name = await asyncio.wait_for(reader.readline(), TIMEOUT)
    return reader, writer, name.strip()


async def _name(port: int) -> bytes:
    """The name of the backend a new relayed connection reaches."""
    _, w, name = await _open(port)
    w.close()
    await w.wait_closed()
    return name


def test_tcp_server_follows_a_file(env: Env) -> None:
    port = env.ports["l4"]

    async def main() -> None:
        async def first_is_a() -> bool:
            return await _name(port) == b"a"

        await _until(first_is_a, "the tcp server never reached a")
        reader, writer, name = await _open(port)  # relayed before the change
        assert name == b"a"
        _write(env.tcp_file, [env.tcp_ports["b"]])

        async def now_b() -> bool:
            return await _name(port) == b"b"

        await _until(now_b, "new connections did not move to b")
        assert {await _name(port) for _ in range(4)} == {b"b"}
        writer.write(b"still here\n")  # the connection to the removed endpoint goes on
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"still here\n"
        writer.close()
        await writer.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_thrift_route_follows_a_file_and_drains(env: Env) -> None:
    proxy = env.apps["rpc"].dispatcher

    async def main() -> None:
        async with ThriftClient(env.mod.Echo, [f"127.0.0.1:{env.ports['rpc']}"], timeout=TIMEOUT) as c:

            async def at_a() -> bool:
                return bool(await c.echo("x") == "a:x")

            await _until(at_a, "the thrift route never reached a")
            slow = asyncio.ensure_future(c.slow(1.0, "in-flight"))
            await _until(lambda: _in_flight(env, proxy), "the slow call did not reach a")
            (conn_a,) = [conn for s in proxy.pool.slots.values() for conn in s.conns]
            _write(env.thrift_file, [env.thrift_ports["b"]])

            async def at_b() -> bool:
                try:
                    return bool(await c.echo("x") == "b:x")
                except TApplicationException:  # the empty set below, until the next one
                    return False

            await _until(at_b, "new calls did not move to b")
            assert {await c.echo("y") for _ in range(4)} == {"b:y"}
            assert await slow == "a:in-flight"  # the call on the removed endpoint was answered

            async def a_closed() -> bool:
                return bool(conn_a.closed)

            await _until(a_closed, "the pool's connection to a did not close")
            # An empty set: calls are answered with an application error, the server stays up.
            _write(env.thrift_file, [])

            async def refused() -> bool:
                try:
                    await c.echo("x")
                except TApplicationException as exc:
                    return "has no endpoints" in str(exc)
                return False

            await _until(refused, "an empty set did not refuse calls")
            _write(env.thrift_file, [env.thrift_ports["b"]])
            await _until(at_b, "calls did not come back once the set had an endpoint again")

    asyncio.run(asyncio.wait_for(main(), 60))


async def _in_flight(env: Env, proxy: Any) -> bool:
    fut = asyncio.run_coroutine_threadsafe(_count(proxy), env.lt.loop)
    return bool(await asyncio.wrap_future(fut))


async def _count(proxy: Any) -> int:
    return int(proxy.pool.in_flight())


def test_gateway_route_follows_a_file(env: Env) -> None:
    url = f"http://127.0.0.1:{env.ports['gw']}/ping?sleep=0"

    async def main() -> None:
        async def served_by(name: str) -> bool:
            return bool(await asyncio.to_thread(_get_json, url) == name)

        await _until(lambda: served_by("a"), "the gateway route never reached a")
        slow = asyncio.ensure_future(asyncio.to_thread(_get_json, url.replace("sleep=0", "sleep=1")))
        a = env.pinged["a"]

        async def a_busy() -> bool:
            return a.now == 1

        await _until(a_busy, "the slow call did not reach a")
        _write(env.gw_file, [env.gw_ports["b"]])
        await _until(lambda: served_by("b"), "new calls did not move to b")
        assert {await asyncio.to_thread(_get_json, url) for _ in range(4)} == {"b"}
        assert await slow == "a"  # the call in flight on the removed endpoint was answered

    asyncio.run(asyncio.wait_for(main(), 60))


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
        return json.loads(resp.read())
