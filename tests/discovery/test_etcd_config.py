"""Config from etcd (``monolake run --config etcd://HOST:PORT/KEY``) with real etcd and two
instances: both serve the key's config; a new config pushed to the key reaches both (a reload
each, no signal); a bad one is refused by both, which keep serving the last good one and show
the error on ``/config``."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_cluster import Cluster, put

from conftest import TIMEOUT, Origin, Proxy, free_port

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd (Debian's etcd-server)")

CONFIG = """
[runtime]
workers = 1
[admin]
listen = "127.0.0.1:{admin}"
[servers.web]
listener = "127.0.0.1:{port}"
routes = [{{ path = "/", upstreams = [{{ endpoint = "{origin}" }}] }}]
"""


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
        return resp.status, resp.read()


def until(cond: object, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("etcdcfg"), 1)
    c.start()
    yield c
    c.stop()


def test_two_instances_follow_the_key_and_refuse_a_bad_config(
    etcd: Cluster, origins: list[Origin], tmp_path: Path
) -> None:
    a, b, _ = origins
    url = etcd.urls[0]
    instances = [(free_port(), free_port()) for _ in range(2)]
    key = "/monolake/config"

    def config(port: int, admin: int, origin: Origin) -> str:
        return CONFIG.format(admin=admin, port=port, origin=origin.address)

    # Each instance has its own key here (they listen on different ports on one machine); a
    # fleet on many machines shares one.
    for i, (port, admin) in enumerate(instances):
        put(url, f"{key}/{i}", config(port, admin, a))
    target = url.replace("http://", "etcd://")
    proxies = [
        Proxy("", tmp_path, loop="uvloop", workers=None, extra_args=["-c", f"{target}{key}/{i}"])
        for i in range(len(instances))
    ]
    try:
        for p in proxies:
            assert get(p.url + "/name")[1] == b"a"
        for i, (port, admin) in enumerate(instances):
            put(url, f"{key}/{i}", config(port, admin, b))
        for p in proxies:
            until(lambda p=p: get(p.url + "/name")[1] == b"b")
            p.log.wait_line(r"reload \d+ \(etcd config key changed\) done")
        for i, (_port, admin) in enumerate(instances):
            put(url, f"{key}/{i}", config(0, admin, a).replace("routes = [", "routes = [{ path = 1 }, "))
        for p, (_port, admin) in zip(proxies, instances, strict=True):
            p.log.wait_line(r"reload \d+ \(etcd config key changed\) failed: config error")
            assert get(p.url + "/name")[1] == b"b"  # the running config stays
            doc = json.loads(get(f"http://127.0.0.1:{admin}/config")[1])
            assert doc["_source"]["url"].startswith("etcd://")
            assert "servers.web.routes[0]" in doc["_source"]["last_reload_error"]
    finally:
        for p in proxies:
            p.close()
