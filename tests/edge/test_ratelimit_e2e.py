"""examples/edge/ratelimit.toml served by two ``monolake run`` instances sharing a real
``redis-server`` (started here on a free port): the global limit is shared, Redis killed
means fail-open on one server and 503 on the other; the local limit answers 429; the tcp
relay's per-IP connection limit closes the connection over the limit.

The loop does not matter to these filters (plain or awaiting redis-py): uvloop only.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import REPO, TIMEOUT, Origin, Proxy, ProxyFactory, _stop_process, free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (apt redis-server)"),
]

EXAMPLE = REPO / "examples" / "edge" / "ratelimit.toml"


class Redis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # wait for readiness, not a sleep
            if b"Ready to accept connections" in line:
                break
        else:
            raise AssertionError(f"redis-server exited with {self.proc.wait()}")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            _stop_process(self.proc, 10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[tuple[Redis, list[Proxy]]]:
    d = tmp_path_factory.mktemp("ratelimit")
    redis = Redis(d)
    text = EXAMPLE.read_text()
    for port in ("8080", "8081", "8082", "8083"):
        text = text.replace(f'listener = "127.0.0.1:{port}"', 'listener = "127.0.0.1:0"')
    text = (
        text.replace("127.0.0.1:9000", origin.address)
        .replace("redis://127.0.0.1:6379/0", redis.url)
        .replace("requests = 100, period = 60", "requests = 6, period = 3600")
        .replace("redis_timeout = 0.5", f"redis_timeout = {TIMEOUT / 4}")  # a busy test machine is slow
        .replace("rate = 5, concurrent = 10", "rate = 1000, concurrent = 2")
    )
    factory = ProxyFactory(d, "uvloop")
    try:
        yield redis, [factory(text) for _ in range(2)]
    finally:
        factory.close()
        redis.stop()


def test_global_limit_is_shared_by_two_instances_then_redis_down_fails_open_or_closed(
    setup: tuple[Redis, list[Proxy]],
) -> None:
    redis, (a, b) = setup
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        passed = [c.get(p.url_of("api") + "/echo", headers={"X-Api-Key": "k1"}) for p in (a, b) * 3]
        assert [r.status_code for r in passed] == [200] * 6
        # headers = true: each passing response says what is left of the shared bucket.
        assert [r.headers["ratelimit-remaining"] for r in passed] == ["5", "4", "3", "2", "1", "0"]
        assert {r.headers["ratelimit-limit"] for r in passed} == {"6"}
        for p in (a, b):
            r = c.get(p.url_of("api") + "/echo", headers={"X-Api-Key": "k1"})
            assert r.status_code == 429
            assert r.headers["ratelimit-limit"] == "6" and r.headers["ratelimit-remaining"] == "0"
            assert r.headers["ratelimit-policy"] == "6;w=3600"
            assert int(r.headers["retry-after"]) == int(r.headers["ratelimit-reset"]) > 0
        # Another key has its own bucket; the strict server its own prefix.
        assert c.get(b.url_of("api") + "/echo", headers={"X-Api-Key": "k2"}).status_code == 200
        assert c.get(a.url_of("strict") + "/echo").status_code == 200

        redis.stop()
        mark = a.log.mark()
        assert c.get(a.url_of("api") + "/echo", headers={"X-Api-Key": "k1"}).status_code == 200  # fail open
        r = c.get(a.url_of("strict") + "/echo")
        assert (r.status_code, r.headers["retry-after"]) == (503, "1")  # fail closed
        a.log.wait_line(r"rate limit store redis://127\.0\.0\.1:\d+/0 unavailable .*failing open", after=mark)
        a.log.wait_line(r"rate limit store .* unavailable .*failing closed", after=mark)
        # The log line is rate limited (per filter): the next failures within 10 s add none.
        for _ in range(3):
            assert c.get(a.url_of("api") + "/echo", headers={"X-Api-Key": "k1"}).status_code == 200
            assert c.get(a.url_of("strict") + "/echo").status_code == 503
        assert a.log.count(r"rate limit store \S+ unavailable", after=mark) == 2
        assert a.workers() and b.workers()


def test_local_limit_answers_429_once_the_burst_is_spent(setup: tuple[Redis, list[Proxy]]) -> None:
    _, (a, _b) = setup
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        statuses = []
        for _ in range(5000):  # 20/s, bursts of 40: far fewer requests than this see a 429
            r = c.get(a.url_of("local") + "/echo")
            statuses.append(r.status_code)
            if r.status_code == 429:
                break
        assert statuses[-1] == 429 and statuses.count(200) >= 40
        assert r.headers["ratelimit-policy"] == "20;w=1" and r.headers["retry-after"] == "1"


def _http_over(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /name HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock.recv(65536)


def test_tcp_relay_limits_concurrent_connections_per_ip(setup: tuple[Redis, list[Proxy]]) -> None:
    _, (a, _b) = setup
    host, port = a.servers["relay"].rsplit(":", 1)
    addr = (host, int(port))
    first = socket.create_connection(addr, timeout=TIMEOUT)
    second = socket.create_connection(addr, timeout=TIMEOUT)
    try:
        assert _http_over(first).startswith(b"HTTP/1.1 200")
        assert _http_over(second).startswith(b"HTTP/1.1 200")
        with socket.create_connection(addr, timeout=TIMEOUT) as third:
            third.sendall(b"GET /name HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                got = third.recv(65536)
            except ConnectionResetError:  # closed with unread data: a reset (the stdlib loop)
                got = b""
            assert got == b""  # closed by the filter, nothing relayed
        first.close()
        # The slot comes back when the relay sees the close: wait for that by retrying.
        for _ in range(200):
            with socket.create_connection(addr, timeout=TIMEOUT) as again:
                again.sendall(b"GET /name HTTP/1.1\r\nHost: x\r\n\r\n")
                with contextlib.suppress(ConnectionResetError):
                    if again.recv(65536).startswith(b"HTTP/1.1 200"):
                        break
        else:
            raise AssertionError("the closed connection's slot never came back")
    finally:
        first.close()
        second.close()
