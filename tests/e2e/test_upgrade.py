"""Zero-downtime binary upgrade of a running proxy: SIGUSR2 and ``monolake upgrade``.

The new supervisor runs the code installed now (here: the same checkout), takes
over the listening sockets and serves before the old one drains and exits 0. It is
not the test's child, so it is followed by pid (``reload_ops.Fleet``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from reload_ops import TAG_MODULE, Fleet, tags_by_worker, wait_gone

from conftest import TIMEOUT, Origin, Proxy, ProxyFactory, RawClient, raw_request, render

pytestmark = pytest.mark.e2e

CONFIG = """
[runtime]
drain_timeout = 5
pid_file = "monolake.pid"

[upstreams.backend]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"
filters = ["tagmod:Tag"]
[[servers.web.routes]]
path = "{path}"
upstream = "backend"

[servers.sock]
listener = "unix:{sock}"
filters = ["tagmod:Tag"]
[[servers.sock.routes]]
upstream = "backend"
"""


@pytest.fixture
def started(proxy: ProxyFactory, origin: Origin, tmp_path: Path) -> Iterator[tuple[Proxy, Fleet, Path]]:
    (tmp_path / "tagmod.py").write_text(TAG_MODULE)
    sock = tmp_path / "web.sock"
    p = proxy(render(CONFIG, origin=origin.url, sock=sock, path="/"), workers=2)
    fleet = Fleet(p)
    yield p, fleet, sock
    fleet.close()


def unix_tags(sock: Path, want: int, tries: int = 200) -> set[int]:
    seen: set[int] = set()
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), trust_env=False) as c:
        for _ in range(tries):
            r = c.get("http://local/echo", headers={"Connection": "close"})
            assert r.status_code == 200
            seen.add(int(r.headers["x-worker"]))
            if len(seen) >= want:
                break
    return seen


def pid_file(p: Proxy) -> int:
    return int((p.config_path.parent / "monolake.pid").read_text())


def test_sigusr2_hands_over_tcp_and_unix_listeners(started: tuple[Proxy, Fleet, Path], origin: Origin) -> None:
    p, fleet, sock = started
    old_pid, old_workers = fleet.pid, set(fleet.workers())
    assert pid_file(p) == old_pid
    assert {int(w) for w in tags_by_worker(p.url, 2)} == old_workers
    assert unix_tags(sock, 2) == old_workers

    gate = sock.parent / "gate-open"
    with RawClient(p.address) as slow:
        mark = origin.log.mark()
        slow.send(raw_request("GET", f"/gate?file={gate}"))
        origin.log.wait_line(r"REQ GET /gate", after=mark)

        # The origin answers once the old workers drain (the gate opens); the upgrade then
        # waits for the old supervisor to exit 0.
        new_pid = fleet.upgrade(while_draining=gate.touch)

        # The request in flight finished on its old worker, which then closed the connection.
        r = slow.read_response()
        assert (r.status, r.body, r.header("Connection")) == (200, b"released\n", "close")
        assert int(r.header("X-Worker") or 0) in old_workers
        assert slow.is_closed()
    new_workers = set(fleet.workers())
    assert len(new_workers) == 2 and not new_workers & old_workers
    assert pid_file(p) == new_pid
    p.log.wait_line(rf"monolake\[{new_pid}\]: upgrade: took over 2 listener\(s\) from the old supervisor")
    p.log.wait_line(rf"monolake\[{new_pid}\]: monolake ready servers=web={p.servers['web']},sock=unix:{sock} ")

    # Same TCP port and the same Unix socket file, served by the new workers only.
    assert {int(w) for w in tags_by_worker(p.url, 2)} == new_workers
    assert unix_tags(sock, 2) == new_workers
    for pid in old_workers:
        assert wait_gone(pid)

    # The new supervisor reloads and stops like any other.
    mark = p.log.mark()
    fleet.write(render(CONFIG, origin=origin.url, sock=sock, path="/only"))
    os.kill(new_pid, signal.SIGHUP)
    assert p.log.wait_line(r"reload 1 \(SIGHUP\) (done|failed|aborted)", after=mark)[1] == "done"
    assert httpx.get(p.url + "/echo", trust_env=False).status_code == 404
    os.kill(new_pid, signal.SIGTERM)
    assert wait_gone(new_pid)
    fleet.successors.remove(new_pid)
    assert not sock.exists()
    assert not (p.config_path.parent / "monolake.pid").exists()


def test_monolake_upgrade_command(started: tuple[Proxy, Fleet, Path]) -> None:
    p, fleet, sock = started
    old = fleet.pid
    out = subprocess.run(
        [sys.executable, "-m", "monolake.product.cli", "upgrade", "-c", str(p.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr + p.log.text
    assert p.proc.wait(TIMEOUT) == 0
    new = pid_file(p)
    assert new != old
    fleet.successors.append(new)
    fleet.pid = new
    assert out.stdout.strip() == f"monolake: upgraded: supervisor {old} -> {new}"
    assert {int(w) for w in tags_by_worker(p.url, 2)} == set(fleet.workers())
    assert unix_tags(sock, 2) == set(fleet.workers())

    # And once more, from the upgraded one, with --pid.
    out = subprocess.run(
        [sys.executable, "-m", "monolake.product.cli", "upgrade", "--pid", str(new)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr + p.log.text
    newer = pid_file(p)
    assert newer not in (old, new)
    fleet.successors.append(newer)
    fleet.pid = newer
    assert unix_tags(sock, 2) == set(fleet.workers())


def test_failed_upgrade_keeps_the_old_supervisor_serving(started: tuple[Proxy, Fleet, Path]) -> None:
    p, fleet, sock = started
    workers = set(fleet.workers())
    good = p.config_path.read_text()
    p.config_path.write_text(good.replace('upstream = "backend"', 'upstream = "nope"', 1))
    mark = p.log.mark()
    os.kill(fleet.pid, signal.SIGUSR2)
    m = p.log.wait_line(r"upgrade \(SIGUSR2\) failed: (.*); the running supervisor keeps serving", after=mark)
    assert "closed the handover before it was ready" in m[1] or "exited" in m[1], m.string
    p.log.wait_line(r"config error: servers.web.routes\[0\].upstream: unknown cluster 'nope'", after=mark)
    p.log.wait_line(r"upgrade: the new supervisor \(pid \d+\) (exited|was killed)", after=mark)  # reaped

    assert p.proc.poll() is None
    assert set(fleet.workers()) == workers
    assert {int(w) for w in tags_by_worker(p.url, 2)} == workers
    assert sock.exists() and unix_tags(sock, 2) == workers
    assert pid_file(p) == fleet.pid

    # Fixed, the next upgrade goes through.
    p.config_path.write_text(good)
    fleet.upgrade()
    assert unix_tags(sock, 2) == set(fleet.workers())
