"""Health and resilience end to end: active checks, passive ejection, retries, per-try
timeouts and circuit breaking, through a real proxy process (one worker, so one view of
health) in front of two switchable origins running in this process.

``Switch`` is a threaded HTTP/1.1 origin: ``/health`` answers 200 while ``up`` and 503
otherwise; every other path answers ``status`` with the origin's name as the body,
after ``delay`` seconds. Conditions are awaited on the proxy's log lines or by bounded
polling, never by fixed sleeps.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from conftest import ProxyFactory

pytestmark = pytest.mark.e2e


class Switch:
    """A threaded origin whose health, status and delay tests switch."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.status = 200
        self.delay = 0.0
        self.hits = 0
        self._lock = threading.Lock()
        switch = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return None

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path == "/health":
                    status = 200 if switch.up else 503
                else:
                    with switch._lock:
                        switch.hits += 1
                    status = switch.status
                    if switch.delay:
                        time.sleep(switch.delay)
                body = switch.name.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        self.up, self.status, self.delay, self.hits = True, 200, 0.0, 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def switches() -> Iterator[tuple[Switch, Switch]]:
    a, b = Switch("a"), Switch("b")
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def ab(switches: tuple[Switch, Switch]) -> tuple[Switch, Switch]:
    for s in switches:
        s.reset()
    return switches


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)  # polling a condition


CONFIG = """
[upstreams.checked]
endpoints = [{ endpoint = "{a}" }, { endpoint = "{b}" }]
health_check = { path = "/health", interval = 0.1, timeout = 1.0, healthy_threshold = 2, unhealthy_threshold = 2 }

[upstreams.passive]
endpoints = [{ endpoint = "{a}" }, { endpoint = "{b}" }]
outlier_detection = { consecutive_5xx = 3, base_ejection_time = 60 }

[upstreams.half_dead]
endpoints = [{ endpoint = "127.0.0.1:{dead}" }, { endpoint = "{b}" }]
connect_timeout = 2.0

[upstreams.slow_a]
endpoints = [{ endpoint = "{a}" }, { endpoint = "{b}" }]

[upstreams.narrow]
endpoints = [{ endpoint = "{a}" }]
circuit_breaker = { max_requests = 1 }

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/checked/"
upstream = "checked"

[[servers.web.routes]]
path = "/passive/"
upstream = "passive"

[[servers.web.routes]]
path = "/retry/"
upstream = "half_dead"
retry = { attempts = 1 }

[[servers.web.routes]]
path = "/noretry/"
upstream = "half_dead"

[[servers.web.routes]]
path = "/pertry/"
upstream = "slow_a"
retry = { attempts = 1, on = ["timeout"], per_try_timeout = 0.5 }

[[servers.web.routes]]
path = "/pertry-only/"
upstream = "slow_a"
retry = { attempts = 0, per_try_timeout = 0.5 }

[[servers.web.routes]]
path = "/narrow/"
upstream = "narrow"
"""


def names(client: httpx.Client, path: str, n: int) -> list[str]:
    out = []
    for _ in range(n):
        r = client.get(path)
        assert r.status_code == 200, (r.status_code, r.text)
        out.append(r.text)
    return out


def test_active_checks_take_an_endpoint_out_and_back(proxy: ProxyFactory, ab: tuple[Switch, Switch]) -> None:
    a, b = ab
    p = proxy(CONFIG, a=a.address, b=b.address, dead=closed_port())
    with httpx.Client(base_url=p.url, timeout=10) as c:
        assert sorted(names(c, "/checked/x", 2)) == ["a", "b"]  # the first request starts the checks
        mark = p.log.mark()
        a.up = False
        p.log.wait_line(rf"endpoint unhealthy: cluster=checked endpoint={a.address}", after=mark)
        assert set(names(c, "/checked/x", 6)) == {"b"}
        mark = p.log.mark()
        a.up = True
        p.log.wait_line(rf"endpoint healthy: cluster=checked endpoint={a.address}", after=mark)
        assert sorted(names(c, "/checked/x", 4)) == ["a", "a", "b", "b"]
    # Running checks do not hold up or spoil a graceful stop.
    assert p.stop() == 0
    assert "Traceback" not in p.log.text and "destroyed" not in p.log.text, p.log.text


def test_passive_ejection_after_consecutive_5xx(proxy: ProxyFactory, ab: tuple[Switch, Switch]) -> None:
    a, b = ab
    a.status = 500
    p = proxy(CONFIG, a=a.address, b=b.address, dead=closed_port())
    with httpx.Client(base_url=p.url, timeout=10) as c:
        fives = 0
        for _ in range(12):
            fives += c.get("/passive/x").status_code == 500
            if p.log.count(r"endpoint ejected: cluster=passive"):
                break
        assert fives == 3
        p.log.wait_line(rf"endpoint ejected: cluster=passive endpoint={a.address} for 60s after 3 consecutive 5xx")
        a.hits = 0
        assert set(names(c, "/passive/x", 6)) == {"b"}
        assert a.hits == 0


def test_get_retried_on_another_endpoint_post_with_body_not(proxy: ProxyFactory, ab: tuple[Switch, Switch]) -> None:
    a, b = ab
    p = proxy(CONFIG, a=a.address, b=b.address, dead=closed_port())
    with httpx.Client(base_url=p.url, timeout=10) as c:
        assert set(names(c, "/retry/x", 4)) == {"b"}
        p.log.wait_line(r"retrying GET /retry/x: cluster=half_dead endpoint=127\.0\.0\.1:\d+: connect failure")
        # Without a retry table, and for a POST with a body, the connect failure is the answer.
        assert sorted(c.get("/noretry/x").status_code for _ in range(2)) == [200, 502]
        mark = p.log.mark()
        assert sorted(c.post("/retry/x", content=b"payload").status_code for _ in range(2)) == [200, 502]
        assert p.log.count(r"retrying POST", after=mark) == 0


def test_per_try_timeout(proxy: ProxyFactory, ab: tuple[Switch, Switch]) -> None:
    a, b = ab
    a.delay = 3.0
    p = proxy(CONFIG, a=a.address, b=b.address, dead=closed_port())
    with httpx.Client(base_url=p.url, timeout=10) as c:
        # a's try times out after 0.5 s and b answers (a, 3 s late, would have said "a").
        assert names(c, "/pertry/x", 2) == ["b", "b"]
        p.log.wait_line(r"retrying GET /pertry/x: cluster=slow_a endpoint=.*: timeout")
        statuses = sorted(c.get("/pertry-only/x").status_code for _ in range(2))
        assert statuses == [200, 504]


def test_circuit_breaker_max_requests(proxy: ProxyFactory, ab: tuple[Switch, Switch]) -> None:
    a, b = ab
    a.delay = 1.0
    p = proxy(CONFIG, a=a.address, b=b.address, dead=closed_port())

    def get(_: int) -> int:
        with httpx.Client(base_url=p.url, timeout=10) as c:
            return c.get("/narrow/x").status_code

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(get, 0)
        poll(lambda: a.hits >= 1)  # the first request is in flight at the origin
        rest = list(pool.map(get, range(3)))
        assert first.result() == 200
    assert rest == [503, 503, 503]
    p.log.wait_line(r"circuit breaker open: cluster=narrow max_requests=1 reached; answering 503")
    a.delay = 0.0
    with httpx.Client(base_url=p.url, timeout=10) as c:
        assert c.get("/narrow/x").status_code == 200  # the limit counts requests in flight only
