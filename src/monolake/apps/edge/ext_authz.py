"""External authorization: one HTTP call per request to an auth service (Envoy ext_authz's
HTTP contract), through the core ``Client``.

Built-in ``ext_authz`` (``ExtAuthz``; settings ``ExtAuthzArgs``).

For each request the auth service gets the same method, ``path_prefix`` + the original
target (path and query), the original ``Host``, ``Content-Length: 0`` and no body, and
the request headers named in ``allowed_headers`` (default: ``Authorization`` and
``Cookie``) plus ``X-Forwarded-For`` with the client's address. Its answer decides:

- 2xx: the request goes on; the auth response's headers named in
  ``allowed_upstream_headers`` replace the request's own (``X-User``, say);
- any other status: that status, body (up to 64 KiB) and headers (those in
  ``allowed_client_headers``; by default all but the framing ones) go back to the
  client, and the request goes nowhere.

No answer within ``timeout`` seconds (the whole call), a connection error or a
malformed answer is a failure: ``fail = "closed"`` (the default) answers
``status_on_error`` (403), ``"open"`` lets the request through. Either way a warning
is logged, at most once per 10 s. The filter is ``async`` (it waits on I/O); the
connections to the auth service are kept alive in the worker's own pool.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from ...core.address import parse_endpoint
from ...core.proto.http1 import Headers, Request, Response
from ...core.service import Context
from ..proxy._filters import HttpFilter
from ._shared import ArgError, answer, outage_log, settings_of

log = logging.getLogger("monolake.edge.ext_authz")

MAX_DENY_BODY = 64 * 1024
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"upgrade"})


def _names(key: str, values: list[str]) -> tuple[bytes, ...]:
    for i, v in enumerate(values):
        if not v or any(c in v for c in " :\r\n"):
            raise ArgError(f"{key}[{i}]", f"not a header name: {v!r}")
    return tuple(v.lower().encode("latin-1") for v in values)


class ExtAuthzArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Settings of ``ext_authz`` (``ExtAuthz``)."""

    url: str
    """The auth service: http(s)://host:port[/path_prefix] (the prefix goes before each request's path)."""
    timeout: float = 0.5
    """Seconds the whole call may take."""
    fail: Literal["open", "closed"] = "closed"
    """No answer in time (or an error): "closed" answers ``status_on_error``, "open" lets the request through."""
    status_on_error: int = 403
    """The status for a failed call when failing closed."""
    allowed_headers: list[str] = msgspec.field(default_factory=lambda: ["Authorization", "Cookie"])
    """Request headers sent to the auth service."""
    allowed_upstream_headers: list[str] = []
    """Headers of a 2xx answer copied onto the request (replacing the client's)."""
    allowed_client_headers: list[str] | None = None
    """Headers of a denial passed to the client; default: all but the framing ones."""


class ExtAuthz(HttpFilter):
    """Asks the auth service at ``url`` about every request; see the module docstring."""

    Args = ExtAuthzArgs

    def __init__(self, args: ExtAuthzArgs | None = None, /, **kwargs: Any) -> None:
        a = settings_of(ExtAuthzArgs, args, kwargs)
        parts = urlsplit(a.url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ArgError("url", f"must be http(s)://host:port[/path_prefix], got {a.url!r}")
        self.url = a.url
        try:
            self.endpoint = parse_endpoint(f"{parts.scheme}://{parts.netloc}")
        except ValueError as exc:
            raise ArgError("url", str(exc)) from None
        self.prefix = parts.path.rstrip("/").encode()
        if not a.timeout > 0:
            raise ArgError("timeout", f"must be a number of seconds > 0, got {a.timeout!r}")
        self.timeout = float(a.timeout)
        self.fail_open = a.fail == "open"
        if not 400 <= a.status_on_error <= 599:
            raise ArgError("status_on_error", f"must be a 4xx or 5xx status, got {a.status_on_error!r}")
        self.status_on_error = a.status_on_error
        self.allowed = _names("allowed_headers", a.allowed_headers)
        self.upstream_headers = _names("allowed_upstream_headers", a.allowed_upstream_headers)
        keep = a.allowed_client_headers
        self.client_headers = None if keep is None else _names("allowed_client_headers", keep)
        self._client: Any = None
        self._down = outage_log(log, "ext_authz failures")

    def check_request(self, req: Request, ctx: Context) -> Request:
        headers = [(b"Host", req.raw_host or req.host or self.endpoint.authority.encode())]
        src = req.headers
        for name in self.allowed:
            for value in src.get_all(name):
                headers.append((name, value))
        headers.append((b"X-Forwarded-For", ctx.peer.encode("latin-1")))
        return Request(req.method, self.prefix + req.target, Headers(headers), body=b"")  # framed as length 0

    async def ask(self, check: Request) -> tuple[Response, bytes]:
        from ...core.client import Client, PoolSettings

        client = self._client
        if client is None:  # made in the worker's loop, on first use
            t = self.timeout
            client = self._client = Client(default=PoolSettings(connect_timeout=t, read_timeout=t, pool_timeout=t))
        async with asyncio.timeout(self.timeout):
            resp = await client.send(check, self.endpoint)
            body = resp.body
            if body is None:
                return resp, b""
            if isinstance(body, bytes):
                return resp, body
            return resp, await body.read_all(MAX_DENY_BODY)

    async def request_filter(self, req: Request, ctx: Context) -> Response | None:
        try:
            resp, body = await self.ask(self.check_request(req, ctx))
        except Exception as exc:  # timeout, connect/read errors, a body over the cap
            self._down.log(
                "ext_authz %s failed (%s: %s): failing %s",
                self.url,
                type(exc).__name__,
                str(exc) or "timed out",
                "open" if self.fail_open else "closed",
            )
            if self.fail_open:
                return None
            return answer(self.status_on_error, b"authorization service unavailable\n")
        if 200 <= resp.status < 300:
            for name in self.upstream_headers:
                values = resp.headers.get_all(name)
                if values:
                    req.headers.remove(name)
                    for v in values:
                        req.headers.add(name, v)
            return None
        keep = self.client_headers
        headers = Headers(
            [
                (n, v)
                for n, v in resp.headers
                if (keep is None and n.lower() not in _FRAMING) or (keep is not None and n.lower() in keep)
            ]
        )
        return Response(resp.status, headers, body)
