"""examples/edge/jwt.toml under ``monolake run``, its keys from a JWKS server this test
runs (a thread): ES256 and RS256 tokens pass with their claims as headers, expired /
wrong-audience / bad-signature tokens get 401, a token signed by a key added to the
JWKS later (a rotation) passes once the proxy refetched it, and the per-user rate limit
behind the JWT filter keys on the token's subject.

The loop does not matter to the filter: uvloop only.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from conftest import REPO, TIMEOUT, Origin, Proxy, ProxyFactory

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "examples" / "edge" / "jwt.toml"
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
ROTATED = ECKey.generate_key("P-256", parameters={"kid": "ec-2"})


class Jwks:
    """Serves ``keys`` as a JWKS; counts the fetches."""

    def __init__(self) -> None:
        self.keys: list[Any] = [EC, RSA]
        self.fetches = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                body = json.dumps({"keys": [k.as_dict(private=False) for k in jwks.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[tuple[Jwks, Proxy]]:
    jwks = Jwks()
    text = (
        EXAMPLE.read_text()
        .replace('listener = "127.0.0.1:8080"', 'listener = "127.0.0.1:0"')
        .replace("127.0.0.1:9000", origin.address)
        .replace("127.0.0.1:9100", jwks.address)
        .replace("refetch_min = 10", "refetch_min = 0.2")  # the rotation test waits this long
        .replace("requests = 10,", "requests = 3, period = 3600,")
    )
    factory = ProxyFactory(tmp_path_factory.mktemp("jwt"), "uvloop")
    try:
        yield jwks, factory(text)
    finally:
        factory.close()
        jwks.close()


def token(key: Any, alg: str, **claims: Any) -> str:
    base = {"iss": "https://id.example.com", "aud": "api", "sub": "alice", "exp": int(time.time()) + 300}
    base.update(claims)
    return jwt.encode({"alg": alg, "kid": key.kid}, base, key, algorithms=[alg])


def _get(c: httpx.Client, p: Proxy, tok: str) -> httpx.Response:
    return c.get(p.url + "/echo", headers={"Authorization": f"Bearer {tok}", "X-User": "spoofed"})


def test_tokens_from_the_jwks(setup: tuple[Jwks, Proxy]) -> None:
    jwks, p = setup
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        for key, alg, sub in ((EC, "ES256", "es"), (RSA, "RS256", "rs")):
            r = _get(c, p, token(key, alg, sub=sub, scope="read"))
            assert r.status_code == 200, r.text
            headers = [(k.lower(), v) for k, v in r.json()["headers"]]
            assert [v for k, v in headers if k == "x-user"] == [sub]
            assert ("x-scopes", "read") in headers
        bad = {
            "expired": token(EC, "ES256", exp=int(time.time()) - 3600),
            "'aud'": token(EC, "ES256", aud="other"),
            "signature": token(ECKey.generate_key("P-256", parameters={"kid": "ec-1"}), "ES256"),
        }
        for reason, tok in bad.items():
            r = _get(c, p, tok)
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith('Bearer realm="monolake", error="invalid_token"')
            assert reason in r.headers["www-authenticate"]
        r = c.get(p.url + "/echo")
        assert (r.status_code, r.headers["www-authenticate"]) == (401, 'Bearer realm="monolake"')
    assert jwks.fetches == 1  # fetched once, on the first request


def test_unknown_kid_refetches_the_jwks(setup: tuple[Jwks, Proxy]) -> None:
    jwks, p = setup
    tok = token(ROTATED, "ES256", sub="rotated")
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        c.get(p.url + "/echo", headers={"Authorization": f"Bearer {token(EC, 'ES256')}"})  # keys loaded
        before = jwks.fetches
        r = _get(c, p, tok)
        assert r.status_code == 401 and "unknown key id 'ec-2'" in r.headers["www-authenticate"]
        jwks.keys = [EC, RSA, ROTATED]  # the identity provider rotates
        deadline = time.monotonic() + TIMEOUT
        while (r := _get(c, p, tok)).status_code == 401:  # within refetch_min of the last fetch: not yet
            assert time.monotonic() < deadline, "the rotated key was never fetched"
            time.sleep(0.05)
        assert r.status_code == 200
        assert jwks.fetches > before


def test_rate_limit_keyed_by_the_token_subject(setup: tuple[Jwks, Proxy]) -> None:
    _, p = setup
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        carol = token(EC, "ES256", sub="carol")
        assert [_get(c, p, carol).status_code for _ in range(4)] == [200, 200, 200, 429]
        assert _get(c, p, token(RSA, "RS256", sub="dave")).status_code == 200  # another subject
