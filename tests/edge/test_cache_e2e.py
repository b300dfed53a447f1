"""A real ``monolake run`` with two workers and a cached route: ``POST /cache/purge`` on the admin
endpoint reaches every worker's cache over the control channel."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from conftest import ProxyFactory, free_port

from ._support import EchoOrigin, LoopThread

CONFIG = """
[admin]
listen = "127.0.0.1:{admin}"

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstreams = [{ endpoint = "{origin}" }]
filters = [{ use = "cache", args = { max_bytes = 8_000_000 } }]
"""

hits: Counter[str] = Counter()


def answer(method: bytes, target: bytes, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
    hits[target.decode()] += 1
    return 200, [("Content-Type", "text/plain"), ("Cache-Control", "max-age=600")], b"v%d" % hits[target.decode()]


def fetch_until(url: str, path: str, count: int, deadline: float) -> None:
    """GET ``path`` on fresh connections (spread over the workers) until the origin has seen it
    ``count`` times: each worker's cache missed once."""
    while hits[path] < count:
        assert time.monotonic() < deadline, f"origin saw {path} {hits[path]} times, waiting for {count}"
        with httpx.Client(trust_env=False, timeout=30) as c:
            r = c.get(url + path)
            assert r.status_code == 200 and r.headers["x-cache"] in ("HIT", "MISS")


def test_admin_purge_reaches_every_worker(tmp_path: Path) -> None:
    lt = LoopThread()
    origin = EchoOrigin(lt, answer)
    factory = ProxyFactory(tmp_path, "uvloop")
    admin = free_port()
    try:
        p = factory(CONFIG, workers=2, admin=admin, origin=origin.url)
        deadline = time.monotonic() + 60
        for path in ("/purge-me", "/keep-me"):
            fetch_until(p.url, path, 2, deadline)  # both workers hold both
        with httpx.Client(trust_env=False, timeout=30) as c:
            assert [c.get(p.url + "/purge-me").headers["x-cache"] for _ in range(3)] == ["HIT"] * 3
            base = f"http://127.0.0.1:{admin}/cache/purge"
            assert c.post(base).status_code == 400  # no prefix
            r = c.post(base, json={"prefix": "127.0.0.1/purge"})
            assert r.status_code == 202 and r.json() == {"purge": "127.0.0.1/purge"}
        fetch_until(p.url, "/purge-me", 4, deadline)  # each worker dropped it and fetched it again
        with httpx.Client(trust_env=False, timeout=30) as c:
            r = c.post(f"http://127.0.0.1:{admin}/cache/purge?prefix=*")
            assert r.status_code == 202
        fetch_until(p.url, "/keep-me", 4, deadline)  # "*": everything
        assert p.log.wait_count(r"cache: purged", 4)  # the log reaches the test through a pipe and a thread
        with httpx.Client(trust_env=False, timeout=30) as c:  # the workers' counts, flushed each second
            # Until every worker's counts are in: the first flush of one worker shows the series
            # while the other's may still be on its way.
            while True:
                text = c.get(f"http://127.0.0.1:{admin}/metrics").text
                counts = {
                    line.split('"')[1]: float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("monolake_cache_lookups_total{")
                }
                if counts.get("hit", 0) >= 3 and counts.get("miss", 0) >= 8:
                    break
                assert time.monotonic() < deadline, text
                time.sleep(0.1)
        assert "monolake_cache_entries" in text and "monolake_cache_bytes" in text
    finally:
        factory.close()
        origin.close()
        lt.close()
