"""Added CPU per request of JWT validation (issue target: ES256 with a cached key at most 15 µs).

    python bench/edge/jwt.py [-n 500] [--rounds 20] [--md bench/results/edge-jwt-DATE.md]

Times ``Jwt.request_filter`` (keys from a file: a plain call) per algorithm (ES256,
RS256 2048-bit, EdDSA Ed25519, HS256), on the same request, each row the best of
``--rounds`` rounds of ``n`` calls, the rows interleaved round by round:

- "token cached": a token seen before (the filter's verified-token cache: a dict lookup,
  the exp/nbf checks, the claim copied to a header);
- "signature verified": the cache off (``cache_size = 0``): every call parses the token,
  verifies its signature with the key made at load time and checks the claims;
- "signature verified, before": the same with the filter of git revision ``--before`` (default
  ``ddb26e5``, which verified through joserfc; HS256 it did not take), its ``jwt.py`` loaded beside
  this tree's: the before/after in one run;
- "floor": ``cryptography``'s verify of the same signature alone (OpenSSL plus the binding),
  and, for ES256 and RS256, OpenSSL's own ``openssl speed`` verify time when the binary is there.

Rough on a busy machine (the load average is printed): compare rows of one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from types import ModuleType
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from monolake.apps.edge.jwt import Jwt, _b64
from monolake.core.proto.http1 import Headers, Request
from monolake.core.service import Context


def openssl_verify_us(what: str) -> float | None:
    """µs per verify from ``openssl speed`` (ecdsap256, rsa2048), or None without the binary."""
    exe = shutil.which("openssl")
    if exe is None:
        return None
    out = subprocess.run([exe, "speed", "-seconds", "1", what], capture_output=True, text=True, check=False).stdout
    last = out.strip().splitlines()[-1:] or [""]
    nums = re.findall(r"\d+\.\d+", last[0])
    return 1e6 / float(nums[-1]) if nums else None  # the last column: verifies per second


def load_before(rev: str) -> ModuleType:
    """``src/monolake/apps/edge/jwt.py`` of git revision ``rev``, loaded beside this tree's (on its core)."""
    src = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parents[2]), "show", f"{rev}:src/monolake/apps/edge/jwt.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spec = importlib.util.spec_from_loader("monolake.apps.edge._jwt_before", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "monolake.apps.edge"
    sys.modules[spec.name] = module
    exec(compile(src, f"{rev}:jwt.py", "exec"), module.__dict__)
    return module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=500, help="calls per round")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--md", help="also write the table to this markdown file")
    ap.add_argument("--before", default="ddb26e5", help="the revision whose jwt.py is the 'before' row")
    args = ap.parse_args()
    n = args.n
    keys: dict[str, Any] = {
        "ES256": ECKey.generate_key("P-256", parameters={"kid": "e"}),
        "RS256": RSAKey.generate_key(2048, parameters={"kid": "r"}),
        "EdDSA": OKPKey.generate_key("Ed25519", parameters={"kid": "o"}),
        "HS256": OctKey.generate_key(256, parameters={"kid": "h"}),
    }
    claims = {"iss": "i", "aud": "api", "sub": "alice", "exp": int(time.time()) + 3600}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "jwks.json"
        path.write_text(json.dumps({"keys": [k.as_dict(private=k.key_type == "oct") for k in keys.values()]}))
        common: dict[str, Any] = {"keys": [str(path)], "issuers": ["i"], "audiences": ["api"]}
        common |= {"claims_to_headers": {"sub": "X-User"}, "algorithms": list(keys)}
        cached = Jwt(**common)
        uncached = Jwt(**common, cache_size=0)
        # The revision before: asymmetric keys only (it took no shared secrets).
        public = Path(d) / "public.json"
        public.write_text(
            json.dumps({"keys": [k.as_dict(private=False) for k in keys.values() if k.key_type != "oct"]})
        )
        old_args = {**common, "keys": [str(public)], "algorithms": ["ES256", "RS256", "EdDSA"], "cache_size": 0}
        old_uncached = load_before(args.before).Jwt(**old_args)
    ctx = Context("10.0.0.1", "web", 0.0)
    load = os.getloadavg()[0]
    cases: dict[tuple[str, str], Any] = {}
    for alg, key in keys.items():
        tok = jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])
        req = Request(b"GET", b"/", Headers([(b"Host", b"x"), (b"Authorization", f"Bearer {tok}".encode())]))
        for f in (cached.request_filter, uncached.request_filter):
            assert f(req, ctx) is None, alg
        signing_input, _, sig = tok.encode().rpartition(b".")
        check = uncached.keys[key.kid].verifiers[alg]
        assert check(signing_input, _b64(sig))
        raw = _raw_verify(alg, key, signing_input, _b64(sig))
        cases[(alg, "token cached")] = lambda f=cached.request_filter, r=req: f(r, ctx)
        cases[(alg, "signature verified")] = lambda f=uncached.request_filter, r=req: f(r, ctx)
        if alg != "HS256":
            f = old_uncached.request_filter
            assert f(req, ctx) is None, alg
            cases[(alg, f"signature verified, before ({args.before}: joserfc)")] = lambda f=f, r=req: f(r, ctx)
        cases[(alg, "floor: cryptography verify")] = raw
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):  # interleaved: a load change hits every row alike
        for case, f in cases.items():
            us = timeit.timeit(f, number=n) / n * 1e6
            best[case] = min(best.get(case, us), us)
    rows = [(alg, name, us) for (alg, name), us in best.items()]
    for alg, speed in (("ES256", "ecdsap256"), ("RS256", "rsa2048")):
        ossl = openssl_verify_us(speed)
        if ossl is not None:
            rows.append((alg, "floor: openssl speed verify", ossl))
    rows.sort(key=lambda r: list(keys).index(r[0]))
    lines = [
        f"JWT validation, µs per call (best of {args.rounds} interleaved rounds of {n}); load average "
        f"{load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; {os.cpu_count()} CPUs",
        "",
        "| alg | case | µs |",
        "|---|---|---:|",
    ]
    lines += [f"| {alg} | {case} | {us:.2f} |" for alg, case, us in rows]
    text = "\n".join(lines)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")


def _raw_verify(alg: str, key: Any, data: bytes, sig: bytes) -> Any:
    """The signature check alone, with ``cryptography``'s key object (the DER signature prepared)."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    if alg == "HS256":
        secret = key.raw_value
        return lambda: hmac.compare_digest(hmac.digest(secret, data, hashlib.sha256), sig)
    pub = key.private_key.public_key()
    if alg == "ES256":
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        algo = ec.ECDSA(hashes.SHA256())
        return lambda: pub.verify(der, data, algo)
    if alg == "RS256":
        pad, h = padding.PKCS1v15(), hashes.SHA256()
        return lambda: pub.verify(sig, data, pad, h)
    return lambda: pub.verify(sig, data)


if __name__ == "__main__":
    main()
