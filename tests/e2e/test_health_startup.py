"""Active health checks run from a worker's start, not from a cluster's first request:
an endpoint that is down is reported unhealthy (log line and admin /upstreams) before
any request was sent, and the first requests all go to the live endpoint. A reload
starts the checks of a new cluster at once and leaves a kept cluster's checks running.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest
from reload_ops import Fleet

from conftest import Origin, ProxyFactory

pytestmark = pytest.mark.e2e

T = TypeVar("T")
ADMIN_LINE = re.compile(r"admin endpoint on (http://127\.0\.0\.1:\d+)/")
WORKERS = 2

CONFIG = """
[admin]
listen = "127.0.0.1:0"

[upstreams.app]
endpoints = [{ endpoint = "{origin}" }, { endpoint = "{dead}" }]
health_check = { path = "/name", interval = 0.1, timeout = 1.0, unhealthy_threshold = 2 }

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
upstream = "app"
"""

FRESH = """
[upstreams.fresh]
endpoints = [{ endpoint = "{dead}" }, { endpoint = "{origin}" }]
health_check = { type = "tcp", interval = 0.1, timeout = 1.0, unhealthy_threshold = 2 }

[servers.other]
listener = "127.0.0.1:0"

[[servers.other.routes]]
upstream = "fresh"
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(what: str, fn: Callable[[], T | None], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last is not None and last is not False:
            return last
        time.sleep(0.05)  # polling a condition
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def test_dead_endpoint_is_unhealthy_before_the_first_request(proxy: ProxyFactory, origin: Origin) -> None:
    dead = f"127.0.0.1:{closed_port()}"
    p = proxy(CONFIG, workers=WORKERS, origin=origin.address, dead=dead)
    admin = p.log.wait_line(ADMIN_LINE)[1]
    unhealthy = rf"endpoint unhealthy: cluster=app endpoint=\S*{re.escape(dead)}"
    # Every worker found it down by itself; no request has been sent yet.
    poll("every worker to mark the dead endpoint", lambda: p.log.count(unhealthy) >= WORKERS)
    assert not re.search(rf"endpoint unhealthy: cluster=app endpoint=\S*{re.escape(origin.address)}", p.log.text)

    with httpx.Client(trust_env=False, timeout=30) as c:

        def reported() -> dict[str, Any] | None:
            body: dict[str, Any] = c.get(f"{admin}/upstreams").json()
            health = {e["endpoint"]: e["healthy"] for e in body["upstreams"]["app"]["endpoints"]}
            seen.append(body)
            return body if health.get(dead) is False and health.get(origin.address) is True else None

        seen: list[dict[str, Any]] = []

        try:
            body = poll("/upstreams to show the dead endpoint unhealthy", reported)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last /upstreams: {seen[-1] if seen else None}") from None
        assert body["health_checks"] is True
        assert body["upstreams"]["app"]["requests"] == 0

        # The first requests, each on a new connection (so both workers serve some), all
        # reach the live endpoint: none is routed to the dead one and answered 502.
        for i in range(20):
            with httpx.Client(trust_env=False, timeout=30) as one:
                r = one.get(f"{p.url}/name?{i}")
                assert r.status_code == 200, (i, r.status_code)
                assert r.text == origin.name


def test_reload_starts_a_new_clusters_checks_and_keeps_running_ones(proxy: ProxyFactory, origin: Origin) -> None:
    dead = f"127.0.0.1:{closed_port()}"
    p = proxy(CONFIG, workers=WORKERS, origin=origin.address, dead=dead)
    app_down = rf"endpoint unhealthy: cluster=app endpoint=\S*{re.escape(dead)}"
    poll("the dead endpoint marked down", lambda: p.log.count(app_down) >= WORKERS)
    fleet = Fleet(p)
    mark = p.log.mark()
    text = p.config_path.read_text() + FRESH.replace("{dead}", dead).replace("{origin}", origin.address)
    assert fleet.reload(text)[2] == "done"
    fresh_down = rf"endpoint unhealthy: cluster=fresh endpoint=\S*{re.escape(dead)}"
    poll("the new cluster's checks to mark its dead endpoint", lambda: p.log.count(fresh_down, after=mark) >= WORKERS)
    # The kept cluster's checks went on with what they knew: nothing started over.
    assert p.log.count(app_down, after=mark) == 0
    assert p.log.count(r"endpoint healthy: cluster=app", after=mark) == 0
