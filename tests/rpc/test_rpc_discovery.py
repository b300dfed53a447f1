"""RPC clients on the fleet's discovery sources, in a plain asyncio program (no supervisor):
ThriftClient follows SRV records from a dnslib resolver the test starts and a watched JSON file;
GrpcClient follows a file against grpcio servers. On a change, new calls go to the new set, a
call in flight on a removed endpoint finishes, and the connection to it then closes."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from thrift_support import Handler, LoopThread, start_server, stop_server, write_idl

from monolake.apps.config import Server
from monolake.apps.rpc.thrift._server import build_server
from monolake.core.errors import ReadTimeout
from monolake.rpc import SourceDiscovery, ThriftClient, ThriftService

dnslib = pytest.importorskip("dnslib")
from dnslib import RR  # noqa: E402
from dnslib.server import BaseResolver, DNSServer  # noqa: E402


class Named(Handler):
    def __init__(self, oops: Any, name: str) -> None:
        super().__init__(oops)
        self.name = name

    async def echo(self, msg: str) -> str:
        return f"{self.name}:{msg}"

    async def slow(self, seconds: float, tag: str) -> str:
        await asyncio.sleep(seconds)
        return f"{self.name}:{tag}"


class Zone(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[str] = []

    def set(self, *lines: str) -> None:
        with self.lock:
            self.records = list(lines)

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        with self.lock:
            for rr in RR.fromZone("\n".join(self.records)) if self.records else []:
                if rr.rname == request.q.qname and rr.rtype == request.q.qtype:
                    reply.add_answer(rr)
        return reply


class _Quiet:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.mod = thriftpy2.load(str(write_idl(tmp)), module_name="echo_disc_thrift")
        self.lt = LoopThread()
        self.servers: list[tuple[Any, Any]] = []
        self.ports: dict[str, int] = {}
        for name in ("a", "b"):
            app = build_server(name, Server(listener="127.0.0.1:0"), ThriftService(self.mod.Echo, Named(None, name)))
            srv, port = start_server(self.lt, app)
            self.servers.append((srv, app))
            self.ports[name] = port
        self.zone = Zone()
        self.dns = DNSServer(self.zone, port=0, address="127.0.0.1", logger=_Quiet())
        self.dns.start_thread()
        self.dns_port = self.dns.server.server_address[1]

    def close(self) -> None:
        self.dns.stop()
        self.dns.server.server_close()
        for srv, app in self.servers:
            stop_server(self.lt, srv, app)
        self.lt.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("rpcdisc"))
    yield e
    e.close()


async def _until(pred: Any, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while not pred():
        assert loop.time() < until, what
        await asyncio.sleep(0.02)


async def _served_by(c: ThriftClient, n: int = 6) -> set[str]:
    return {(await c.echo("x")).split(":")[0] for _ in range(n)}


def _write(path: Path, addresses: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"address": a} for a in addresses]))
    tmp.rename(path)  # atomically, as consul-template does


def test_thrift_client_follows_dns_srv(env: Env) -> None:
    pa, pb = env.ports["a"], env.ports["b"]
    env.zone.set(
        f"_echo._tcp.test. 1 IN SRV 0 1 {pa} a.test.",
        "a.test. 60 IN A 127.0.0.1",
        "b.test. 60 IN A 127.0.0.1",
    )

    async def main() -> None:
        d = SourceDiscovery.dns(
            "_echo._tcp.test", record="SRV", nameservers=[f"127.0.0.1:{env.dns_port}"], min_interval=0.1
        )
        async with ThriftClient(env.mod.Echo, discovery=d, timeout=10) as c:
            assert await _served_by(c) == {"a"}
            env.zone.set(
                f"_echo._tcp.test. 1 IN SRV 0 1 {pa} a.test.",
                f"_echo._tcp.test. 1 IN SRV 0 1 {pb} b.test.",
                "a.test. 60 IN A 127.0.0.1",
                "b.test. 60 IN A 127.0.0.1",
            )
            await _until(lambda: len(d.endpoints()) == 2, "the second SRV target was not picked up")
            assert await _served_by(c) == {"a", "b"}

    asyncio.run(asyncio.wait_for(main(), 60))


def test_thrift_client_follows_a_file_and_drains(env: Env) -> None:
    path = env.tmp / "echo.json"
    a, b = f"127.0.0.1:{env.ports['a']}", f"127.0.0.1:{env.ports['b']}"
    _write(path, [a])

    async def main() -> None:
        d = SourceDiscovery.file(str(path))
        async with ThriftClient(env.mod.Echo, discovery=d, timeout=20) as c:
            assert await _served_by(c) == {"a"}
            assert c.statistics()["upstream_connections"] == 1
            (conn_a,) = next(iter(c.pool.slots.values())).conns
            slow = asyncio.ensure_future(c.slow(1.0, "in-flight"))
            await _until(lambda: c.pool.in_flight() == 1, "the slow call did not start")
            _write(path, [b])
            await _until(lambda: d.version == 2, "the file change was not seen")
            assert await _served_by(c) == {"b"}  # new calls: the new set only
            assert await slow == "a:in-flight"  # the call on the removed endpoint finished
            # ... and its connection then closed: only b's remains.
            await _until(lambda: conn_a.closed, "a's connection did not close")
            assert c.statistics()["upstream_connections"] == 1
            assert [ep.port for ep in d.endpoints()] == [env.ports["b"]]
            # A file that does not parse keeps the last good set.
            path.write_text("{not json")
            await _until(lambda: d.errors >= 1, "the bad file was not reported")
            assert await _served_by(c) == {"b"}

    asyncio.run(asyncio.wait_for(main(), 60))


def test_thrift_client_with_nothing_discovered_fails_within_its_timeout(env: Env) -> None:
    path = env.tmp / "none.json"
    _write(path, [])

    async def main() -> None:
        async with ThriftClient(env.mod.Echo, discovery=SourceDiscovery.file(str(path)), timeout=0.2) as c:
            with pytest.raises(ReadTimeout, match="no endpoint discovered"):
                await c.echo("x")

    asyncio.run(asyncio.wait_for(main(), 60))


def test_grpc_client_follows_a_file_and_drains(tmp_path: Path) -> None:
    pytest.importorskip("grpc")
    from test_grpc_client import GrpcioEcho, M, P, start_grpcio

    from monolake.rpc import GrpcClient

    servers = [start_grpcio(GrpcioEcho(n)) for n in ("a", "b")]
    path = tmp_path / "grpc.json"
    _write(path, [servers[0][1]])

    async def main() -> None:
        d = SourceDiscovery.file(str(path))
        c = GrpcClient(P, discover=d, timeout=20)
        try:

            async def who() -> str:
                reply = await c.call("Echo.Unary", M.EchoRequest(text="x"))
                return str(dict(reply.trailing_metadata)["served-by"])

            assert {await who() for _ in range(4)} == {"a"}
            slow = asyncio.ensure_future(c.unary("Echo.Unary", M.EchoRequest(text="slow", sleep=1.0)))
            await _until(lambda: c.pool.statistics()["streams"] == 1, "the slow call did not start")
            _write(path, [servers[1][1]])
            await _until(lambda: d.version == 2, "the file change was not seen")
            assert {await who() for _ in range(4)} == {"b"}
            assert (await slow).text == "slow"  # finished on the removed endpoint
            await _until(lambda: c.pool.statistics()["connections"] == 1, "a's connection did not close")
        finally:
            await c.aclose()

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        for s, _ in servers:
            s.stop(None)


@pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd (Debian's etcd-server)")
def test_thrift_client_follows_etcd(env: Env, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent.parent / "discovery"))
    from etcd_cluster import Cluster, delete, put_retrying

    etcd = Cluster(tmp_path, 1)
    etcd.start()
    try:
        url = etcd.urls[0]
        put_retrying(url, "/rpc/echo/a", {"address": f"127.0.0.1:{env.ports['a']}"})

        async def main() -> None:
            d = SourceDiscovery.etcd([url], "/rpc/echo/")
            async with ThriftClient(env.mod.Echo, discovery=d, timeout=10) as c:
                assert await _served_by(c) == {"a"}
                await asyncio.to_thread(put_retrying, url, "/rpc/echo/b", {"address": f"127.0.0.1:{env.ports['b']}"})
                await asyncio.to_thread(delete, url, "/rpc/echo/a")
                await _until(lambda: [ep.port for ep in d.endpoints()] == [env.ports["b"]], "etcd changes not seen")
                assert await _served_by(c) == {"b"}

        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        etcd.stop()
