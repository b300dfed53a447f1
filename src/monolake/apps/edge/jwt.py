"""JWT validation (RFC 7519) with keys from files or a JWKS URL; 401 with ``WWW-Authenticate``.

Built-in ``jwt`` (``Jwt``; settings ``JwtArgs``).

``Jwt(keys=[...])`` reads keys from files (a JWKS, one JWK, or a PEM public key or
certificate) once, at build time: its ``request_filter`` is a plain call.
``Jwt(jwks_url=...)`` is a ``JwksJwt``: it fetches the key set through the core ``Client``
on the first request, again every ``refresh`` seconds in the background (requests keep
using the keys they have), and right away when a token names a key id it does not know (a
key rotation), at most once per ``refetch_min`` seconds; one fetch at a time, which every
waiting request shares. Its ``request_filter`` is ``@may_await``: a request whose key is
known is checked by a plain call that returns its verdict (no coroutine, no await); only a
request that must wait for a fetch gets a coroutine to await.

The token is the ``Authorization: Bearer`` credential (or the raw value of ``header``).
Only ``algorithms`` are accepted (never ``none``), and the token's ``alg`` must be one its
key can verify: an EC key's curve names its ES algorithm, an RSA key verifies RS/PS, an
OKP key EdDSA, a shared secret (a ``"kty": "oct"`` JWK, from ``keys`` files only) HS; a
key's own ``alg`` narrows that to one. The header alone never picks the algorithm (no RSA
public key used as an HMAC secret). Then the claims: ``exp`` and ``nbf`` with ``leeway``
seconds, ``iss`` one of ``issuers``, ``aud`` containing one of ``audiences`` and every name
of ``required_claims`` present.

The token is parsed here (split, base64url with ``binascii``, ``msgspec`` JSON) and its
signature verified with ``cryptography``'s key objects, made once per key when the keys
are loaded: ES256 costs OpenSSL's P-256 verify (~45 µs here) plus ~7 µs. A verified
token is cached, bounded by ``cache_size`` (the oldest dropped first; tokens over
``MAX_CACHED_TOKEN`` bytes not cached), until its ``exp``; the cache is cleared when the
key set changes. The same token again costs a dict lookup and the time checks.

A passing request gets ``claims_to_headers`` (``{ sub = "X-User" }``: claim ``sub`` as header
``X-User``; the client's own copies of these headers are always removed first) and its
claims in the ``CLAIMS`` context slot (``RateLimit(key="claim:sub")`` reads it). A
failing one is answered 401 with ``WWW-Authenticate: Bearer realm=..., error="invalid_token",
error_description=...`` (RFC 6750 §3; no error code when no token was sent). When no key
set could be fetched at all, 503 (the fault is not the client's) and a warning, at most
once per 10 s.
"""

from __future__ import annotations

import asyncio
import binascii
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ...core.address import parse_endpoint
from ...core.proto.http1 import Headers, Request, Response
from ...core.service import Context
from ..proxy._filters import HttpFilter, may_await
from ._shared import CLAIMS, ArgError, answer, outage_log, settings_of

log = logging.getLogger("monolake.edge.jwt")

ASYMMETRIC = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA")
SYMMETRIC = ("HS256", "HS384", "HS512")
ALGORITHMS = ASYMMETRIC + SYMMETRIC
"""HS* only with a shared secret from ``keys`` files (never from a JWKS URL), and only when listed."""

MAX_JWKS_BYTES = 1 << 20
MAX_CACHED_TOKEN = 4096
"""Bytes: a longer token is verified every time (the cache holds at most ``cache_size`` of these)."""
NO_KEYS_RETRY = 1.0
"""Seconds between fetches while no key set could be fetched yet (requests get 503 meanwhile)."""

_TO_STD = bytes.maketrans(b"-_", b"+/")
_TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
_json = msgspec.json.Decoder()

Verify = Callable[[bytes, bytes], bool]
"""(signing input, signature) -> whether the signature is the key's."""


def _b64(segment: bytes | str) -> bytes:
    """base64url without padding (RFC 7515 §2) -> bytes; ValueError when it is not."""
    if isinstance(segment, str):
        segment = segment.encode("ascii")
    return binascii.a2b_base64(segment.translate(_TO_STD) + b"=" * (-len(segment) % 4), strict_mode=True)


def _b64_int(segment: Any, what: str) -> int:
    if not isinstance(segment, str):
        raise ValueError(f"{what} missing")
    return int.from_bytes(_b64(segment), "big")


class _Key:
    """One verification key: the ``cryptography`` key object behind a verifier per algorithm."""

    __slots__ = ("fingerprint", "verifiers")

    def __init__(self, verifiers: dict[str, Verify], fingerprint: bytes) -> None:
        self.verifiers = verifiers
        self.fingerprint = fingerprint
        """What the key is (its public bytes, or the secret): a key set change clears the token cache."""

    def algs(self) -> str:
        return "/".join(self.verifiers)


def _ec_verifier(pub: Any, size: int, hash_cls: Any) -> Verify:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    algo = ec.ECDSA(hash_cls())
    verify = pub.verify

    def check(data: bytes, sig: bytes) -> bool:
        if len(sig) != 2 * size:  # JWS's ECDSA signature is r || s, each the curve's size (RFC 7518 §3.4)
            return False
        der = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
        try:
            verify(der, data, algo)
        except InvalidSignature:
            return False
        return True

    return check


def _rsa_verifier(pub: Any, pad: Any, hash_obj: Any) -> Verify:
    from cryptography.exceptions import InvalidSignature

    verify = pub.verify

    def check(data: bytes, sig: bytes) -> bool:
        try:
            verify(sig, data, pad, hash_obj)
        except InvalidSignature:
            return False
        return True

    return check


def _ed_verifier(pub: Any) -> Verify:
    from cryptography.exceptions import InvalidSignature

    verify = pub.verify

    def check(data: bytes, sig: bytes) -> bool:
        try:
            verify(sig, data)
        except InvalidSignature:
            return False
        return True

    return check


def _hmac_verifier(secret: bytes, digest: str) -> Verify:
    def check(data: bytes, sig: bytes) -> bool:
        return hmac.compare_digest(hmac.digest(secret, data, digest), sig)

    return check


_CURVES = {"P-256": ("ES256", 32, "SECP256R1", "SHA256"), "P-384": ("ES384", 48, "SECP384R1", "SHA384")}
_CURVES["P-521"] = ("ES512", 66, "SECP521R1", "SHA512")


def _public_key(pub: Any) -> _Key:
    """The verifiers of a ``cryptography`` public key, by its type."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

    raw = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    verifiers: dict[str, Verify] = {}
    if isinstance(pub, ec.EllipticCurvePublicKey):
        for alg, size, curve, digest in _CURVES.values():
            if pub.curve.name == getattr(ec, curve).name:
                verifiers[alg] = _ec_verifier(pub, size, getattr(hashes, digest))
        if not verifiers:
            raise ValueError(f"EC curve {pub.curve.name} not supported (P-256, P-384, P-521)")
    elif isinstance(pub, rsa.RSAPublicKey):
        for bits in (256, 384, 512):
            h = getattr(hashes, f"SHA{bits}")()
            verifiers[f"RS{bits}"] = _rsa_verifier(pub, padding.PKCS1v15(), h)
            pss = padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)  # RFC 7518 §3.5
            verifiers[f"PS{bits}"] = _rsa_verifier(pub, pss, h)
    elif isinstance(pub, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        verifiers["EdDSA"] = _ed_verifier(pub)
    else:
        raise ValueError(f"not an EC, RSA or OKP public key ({type(pub).__name__})")
    return _Key(verifiers, raw)


def _jwk(obj: Any, secrets: bool) -> _Key:
    """A JWK (RFC 7517) as a key; ValueError when it is not one, or is private."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if not isinstance(obj, dict):
        raise ValueError("a key is not a JSON object")
    kty = obj.get("kty")
    if kty == "oct":
        if not secrets:
            raise ValueError(f"a shared secret (kid {obj.get('kid')!r}) does not belong in a JWKS URL's key set")
        secret = _b64(obj.get("k") or "")
        if not secret:
            raise ValueError("an oct key without k")
        key = _Key({f"HS{b}": _hmac_verifier(secret, f"sha{b}") for b in (256, 384, 512)}, secret)
    elif "d" in obj or "p" in obj:
        raise ValueError(f"holds a private key (kid {obj.get('kid')!r}); give the public keys only")
    elif kty == "EC":
        crv = obj.get("crv")
        if crv not in _CURVES:
            raise ValueError(f"EC curve {crv!r} not supported (P-256, P-384, P-521)")
        curve = getattr(ec, _CURVES[crv][2])()
        x, y = _b64_int(obj.get("x"), "x"), _b64_int(obj.get("y"), "y")
        key = _public_key(ec.EllipticCurvePublicNumbers(x, y, curve).public_key())
    elif kty == "RSA":
        n, e = _b64_int(obj.get("n"), "n"), _b64_int(obj.get("e"), "e")
        key = _public_key(rsa.RSAPublicNumbers(e, n).public_key())
    elif kty == "OKP":
        crv, okp = obj.get("crv"), obj.get("x")
        if not isinstance(okp, str):
            raise ValueError("x missing")
        if crv == "Ed25519":
            key = _public_key(ed25519.Ed25519PublicKey.from_public_bytes(_b64(okp)))
        elif crv == "Ed448":
            key = _public_key(ed448.Ed448PublicKey.from_public_bytes(_b64(okp)))
        else:
            raise ValueError(f"OKP curve {crv!r} not supported (Ed25519, Ed448)")
    else:
        raise ValueError(f"key type {kty!r} not supported (EC, RSA, OKP, oct)")
    alg = obj.get("alg")
    if alg is not None:  # the key says which algorithm it is for: only that one
        if alg not in key.verifiers:
            raise ValueError(f"a {kty} key cannot be for {alg!r}")
        key.verifiers = {alg: key.verifiers[alg]}
    return key


def _import_jwks(
    data: bytes | str, where: str, secrets: bool = False, skipped: list[str] | None = None
) -> dict[str | None, _Key]:
    """Key id -> key, from a JWKS or a single JWK (JSON) or a PEM public key or certificate.
    ``secrets``: oct keys (HS*) allowed (from files). ``skipped``: a key that is not usable (a key
    type or curve not supported, a private key...) is told there instead of failing the whole set
    (a JWKS URL's: its other keys still verify tokens)."""
    raw = data.encode() if isinstance(data, str) else data
    if raw.lstrip().startswith(b"-----BEGIN"):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            if b"-----BEGIN CERTIFICATE" in raw:
                pub: Any = x509.load_pem_x509_certificate(raw).public_key()
            else:
                pub = load_pem_public_key(raw)
            return {None: _public_key(pub)}
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: not an EC, RSA or OKP public key ({exc})") from None
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{where}: not a JWKS, JWK or PEM public key: {exc}") from None
    if isinstance(obj, dict) and "keys" not in obj:
        obj = {"keys": [obj]}
    if not isinstance(obj, dict) or not isinstance(obj["keys"], list):
        raise ValueError(f"{where}: not a JWKS, JWK or PEM public key")
    keys: dict[str | None, _Key] = {}
    for i, jwk in enumerate(obj["keys"]):
        if isinstance(jwk, dict) and jwk.get("use") == "enc":
            continue  # an encryption key: no use for signatures
        try:
            key = _jwk(jwk, secrets)
        except (ValueError, TypeError, binascii.Error) as exc:
            if skipped is None:
                raise ValueError(f"{where}: key {i}: {exc}") from None
            skipped.append(f"key {i}: {exc}")
            continue
        kid = jwk.get("kid")
        keys[kid if isinstance(kid, str) else None] = key
    return keys


def _fingerprints(keys: dict[str | None, _Key]) -> dict[str | None, tuple[bytes, tuple[str, ...]]]:
    return {kid: (k.fingerprint, tuple(k.verifiers)) for kid, k in keys.items()}


class _Invalid(Exception):
    """The token is refused; the message goes in ``error_description``."""


class JwtArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Settings of ``jwt`` (``Jwt``)."""

    keys: list[str] = []
    """Files of keys: a JWKS, one JWK or a PEM public key or certificate each (read when the server is built)."""
    jwks_url: str | None = None
    """An http(s) URL serving the key set (fetched on first use, refreshed, refetched for an unknown kid)."""
    issuers: list[str] = []
    """Accepted ``iss`` values; empty: any."""
    audiences: list[str] = []
    """Accepted ``aud`` values (the token's must hold one); empty: any."""
    required_claims: list[str] = msgspec.field(default_factory=lambda: ["exp"])
    """Claims a token must have."""
    leeway: int = 0
    """Seconds of clock skew allowed on ``exp`` and ``nbf``."""
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["ES256", "RS256"])
    """Accepted ``alg`` values; HS256/HS384/HS512 need a shared secret (an ``oct`` JWK) in ``keys`` files."""
    claims_to_headers: dict[str, str] = {}
    """Claim -> request header sent upstream (``{ sub = "X-User" }``); the client's copies are removed."""
    header: str = "Authorization"
    """Where the token is: ``Authorization`` (as ``Bearer TOKEN``) or another header (the raw token)."""
    realm: str = "monolake"
    """The ``realm`` of the 401's ``WWW-Authenticate``."""
    cache_size: int = 10_000
    """Verified tokens remembered until they expire (0: verify every time)."""
    refresh: float = 300.0
    """Seconds between background refreshes of the JWKS."""
    refetch_min: float = 10.0
    """Seconds at least between fetches caused by unknown key ids."""
    fetch_timeout: float = 5.0
    """Seconds a JWKS fetch may take."""


def _names(key: str, values: list[str]) -> tuple[str, ...]:
    for i, v in enumerate(values):
        if not v:
            raise ArgError(f"{key}[{i}]", "must not be empty")
    return tuple(values)


def _number(claims: dict[str, Any], name: str) -> float | None:
    """A NumericDate claim, or None when it is absent; _Invalid when it is not a number."""
    value = claims.get(name)
    if value is None:
        return None
    if type(value) is not int and type(value) is not float:  # not bool either
        raise _Invalid(f"Invalid claim: {name!r} must be a NumericDate value")
    return float(value)


def _header_text(value: Any) -> bytes:
    if isinstance(value, list):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"))
    if not text.isprintable():  # control characters cannot go in a header
        text = "".join(c for c in text if c.isprintable())
    return text.encode("utf-8", "replace")


Entry = tuple[dict[str, Any], float, float, tuple[tuple[bytes, bytes | None], ...]]
"""A verified token: (claims, valid from, valid until (both with the leeway), the headers it sets)."""


class Jwt(HttpFilter):
    """Validates a bearer JWT with keys from files; with ``jwks_url``, a ``JwksJwt``."""

    Args = JwtArgs

    def __new__(cls, args: JwtArgs | None = None, /, **kwargs: Any) -> Jwt:
        url = args.jwks_url if args is not None else kwargs.get("jwks_url")
        if cls is Jwt and url:
            return super().__new__(JwksJwt)
        return super().__new__(cls)

    def __init__(self, args: JwtArgs | None = None, /, **kwargs: Any) -> None:
        a = self.args = settings_of(JwtArgs, args, kwargs)
        try:
            import cryptography  # noqa: F401
        except ImportError:
            raise ArgError("keys", "the jwt filter needs cryptography: pip install 'monolake[edge]'") from None
        self.algorithms = _names("algorithms", a.algorithms)
        for i, alg in enumerate(self.algorithms):
            if alg not in ALGORITHMS:
                raise ArgError(f"algorithms[{i}]", f"{alg!r} not supported; use some of {', '.join(ALGORITHMS)}")
            if alg in SYMMETRIC and not a.keys:
                raise ArgError(
                    f"algorithms[{i}]",
                    f"{alg!r} not supported with jwks_url alone: its shared secret (an oct JWK) comes from keys files",
                )
        self.issuers = _names("issuers", a.issuers)
        self.audiences = frozenset(_names("audiences", a.audiences))
        self.required = _names("required_claims", a.required_claims)
        if a.leeway < 0:
            raise ArgError("leeway", f"must be >= 0 seconds, got {a.leeway!r}")
        self.leeway = a.leeway
        self.to_headers: list[tuple[str, bytes]] = []
        for claim, name in a.claims_to_headers.items():
            if not claim or not name or any(c in name for c in " :\r\n"):
                raise ArgError(f"claims_to_headers.{claim}", f"not a header name: {name!r}")
            self.to_headers.append((claim, name.encode("latin-1")))
        if not a.header or any(c in a.header for c in " :\r\n"):
            raise ArgError("header", f"not a header name: {a.header!r}")
        self.header = a.header.lower().encode("latin-1")
        self.bearer = self.header == b"authorization"
        if a.cache_size < 0:
            raise ArgError("cache_size", f"must be >= 0, got {a.cache_size!r}")
        self.cache_size = a.cache_size
        self.cache: dict[bytes, Entry] = {}
        if any(c in a.realm for c in '"\\\r\n'):
            raise ArgError("realm", f"must not contain quotes, backslashes or line breaks, got {a.realm!r}")
        self.challenge = f'Bearer realm="{a.realm}"'.encode("latin-1")
        self.keys: dict[str | None, _Key] = {}
        for i, path in enumerate(a.keys):
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ArgError(f"keys[{i}]", f"cannot read {path}: {exc.strerror}") from None
            try:
                self.keys.update(_import_jwks(data, path, secrets=True))
            except ValueError as exc:
                raise ArgError(f"keys[{i}]", str(exc)) from None
        if not self.keys and type(self) is Jwt:
            raise ArgError("keys", "give keys (files) or jwks_url")

    # -- the check ---------------------------------------------------------------------

    def token_of(self, req: Request) -> bytes | None:
        value = req.headers.get(self.header)
        if value is None or not self.bearer:
            return value
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        return token.strip()

    def cached(self, token: bytes) -> Entry | None:
        hit = self.cache.get(token)
        if hit is None:
            return None
        now = time.time()
        if now < hit[1] or now >= hit[2]:
            del self.cache[token]
            return None
        return hit

    def head(self, token: bytes) -> tuple[str, str | None]:
        """The token's (alg, kid), the alg one of ``algorithms``. Raises _Invalid."""
        if token.count(b".") != 2:
            raise _Invalid("not a compact JWS")
        if token.translate(None, _TOKEN_CHARS):
            raise _Invalid("malformed token: not base64url")
        try:
            head = _json.decode(_b64(token[: token.index(b".")]))
        except (ValueError, msgspec.DecodeError):
            raise _Invalid("malformed header") from None
        if type(head) is not dict:
            raise _Invalid("malformed header")
        alg, kid = head.get("alg"), head.get("kid")
        if alg not in self.algorithms:
            raise _Invalid(f"algorithm {alg!r} not accepted")
        if kid is not None and type(kid) is not str:
            raise _Invalid("malformed kid")
        if "crit" in head:  # extensions this verifier would have to understand (RFC 7515 §4.1.11)
            raise _Invalid(f"critical header parameters {head['crit']!r} not supported")
        return alg, kid

    def key_for(self, kid: str | None) -> _Key | None:
        """The key a token's kid names; None when it is unknown."""
        keys = self.keys
        key = keys.get(kid)
        if key is None:
            if None in keys:  # a PEM file's key: for tokens naming no key id it has
                key = keys[None]
            elif kid is None and len(keys) == 1:
                key = next(iter(keys.values()))
        return key

    def verify(self, token: bytes, alg: str, key: _Key) -> Entry:
        """The token's claims, checked (and cached); raises _Invalid."""
        check = key.verifiers.get(alg)
        if check is None:  # the key decides the algorithm, not the token
            raise _Invalid(f"the key is for {key.algs()}, the token says {alg}")
        cut = token.rindex(b".")
        try:
            sig = _b64(token[cut + 1 :])
        except ValueError:
            raise _Invalid("malformed signature") from None
        if not check(token[:cut], sig):
            raise _Invalid("bad signature")
        try:
            claims = _json.decode(_b64(token[token.index(b".") + 1 : cut]))
        except (ValueError, msgspec.DecodeError):
            raise _Invalid("malformed payload") from None
        if type(claims) is not dict:
            raise _Invalid("malformed payload: not a JSON object")
        entry = self.check_claims(claims)
        if self.cache_size and len(token) <= MAX_CACHED_TOKEN:
            cache = self.cache
            if len(cache) >= self.cache_size:
                del cache[next(iter(cache))]  # the oldest
            cache[token] = entry
        return entry

    def check_claims(self, claims: dict[str, Any]) -> Entry:
        for name in self.required:
            if name not in claims:
                raise _Invalid(f"Missing claim: {name!r}")
        now = time.time()
        leeway = self.leeway
        exp = _number(claims, "exp")
        if exp is not None and now >= exp + leeway:
            raise _Invalid("The token is expired")
        nbf = _number(claims, "nbf")
        if nbf is not None and now < nbf - leeway:
            raise _Invalid("The token is not valid yet")
        iat = _number(claims, "iat")
        if iat is not None and iat > now + leeway:
            raise _Invalid("The token was issued in the future")
        if self.issuers and claims.get("iss") not in self.issuers:
            raise _Invalid("Invalid claim: 'iss'")
        audiences = self.audiences
        if audiences:
            aud = claims.get("aud")
            if type(aud) is str:
                ok = aud in audiences
            elif type(aud) is list:
                ok = any(type(a) is str and a in audiences for a in aud)
            else:
                ok = False
            if not ok:
                raise _Invalid("Invalid claim: 'aud'")
        values = tuple(
            (name, None if claims.get(claim) is None else _header_text(claims[claim]))
            for claim, name in self.to_headers
        )
        lo = float("-inf") if nbf is None else nbf - leeway
        return claims, lo, float("inf") if exp is None else exp + leeway, values

    def accept(self, req: Request, ctx: Context, entry: Entry) -> None:
        if entry[3]:
            headers = req.headers
            for name, value in entry[3]:
                headers.remove(name)
                if value is not None:
                    headers.add(name, value)
        CLAIMS.set(ctx, entry[0])

    def refuse(self, reason: str | None) -> Response:
        if reason is None:
            return answer(401, b"credentials required\n", [(b"WWW-Authenticate", self.challenge)])
        # The reason may quote the token's own header (its kid, alg): printable ASCII only, bounded.
        desc = "".join(c for c in reason[:200] if " " <= c <= "~" and c not in '"\\')
        value = self.challenge + f', error="invalid_token", error_description="{desc}"'.encode()
        return answer(401, b"invalid token\n", [(b"WWW-Authenticate", value)])

    def request_filter(self, req: Request, ctx: Context) -> Response | Awaitable[Response | None] | None:
        token = self.token_of(req)
        if token is None:
            return self.refuse(None)
        entry = self.cached(token)
        if entry is None:
            try:
                alg, kid = self.head(token)
                key = self.key_for(kid)
                if key is None:
                    raise _Invalid(f"unknown key id {kid!r}")
                entry = self.verify(token, alg, key)
            except _Invalid as exc:
                return self.refuse(str(exc))
        self.accept(req, ctx, entry)
        return None


class JwksJwt(Jwt):
    """``Jwt(jwks_url=...)``: keys fetched from a JWKS URL, cached and refreshed (awaits only on a fetch)."""

    def __init__(self, args: JwtArgs | None = None, /, **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        a = self.args
        url = a.jwks_url or ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ArgError("jwks_url", f"must be an http(s):// URL, got {url!r}")
        self.url = url
        try:
            self.endpoint = parse_endpoint(f"{parts.scheme}://{parts.netloc}")
        except ValueError as exc:
            raise ArgError("jwks_url", str(exc)) from None
        self.target = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode()
        for name in ("refresh", "refetch_min", "fetch_timeout"):
            if not getattr(a, name) > 0:
                raise ArgError(name, f"must be a number of seconds > 0, got {getattr(a, name)!r}")
        self.refresh = a.refresh
        self.refetch_min = a.refetch_min
        self.fetch_timeout = a.fetch_timeout
        self.file_keys = dict(self.keys)
        self.fetched_at = float("-inf")
        """Loop time of the last fetch attempt."""
        self.fetches = 0
        self._fetch: asyncio.Task[None] | None = None
        self._client: Any = None
        self._down = outage_log(log, "jwks failures")

    async def _get(self) -> None:
        from ...core.client import Client, PoolSettings

        if self._client is None:  # made in the worker's loop, on first use
            t = self.fetch_timeout
            self._client = Client(default=PoolSettings(connect_timeout=t, read_timeout=t, pool_timeout=t))
        self.fetches += 1
        try:
            async with asyncio.timeout(self.fetch_timeout):
                req = Request(b"GET", self.target, Headers([(b"Accept", b"application/json")]))
                resp = await self._client.send(req, self.endpoint)
                body = resp.body
                if body is None:
                    body = b""
                elif not isinstance(body, bytes):
                    body = await body.read_all(MAX_JWKS_BYTES)
            if resp.status != 200:
                raise ValueError(f"answered {resp.status}")
            skipped: list[str] = []
            keys = _import_jwks(body, self.url, skipped=skipped)
            if skipped:
                log.warning("jwks %s: %d keys not used: %s", self.url, len(skipped), "; ".join(skipped))
            if not keys:
                raise ValueError("no usable key in the set")
        except Exception as exc:
            self._down.log(
                "jwks %s: fetch failed, keeping %d keys: %s: %s", self.url, len(self.keys), type(exc).__name__, exc
            )
            return
        new = {**self.file_keys, **keys}
        if _fingerprints(new) != _fingerprints(self.keys):
            self.cache.clear()  # a key gone or replaced: tokens it verified must not pass on from the cache
        self.keys = new
        log.info("jwks %s: %d keys (%s)", self.url, len(keys), ", ".join(str(k) for k in keys))

    def fetch(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task[None]:
        """The fetch under way, or a new one."""
        task = self._fetch
        if task is None or task.done():
            self.fetched_at = loop.time()
            task = self._fetch = loop.create_task(self._get())
        return task

    @may_await
    def request_filter(self, req: Request, ctx: Context) -> Response | Awaitable[Response | None] | None:
        token = self.token_of(req)
        if token is None:
            return self.refuse(None)
        entry = self.cached(token)
        if entry is None:
            try:
                alg, kid = self.head(token)
                key = self.key_for(kid)
                if key is None:
                    loop = asyncio.get_running_loop()
                    pending = self._fetch
                    if pending is not None and not pending.done():
                        return self._after_fetch(req, ctx, token, alg, kid, pending)
                    if loop.time() - self.fetched_at >= (self.refetch_min if self.keys else NO_KEYS_RETRY):
                        return self._after_fetch(req, ctx, token, alg, kid, self.fetch(loop))
                    return self._without_key(kid)  # fetched lately: no coroutine for it
                entry = self.verify(token, alg, key)
            except _Invalid as exc:
                return self.refuse(str(exc))
        if ctx.start - self.fetched_at >= self.refresh:
            self.fetch(asyncio.get_running_loop())  # in the background: this request goes on
        self.accept(req, ctx, entry)
        return None

    def _without_key(self, kid: str | None) -> Response:
        """The answer to a token whose key the current set does not have: 503 while there is no set."""
        if not self.keys:
            self._down.log("jwks %s: no keys, answering 503", self.url)
            return answer(503, b"token keys unavailable\n", [(b"Retry-After", b"1")])
        return self.refuse(f"unknown key id {kid!r}")

    async def _after_fetch(
        self, req: Request, ctx: Context, token: bytes, alg: str, kid: str | None, fetch: asyncio.Task[None]
    ) -> Response | None:
        """The rest of ``request_filter`` for a token whose key is not known yet: the only one that
        waits, for the key set's fetch (shared by every request waiting on it), then looks again."""
        await asyncio.shield(fetch)
        key = self.key_for(kid)
        if key is None:
            return self._without_key(kid)
        try:
            entry = self.verify(token, alg, key)
        except _Invalid as exc:
            return self.refuse(str(exc))
        self.accept(req, ctx, entry)
        return None
