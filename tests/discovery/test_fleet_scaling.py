"""Running a fleet (docs/fleet.md): two monolake instances read their config from etcd and
their endpoints from one etcd prefix; the backend scales from 2 to 10 to 1 instances while
h2load runs against both: zero failed requests, every backend served some.

Backends are small HTTP/1.1 servers on one asyncio loop in a thread of the test (ten
processes would cost more than the test). A removed backend is stopped only once every
worker of both instances reports the smaller set (``monolake_upstream_endpoints`` per worker
on the admin endpoint), as an autoscaler stops an instance after its deregistration settled."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_cluster import Cluster, delete, put

from conftest import REPO, TIMEOUT, Proxy, free_port

pytestmark = pytest.mark.skipif(
    shutil.which("etcd") is None or shutil.which("h2load") is None, reason="needs etcd and h2load"
)

LOAD_SECONDS = 6

EXAMPLE = REPO / "examples" / "fleet.toml"


def fleet_config(etcd: str, admin: int, workers: int) -> str:
    """examples/fleet.toml (the guide's file) on this test's etcd and ports."""
    text = EXAMPLE.read_text()
    for old, new in (
        ("http://127.0.0.1:2379", etcd),
        ("127.0.0.1:9901", f"127.0.0.1:{admin}"),
        ("127.0.0.1:8080", "127.0.0.1:0"),
        ("workers = 0", f"workers = {workers}"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    return text


class Backends:
    """HTTP/1.1 servers answering their index, on one loop in a thread; started and stopped by index."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: dict[int, asyncio.Server] = {}
        self.ports: dict[int, int] = {}
        self.hits: dict[int, int] = {}

    def _run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)  # type: ignore[arg-type]

    def start(self, i: int) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    self.hits[i] = self.hits.get(i, 0) + 1
                    body = str(i).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        async def start() -> None:
            srv = await asyncio.start_server(serve, "127.0.0.1", 0)
            self.servers[i] = srv
            self.ports[i] = srv.sockets[0].getsockname()[1]

        self._run(start())
        return f"127.0.0.1:{self.ports[i]}"

    def stop(self, i: int) -> None:
        async def stop() -> None:
            srv = self.servers.pop(i)
            srv.close()
            srv.close_clients()  # type: ignore[attr-defined]

        async def stop311() -> None:
            srv = self.servers.pop(i)
            srv.close()

        self._run(stop() if hasattr(asyncio.Server, "close_clients") else stop311())

    def close(self) -> None:
        for i in list(self.servers):
            self.stop(i)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def healthy_per_worker(admin: int) -> list[float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=TIMEOUT) as resp:
        text = resp.read().decode()
    rx = r'monolake_upstream_endpoints\{pid="\d+",state="healthy",upstream="api"\} (\S+)'
    return [float(v) for v in re.findall(rx, text)]


def settled(admins: list[tuple[int, int]], n: int) -> None:
    """Until every worker of every instance balances over ``n`` endpoints."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        counts = [healthy_per_worker(a) for a, _ in admins]
        if all(len(c) == w and set(c) == {n} for c, (_, w) in zip(counts, admins, strict=True)):
            return
        assert time.monotonic() < deadline, f"workers did not settle on {n} endpoints: {counts}"
        time.sleep(0.05)


@pytest.fixture
def backends() -> Iterator[Backends]:
    b = Backends()
    yield b
    b.close()


def test_scale_2_to_10_to_1_under_load_with_zero_failures(tmp_path: Path, backends: Backends) -> None:
    etcd = Cluster(tmp_path / "etcd", 1)
    (tmp_path / "etcd").mkdir()
    etcd.start()
    url = etcd.urls[0]
    proxies: list[Proxy] = []
    loads: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(2):
            put(url, f"/monolake/endpoints/api/{i}", {"address": backends.start(i)})
        admins = [(free_port(), 2), (free_port(), 1)]
        for admin, workers in admins:
            put(url, f"/fleet/config/{admin}", fleet_config(url, admin, workers))
            target = url.replace("http://", "etcd://") + f"/fleet/config/{admin}"
            proxies.append(Proxy("", tmp_path, loop="uvloop", workers=None, extra_args=["-c", target]))
        settled(admins, 2)
        loads = [
            subprocess.Popen(
                ["h2load", "--h1", "-D", str(LOAD_SECONDS), "-c", "4", f"{p.url}/"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for p in proxies
        ]
        for i in range(2, 10):
            put(url, f"/monolake/endpoints/api/{i}", {"address": backends.start(i), "weight": 1})
        settled(admins, 10)
        put(url, "/monolake/endpoints/api/0", {"address": f"127.0.0.1:{backends.ports[0]}", "weight": 3})  # reweighted
        for i in range(1, 10):
            delete(url, f"/monolake/endpoints/api/{i}")
        settled(admins, 1)
        for i in range(1, 10):
            backends.stop(i)  # deregistered everywhere: the autoscaler may stop it now
        # Every step happened under load (else the machine is too slow for this test's load time).
        assert all(p.poll() is None for p in loads), f"the load ended before the scaling did ({LOAD_SECONDS}s)"
        outputs = [p.communicate(timeout=60)[0].decode() for p in loads]
    finally:
        for p in loads:
            if p.poll() is None:
                p.kill()
                p.wait()
        for proxy in proxies:
            proxy.close()
        etcd.stop()
    for out in outputs:
        m = re.search(r"(\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
        assert m, out
        done, ok, failed, errored = (int(x) for x in m.groups())
        assert done > 0 and failed == 0 and errored == 0 and ok == done, out
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        assert codes and int(codes[1]) == done, out
    assert set(backends.hits) == set(range(10)), backends.hits  # every backend got traffic
