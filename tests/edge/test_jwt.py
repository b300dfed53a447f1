"""The Jwt filter with keys from files (a JWKS and a PEM), called as the proxy calls it."""

from __future__ import annotations

import base64
import inspect
import json
import time
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from monolake.apps.config import FilterSpec
from monolake.apps.edge._shared import CLAIMS
from monolake.apps.edge.jwt import JwksJwt, Jwt
from monolake.apps.proxy._filters import load_filters
from monolake.core.errors import ConfigError
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.service import Context

EC = ECKey.generate_key("P-256", parameters={"kid": "e1"})
RSA = RSAKey.generate_key(2048, parameters={"kid": "r1"})
OTHER_EC = ECKey.generate_key("P-256", parameters={"kid": "e1"})  # same kid, another key
PEM_EC = ECKey.generate_key("P-256")


async def settle(verdict: Any) -> Any:
    """A ``@may_await`` request_filter's answer: awaited when it gave an awaitable."""
    return await verdict if inspect.isawaitable(verdict) else verdict


def token(key: Any, alg: str, **claims: Any) -> str:
    base = {"iss": "https://id.test", "aud": "api", "sub": "alice", "exp": int(time.time()) + 300}
    base.update(claims)
    header = {"alg": alg}
    if key.kid:
        header["kid"] = key.kid
    return jwt.encode(header, {k: v for k, v in base.items() if v is not None}, key, algorithms=[alg])


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("keys")
    jwks = d / "jwks.json"
    jwks.write_text(json.dumps({"keys": [EC.as_dict(private=False), RSA.as_dict(private=False)]}))
    pem = d / "key.pem"
    pem.write_bytes(PEM_EC.as_pem(private=False))
    return [str(jwks), str(pem)]


@pytest.fixture(scope="module")
def flt(key_files: list[str]) -> Jwt:
    return Jwt(
        keys=key_files,
        issuers=["https://id.test"],
        audiences=["api", "admin"],
        required_claims=["exp", "sub"],
        leeway=5,
        claims_to_headers={"sub": "X-User", "scope": "X-Scopes"},
    )


def run(
    f: Jwt, tok: str | None, *, scheme: str = "Bearer", extra: list[tuple[bytes, bytes]] | None = None
) -> tuple[Response | None, Request, Context]:
    headers = list(extra or [])
    if tok is not None:
        headers.append((b"Authorization", f"{scheme} {tok}".encode()))
    req = Request(b"GET", b"/", Headers(headers))
    ctx = Context("10.0.0.1", "web", 0.0)
    out = f.request_filter(req, ctx)
    assert not hasattr(out, "__await__")  # keys from files: a plain call
    return out, req, ctx  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("key", "alg"), [(EC, "ES256"), (RSA, "RS256"), (PEM_EC, "ES256")], ids=["ES256", "RS256", "pem"]
)
def test_valid_tokens_pass_with_claims_as_headers(flt: Jwt, key: Any, alg: str) -> None:
    out, req, ctx = run(flt, token(key, alg, scope=["read", "write"]), extra=[(b"X-User", b"mallory")])
    assert out is None
    assert req.headers.get_all("x-user") == [b"alice"]  # the client's own X-User is gone
    assert req.headers.get("x-scopes") == b"read,write"
    assert CLAIMS.get(ctx)["sub"] == "alice"


def _desc(r: Response | None) -> str:
    assert r is not None and r.status == 401
    value = r.headers.get("www-authenticate")
    assert value is not None and value.startswith(b'Bearer realm="monolake"')
    return value.decode()


@pytest.mark.parametrize(
    ("tok", "reason"),
    [
        (lambda: token(EC, "ES256", exp=int(time.time()) - 60), "expired"),
        (lambda: token(EC, "ES256", aud="other"), "'aud'"),
        (lambda: token(EC, "ES256", iss="https://evil.test"), "'iss'"),
        (lambda: token(EC, "ES256", sub=None), "'sub'"),
        (lambda: token(OTHER_EC, "ES256"), "signature"),
        (lambda: token(RSA, "RS512"), "algorithm 'RS512' not accepted"),
        (lambda: "not.a.token", "malformed"),
        (lambda: "abc", "not a compact JWS"),
    ],
    ids=["expired", "audience", "issuer", "missing-claim", "bad-signature", "alg", "garbage", "parts"],
)
def test_bad_tokens_get_401_invalid_token(flt: Jwt, tok: Any, reason: str) -> None:
    out, req, _ = run(flt, tok(), extra=[(b"X-User", b"mallory")])
    desc = _desc(out)
    assert 'error="invalid_token"' in desc and reason in desc, desc
    assert req.headers.get("x-user") == b"mallory"  # refused: the request goes nowhere anyway


def test_alg_none_and_missing_credentials(flt: Jwt) -> None:
    assert "algorithm None not accepted" in _desc(run(flt, "e30.e30.")[0])  # {}.{}. : no alg
    assert "algorithm 'none' not accepted" in _desc(run(flt, "eyJhbGciOiJub25lIn0.e30.")[0])
    assert _desc(run(flt, None)[0]) == 'Bearer realm="monolake"'  # no error code without a token (RFC 6750 3.1)
    assert _desc(run(flt, token(EC, "ES256"), scheme="Basic")[0]) == 'Bearer realm="monolake"'


def test_leeway_and_the_verified_token_cache(flt: Jwt) -> None:
    tok = token(EC, "ES256", exp=int(time.time()) - 2)  # expired, within the 5 s leeway
    assert run(flt, tok)[0] is None
    assert tok.encode() in flt.cache
    out, req, _ = run(flt, tok)  # from the cache: same answer, same headers
    assert out is None and req.headers.get("x-user") == b"alice"
    exp = flt.cache[tok.encode()][2]
    flt.cache[tok.encode()] = ({"sub": "stale"}, float("-inf"), time.time() - 60, ())
    out, req, _ = run(flt, tok)  # the stale entry is dropped and the token verified again
    assert out is None and req.headers.get("x-user") == b"alice" and flt.cache[tok.encode()][2] == exp


def test_unknown_key_id(key_files: list[str]) -> None:
    f = Jwt(keys=key_files[:1], audiences=["api"])  # the JWKS only: no PEM key to fall back on
    stranger = ECKey.generate_key("P-256", parameters={"kid": "zz"})
    assert "unknown key id 'zz'" in _desc(run(f, token(stranger, "ES256"))[0])


def test_jwks_url_makes_the_async_variant() -> None:
    f = Jwt(jwks_url="http://127.0.0.1:1/jwks.json", audiences=["api"])
    assert isinstance(f, JwksJwt)


@pytest.mark.parametrize(
    ("args", "where", "reason"),
    [
        ({}, "args.keys", "give keys (files) or jwks_url"),
        ({"keys": ["/nonexistent/jwks.json"]}, "args.keys[0]", "cannot read /nonexistent/jwks.json"),
        ({"jwks_url": "ftp://x/"}, "args.jwks_url", "must be an http(s):// URL"),
        ({"jwks_url": "http://x/", "algorithms": ["ES256", "HS256"]}, "args.algorithms[1]", "'HS256' not supported"),
        (
            {"jwks_url": "http://x/", "claims_to_headers": {"sub": "X User"}},
            "args.claims_to_headers.sub",
            "not a header",
        ),
        ({"jwks_url": "http://x/", "refresh": 0}, "args.refresh", "must be a number of seconds > 0"),
        ({"jwks_url": "http://x/", "leeway": "5s"}, "args.leeway", "Expected `int`, got `str`"),
    ],
)
def test_bad_settings_are_config_errors_at_their_key_path(args: dict[str, Any], where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_filters([FilterSpec(use="jwt", args=args)], "servers.api.filters")
    assert str(info.value).startswith(f"servers.api.filters[0].{where}: ") and reason in str(info.value)


def test_private_keys_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "private.json"
    p.write_text(json.dumps(EC.as_dict(private=True)))
    with pytest.raises(ValueError, match="holds a private key"):
        Jwt(keys=[str(p)])


def test_jwks_unreachable_answers_503_without_asking_on_every_request() -> None:
    import asyncio
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = Jwt(jwks_url=f"http://127.0.0.1:{port}/jwks.json", refetch_min=60)
    assert isinstance(f, JwksJwt)

    async def go() -> list[Any]:
        out = []
        for i in range(2):
            req = Request(b"GET", b"/", Headers([(b"Authorization", f"Bearer {token(EC, 'ES256')}".encode())]))
            ctx = Context("10.0.0.1", "web", asyncio.get_running_loop().time())
            verdict = f.request_filter(req, ctx)
            assert inspect.isawaitable(verdict) is (i == 0)  # the second, with no fetch due, answers directly
            out.append(await settle(verdict))
        return out

    first, second = asyncio.run(go())
    assert first.status == 503 and first.headers.get("retry-after") == b"1"
    assert second.status == 503
    assert f.fetches == 1  # the second one did not ask again (NO_KEYS_RETRY)


def test_the_error_description_is_printable_and_bounded(key_files: list[str]) -> None:
    f = Jwt(keys=key_files[:1])  # no PEM key to fall back on: an unknown kid is named in the answer
    kid = 'x"\r\nSet-Cookie: a=b\\' + "é" * 40 + "z" * 300
    header = base64.urlsafe_b64encode(json.dumps({"alg": "ES256", "kid": kid}).encode()).rstrip(b"=").decode()
    desc = _desc(run(f, f"{header}.e30.sig")[0])
    assert "unknown key id" in desc and "Set-Cookie" in desc  # quoted, but on the one line
    assert desc.isascii() and "\r" not in desc and "\n" not in desc and desc.count('"') == 6 and len(desc) < 300


def test_claims_with_control_characters_are_cleaned_for_headers(flt: Jwt) -> None:
    out, req, _ = run(flt, token(EC, "ES256", sub="al\r\nX-Evil: 1\x00ice"))
    assert out is None and req.headers.get("x-user") == b"alX-Evil: 1ice"


# -- verification with cryptography: each algorithm family, the key deciding the algorithm --------

ED = OKPKey.generate_key("Ed25519", parameters={"kid": "o1"})
SECRET = OctKey.generate_key(256, parameters={"kid": "h1"})
RSA_PS = RSAKey.generate_key(2048, parameters={"kid": "p1", "alg": "PS256"})  # this key: PS256 only


@pytest.fixture(scope="module")
def every_alg(tmp_path_factory: pytest.TempPathFactory) -> Jwt:
    d = tmp_path_factory.mktemp("every")
    jwks = d / "jwks.json"
    public = [k.as_dict(private=False) for k in (EC, RSA, ED, RSA_PS)]
    jwks.write_text(json.dumps({"keys": [*public, SECRET.as_dict(private=True)]}))
    return Jwt(keys=[str(jwks)], audiences=["api"], algorithms=["ES256", "RS256", "PS256", "EdDSA", "HS256"])


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")  # joserfc signing EdDSA (RFC 9864's name)
@pytest.mark.parametrize(
    ("key", "alg"),
    [(EC, "ES256"), (RSA, "RS256"), (RSA, "PS256"), (RSA_PS, "PS256"), (ED, "EdDSA"), (SECRET, "HS256")],
    ids=["ES256", "RS256", "PS256", "PS256-key-alg", "EdDSA", "HS256"],
)
def test_every_algorithm_verifies_and_a_flipped_signature_bit_fails(every_alg: Jwt, key: Any, alg: str) -> None:
    tok = token(key, alg)
    assert run(every_alg, tok)[0] is None
    head, payload, sig = tok.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 1
    bad = f"{head}.{payload}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"
    assert "bad signature" in _desc(run(every_alg, bad)[0])
    # The payload changed under the same signature: refused too.
    other = base64.urlsafe_b64encode(json.dumps({"sub": "mallory", "aud": "api"}).encode()).rstrip(b"=").decode()
    assert "bad signature" in _desc(run(every_alg, f"{head}.{other}.{sig}")[0])


def test_the_key_decides_the_algorithm_not_the_token(every_alg: Jwt) -> None:
    # The classic confusion: an HS256 token "signed" with the RSA public key's PEM as the secret.
    import hashlib
    import hmac

    claims = {"aud": "api", "sub": "mallory", "exp": int(time.time()) + 300}
    unsigned = _unsigned({"alg": "HS256", "kid": "r1"}, claims).rpartition(".")[0]
    mac = hmac.digest(RSA.as_pem(private=False), unsigned.encode(), hashlib.sha256)
    forged = unsigned + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert "the key is for RS256" in _desc(run(every_alg, forged)[0])
    # A key whose JWK says PS256 verifies PS256 only, though RS256 is accepted by the filter.
    same = RSAKey.import_key({k: v for k, v in RSA_PS.as_dict(private=True).items() if k != "alg"})
    assert "the key is for PS256, the token says RS256" in _desc(run(every_alg, token(same, "RS256"))[0])
    # An EC P-256 key is for ES256 alone.
    assert "the key is for ES256, the token says EdDSA" in _desc(
        run(every_alg, _unsigned({"alg": "EdDSA", "kid": "e1"}))[0]
    )


def _unsigned(header: dict[str, Any], claims: dict[str, Any] | None = None, sig: bytes = b"x") -> str:
    def enc(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    return ".".join([enc(json.dumps(header).encode()), enc(json.dumps(claims or {}).encode()), enc(sig)])


def test_malformed_tokens_are_refused_before_any_key_work(every_alg: Jwt) -> None:
    assert "critical header" in _desc(run(every_alg, _unsigned({"alg": "ES256", "kid": "e1", "crit": ["b64"]}))[0])
    good = token(EC, "ES256")
    head, payload, sig = good.split(".")
    assert "not base64url" in _desc(run(every_alg, f"{head}.{payload}.{sig[:-2]}+/")[0])  # base64, not base64url
    assert "malformed" in _desc(run(every_alg, f"{head}.{payload}.{sig}AAA")[0])  # 89 characters: not base64
    assert "bad signature" in _desc(run(every_alg, f"{head}.{payload}.{sig[:-4]}")[0])  # r || s cut short


def test_claim_types_and_times(every_alg: Jwt) -> None:
    assert "NumericDate" in _desc(run(every_alg, token(EC, "ES256", exp="tomorrow"))[0])
    assert "not valid yet" in _desc(run(every_alg, token(EC, "ES256", nbf=int(time.time()) + 60))[0])
    assert "issued in the future" in _desc(run(every_alg, token(EC, "ES256", iat=int(time.time()) + 60))[0])
    assert run(every_alg, token(EC, "ES256", aud=["other", "api"]))[0] is None  # one of the token's audiences
    assert "'aud'" in _desc(run(every_alg, token(EC, "ES256", aud=["other"]))[0])


def test_the_cache_is_bounded_oldest_first(key_files: list[str]) -> None:
    f = Jwt(keys=key_files, cache_size=2)
    toks = [token(EC, "ES256", sub=f"u{i}").encode() for i in range(3)]
    for t in toks:
        assert run(f, t.decode())[0] is None
    assert list(f.cache) == toks[1:]  # the first one went when the third came
    long = token(EC, "ES256", sub="x" * 5000)
    assert run(f, long)[0] is None and long.encode() not in f.cache  # over MAX_CACHED_TOKEN: not kept


def test_shared_secrets_only_from_files_never_from_a_jwks_url() -> None:
    from monolake.apps.edge.jwt import _import_jwks

    with pytest.raises(ValueError, match="shared secret"):
        _import_jwks(json.dumps({"keys": [SECRET.as_dict(private=True)]}), "http://x/jwks.json")
    assert set(_import_jwks(json.dumps(SECRET.as_dict(private=True)), "file", secrets=True)) == {"h1"}


def test_a_jwks_urls_unusable_keys_are_skipped_not_the_whole_set() -> None:
    """A key type or curve this filter does not take (secp256k1 here), a secret, a private key: told,
    and the set's other keys still used (a file's set refuses them instead)."""
    from monolake.apps.edge.jwt import _import_jwks

    k1 = {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": "AA", "y": "AA"}
    keys = [k1, SECRET.as_dict(private=True), ED.as_dict(private=True), EC.as_dict(private=False)]
    skipped: list[str] = []
    assert set(_import_jwks(json.dumps({"keys": keys}), "http://x/jwks.json", skipped=skipped)) == {"e1"}
    assert len(skipped) == 3 and "secp256k1" in skipped[0] and "shared secret" in skipped[1]
    assert "private key" in skipped[2]
    with pytest.raises(ValueError, match="key 0: EC curve 'secp256k1' not supported"):
        _import_jwks(json.dumps({"keys": keys}), "jwks.json", secrets=True)


def test_a_replaced_key_under_the_same_kid_clears_the_cache() -> None:
    """The JWKS server (a thread) serves EC as "e1", then another key under the same kid: a token
    EC signed passes from the cache until the refetch, then it is verified again, and refused."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    served = [EC]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"keys": [k.as_dict(private=False) for k in served]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        f = Jwt(jwks_url=f"http://127.0.0.1:{server.server_address[1]}/jwks.json")
        assert isinstance(f, JwksJwt)
        tok = token(EC, "ES256")

        async def go() -> list[Response | None]:
            out = []
            for swap in (False, True):
                if swap:
                    served[:] = [OTHER_EC]  # same kid "e1", another key
                    await f._get()
                req = Request(b"GET", b"/", Headers([(b"Authorization", f"Bearer {tok}".encode())]))
                verdict = f.request_filter(req, Context("10.0.0.1", "web", asyncio.get_running_loop().time()))
                # @may_await: a coroutine only while the key set is being fetched, a plain answer once it is known
                assert inspect.isawaitable(verdict) is (not swap)
                out.append(await settle(verdict))
            return out

        first, second = asyncio.run(go())
        assert first is None
        assert "bad signature" in _desc(second)
        assert f.fetches == 2
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
