"""``cors``: Cross-Origin Resource Sharing, with preflights answered by the proxy.

A request with an ``Origin`` header is checked against ``allow_origins`` (exact
origins, ``"*"``, or wildcards such as ``"https://*.example.com"``, which match any
subdomain depth but never the bare domain) and ``allow_origin_regex`` (full matches).
A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered here and
never forwarded: 204 with the allowed methods, headers and ``max_age`` when the origin,
the method and every requested header are allowed, else 403 without CORS headers (the
browser then refuses the real request) and a log line. An actual cross-origin request is
forwarded either way; its response carries ``Access-Control-Allow-Origin`` (and
credentials / exposed headers) only when the origin is allowed. ``Vary: Origin`` is
added whenever the answer depends on the origin.
"""

from __future__ import annotations

import logging
import re

import msgspec

from ...core.proto.http1 import Headers, Request, Response
from ...core.service import Context, ContextSlot
from ..proxy._filters import HttpFilter
from ._base import ArgError

log = logging.getLogger("monolake.edge.cors")

ALLOWED_ORIGIN = ContextSlot("cors_origin", bytes, "The request's Origin, when the cors filter allowed it.")

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class CorsArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    allow_origins: list[str] = []
    """Origins allowed: "https://app.example.com" (scheme://host[:port]), "*" (any), or a
    wildcard "https://*.example.com" (any subdomain)."""
    allow_origin_regex: list[str] = []
    """Regular expressions an allowed origin fully matches."""
    allow_methods: list[str] = msgspec.field(default_factory=lambda: ["GET", "HEAD", "POST"])
    """Methods a preflight may ask for; "*" for any."""
    allow_headers: list[str] = []
    """Request headers a preflight may ask for (case-insensitive); "*" for any."""
    expose_headers: list[str] = []
    """Response headers the page's script may read (Access-Control-Expose-Headers)."""
    allow_credentials: bool = False
    """Let the browser send cookies / HTTP auth and read the response (never with origin "*")."""
    max_age: int | None = None
    """Seconds a browser may cache a preflight's answer (Access-Control-Max-Age); None: not sent."""


def _wildcard(pattern: str) -> re.Pattern[bytes]:
    scheme, _, rest = pattern.partition("://*.")
    return re.compile(re.escape(scheme).encode() + rb"://(?:[A-Za-z0-9-]+\.)+" + re.escape(rest).encode())


def _origin_ok(o: str) -> bool:
    scheme, sep, host = o.partition("://")
    return bool(sep and scheme in ("http", "https") and host and "/" not in host and not o.endswith(":"))


class Cors(HttpFilter):
    """CORS; see the module docstring."""

    Args = CorsArgs

    def __init__(self, args: CorsArgs) -> None:
        self.any_origin = "*" in args.allow_origins
        if self.any_origin and args.allow_credentials:
            raise ArgError(
                "allow_origins",
                "'*' with allow_credentials = true would let every site read credentialed responses; list the origins",
            )
        exact: set[bytes] = set()
        patterns: list[re.Pattern[bytes]] = []
        for i, o in enumerate(args.allow_origins):
            if o == "*":
                continue
            if "*" in o:
                if o.count("*") != 1 or "://*." not in o or not _origin_ok(o.replace("*.", "x.")):
                    raise ArgError(
                        f"allow_origins[{i}]", f"a wildcard origin looks like 'https://*.example.com', got {o!r}"
                    )
                patterns.append(_wildcard(o.lower()))
            elif not _origin_ok(o):
                raise ArgError(f"allow_origins[{i}]", f"expected scheme://host[:port] without a path, got {o!r}")
            else:
                exact.add(o.lower().encode())
        for i, rx in enumerate(args.allow_origin_regex):
            try:
                patterns.append(re.compile(rx.encode()))
            except re.error as exc:
                raise ArgError(f"allow_origin_regex[{i}]", f"invalid regular expression: {exc}") from None
        for key in ("allow_methods", "allow_headers", "expose_headers"):
            for i, v in enumerate(getattr(args, key)):
                if v != "*" and not _TOKEN.match(v):
                    raise ArgError(f"{key}[{i}]", f"not a method or header name: {v!r}")
        if args.max_age is not None and args.max_age < 0:
            raise ArgError("max_age", "must be >= 0 (seconds)")
        self.exact = frozenset(exact)
        self.patterns = tuple(patterns)
        self.any_method = "*" in args.allow_methods
        self.methods = frozenset(m.encode() for m in args.allow_methods)
        self.any_header = "*" in args.allow_headers
        self.headers = frozenset(h.lower().encode() for h in args.allow_headers)
        self.credentials = args.allow_credentials
        self.methods_value = ", ".join(args.allow_methods).encode()
        self.headers_value = ", ".join(args.allow_headers).encode()
        self.expose_value = ", ".join(args.expose_headers).encode()
        self.max_age = str(args.max_age).encode() if args.max_age is not None else None
        # The answer depends on the origin unless any origin is allowed without credentials.
        self.varies = not self.any_origin
        self._seen: dict[bytes, bool] = {}

    def allowed(self, origin: bytes) -> bool:
        ok = self._seen.get(origin)
        if ok is None:
            low = origin.lower()
            ok = self.any_origin or low in self.exact or any(p.fullmatch(low) for p in self.patterns)
            if len(self._seen) < 4096:
                self._seen[origin] = ok
        return ok

    def _allow_origin(self, headers: Headers, origin: bytes) -> None:
        headers.set(b"Access-Control-Allow-Origin", b"*" if self.any_origin else origin)
        if self.credentials:
            headers.set(b"Access-Control-Allow-Credentials", b"true")

    def request_filter(self, req: Request, ctx: Context) -> Response | None:
        origin = req.headers.get(b"origin")
        if origin is None:
            return None
        if req.method == b"OPTIONS":
            wanted = req.headers.get(b"access-control-request-method")
            if wanted is not None:
                return self.preflight(req, origin, wanted.strip())
        if self.allowed(origin):
            ALLOWED_ORIGIN.set(ctx, origin)
        return None

    def preflight(self, req: Request, origin: bytes, method: bytes) -> Response:
        headers = Headers()
        if self.varies:
            headers.add(b"Vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        asked = req.headers.get(b"access-control-request-headers") or b""
        names = [h.strip().lower() for h in asked.split(b",") if h.strip()]
        why = None
        if not self.allowed(origin):
            why = "origin not allowed"
        elif not (self.any_method or method in self.methods):
            why = f"method {method.decode('latin-1')} not allowed"
        elif not self.any_header and any(n not in self.headers for n in names):
            why = "header " + ", ".join(n.decode("latin-1") for n in names if n not in self.headers) + " not allowed"
        if why is not None:
            log.info(
                "cors: refused preflight from %r for %s %s: %s",
                origin.decode("latin-1"),
                method.decode("latin-1"),
                req.path.decode("latin-1"),
                why,
            )
            headers.add(b"Content-Type", b"text/plain")
            return Response(403, headers, b"CORS preflight refused\n")
        self._allow_origin(headers, origin)
        headers.add(b"Access-Control-Allow-Methods", method if self.any_method else self.methods_value)
        if names:
            headers.add(b"Access-Control-Allow-Headers", asked if self.any_header else self.headers_value)
        if self.max_age is not None:
            headers.add(b"Access-Control-Max-Age", self.max_age)
        headers.add(b"Content-Length", b"0")
        return Response(204, headers, None)

    def response_filter(self, resp: Response, ctx: Context) -> None:
        headers = resp.headers
        if self.varies:
            headers.add(b"Vary", b"Origin")
        origin = ALLOWED_ORIGIN.get(ctx, None)
        if origin is None:
            return
        self._allow_origin(headers, origin)
        if self.expose_value:
            headers.set(b"Access-Control-Expose-Headers", self.expose_value)
