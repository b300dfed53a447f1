"""ThriftClient against thriftpy2's and Apache Thrift's servers and our own: results, declared
exceptions, oneway, timeouts, retries to another instance, balancing, many calls on one connection."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from thrift_support import (
    Handler,
    LoopThread,
    apache_module,
    apache_server,
    start_server,
    stop_server,
    thriftpy2_server,
    write_idl,
)
from thriftpy2.thrift import TApplicationException

from conftest import free_port
from monolake.apps.config import Server
from monolake.apps.rpc.thrift._server import build_server
from monolake.core.errors import ConnectError, ReadTimeout
from monolake.rpc import ThriftClient, ThriftService


class Counting(Handler):
    """Counts calls and the most in flight at once."""

    def __init__(self, oops: Any, name: str) -> None:
        super().__init__(oops)
        self.name = name
        self.calls = 0
        self.now = 0
        self.most = 0
        self.lock = threading.Lock()

    async def echo(self, msg: str) -> str:
        self.calls += 1
        return f"{self.name}:{msg}"

    async def slow(self, seconds: float, tag: str) -> str:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1
        return tag


class Env:
    def __init__(self, tmp: Path) -> None:
        self.idl = write_idl(tmp)
        self.mod = thriftpy2.load(str(self.idl), module_name="echo_client_thrift")
        self.lt = LoopThread()
        self.ours: list[tuple[Any, Any, int, Counting]] = []
        for name in ("a", "b"):
            h = Counting(self.mod.Oops, name)
            app = build_server(name, Server(listener="127.0.0.1:0"), ThriftService(self.mod.Echo, h))
            srv, port = start_server(self.lt, app)
            self.ours.append((srv, app, port, h))
        self.py_handler = SyncHandler(self.mod.Oops)
        self.py_port = free_port()
        self.py_server = thriftpy2_server(self.mod, self.py_handler, self.py_port)
        self.apache = apache_module(tmp, self.idl)
        self.ap_handler = ApacheHandler(self.apache.ttypes)
        self.ap_port, self.aph_port = free_port(), free_port()
        self.ap_server = apache_server(self.apache, self.ap_handler, self.ap_port)
        self.aph_server = apache_server(self.apache, self.ap_handler, self.aph_port, theader=True)

    def close(self) -> None:
        for srv, app, _, _ in self.ours:
            stop_server(self.lt, srv, app)
        self.lt.close()
        # The thriftpy2 and Apache servers serve in daemon threads until the process ends: both
        # raise from accept() in their thread when their socket is closed under them.


class SyncHandler(Handler):
    """thriftpy2's server calls handlers synchronously."""

    def echo(self, msg: str) -> str:  # type: ignore[override]
        return msg

    def item(self, it: Any) -> Any:  # type: ignore[override]
        if it.name == "bad":
            raise self.oops(why=f"bad item {it.id}")  # type: ignore[misc]
        it.tags = [*(it.tags or []), "seen"]
        return it


class ApacheHandler:
    def __init__(self, ttypes: Any) -> None:
        self.tt = ttypes

    def echo(self, msg: str) -> str:
        return "apache:" + msg

    def item(self, it: Any) -> Any:
        if it.name == "bad":
            raise self.tt.Oops(why="apache says no")
        return it

    def fire(self, msg: str) -> None:
        pass

    def add(self, a: int, b: int) -> int:
        return a + b

    def slow(self, seconds: float, tag: str) -> str:
        return tag

    def boom(self, why: str) -> str:
        raise RuntimeError(why)

    def meta(self, key: str) -> str:
        return key

    def nothing(self) -> None:
        return None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("rpcc"))
    yield e
    e.close()


async def test_against_thriftpy2_server(env: Env) -> None:
    async with ThriftClient(env.mod.Echo, [f"127.0.0.1:{env.py_port}"], transport="framed") as c:
        assert await c.echo("x") == "x"
        assert await c.add(2, b=3) == 5
        results = await asyncio.gather(*(c.echo(str(i)) for i in range(20)))
        assert results == [str(i) for i in range(20)]
        it = await c.item(env.mod.Item(id=4, name="n", tags=[]))
        assert it.tags == ["seen"]
        with pytest.raises(env.mod.Oops) as oops:
            await c.item(env.mod.Item(id=5, name="bad"))
        assert oops.value.why == "bad item 5"
        env.py_handler.fired_event.clear()
        await c.fire("from monolake")
        assert await asyncio.to_thread(env.py_handler.fired_event.wait, 30)
        assert "from monolake" in env.py_handler.fired


@pytest.mark.parametrize("transport", ["framed", "theader"])
async def test_against_apache_server(env: Env, transport: str) -> None:
    port = env.ap_port if transport == "framed" else env.aph_port
    async with ThriftClient(str(env.idl), [f"127.0.0.1:{port}"], transport=transport) as c:
        assert await c.echo("y") == "apache:y"
        assert await c.add(-1, -2) == -3
        assert await c.nothing() is None
        with pytest.raises(Exception) as oops:
            await c.item(c.definition.module.Item(id=1, name="bad"))
        assert type(oops.value).__name__ == "Oops" and oops.value.why == "apache says no"  # type: ignore[attr-defined]
        with pytest.raises(TApplicationException) as app_exc:
            await c.boom("no")
        assert app_exc.value.type == TApplicationException.INTERNAL_ERROR


async def test_many_calls_share_one_ttheader_connection(env: Env) -> None:
    _, _, port, h = env.ours[0]
    h.most = 0
    async with ThriftClient(env.mod.Echo, [f"127.0.0.1:{port}"], max_connections=1) as c:
        tags = await asyncio.gather(*(c.slow(0.2, f"t{i}") for i in range(30)))
        assert tags == [f"t{i}" for i in range(30)]
        assert c.statistics()["upstream_connects"] == 1
    assert h.most > 1  # the server ran them at once, on the one connection


async def test_timeout_per_call_and_per_client(env: Env) -> None:
    _, _, port, _ = env.ours[0]
    async with ThriftClient(env.mod.Echo, [f"127.0.0.1:{port}"], timeout=0.2) as c:
        with pytest.raises(ReadTimeout):
            await c.slow(30, "late")
        assert await c.call("slow", 0.3, "in time", timeout=30) == "in time"
        assert await c.echo("after") == "a:after"


async def test_a_shorter_timeout_behind_a_longer_one_on_one_connection(env: Env) -> None:
    # The connection's one timer is at the earliest deadline: a later call with a shorter timeout moves it.
    _, _, port, _ = env.ours[0]
    async with ThriftClient(env.mod.Echo, [f"127.0.0.1:{port}"], timeout=120, max_connections=1) as c:
        long = asyncio.ensure_future(c.slow(60, "long"))
        assert await c.echo("x") == "a:x"  # the long call is in flight on the same connection
        with pytest.raises(ReadTimeout):
            await asyncio.wait_for(c.call("slow", 60, "short", timeout=0.2), 30)
        assert await c.echo("after") == "a:after"
        assert c.statistics()["upstream_connections"] == 1
        long.cancel()


async def test_retries_go_to_another_instance(env: Env) -> None:
    dead = free_port()
    _, _, port, _ = env.ours[1]
    async with ThriftClient(env.mod.Echo, [f"127.0.0.1:{dead}", f"127.0.0.1:{port}"]) as c:
        answers = [await c.echo(str(i)) for i in range(6)]
        assert answers == [f"b:{i}" for i in range(6)]  # the refused endpoint's calls were retried on b
    async with ThriftClient(env.mod.Echo, [f"127.0.0.1:{dead}", f"127.0.0.1:{port}"], retries=0) as c:
        with pytest.raises(ConnectError):
            for i in range(2):
                await c.echo(str(i))


async def test_round_robin_and_fixed_address(env: Env) -> None:
    (_, _, pa, _), (_, _, pb, _) = env.ours
    async with ThriftClient(env.mod.Echo, [f"127.0.0.1:{pa}", f"127.0.0.1:{pb}"]) as c:
        got = {await c.echo("z") for _ in range(4)}
        assert got == {"a:z", "b:z"}
        assert {await c.call("echo", "w", address=f"127.0.0.1:{pb}") for _ in range(3)} == {"b:w"}


async def test_compact_protocol_against_our_server(env: Env) -> None:
    _, _, port, _ = env.ours[0]
    async with ThriftClient(env.mod.Echo, [f"127.0.0.1:{port}"], protocol="compact") as c:
        assert await c.echo("c") == "a:c"
        assert (await c.item(env.mod.Item(id=1, name="q", scores={"s": 2.0}))).scores == {"s": 2.0}


async def test_consistent_hash_keeps_a_key_on_one_instance(env: Env) -> None:
    (_, _, pa, _), (_, _, pb, _) = env.ours
    eps = [f"127.0.0.1:{pa}", f"127.0.0.1:{pb}"]
    async with ThriftClient(env.mod.Echo, eps, load_balancer="consistent_hash") as c:
        by_key = {}
        # 32 keys: the ring's points come from the (random) ports, so with a handful of keys all of
        # them could hash to one instance (seen once in 25 runs with 6).
        for key in [f"user-{i}" for i in range(32)]:
            answers = {await c.call("echo", "h", hash_key=key) for _ in range(2)}
            assert len(answers) == 1  # every call with one key went to one instance
            by_key[key] = answers.pop()
        assert set(by_key.values()) == {"a:h", "b:h"}  # and the keys are spread over both
