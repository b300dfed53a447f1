"""The proxy path of ``proxy_path.py`` with the server's service layers and a hashing balancer on.

    python bench/micro/proxy_layers.py [--case layers|hash|both] [--loop uvloop|asyncio] [-n 20000] [--repeat 3]

``proxy_path.py`` runs the default server: CatchPanic is its only layer and its upstream is
round robin. Here ``layers`` adds ``request_timeout`` and ``max_concurrency`` (the Timeout and
ConcurrencyLimit layers around the proxy), ``hash`` makes the upstream ``consistent_hash`` on the
client IP (a crc32 and a bisect per pick), ``both`` does both. The same fake transports and the
same µs of Python per proxied request as ``proxy_path.py`` (process CPU, best of ``--repeat``), so
``tree_ab.py`` compares two source trees on it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.micro.proxy_path import BODY, CONFIG, REQUEST, Harness

from monolake.apps.config import parse_config


def config(case: str) -> dict[str, Any]:
    web = dict(CONFIG["servers"]["web"])
    api = dict(CONFIG["upstreams"]["api"])
    if case in ("layers", "both"):
        web.update(request_timeout=30.0, max_concurrency=10_000)
    if case in ("hash", "both"):
        api.update(load_balancer="consistent_hash", hash_on="client_ip")
    return {**CONFIG, "servers": {"web": web}, "upstreams": {"api": api}}


async def run(n: int, case: str) -> float:
    h = Harness(parse_config(config(case)))
    out = h.transport.out
    for _ in range(200):  # warm up
        await h.proxied(REQUEST)
    assert out and out[-1].endswith(BODY), out[-1:]
    out.clear()
    t0 = time.process_time()
    for _ in range(n):
        await h.proxied(REQUEST)
    elapsed = time.process_time() - t0
    assert len(out) == n and all(o.endswith(BODY) for o in out)
    return elapsed * 1e6 / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="both", choices=["layers", "hash", "both"])
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        runner: Any = uvloop.run
    else:
        runner = asyncio.run
    results = [runner(run(args.n, args.case)) for _ in range(args.repeat)]
    print(
        f"{args.loop} case={args.case}: {min(results):.2f} µs of Python per proxied request "
        f"(best of {args.repeat}: " + ", ".join(f"{r:.2f}" for r in results) + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
