"""An async filter doing I/O: ask an HTTP auth service about every request.

The pattern of nginx's ``auth_request`` and Envoy's ext_authz. ``request_filter`` is
``async def``, so the proxy awaits it (only this phase of this server takes the
awaiting path; plain filters elsewhere keep their plain calls). The call goes
through monolake's own upstream client: an ``UpstreamCluster`` on a per-worker
``Pool`` (kept-alive connections, connect/read timeouts), the same client the proxy
forwards with::

    [servers.web]
    listener = "0.0.0.0:8080"
    request_timeout = 5          # bounds the auth call too: past it, 500 naming the filter
    filters = [
        { use = "auth:ExternalAuth", args = { url = "http://127.0.0.1:9000/auth" } },
    ]

(``auth`` is this file, put beside the config file: filter modules are looked up in
the config file's directory first.)

The auth service gets ``GET <path>`` with the client's ``Authorization`` header. It
answers 200 to let the request through (its ``X-Auth-User`` header, if any, is passed
upstream as ``X-User``), or 401/403, which the client gets as is. Anything else, or
no answer, fails the request with 500 (fail closed) and a log line naming the filter.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from monolake.client import Pool
from monolake.config import Cluster, UpstreamSpec
from monolake.proto.http1 import Headers, Request, Response
from monolake.proxy import HttpFilter, UpstreamCluster
from monolake.service import Context

MAX_AUTH_BODY = 64 * 1024


def _answer(status: int, text: bytes) -> Response:
    return Response(status, Headers([(b"Content-Type", b"text/plain")]), text)


class ExternalAuth(HttpFilter):
    """Asks ``url`` whether a request may pass (async request_filter)."""

    def __init__(self, url: str, timeout: float = 2.0, user_header: str = "X-User") -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be http(s)://host:port/path, got {url!r}")
        self.path = (parts.path or "/").encode()
        self.user_header = user_header.encode("latin-1")
        # One cluster per filter object, hence per worker: the pool takes the worker's loop on first use.
        cluster = Cluster(
            endpoints=[UpstreamSpec(endpoint=f"{parts.scheme}://{parts.netloc}")],
            connect_timeout=timeout,
            read_timeout=timeout,
        )
        self.service = UpstreamCluster.from_config("auth", cluster, Pool())

    async def request_filter(self, req: Request, ctx: Context) -> Response | None:
        token = req.headers.get(b"authorization")
        if token is None:
            return _answer(401, b"credentials required\n")
        check = Request(b"GET", self.path, Headers([(b"Authorization", token)]))
        check.ctx = Context(ctx.peer, ctx.server, ctx.start)
        resp = await self.service.forward(check, b"")  # b"": Host is the auth service's own
        body = resp.body
        if body is not None and not isinstance(body, bytes):
            await body.read_all(MAX_AUTH_BODY)  # read to the end, so the connection is reused
        if resp.status == 200:
            user = resp.headers.get(b"x-auth-user")
            if user:
                req.headers.set(self.user_header, user)
            return None
        if resp.status in (401, 403):
            return _answer(resp.status, b"forbidden\n" if resp.status == 403 else b"unauthorized\n")
        raise RuntimeError(f"auth service answered {resp.status}")
