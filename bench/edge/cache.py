"""CPU per request of the ``cache`` built-in: a HIT against a proxied MISS, in the same run
(the ``bench/micro/proxy_path.py`` harness as in ``per_request.py``: the real server → proxy →
upstream client path over fake transports, so only Python work is measured).

    python -m bench.edge.cache [--loop uvloop|asyncio] [-n 20000] [--repeat 3]

Rows: the plain route (proxied, no cache); the cached route with a request that says
``Cache-Control: no-cache`` (a MISS every time: lookup skipped, the response planned, captured and
stored over the previous one); the cached route answering from the cache (HIT: nothing goes
upstream). The responses are nginx's 128-byte one; the cache's ``default_ttl`` makes it storable.
Rough on a busy machine: compare rows of one run, rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from bench.micro.proxy_path import BODY, Harness
from monolake.apps.config import parse_config

REQUEST = (
    b"GET /api/v1/items?id=7 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nCookie: a=b\r\n\r\n"
)
REVALIDATE = REQUEST[:-2] + b"Cache-Control: no-cache\r\n\r\n"

CACHE = [{"use": "cache", "args": {"default_ttl": 3600}}]
ROWS: dict[str, tuple[list[Any], bytes, bool]] = {
    "plain route (proxied)": ([], REQUEST, True),
    "cache MISS (proxied, stored)": (CACHE, REVALIDATE, True),
    "cache HIT": (CACHE, REQUEST, False),
}


def config(filters: list[Any]) -> dict[str, Any]:
    return {
        "servers": {
            "web": {"listener": "127.0.0.1:0", "routes": [{"path": "/api/", "upstream": "api", "filters": filters}]}
        },
        "upstreams": {"api": {"endpoints": [{"endpoint": "http://127.0.0.1:9001"}]}},
    }


async def run(filters: list[Any], request: bytes, upstream_answers: bool, n: int) -> float:
    """µs of the loop thread's CPU per request."""
    h = Harness(parse_config(config(filters)))
    app = h.app
    dt = h.transport

    async def proxied() -> None:
        await h.proxied(request)

    async def hit() -> None:
        await h.local(request)

    await proxied()  # the first one is a MISS that fills the cache
    one = proxied if upstream_answers else hit
    for _ in range(200):
        await one()
    assert dt.out and dt.out[-1][:12] == b"HTTP/1.1 200", dt.out[-1:]
    dt.out.clear()
    t0 = time.thread_time()
    for _ in range(n):
        await one()
    elapsed = time.thread_time() - t0
    assert len(dt.out) == n and all(o.endswith(BODY) for o in dt.out)
    if filters:
        want = b"X-Cache: MISS" if upstream_answers else b"X-Cache: HIT"
        assert want in dt.out[-1], dt.out[-1][:400]
    app.close()
    return elapsed * 1e6 / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        runner: Any = uvloop.run
    else:
        runner = asyncio.run
    best: dict[str, float] = {}
    for _ in range(args.repeat):  # interleaved, so load changes hit every row alike
        for name, (filters, request, answers) in ROWS.items():
            us = runner(run(filters, request, answers, args.n))
            best[name] = min(best.get(name, us), us)
    base = best["plain route (proxied)"]
    print(f"{args.loop}, best of {args.repeat} x {args.n} requests; load average {os.getloadavg()[0]:.2f}")
    print(f"{'':32} {'µs/request':>11} {'vs plain':>9}")
    for name, us in best.items():
        print(f"{name:32} {us:11.2f} {us - base:+9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
