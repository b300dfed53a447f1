"""Added CPU per request of the local rate limit (target: at most 1 µs).

    python bench/edge/ratelimit.py [-n 1000000]

Times ``RateLimit.request_filter`` as the proxy calls it (one plain call per request)
against a filter that does nothing, on the same request and context: "allowed" is a
known client with tokens left (the common case), "refused" builds the 429. The
difference to "no filter" is what turning the limit on adds to a request.
"""

from __future__ import annotations

import argparse
import timeit

from monolake.apps.edge.ratelimit import RateLimit
from monolake.apps.proxy import HttpFilter
from monolake.core.proto.http1 import Headers, Request
from monolake.core.service import Context


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1_000_000)
    n = ap.parse_args().n
    req = Request(b"GET", b"/", Headers([(b"Host", b"x"), (b"X-Api-Key", b"k")]))
    ctx = Context("10.0.0.1", "web", 0.0)
    noop = HttpFilter().request_filter
    allowed = RateLimit(requests=1e12, workers=1).request_filter
    by_header = RateLimit(requests=1e12, key="header:X-Api-Key", workers=1).request_filter
    refused = RateLimit(requests=1, period=1e9, workers=1)
    refused.request_filter(req, ctx)
    results = {}
    for name, f in (
        ("no filter", noop),
        ("allowed (ip)", allowed),
        ("allowed (header)", by_header),
        ("refused (429)", refused.request_filter),
    ):
        f(req, ctx)
        best = min(timeit.repeat(lambda f=f: f(req, ctx), number=n, repeat=5))
        results[name] = best / n * 1e9
    base = results["no filter"]
    for name, ns in results.items():
        print(f"{name:18} {ns:8.1f} ns/call   added {ns - base:8.1f} ns")


if __name__ == "__main__":
    main()
