"""The async auth filter (auth.py) on a proxy served from Python, beside an auth service of your own.

    python examples/filters/serve_auth.py --upstream http://127.0.0.1:8000

    curl -H 'Authorization: Bearer ok-alice' http://127.0.0.1:8080/   # proxied, upstream sees X-User: alice
    curl -H 'Authorization: Bearer no' http://127.0.0.1:8080/         # 403 from the auth service
    curl http://127.0.0.1:8080/                                       # 401

One ``serve`` call runs two apps in the same worker processes: ``auth``, an
``HttpApp`` answering ``GET /auth`` itself, and ``web``, a ``ProxyApp`` forwarding to
``--upstream`` whose ``ExternalAuth`` filter asks ``auth`` about every request. The
``ProxyApp`` is the TOML server table of the filters guide, with the filter given
as a Python object instead of a ``"module:Class"`` string.
"""

from __future__ import annotations

import argparse
import functools

from auth import ExternalAuth  # examples/filters/auth.py, beside this file

from monolake import Factory, Headers, HttpApp, ProxyApp, Request, Response, serve


class AuthService:
    """``Authorization: Bearer ok-USER`` is 200 with ``X-Auth-User: USER``; ``Bearer no`` 403; else 401."""

    def __init__(self, checked: int = 0) -> None:
        self.checked = checked  # kept across reloads by AuthFactory.make(old)

    async def __call__(self, req: Request) -> Response:
        self.checked += 1
        token = req.headers.get(b"authorization") or b""
        if token.startswith(b"Bearer ok-"):
            return Response(200, Headers([(b"X-Auth-User", token[len(b"Bearer ok-") :])]), b"")
        return Response(403 if token == b"Bearer no" else 401, Headers(), b"")


class AuthFactory(Factory[AuthService]):
    def make(self, old: AuthService | None) -> AuthService:
        return AuthService(old.checked if old is not None else 0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:8080", help="the proxy's listener")
    p.add_argument("--auth-listen", default="127.0.0.1:9000", help="the auth service's listener")
    p.add_argument("--upstream", required=True, help="where allowed requests go, http://host:port")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio", "io_uring", "auto"])
    args = p.parse_args()
    auth = HttpApp(name="auth", listen=args.auth_listen, factory=AuthFactory())
    web = ProxyApp(
        name="web",
        listen=args.listen,
        routes=[{"path": "/", "upstreams": [{"endpoint": args.upstream}]}],
        # A partial, not an object: each worker makes its own filter (its own client pool).
        filters=[functools.partial(ExternalAuth, url=f"http://{args.auth_listen}/auth")],
        settings={"request_timeout": 5},  # bounds the auth call too: past it, 500 naming the filter
    )
    return serve(auth, web, workers=args.workers, loop=args.loop, access_log="stderr")


if __name__ == "__main__":
    raise SystemExit(main())
