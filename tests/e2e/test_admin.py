"""The admin endpoint and its dashboard, against a real supervisor with 2 workers.

Metrics are folded into the shared directory once a second per worker, so every
check on a count polls it (bounded) instead of expecting it at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from reload_ops import Fleet

from conftest import Origin, Proxy, ProxyFactory, free_port

pytestmark = pytest.mark.e2e

TOKEN = "s3cret-admin-token"
ADMIN_LINE = re.compile(r"admin endpoint on (http://127\.0\.0\.1:\d+)/")
POLL_FOR = 20.0
DEAD = "127.0.0.1:9"
"""Nothing listens on the discard port here: connects to it are refused."""
T = TypeVar("T")

CONFIG = """
[runtime]
drain_timeout = 2

[admin]
listen = "127.0.0.1:0"
token = "{token}"

[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[upstreams.dead]
endpoints = [{ endpoint = "{dead}" }]

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/dead/"
upstream = "dead"

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


def poll(what: str, fn: Callable[[], T | None], timeout: float = POLL_FOR) -> T:
    """``fn()`` until it returns something other than None/False, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last is not None and last is not False:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def admin_url(proxy: Proxy) -> str:
    return proxy.log.wait_line(ADMIN_LINE)[1]


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def requests_total(text: str, server: str = "web") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("monolake_requests_total{") and f'server="{server}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def drive(url: str, n: int) -> None:
    """``n`` requests, each on a new connection (so the kernel spreads them over the workers)."""
    for i in range(n):
        with httpx.Client(trust_env=False, timeout=30) as c:
            assert c.get(f"{url}/item/{i}").status_code == 200


@pytest.fixture(scope="module")
def admin(module_proxy: ProxyFactory, origin: Origin) -> Iterator[tuple[Proxy, str]]:
    proxy = module_proxy(CONFIG, workers=2, origin=origin.url, token=TOKEN, dead=DEAD)
    yield proxy, admin_url(proxy)


def client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=30)


def test_metrics_count_requests_of_both_workers(admin: tuple[Proxy, str]) -> None:
    proxy, url = admin
    assert len(proxy.workers()) == 2
    with client() as c:
        before = requests_total(c.get(f"{url}/metrics", headers=auth()).text)
        n = 60  # on new connections: all on one worker has odds of 2**-59
        drive(proxy.url, n)

        def counted() -> str | None:
            r = c.get(f"{url}/metrics", headers=auth())
            assert r.status_code == 200
            return r.text if requests_total(r.text) >= before + n else None

        text = poll("the requests to show in /metrics", counted)
    assert requests_total(text) == before + n
    assert re.search(r'monolake_requests_total\{.*status="200".*upstream="origin"', text)
    assert 'monolake_request_duration_seconds_bucket{le="+Inf",route="1",server="web",upstream="origin"}' in text
    assert "monolake_active_connections" in text
    assert "monolake_upstream_connects_total" in text


def test_upstream_connect_errors(admin: tuple[Proxy, str]) -> None:
    proxy, url = admin
    with client() as c:
        assert c.get(f"{proxy.url}/dead/x").status_code == 502
        line = f'monolake_upstream_connect_errors_total{{endpoint="{DEAD}"}}'
        text = poll(
            "the connect error", lambda: t if line in (t := c.get(f"{url}/metrics", headers=auth()).text) else None
        )
    assert float(text.split(line, 1)[1].split()[0]) >= 1
    assert re.search(r'monolake_requests_total\{route="0",server="web",status="502",upstream="dead"\}', text)


def test_healthz(admin: tuple[Proxy, str]) -> None:
    _, url = admin
    with client() as c:
        r = c.get(f"{url}/healthz", headers=auth())
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_token_required(admin: tuple[Proxy, str]) -> None:
    _, url = admin
    with client() as c:
        for path in ("/metrics", "/healthz", "/config", "/upstreams", "/stats.json"):
            r = c.get(f"{url}{path}")
            assert r.status_code == 401, path
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert c.get(f"{url}{path}", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post(f"{url}/reload").status_code == 401
        # The page itself carries no data.
        page = c.get(f"{url}/")
        assert page.status_code == 200 and "monolake" in page.text


def test_config_redacts_the_token(admin: tuple[Proxy, str], origin: Origin) -> None:
    _, url = admin
    with client() as c:
        r = c.get(f"{url}/config", headers=auth())
    assert r.status_code == 200
    assert TOKEN not in r.text
    cfg = r.json()
    assert cfg["admin"]["token"] == "<redacted>"
    assert cfg["admin"]["listen"] == "127.0.0.1:0"
    assert cfg["upstreams"]["origin"]["endpoints"][0]["endpoint"] == origin.url


def test_upstreams(admin: tuple[Proxy, str], origin: Origin) -> None:
    proxy, url = admin
    drive(proxy.url, 2)
    with client() as c:

        def seen() -> dict[str, Any] | None:
            body: dict[str, Any] = c.get(f"{url}/upstreams", headers=auth()).json()
            return body if body["upstreams"]["origin"]["requests"] >= 2 else None

        body = poll("requests counted per upstream", seen)
    eps = body["upstreams"]["origin"]["endpoints"]
    assert [e["endpoint"] for e in eps] == [origin.address]
    # Without configured health checks an endpoint is healthy (or not known to be anything else).
    assert eps[0]["healthy"] in (True, None)


def test_reload_and_its_metric(admin: tuple[Proxy, str]) -> None:
    proxy, url = admin
    with client() as c:
        r = c.post(f"{url}/reload", headers=auth())
        if r.status_code == 501:
            pytest.skip(f"reload not available: {r.json()['error']}")
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["ok"] is True and result["trigger"] == "admin /reload"
        assert c.get(f"{url}/reload", headers=auth()).json()["last_reload"]["id"] == result["id"]

        def reload_counted() -> str | None:
            t = c.get(f"{url}/metrics", headers=auth()).text
            return t if 'monolake_reloads_total{result="ok"}' in t else None

        text = poll("the reload counter", reload_counted)
    assert 'monolake_reloads_total{result="ok"}' in text
    # Still serving after the reload.
    drive(proxy.url, 1)


def test_stats_json(admin: tuple[Proxy, str]) -> None:
    proxy, url = admin
    drive(proxy.url, 1)
    with client() as c:
        stats = poll(
            "stats with requests",
            lambda: s if (s := c.get(f"{url}/stats.json", headers=auth()).json())["requests"] > 0 else None,
        )
    assert stats["metrics"] is True
    assert stats["latency"]["buckets"][-1][0] is None  # +Inf, as JSON has no infinity
    assert stats["latency"]["count"] == stats["requests"]
    assert "origin" in stats["upstreams"]


def test_metrics_dir_follows_workers_and_is_removed(proxy: ProxyFactory, origin: Origin) -> None:
    p = proxy(CONFIG, workers=2, origin=origin.url, token=TOKEN, dead=DEAD)
    url = admin_url(p)
    metrics_dir = Path(p.log.wait_line(r"metrics: workers write to (\S+)")[1])
    assert metrics_dir.is_dir()
    victim = p.workers()[0]
    live = metrics_dir / f"gauge_livesum_{victim}.db"
    poll("the worker's live gauges", live.exists)
    mark = p.log.mark()
    os.kill(victim, signal.SIGKILL)
    p.log.wait_line(r"worker \d+ restarted", after=mark)
    with client() as c:
        # A scrape drops the dead worker's live gauges (mark_process_dead).
        assert c.get(f"{url}/metrics", headers=auth()).status_code == 200
    assert not live.exists()
    assert p.stop() == 0
    assert not metrics_dir.exists()


def test_admin_port_survives_a_binary_upgrade(proxy: ProxyFactory, origin: Origin) -> None:
    port = free_port()
    p = proxy(
        CONFIG.replace("127.0.0.1:0", f"127.0.0.1:{port}", 1), workers=1, origin=origin.url, token=TOKEN, dead=DEAD
    )
    url = f"http://127.0.0.1:{port}"
    assert admin_url(p) == url
    fleet = Fleet(p)
    try:
        new_pid = fleet.upgrade()  # the new supervisor binds the same admin address (SO_REUSEPORT) before the old exits
        p.log.wait_line(rf"monolake\[{new_pid}\]: admin endpoint on {re.escape(url)}/")
        with client() as c:
            assert c.get(f"{url}/healthz", headers=auth()).json()["pid"] == new_pid
            drive(p.url, 3)
            poll("the new workers' requests", lambda: requests_total(c.get(f"{url}/metrics", headers=auth()).text) >= 3)
    finally:
        fleet.close()


# -- the dashboard in headless Chromium ---------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_dashboard_in_chromium(tmp_path: Path, origin: Origin, loop_kind: str) -> None:
    if loop_kind != "uvloop":
        pytest.skip("the page does not depend on the workers' loop: checked once, with uvloop")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    factory = ProxyFactory(tmp_path, loop_kind)
    try:
        proxy = factory(CONFIG, workers=2, origin=origin.url, token=TOKEN, dead=DEAD)
        url = admin_url(proxy)
        stop = threading.Event()
        sent = [0]

        def load() -> None:
            with httpx.Client(trust_env=False, timeout=30) as c:
                while not stop.is_set() and sent[0] < 3000:
                    c.get(f"{proxy.url}/load/{sent[0]}")
                    sent[0] += 1

        with sync_api.sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 900},
            )
            try:
                page = ctx.new_page()
                page.goto(f"{url}/#token={TOKEN}")
                page.wait_for_function("document.getElementById('status').textContent.startsWith('live')")
                first = int(page.inner_text("#total"))
                worker = threading.Thread(target=load, daemon=True)
                worker.start()
                try:
                    # The total grows and a non-zero rate and latency show while the load runs.
                    page.wait_for_function(
                        f"parseInt(document.getElementById('total').textContent) >= {first + 50}"
                        " && parseFloat(document.getElementById('rate').textContent) > 0"
                        " && document.getElementById('p50').textContent !== '\u2013'",
                        timeout=30_000,
                    )
                finally:
                    stop.set()
                    worker.join(30)
                assert page.locator("#upstreams tr[data-upstream='origin']").count() == 1
                page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

                page.click("#reload")
                page.wait_for_function(
                    "document.getElementById('reload-result').dataset.status !== undefined", timeout=30_000
                )
                status = page.get_attribute("#reload-result", "data-status")
                text = page.inner_text("#reload-result")
                if status == "501":
                    assert "501" in text and "not implemented" in text
                else:
                    assert status == "200", text
                    assert re.match(r"reload #\d+ ok", text), text
                    page.wait_for_function("document.getElementById('last-reload').textContent.includes('ok')")
                page.screenshot(path=str(tmp_path / "dashboard-reloaded.png"), full_page=True)
            finally:
                ctx.close()
    finally:
        factory.close()


def test_stats_json_is_valid_json(admin: tuple[Proxy, str]) -> None:
    _, url = admin
    with client() as c:
        raw = c.get(f"{url}/stats.json", headers=auth()).text
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


# -- a bounded admin listener (issue 17 E) ---------------------------------------------------------

BOUNDED = """
[admin]
listen = "127.0.0.1:0"
token = "{token}"
max_connections = 100
header_timeout = 2
idle_timeout = 1

[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_idle_connections_are_capped_and_timed_out(proxy: ProxyFactory, origin: Origin, loop_kind: str) -> None:
    if loop_kind != "uvloop":
        pytest.skip("the admin listener does not depend on the workers' loop: checked once, with uvloop")
    p = proxy(BOUNDED, origin=origin.url, token=TOKEN)
    url = admin_url(p)
    host, port = url.removeprefix("http://").split(":")
    before = threads_of(p.pid)
    socks = [socket.create_connection((host, int(port)), timeout=20) for _ in range(300)]
    try:
        # every connection beyond the cap is answered 503 and closed at once; the others wait
        # for header_timeout (2 s), get 408 and are closed: each ends with one of the two
        assert threads_of(p.pid) <= before + 1  # no thread per connection (before: one each)
        statuses = []
        for s in socks:
            got = b""
            while chunk := s.recv(4096):
                got += chunk
            statuses.append(got.split(b" ", 2)[1].decode())
        assert set(statuses) <= {"503", "408"}, set(statuses)
        assert statuses.count("503") >= 100  # at most 100 were served at a time
        assert threads_of(p.pid) <= before + 1
    finally:
        for s in socks:
            s.close()
    p.log.wait_line(r"admin: refused connections: \d+ more suppressed")  # rate-limited, not 200 lines
    assert p.log.count(r"answered 127\.0\.0\.1:\d+ with 503") < statuses.count("503")
    with client() as c:
        assert c.get(f"{url}/healthz", headers=auth()).status_code == 200


def test_aborted_admin_connection_is_one_line(proxy: ProxyFactory, origin: Origin, loop_kind: str) -> None:
    if loop_kind != "uvloop":
        pytest.skip("the admin listener does not depend on the workers' loop: checked once, with uvloop")
    p = proxy(BOUNDED, origin=origin.url, token=TOKEN)
    url = admin_url(p)
    host, port = url.removeprefix("http://").split(":")
    mark = p.log.mark()
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n")  # half a head, then a reset
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    line = p.log.wait_line(r"admin: 127\.0\.0\.1:\d+: .*(reset|closed|408)", after=mark)
    assert line is not None
    with client() as c:
        assert c.get(f"{url}/healthz", headers=auth()).status_code == 200
    assert not [x for x in p.log.since(mark) if "Traceback" in x or "Exception" in x], p.log.since(mark)
