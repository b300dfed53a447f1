"""JWT validation (RFC 7519) with keys from files or a JWKS URL; 401 with ``WWW-Authenticate``.

Built-in ``jwt`` (``Jwt``; settings ``JwtArgs``).

``Jwt(keys=[...])`` reads public keys from files (a JWKS, one JWK, or a PEM public key)
once, at build time: its ``request_filter`` is a plain call. ``Jwt(jwks_url=...)`` is a
``JwksJwt``, whose ``request_filter`` is ``async``: it fetches the key set through the
core ``Client`` on the first request, again every ``refresh`` seconds in the background
(requests keep using the keys they have), and right away when a token names a key id
it does not know (a key rotation), at most once per ``refetch_min`` seconds; one fetch
at a time, which every waiting request shares. Requests whose key is known never wait.

The token is the ``Authorization: Bearer`` credential (or the raw value of ``header``).
Only ``algorithms`` are accepted (never ``none``; the token's ``alg`` must also be the
key's). Then the claims: ``exp`` and ``nbf`` with ``leeway`` seconds, ``iss`` one of
``issuers``, ``aud`` containing one of ``audiences`` and every name of
``required_claims`` present. Verifying a signature costs tens of µs (ES256 ~60 µs with
OpenSSL), so a verified token is cached, bounded by ``cache_size``, until its ``exp``:
the same token again costs a dict lookup and the time checks.

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
import base64
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ...core.address import parse_endpoint
from ...core.proto.http1 import Headers, Request, Response
from ...core.service import Context
from ..proxy._filters import HttpFilter
from ._shared import CLAIMS, ArgError, answer, outage_log, settings_of

log = logging.getLogger("monolake.edge.jwt")

ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA")
"""Asymmetric algorithms only: a shared secret does not belong in a proxy's config."""

MAX_JWKS_BYTES = 1 << 20
NO_KEYS_RETRY = 1.0
"""Seconds between fetches while no key set could be fetched yet (requests get 503 meanwhile)."""


def _import_jwks(data: bytes | str, where: str) -> dict[str | None, Any]:
    """Key id -> key, from a JWKS or a single JWK (JSON) or a PEM public key."""
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet, import_key

    text = data.decode() if isinstance(data, bytes) else data
    try:
        if text.lstrip().startswith("-----BEGIN"):
            last: Exception | None = None
            for kty in ("EC", "RSA", "OKP"):
                try:
                    return {None: import_key(text, kty)}
                except Exception as exc:  # wrong type: try the next
                    last = exc
            raise ValueError(f"{where}: not an EC, RSA or OKP public key ({last})")
        obj = json.loads(text)
        if isinstance(obj, dict) and "keys" not in obj:
            obj = {"keys": [obj]}
        keyset = KeySet.import_key_set(obj)
    except (ValueError, JoseError, TypeError, KeyError) as exc:
        raise ValueError(f"{where}: not a JWKS, JWK or PEM public key: {exc}") from None
    keys: dict[str | None, Any] = {}
    for key in keyset.keys:
        if key.is_private:
            raise ValueError(f"{where}: holds a private key (kid {key.kid!r}); give the public keys only")
        keys[key.kid] = key
    return keys


def _b64_json(segment: bytes) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4)))


class _Invalid(Exception):
    """The token is refused; the message goes in ``error_description``."""


class JwtArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Settings of ``jwt`` (``Jwt``)."""

    keys: list[str] = []
    """Files of public keys: a JWKS, one JWK or a PEM public key each (read when the server is built)."""
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
    """Accepted ``alg`` values (asymmetric only)."""
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
            from joserfc import jwt as _jwt  # noqa: F401
        except ImportError:
            raise ArgError("keys", "the jwt filter needs joserfc: pip install 'monolake[edge]'") from None
        self.algorithms = _names("algorithms", a.algorithms)
        for i, alg in enumerate(self.algorithms):
            if alg not in ALGORITHMS:
                raise ArgError(f"algorithms[{i}]", f"{alg!r} not supported; use some of {', '.join(ALGORITHMS)}")
        self.issuers = _names("issuers", a.issuers)
        self.audiences = _names("audiences", a.audiences)
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
        self.cache: dict[bytes, tuple[dict[str, Any], float, float]] = {}
        if any(c in a.realm for c in '"\\\r\n'):
            raise ArgError("realm", f"must not contain quotes, backslashes or line breaks, got {a.realm!r}")
        self.challenge = f'Bearer realm="{a.realm}"'.encode("latin-1")
        self.keys: dict[str | None, Any] = {}
        for i, path in enumerate(a.keys):
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ArgError(f"keys[{i}]", f"cannot read {path}: {exc.strerror}") from None
            try:
                self.keys.update(_import_jwks(data, path))
            except ValueError as exc:
                raise ArgError(f"keys[{i}]", str(exc)) from None
        if not self.keys and type(self) is Jwt:
            raise ArgError("keys", "give keys (files) or jwks_url")
        from joserfc.jwt import JWTClaimsRegistry

        options: dict[str, Any] = {name: {"essential": True} for name in self.required}
        if self.issuers:
            options["iss"] = {"essential": True, "values": list(self.issuers)}
        if self.audiences:
            options["aud"] = {"essential": True, "values": list(self.audiences)}
        self.registry = JWTClaimsRegistry(leeway=self.leeway, **options)

    # -- the check ---------------------------------------------------------------------

    def token_of(self, req: Request) -> bytes | None:
        value = req.headers.get(self.header)
        if value is None or not self.bearer:
            return value
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        return token.strip()

    def cached(self, token: bytes) -> dict[str, Any] | None:
        hit = self.cache.get(token)
        if hit is None:
            return None
        claims, nbf, exp = hit
        now = time.time()
        if now < nbf - self.leeway or now > exp + self.leeway:
            del self.cache[token]
            return None
        return claims

    def key_for(self, token: bytes) -> tuple[str, Any, str | None]:
        """(alg, key or None when the key id is unknown, kid). Raises _Invalid."""
        parts = token.split(b".")
        if len(parts) != 3:
            raise _Invalid("not a compact JWS")
        try:
            head = _b64_json(parts[0])
        except ValueError:
            raise _Invalid("malformed header") from None
        if not isinstance(head, dict):
            raise _Invalid("malformed header")
        alg, kid = head.get("alg"), head.get("kid")
        if alg not in self.algorithms:
            raise _Invalid(f"algorithm {alg!r} not accepted")
        if kid is not None and not isinstance(kid, str):
            raise _Invalid("malformed kid")
        keys = self.keys
        key = keys.get(kid)
        if key is None:
            if None in keys:  # a PEM file's key: for tokens naming no key id it has
                key = keys[None]
            elif kid is None and len(keys) == 1:
                key = next(iter(keys.values()))
        return alg, key, kid

    def verify(self, token: bytes, alg: str, key: Any) -> dict[str, Any]:
        """The token's claims, checked; raises _Invalid."""
        from joserfc import jwt
        from joserfc.errors import JoseError

        key_alg = getattr(key, "alg", None)
        if key_alg and key_alg != alg:
            raise _Invalid(f"the key is for {key_alg}, the token says {alg}")
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
            self.registry.validate(claims)
        except JoseError as exc:
            raise _Invalid(exc.description or exc.error) from None
        except (ValueError, TypeError) as exc:
            raise _Invalid(f"malformed token: {exc}") from None
        if self.cache_size:
            if len(self.cache) >= self.cache_size:
                self.cache.clear()
            nbf, exp = claims.get("nbf"), claims.get("exp")
            self.cache[token] = (
                claims,
                float(nbf) if isinstance(nbf, (int, float)) else float("-inf"),
                float(exp) if isinstance(exp, (int, float)) else float("inf"),
            )
        return claims

    def accept(self, req: Request, ctx: Context, claims: dict[str, Any]) -> None:
        headers = req.headers
        for claim, name in self.to_headers:
            headers.remove(name)
            value = claims.get(claim)
            if value is None:
                continue
            if isinstance(value, list):
                text = ",".join(str(v) for v in value)
            elif isinstance(value, str):
                text = value
            else:
                text = json.dumps(value, separators=(",", ":"))
            if not text.isprintable():  # control characters cannot go in a header
                text = "".join(c for c in text if c.isprintable())
            headers.set(name, text.encode("utf-8", "replace"))
        CLAIMS.set(ctx, claims)

    def refuse(self, reason: str | None) -> Response:
        if reason is None:
            return answer(401, b"credentials required\n", [(b"WWW-Authenticate", self.challenge)])
        # The reason may quote the token's own header (its kid, alg): printable ASCII only, bounded.
        desc = "".join(c for c in reason[:200] if " " <= c <= "~" and c not in '"\\')
        value = self.challenge + f', error="invalid_token", error_description="{desc}"'.encode()
        return answer(401, b"invalid token\n", [(b"WWW-Authenticate", value)])

    def request_filter(self, req: Request, ctx: Context) -> Response | None:
        token = self.token_of(req)
        if token is None:
            return self.refuse(None)
        claims = self.cached(token)
        if claims is None:
            try:
                alg, key, kid = self.key_for(token)
                if key is None:
                    raise _Invalid(f"unknown key id {kid!r}")
                claims = self.verify(token, alg, key)
            except _Invalid as exc:
                return self.refuse(str(exc))
        self.accept(req, ctx, claims)
        return None


class JwksJwt(Jwt):
    """``Jwt(jwks_url=...)``: keys fetched from a JWKS URL, cached and refreshed (async filter)."""

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
            keys = _import_jwks(body, self.url)
        except Exception as exc:
            self._down.log(
                "jwks %s: fetch failed, keeping %d keys: %s: %s", self.url, len(self.keys), type(exc).__name__, exc
            )
            return
        new = {**self.file_keys, **keys}
        if new.keys() != self.keys.keys():
            self.cache.clear()  # a key gone: tokens it verified must not pass on from the cache
        self.keys = new
        log.info("jwks %s: %d keys (%s)", self.url, len(keys), ", ".join(str(k) for k in keys))

    def fetch(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task[None]:
        """The fetch under way, or a new one."""
        task = self._fetch
        if task is None or task.done():
            self.fetched_at = loop.time()
            task = self._fetch = loop.create_task(self._get())
        return task

    async def request_filter(self, req: Request, ctx: Context) -> Response | None:  # type: ignore[override]
        token = self.token_of(req)
        if token is None:
            return self.refuse(None)
        claims = self.cached(token)
        if claims is None:
            try:
                alg, key, kid = self.key_for(token)
                if key is None:
                    loop = asyncio.get_running_loop()
                    pending = self._fetch
                    if pending is not None and not pending.done():
                        await asyncio.shield(pending)
                    elif loop.time() - self.fetched_at >= (self.refetch_min if self.keys else NO_KEYS_RETRY):
                        await asyncio.shield(self.fetch(loop))
                    if not self.keys:
                        self._down.log("jwks %s: no keys, answering 503", self.url)
                        return answer(503, b"token keys unavailable\n", [(b"Retry-After", b"1")])
                    alg, key, kid = self.key_for(token)
                    if key is None:
                        raise _Invalid(f"unknown key id {kid!r}")
                claims = self.verify(token, alg, key)
            except _Invalid as exc:
                return self.refuse(str(exc))
        if ctx.start - self.fetched_at >= self.refresh:
            self.fetch(asyncio.get_running_loop())  # in the background: this request goes on
        self.accept(req, ctx, claims)
        return None
