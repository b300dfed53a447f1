"""Added CPU per request of JWT validation (target: ES256 with a cached key at most 15 µs).

    python bench/edge/jwt.py [-n 20000]

Times ``Jwt.request_filter`` (keys from a file: a plain call) against a filter that does
nothing, on the same request: "verified token cached" is a token seen before (the
filter's verified-token cache: a dict lookup and the exp/nbf checks), "signature
verified" turns that cache off (``cache_size = 0``), so every call parses the token and
verifies its signature with the cached key (joserfc over OpenSSL's ECDSA P-256 / RSA).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import timeit
from pathlib import Path

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from monolake.apps.edge.jwt import Jwt
from monolake.apps.proxy import HttpFilter
from monolake.core.proto.http1 import Headers, Request
from monolake.core.service import Context


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20_000)
    n = ap.parse_args().n
    ec = ECKey.generate_key("P-256", parameters={"kid": "e"})
    rsa = RSAKey.generate_key(2048, parameters={"kid": "r"})
    claims = {"iss": "i", "aud": "api", "sub": "alice", "exp": int(time.time()) + 3600}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "jwks.json"
        path.write_text(json.dumps({"keys": [ec.as_dict(private=False), rsa.as_dict(private=False)]}))
        args = {"keys": [str(path)], "issuers": ["i"], "audiences": ["api"], "claims_to_headers": {"sub": "X-User"}}
        cached = Jwt(**args).request_filter
        uncached = Jwt(**args, cache_size=0).request_filter
    ctx = Context("10.0.0.1", "web", 0.0)
    results: dict[str, float] = {}
    for alg, key in (("ES256", ec), ("RS256", rsa)):
        tok = jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])
        req = Request(b"GET", b"/", Headers([(b"Host", b"x"), (b"Authorization", f"Bearer {tok}".encode())]))
        cases = [("no filter", HttpFilter().request_filter), ("verified token cached", cached)]
        cases.append(("signature verified", uncached))
        for name, f in cases:
            assert f(req, ctx) is None
            best = min(timeit.repeat(lambda f=f, req=req: f(req, ctx), number=n, repeat=5))
            results[f"{alg} {name}"] = best / n * 1e6
        base = results[f"{alg} no filter"]
        for name, _ in cases:
            us = results[f"{alg} {name}"]
            print(f"{alg} {name:22} {us:8.2f} µs/call   added {us - base:8.2f} µs")


if __name__ == "__main__":
    main()
