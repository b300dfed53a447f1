"""The proxy as a process: access log, worker crash and restart, SIGTERM drain."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import Origin, ProxyFactory

pytestmark = pytest.mark.e2e

BASIC = """
[runtime]
drain_timeout = 10

[log]
access_log = "{access_log}"
access_log_format = '{fmt}'

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstreams = [{ endpoint = "{origin}" }]

[servers.other]
listener = "127.0.0.1:0"

[[servers.other.routes]]
path_exact = "/only"
upstreams = [{ endpoint = "{origin}" }]
"""

FMT = "$remote_addr|$method|$uri|$status|$body_bytes_sent|$upstream_addr|$server|$route|$host|$http_user_agent"


def wait_lines(path: Path, n: int, timeout: float = 15.0) -> list[str]:
    """The file's lines once it has at least ``n`` (the access log flushes once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)  # polling a condition: the log is written by another process


def test_access_log_to_file(proxy: ProxyFactory, origin: Origin, tmp_path: Path) -> None:
    log_file = tmp_path / "access.log"
    p = proxy(BASIC, origin=origin.url, access_log=log_file, fmt=FMT)
    with httpx.Client(trust_env=False, headers={"User-Agent": "e2e-agent/1.0"}) as c:
        assert c.get(p.url + "/echo?x=1", headers={"Host": "site.test"}).status_code == 200
        assert c.get(p.url + "/status/418").status_code == 418
        assert c.get(p.url + "/bytes/1234").status_code == 200
        assert c.get(p.url_of("other") + "/nope").status_code == 404
    lines = wait_lines(log_file, 4)
    assert len(lines) == 4, lines
    fields = [line.split("|") for line in lines]
    assert fields[0][:5] == ["127.0.0.1", "GET", "/echo?x=1", "200", fields[0][4]]
    assert int(fields[0][4]) > 0
    assert fields[0][5] == origin.address
    assert fields[0][6:] == ["web", "0", "site.test", "e2e-agent/1.0"]
    assert fields[1][2:4] == ["/status/418", "418"]
    assert fields[2][2:5] == ["/bytes/1234", "200", "1234"]
    assert fields[3][2:4] == ["/nope", "404"]
    assert fields[3][5:8] == ["-", "other", "-"]


def test_access_log_request_is_the_original_request_line(proxy: ProxyFactory, origin: Origin) -> None:
    # As nginx's $request: the line the client sent, not the target after a prefix rewrite.
    p = proxy(
        """
[log]
access_log = "stdout"
access_log_format = 'ACCESS "$request" $status'

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/public/"
prefix_rewrite = "/internal/"
upstreams = [{ endpoint = "{origin}" }]
""",
        origin=origin.url,
    )
    r = httpx.get(p.url + "/public/page?x=1", trust_env=False)
    assert r.json()["path"] == "/internal/page?x=1"
    line = p.stdout.wait_line(r"^ACCESS ")
    assert line.string == 'ACCESS "GET /public/page?x=1 HTTP/1.1" 200'


def test_access_log_is_flushed_on_stop(proxy: ProxyFactory, origin: Origin, tmp_path: Path) -> None:
    log_file = tmp_path / "access.log"
    p = proxy(BASIC, origin=origin.url, access_log=log_file, fmt=FMT)
    assert httpx.get(p.url + "/echo?last=1", trust_env=False).status_code == 200
    assert p.stop() == 0
    lines = log_file.read_text().splitlines() if log_file.exists() else []
    assert [line.split("|")[2] for line in lines] == ["/echo?last=1"]


def test_access_log_to_stdout(proxy: ProxyFactory, origin: Origin) -> None:
    p = proxy(BASIC, origin=origin.url, access_log="stdout", fmt="ACCESS $method $uri $status")
    assert httpx.get(p.url + "/echo?to=stdout", trust_env=False).status_code == 200
    p.stdout.wait_line(r"^ACCESS GET /echo\?to=stdout 200$")


def test_killed_worker_is_restarted(proxy: ProxyFactory, origin: Origin) -> None:
    p = proxy(BASIC, workers=2, origin=origin.url, access_log="off", fmt=FMT)
    before = p.workers()
    assert len(before) == 2
    victim = before[0]
    mark = p.log.mark()
    os.kill(victim, signal.SIGKILL)
    p.log.wait_line(rf"worker \d+ \(pid {victim}\) was killed by signal 9", after=mark)
    m = p.log.wait_line(r"worker \d+ restarted, pid (\d+)", after=mark)
    new = int(m[1])
    after = p.workers()
    assert victim not in after
    assert sorted(after) == sorted([before[1], new])
    # Every request on a fresh connection is served, by whichever worker the kernel picks.
    for i in range(20):
        r = httpx.get(p.url + f"/echo?i={i}", trust_env=False, timeout=10)
        assert r.status_code == 200


def test_sigterm_drains_in_flight_request(proxy: ProxyFactory, origin: Origin) -> None:
    p = proxy(BASIC, origin=origin.url, access_log="off", fmt=FMT)
    result: dict[str, object] = {}

    def slow() -> None:
        try:
            r = httpx.get(p.url + "/delay/1.5", trust_env=False, timeout=30)
            result["status"], result["body"] = r.status_code, r.text
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    mark = origin.log.mark()
    t = threading.Thread(target=slow)
    t.start()
    try:
        origin.log.wait_line(r"REQ GET /delay/1\.5 ", after=mark)
        p.proc.send_signal(signal.SIGTERM)
        p.log.wait_line(r"SIGTERM: draining")
        code = p.proc.wait(30)
    finally:
        t.join(30)
    assert result == {"status": 200, "body": "delayed\n"}  # answered, not cut at drain_timeout
    assert code == 0
    # Stopped means the listener is gone too.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(p.address.rpartition(":")[2])), timeout=5).close()


def test_sigterm_closes_idle_keepalive_connections(proxy: ProxyFactory, origin: Origin) -> None:
    p = proxy(BASIC, origin=origin.url, access_log="off", fmt=FMT)
    host, _, port = p.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        assert data.startswith(b"HTTP/1.1 200")
        mark = p.log.mark()
        p.proc.send_signal(signal.SIGTERM)
        # The idle keep-alive connection is closed by the drain, not at drain_timeout (10 s).
        while s.recv(65536):
            pass
        assert p.proc.wait(20) == 0
        p.log.join()
        assert p.log.count(r"closing requests still in flight", after=mark) == 0, p.log.text
