"""CPU per request of a JWT route whose keys come from a JWKS URL (``Jwt(jwks_url=...)``), against
the same route with keys from a file and with no filter, in one run (the ``bench/micro/proxy_path.py``
harness: the real server → proxy → upstream client path over fake transports).

    python -m bench.edge.jwks_route [--loop uvloop|asyncio] [-n 20000] [--repeat 5]

The token is ES256 and cached after its first request (the verified-token cache): the rows differ by
how the filter is called. Before ``@may_await`` the JWKS filter was ``async def``: a coroutine per
request, awaited through the proxy's async-phase runner (with a server ``request_timeout``, inside an
``asyncio.timeout_at`` scope too); now a cached key is a plain call. For a before/after, run it under
each tree (``PYTHONPATH=TREE/src:.``, ``MONOLAKE_PURE=1`` for both unless both are compiled), alternating.
The JWKS is served by a thread of this process, fetched once (warm-up) and not again (``refresh`` 1 h).
Rough on a busy machine: compare rows of one run; the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey

from bench.micro.proxy_path import BODY, Harness
from monolake.apps.config import parse_config

KEY = ECKey.generate_key("P-256", parameters={"kid": "e1"})
TOKEN = jwt.encode(
    {"alg": "ES256", "kid": "e1"}, {"sub": "alice", "aud": "api", "exp": int(time.time()) + 86400}, KEY, ["ES256"]
)
REQUEST = (
    b"GET /api/v1/items?id=7 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n"
    b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
)


def serve_jwks() -> tuple[ThreadingHTTPServer, str]:
    body = json.dumps({"keys": [KEY.as_dict(private=False)]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/jwks.json"


def config(filters: list[Any], timeout: float | None) -> dict[str, Any]:
    web: dict[str, Any] = {"listener": "127.0.0.1:0", "routes": [{"path": "/api/", "upstream": "api"}]}
    web["filters"] = filters
    if timeout is not None:
        web["request_timeout"] = timeout
    return {"servers": {"web": web}, "upstreams": {"api": {"endpoints": [{"endpoint": "http://127.0.0.1:9001"}]}}}


async def run(cfg: dict[str, Any], n: int) -> float:
    """µs of the loop thread's CPU per request."""
    h = Harness(parse_config(cfg))
    dt = h.transport
    await h.proxied(REQUEST)  # a JWKS route fetches its keys on the first request
    for _ in range(50):
        if dt.out and dt.out[-1].endswith(BODY):
            break
        await asyncio.sleep(0.02)
    for _ in range(200):
        await h.proxied(REQUEST)
    assert dt.out and dt.out[-1].endswith(BODY), dt.out[-1:]
    dt.out.clear()
    t0 = time.thread_time()
    for _ in range(n):
        await h.proxied(REQUEST)
    elapsed = time.thread_time() - t0
    assert len(dt.out) == n and all(o.endswith(BODY) for o in dt.out), dt.out[-1][-200:]
    h.app.close()
    return elapsed * 1e6 / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        runner: Any = uvloop.run
    else:
        runner = asyncio.run
    server, url = serve_jwks()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        keyfile = Path(d) / "jwks.json"
        keyfile.write_text(json.dumps({"keys": [KEY.as_dict(private=False)]}))
        common = {"audiences": ["api"], "algorithms": ["ES256"], "refresh": 3600.0}
        rows: dict[str, dict[str, Any]] = {
            "no filter": config([], None),
            "jwt, keys from a file": config([{"use": "jwt", "args": {"keys": [str(keyfile)], **common}}], None),
            "jwt, jwks_url": config([{"use": "jwt", "args": {"jwks_url": url, **common}}], None),
            "no filter, request_timeout 30": config([], 30.0),
            "jwt, jwks_url, request_timeout 30": config([{"use": "jwt", "args": {"jwks_url": url, **common}}], 30.0),
        }
        best: dict[str, float] = {}
        for _ in range(args.repeat):  # interleaved: a load change hits every row alike
            for name, cfg in rows.items():
                us = runner(run(cfg, args.n))
                best[name] = min(best.get(name, us), us)
    server.shutdown()
    print(
        f"{args.loop}, best of {args.repeat} x {args.n} requests (ES256 token, cached); load average "
        f"{load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; {os.cpu_count()} CPUs"
    )
    print(f"{'':40} {'µs/request':>11} {'added':>8}")
    for name, us in best.items():  # each against the unfiltered route with the same request_timeout
        base = best["no filter, request_timeout 30" if "request_timeout" in name else "no filter"]
        print(f"{name:40} {us:11.2f} {us - base:+8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
