"""External authorization: one HTTP call per request to an auth service (Envoy ext_authz's
HTTP contract), through the core ``Client``.

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
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from ...core.address import parse_endpoint
from ...core.proto.http1 import Headers, Request, Response
from ...core.service import Context
from ..proxy._filters import HttpFilter
from ._shared import Throttled, answer

log = logging.getLogger("monolake.edge.ext_authz")

MAX_DENY_BODY = 64 * 1024
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"upgrade"})


def _names(name: str, value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name} must be a list of header names, got {value!r}")
    bad = [v for v in value if any(c in v for c in " :\r\n")]
    if bad:
        raise ValueError(f"{name}: {bad[0]!r} is not a header name")
    return tuple(v.lower().encode("latin-1") for v in value)


class ExtAuthz(HttpFilter):
    """Asks the auth service at ``url`` about every request; see the module docstring."""

    def __init__(
        self,
        url: str,
        timeout: float = 0.5,
        fail: str = "closed",
        status_on_error: int = 403,
        allowed_headers: Sequence[str] = ("Authorization", "Cookie"),
        allowed_upstream_headers: Sequence[str] = (),
        allowed_client_headers: Sequence[str] | None = None,
    ) -> None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError(f"url must be http(s)://host:port[/path_prefix], got {url!r}")
        self.url = url
        self.endpoint = parse_endpoint(f"{parts.scheme}://{parts.netloc}")
        self.prefix = parts.path.rstrip("/").encode()
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.timeout = float(timeout)
        if fail not in ("open", "closed"):
            raise ValueError(f'fail must be "open" or "closed", got {fail!r}')
        self.fail_open = fail == "open"
        if not isinstance(status_on_error, int) or not 400 <= status_on_error <= 599:
            raise ValueError(f"status_on_error must be a 4xx or 5xx status, got {status_on_error!r}")
        self.status_on_error = status_on_error
        self.allowed = _names("allowed_headers", list(allowed_headers))
        self.upstream_headers = _names("allowed_upstream_headers", list(allowed_upstream_headers))
        self.client_headers = (
            None if allowed_client_headers is None else _names("allowed_client_headers", list(allowed_client_headers))
        )
        self._client: Any = None
        self._down = Throttled(log)

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
            self._down.warning(
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
