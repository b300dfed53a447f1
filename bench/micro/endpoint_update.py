"""What a discovery update costs a worker, and that picking costs the same after one.

    python bench/micro/endpoint_update.py [-n 200]

For each balancer and a set of 10, 100 and 1000 endpoints: the time of one
``UpstreamCluster.set_endpoints`` (one endpoint replaced, the rest kept: the balancer is
rebuilt once, states and pooled connections of the kept ones stay), and the time of one
``balancer.pick`` on a cluster built from config and on the same set after an update
(they should match: the update builds the same tables). No sockets; the numbers are
rough on a busy machine (compare runs taken side by side).
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

from monolake.apps.config import Cluster, UpstreamSpec
from monolake.apps.proxy._upstream import UpstreamCluster
from monolake.core.address import parse_endpoint
from monolake.core.client import Pool
from monolake.core.proto.http1 import Headers, Request

KINDS = ("round_robin", "weighted_round_robin", "random", "least_request", "consistent_hash")


def cluster(kind: str, n: int) -> UpstreamCluster:
    specs = [UpstreamSpec(endpoint=f"10.0.{i // 250}.{i % 250 + 1}:80", weight=1 + i % 3) for i in range(n)]
    return UpstreamCluster.from_config("b", Cluster(endpoints=specs, load_balancer=kind), Pool())


def per_pick(c: UpstreamCluster, picks: int = 20000) -> float:
    req = Request(b"GET", b"/", Headers([(b"Host", b"x")]))
    req.ctx = SimpleNamespace(peer="192.0.2.7")
    pick = c.balancer.pick
    t = time.perf_counter()
    for _ in range(picks):
        pick(req)
    return (time.perf_counter() - t) / picks * 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200, help="updates timed per row")
    args = ap.parse_args()
    print(f"{'balancer':22} {'endpoints':>9} {'update µs':>10} {'pick ns static':>15} {'pick ns updated':>16}")
    for kind in KINDS:
        for n in (10, 100, 1000):
            c = cluster(kind, n)
            static = per_pick(c)
            eps = list(c.endpoints)
            spare = parse_endpoint("10.9.9.9:80")
            rounds = max(1, args.n // (1 if n < 1000 else 10))
            t = time.perf_counter()
            for i in range(rounds):
                c.set_endpoints([*eps[1:], spare] if i % 2 == 0 else eps)
            update = (time.perf_counter() - t) / rounds * 1e6
            print(f"{kind:22} {n:9d} {update:10.1f} {static:15.0f} {per_pick(c):16.0f}")


if __name__ == "__main__":
    main()
