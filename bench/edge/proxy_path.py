"""Added CPU per proxied request of each edge built-in, through the whole proxy path.

    python -m bench.edge.proxy_path [--loop uvloop|asyncio] [-n 20000] [--repeat 3]

The fake-transport drive of ``bench/micro/proxy_path.py`` (its ``Harness``) (a request fed to the
server protocol, a canned response from a fake upstream: only the Python work a
request costs in a worker), on one server whose routes differ only by their filters,
so every case runs in the same process, interleaved round by round:

- ``none``: no filter;
- ``noop``: a filter whose ``request_filter`` returns None (what any route filter costs:
  the route-level filter path itself);
- ``rate_limit``: a local limit keyed by client IP that never refuses;
- ``jwt``: an ES256 bearer token checked with keys from a file, the token seen before
  (the verified-token cache), its ``sub`` copied to ``X-User``;
- ``jwt+rate_limit``: both, the limit keyed by the token's ``sub``.

Prints µs per request per case and the difference to ``none``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey

from bench.micro.proxy_path import BODY, Harness
from monolake.apps.config import parse_config
from monolake.apps.proxy import HttpFilter
from monolake.core.proto.http1 import Request
from monolake.core.service import Context


def config(keys: str) -> dict[str, Any]:
    up = [{"endpoint": "http://127.0.0.1:9001"}]
    limit = {"use": "rate_limit", "args": {"requests": 1e12}}
    check = {"use": "jwt", "args": {"keys": [keys], "audiences": ["api"], "claims_to_headers": {"sub": "X-User"}}}
    by_sub = {"use": "rate_limit", "args": {"requests": 1e12, "key": "claim:sub"}}
    return {
        "runtime": {"workers": 1},
        "servers": {
            "web": {
                "listener": "127.0.0.1:0",
                "routes": [
                    {"path": "/none/", "upstreams": up},
                    {"path": "/noop/", "upstreams": up, "filters": ["__main__:Noop"]},
                    {"path": "/rate_limit/", "upstreams": up, "filters": [limit]},
                    {"path": "/jwt/", "upstreams": up, "filters": [check]},
                    {"path": "/jwt+rate_limit/", "upstreams": up, "filters": [check, by_sub]},
                ],
            }
        },
    }


CASES = ("none", "noop", "rate_limit", "jwt", "jwt+rate_limit")


class Noop(HttpFilter):
    def request_filter(self, req: Request, ctx: Context) -> None:
        return None


async def run(n: int, repeat: int, keys: str, tok: str) -> dict[str, list[float]]:
    h = Harness(parse_config(config(keys)))
    dt = h.transport
    one = h.proxied

    requests = {
        case: (
            f"GET /{case}/items?id=7 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench/1.0\r\n"
            f"Accept: */*\r\nAuthorization: Bearer {tok}\r\n\r\n"
        ).encode()
        for case in CASES
    }
    for case in CASES:  # warm up: connection pooled, token verified once
        for _ in range(200):
            await one(requests[case])
        assert dt.out[-1].startswith(b"HTTP/1.1 200") and dt.out[-1].endswith(BODY), (case, dt.out[-1][:200])
    results: dict[str, list[float]] = {c: [] for c in CASES}
    for _ in range(repeat):
        for case in CASES:
            dt.out.clear()
            req = requests[case]
            t0 = time.process_time()
            for _ in range(n):
                await one(req)
            results[case].append((time.process_time() - t0) * 1e6 / n)
            assert len(dt.out) == n and all(o.startswith(b"HTTP/1.1 200") for o in dt.out)
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    key = ECKey.generate_key("P-256", parameters={"kid": "k1"})
    claims = {"sub": "alice", "aud": "api", "exp": int(time.time()) + 3600}
    tok = jwt.encode({"alg": "ES256", "kid": "k1"}, claims, key, algorithms=["ES256"])
    with tempfile.TemporaryDirectory() as d:
        keys = Path(d) / "jwks.json"
        keys.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
        if args.loop == "uvloop":
            import uvloop

            results = uvloop.run(run(args.n, args.repeat, str(keys), tok))
        else:
            results = asyncio.run(run(args.n, args.repeat, str(keys), tok))
    base, noop = min(results["none"]), min(results["noop"])
    for case in CASES:
        best = min(results[case])
        print(
            f"{args.loop} {case:16} {best:7.2f} µs/request (best of {args.repeat})   "
            f"added {best - base:6.2f} µs ({best - noop:+6.2f} µs over a no-op route filter)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
