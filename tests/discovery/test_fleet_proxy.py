"""Discovery in a running proxy (``monolake run``, 2 workers, real origins): one source per
supervisor fanned out to every worker over the control channel; file and admin-API sets
applied without a reload; a restarted worker builds with the current set (never a 503);
``/ready``, ``/endpoints`` and the discovery metrics on the admin endpoint; systemd's notify
protocol against a real Unix datagram socket."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import TIMEOUT, Origin, Proxy, free_port

CONFIG = """
[runtime]
workers = 2
[admin]
listen = "127.0.0.1:{admin}"
ready_upstreams = ["api"]
[upstreams.api]
discovery = {{ kind = "file", path = "eps.json" }}
[upstreams.man]
endpoints = [{{ endpoint = "{a}" }}]
discovery = {{ kind = "admin" }}
[servers.web]
listener = "127.0.0.1:0"
routes = [{{ path = "/", upstream = "api" }}]
[servers.man]
listener = "127.0.0.1:0"
routes = [{{ path = "/", upstream = "man" }}]
"""


def get(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def names(url: str, n: int = 16) -> Counter[str]:
    """Which origins answer ``n`` requests, each on a new connection (so both workers serve)."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        try:
            status, body = get(url + "/name")
        except OSError as exc:  # URLError included: said in the failure message, not raised
            seen[f"error {exc}"] += 1
            continue
        seen[body.decode() if status == 200 else f"status {status}"] += 1
    return seen


def until(probe: Any, want: Any, proxy: Proxy, timeout: float = TIMEOUT) -> None:
    """Until ``probe()`` returns ``want``; the last value and the proxy's log say why not."""
    deadline = time.monotonic() + timeout
    while (got := probe()) != want:
        assert time.monotonic() < deadline, f"wanted {want!r}, last got {got!r}; proxy log:\n{proxy.log.text}"
        time.sleep(0.05)


def write_eps(path: Path, origins: list[Origin]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"address": o.address, "zone": "z1"} for o in origins]))
    os.rename(tmp, path)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, origins: list[Origin]) -> Iterator[tuple[Proxy, str, Path]]:
    d = tmp_path_factory.mktemp("fleet")
    eps = d / "eps.json"
    write_eps(eps, origins[:1])
    admin = free_port()
    proxy = Proxy(CONFIG.format(admin=admin, a=origins[0].address), d, loop="uvloop", workers=None)
    try:
        yield proxy, f"http://127.0.0.1:{admin}", eps
    finally:
        proxy.close()


def test_file_changes_reach_every_worker_without_a_reload(
    fleet: tuple[Proxy, str, Path], origins: list[Origin]
) -> None:
    proxy, admin, eps = fleet
    _a, b, c = origins
    web = proxy.url_of("web")
    until(lambda: set(names(web)), {"a"}, proxy)
    write_eps(eps, [b, c])
    until(lambda: set(names(web, 24)), {"b", "c"}, proxy)
    assert not proxy.log.count("reload")
    status, body = get(admin + "/endpoints")
    doc = json.loads(body)["upstreams"]["api"]
    assert status == 200 and doc["kind"] == "file" and doc["updates"] >= 2
    assert sorted(e["address"] for e in doc["endpoints"]) == sorted([b.address, c.address])
    assert doc["endpoints"][0]["zone"] == "z1" and doc["last_success"] is not None
    # /upstreams lists the set in force, not the config's (none) nor a removed endpoint
    listed = json.loads(get(admin + "/upstreams")[1])["upstreams"]["api"]["endpoints"]
    assert sorted(e["endpoint"] for e in listed) == sorted([b.address, c.address])


def test_admin_api_puts_drains_and_deletes(fleet: tuple[Proxy, str, Path], origins: list[Origin]) -> None:
    proxy, admin, _ = fleet
    a, b, _c = origins
    man = proxy.url_of("man")
    assert set(names(man)) == {"a"}
    status, body = get(f"{admin}/upstreams/man/endpoints/{b.address}", "PUT", b'{"weight": 2}')
    assert status == 200, body
    until(lambda: set(names(man, 24)), {"a", "b"}, proxy)
    assert get(f"{admin}/upstreams/man/endpoints/{a.address}/drain", "POST")[0] == 200
    until(lambda: set(names(man, 24)), {"b"}, proxy)
    listed = json.loads(get(admin + "/endpoints")[1])["upstreams"]["man"]["endpoints"]
    assert [(e["address"], e["draining"]) for e in listed] == [(a.address, True), (b.address, False)]
    assert get(f"{admin}/upstreams/man/endpoints/{a.address}", "DELETE")[0] == 200
    assert get(f"{admin}/upstreams/man/endpoints/{a.address}", "DELETE")[0] == 404
    assert get(f"{admin}/upstreams/nope/endpoints/{a.address}", "PUT")[0] == 404
    assert get(f"{admin}/upstreams/man/endpoints/no-port", "PUT")[0] == 400
    assert set(names(man)) == {"b"}


def test_restarted_worker_builds_with_the_current_set(fleet: tuple[Proxy, str, Path], origins: list[Origin]) -> None:
    proxy, _, eps = fleet
    c = origins[2]
    write_eps(eps, [c])
    web = proxy.url_of("web")
    until(lambda: set(names(web, 24)), {"c"}, proxy)
    mark = proxy.log.mark()
    victim = proxy.workers()[0]
    os.kill(victim, signal.SIGKILL)
    proxy.log.wait_line(r"worker \d+ restarted", after=mark)
    # The new worker never saw the file change as a message: it got the retained set at fork.
    assert names(web, 24) == Counter({"c": 24})

    # Nor does it hold the supervisor's discovery descriptors (the file source's inotify one).
    def inotify_fds(pid: int) -> int:
        fds = Path(f"/proc/{pid}/fd")
        return sum(1 for fd in fds.iterdir() if "inotify" in os.readlink(fd))

    assert inotify_fds(proxy.pid) >= 1
    assert all(inotify_fds(w) == 0 for w in proxy.workers())


def test_ready_and_metrics(fleet: tuple[Proxy, str, Path]) -> None:
    proxy, admin, _ = fleet
    until(lambda: get(admin + "/ready")[0], 200, proxy)  # once both workers sampled their clusters
    doc = json.loads(get(admin + "/ready")[1])
    assert doc["state"] == "ready" and doc["healthy_endpoints"]["api"] >= 1
    assert get(admin + "/healthz")[0] == 200
    text = get(admin + "/metrics")[1].decode()
    assert 'monolake_discovery_updates_total{source="file",upstream="api"}' in text
    assert "monolake_discovery_last_success_timestamp_seconds" in text
    assert re.search(r'monolake_upstream_endpoints\{pid="\d+",state="healthy",upstream="api"\} 1.0', text)


def test_readiness_rules() -> None:
    from types import SimpleNamespace

    from monolake.product.admin._fleet import readiness

    cfg = SimpleNamespace(admin=SimpleNamespace(ready_upstreams=["api"], ready_min_healthy=2))
    sample = SimpleNamespace(
        name="monolake_upstream_endpoints", labels={"upstream": "api", "state": "healthy"}, value=1
    )
    fams = [SimpleNamespace(samples=[sample])]
    ok, doc = readiness("ready", cfg, fams)
    assert not ok and doc["reasons"] == ["upstream api: 1 healthy endpoint(s), 2 needed"]
    sample.value = 2
    assert readiness("ready", cfg, fams)[0]
    assert not readiness("starting", cfg, fams)[0]
    assert readiness("stopping", cfg, fams)[1]["reasons"] == ["draining: the supervisor is stopping"]
    assert not readiness("ready", cfg, [])[0]  # no worker reported yet


def test_sd_notify(tmp_path: Path, origin: Origin) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(TIMEOUT)

    def next_message() -> dict[str, str]:
        data = sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    route = f'{{ path = "/", upstreams = [{{ endpoint = "{origin.address}" }}] }}'
    config = f'[servers.web]\nlistener = "127.0.0.1:0"\nroutes = [{route}]\n'
    proxy = Proxy(config, tmp_path, loop="uvloop", env={"NOTIFY_SOCKET": path})
    try:
        msg = next_message()
        assert msg["READY"] == "1" and msg["MAINPID"] == str(proxy.pid) and "serving" in msg["STATUS"]
        os.kill(proxy.pid, signal.SIGHUP)
        msg = next_message()
        assert msg["RELOADING"] == "1" and int(msg["MONOTONIC_USEC"]) > 0
        msg = next_message()
        assert msg["READY"] == "1" and msg["STATUS"] == "reload done; serving"
        assert proxy.stop() == 0
        assert next_message()["STOPPING"] == "1"
    finally:
        proxy.close()
        sock.close()
