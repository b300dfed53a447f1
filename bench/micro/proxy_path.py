"""The proxy's Python cost per request, without sockets or a kernel.

    python bench/micro/proxy_path.py [--loop uvloop|asyncio] [-n 20000] [--profile] [--filters none|sync|async]
                                     [--body 128]

Drives the real HttpConnection → proxy stack → UpstreamConnection path with fake
transports: a request is fed to the server protocol, the head it writes upstream is
answered with a canned nginx-like response, and the response written back is
checked. What is left is exactly the Python work a request costs in a worker (the
syscalls, about 2/3 of a proxied request on loopback, are not in it). Repeatable
enough to compare two versions of the hot path on the same machine.

``--filters sync`` puts two plain filters on the server (a request_filter and a
response_filter), ``--filters async`` the same two as ``async def``: the first must
cost what it did before async phases existed (their plain loop is unchanged), the
second shows what awaiting costs.

``--routes load`` uses bench.load's four routes instead (a prefix, a host, a ``path_regex``, then
"/" with a header set: the matched one last) and its request target (``/body/128``).

``--sync`` feeds the request and the upstream's response without yielding to the loop between
them (the four ``sleep(0)`` of ``Harness.proxied`` are the harness's own cost where no task has to
run): valid only when the request is served on the callback lane (no task, no future); it fails
its check otherwise.

``--body N`` sets the response body's size (128 B by default; 16384 for the 16 KiB
case): the whole response still arrives in one read, as a small one does on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from typing import Any

from monolake.apps.config import Config, parse_config
from monolake.apps.proxy import HttpFilter, build_apps
from monolake.apps.proxy._app import Shared, new_access_log
from monolake.apps.proxy._upstream import UpstreamCluster
from monolake.core.client import Pool, UpstreamConnection
from monolake.core.proto.http1 import Request, Response
from monolake.core.service import Context

REQUEST = (
    b"GET /api/v1/items?id=7 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip\r\nCookie: a=b\r\n\r\n"
)


def nginx_response(body: bytes) -> bytes:
    """A canned nginx-like response carrying ``body``."""
    return (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 00:40:00 GMT\r\n"
        b"Content-Type: text/html\r\nContent-Length: %d\r\nLast-Modified: Wed, 25 Nov 2026 00:35:00 GMT\r\n"
        b'Connection: keep-alive\r\nETag: "abc-80"\r\nAccept-Ranges: bytes\r\n\r\n' % len(body)
    ) + body


BODY = b"x" * 128
RESPONSE = nginx_response(BODY)

CONFIG = {
    "runtime": {"workers": 1},
    "servers": {
        "web": {
            "listener": "127.0.0.1:0",
            "routes": [
                {"path": "/static/", "upstreams": [{"endpoint": "http://127.0.0.1:9"}]},
                {"host": "*.internal", "upstreams": [{"endpoint": "http://127.0.0.1:9"}]},
                {
                    "path": "/api/",
                    "upstream": "api",
                    "request_headers": {"set": {"X-Env": "bench"}},
                },
            ],
        }
    },
    "upstreams": {"api": {"endpoints": [{"endpoint": "http://127.0.0.1:9001"}]}},
}


ROUTES_LOAD = [
    {"path": "/api/", "prefix_rewrite": "/", "upstream": "api"},
    {"host": "admin.example.com", "upstream": "api"},
    {"path_regex": "^/v[0-9]+/items/", "upstream": "api"},
    {"path": "/", "upstream": "api", "request_headers": {"set": {"X-Bench-Proxy": "on"}}},
]
"""bench.load's routes (bench/load/configs.py), the matched one last."""

REQUEST_LOAD = REQUEST.replace(b"/api/v1/items?id=7", b"/body/128")


class SyncCheck(HttpFilter):
    def request_filter(self, req: Request, ctx: Context) -> Response | None:
        return None if req.path else Response(400)

    def response_filter(self, resp: Response, ctx: Context) -> None:
        resp.headers.add(b"X-Checked", b"1")


class AsyncCheck(HttpFilter):
    async def request_filter(self, req: Request, ctx: Context) -> Response | None:
        return None if req.path else Response(400)

    async def response_filter(self, resp: Response, ctx: Context) -> None:
        resp.headers.add(b"X-Checked", b"1")


FILTERS = {"none": [], "sync": ["__main__:SyncCheck"], "async": ["__main__:AsyncCheck"]}


class FakeTransport:
    """Collects what is written. With ``pieces`` set, ``writelines`` keeps its parts as given
    instead of joining them: a real transport writes them with one writev, without copying a
    body, and a 16 KiB join per response would be the harness's cost, not the proxy's."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.peer = peer
        self.out: list[Any] = []
        self.closed = False
        self.pieces = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, parts: Any) -> None:
        self.out.append(parts if self.pieces else b"".join(parts))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def seeded(cfg: Config) -> tuple[Shared, UpstreamConnection]:
    """Shared state for ``build_apps`` whose pool holds one idle connection to
    http://127.0.0.1:9001 over a fake transport, and that connection: every request
    reuses it and no socket is opened. (Seeded rather than by replacing ``Pool.connect``:
    compiled, the pool's methods cannot be replaced.)"""
    pool = Pool()
    clusters = {name: UpstreamCluster.from_config(name, c, pool) for name, c in cfg.upstreams.items()}
    conn = UpstreamConnection(pool, ("http", "127.0.0.1", 9001, ""))
    conn.connection_made(FakeTransport(("127.0.0.1", 9001)))  # type: ignore[arg-type]
    pool.release(conn)
    return Shared(pool=pool, clusters=clusters, access_log=new_access_log(cfg)), conn


class Harness:
    """The drive above, for other benches (bench/edge/): one server app's protocol on a fake
    downstream transport; its pool seeded with one idle fake upstream connection (``seeded``),
    so every try reuses it and no socket is opened.

    ``await h.proxied(request)`` feeds a request, answers the upstream try with ``response`` and
    lets the response be written; ``await h.local(request)`` is for one answered without going
    upstream. The bytes written downstream collect in ``h.out``; ``h.app`` is the server app.
    """

    def __init__(self, cfg: Config, server: str = "web", response: bytes = RESPONSE) -> None:
        shared, self.conn = seeded(cfg)
        self.app: Any = build_apps(cfg, shared=shared)[server]
        self.response = response
        self.down = self.app.protocol_factory()
        self.transport = FakeTransport()
        self.down.connection_made(self.transport)
        self.out = self.transport.out

    async def proxied(self, request: bytes) -> None:
        self.down.data_received(request)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        self.conn.data_received(self.response)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def proxied_sync(self, request: bytes) -> None:
        """``proxied`` for a request served on the callback lane: no loop iteration needed."""
        self.down.data_received(request)
        self.conn.data_received(self.response)
        assert self.out, "--sync: this request was not answered on the callback lane"

    async def local(self, request: bytes) -> None:
        self.down.data_received(request)
        await asyncio.sleep(0)
        await asyncio.sleep(0)


async def run(
    n: int, profile: bool, filters: str = "none", body: bytes = BODY, routes: str = "micro", sync: bool = False
) -> float:
    web: dict[str, Any] = {**CONFIG["servers"]["web"], "filters": FILTERS[filters]}  # type: ignore[index]
    request = REQUEST
    if routes == "load":
        web["routes"] = ROUTES_LOAD
        request = REQUEST_LOAD
    config: dict[str, Any] = {**CONFIG, "servers": {"web": web}}
    h = Harness(parse_config(config), response=nginx_response(body))
    dt = h.transport
    for _ in range(200):  # warm up
        await h.proxied(request)
    assert dt.out and dt.out[-1].endswith(body), dt.out[-1][-200:]
    assert h.conn.transport is not None and not dt.closed, "the upstream connection should be reused"
    dt.out.clear()
    # Timed: parts kept unjoined, and dropped every 1000 responses (held, 20000 16 KiB
    # responses would grow the process by 330 MB, page faults included in the CPU time).
    dt.pieces = True
    written = 0
    last: Any = b""
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    t0 = time.process_time()
    for i in range(n):
        if sync:
            h.proxied_sync(request)
        else:
            await h.proxied(request)
        if i % 1000 == 999:
            written += len(dt.out)
            last = dt.out[-1]
            dt.out.clear()
    elapsed = time.process_time() - t0
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    written += len(dt.out)
    last = dt.out[-1] if dt.out else last
    assert written == n and (last if isinstance(last, bytes) else b"".join(last)).endswith(body)
    return elapsed * 1e6 / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--filters", default="none", choices=sorted(FILTERS))
    ap.add_argument("--body", type=int, default=len(BODY), help="response body size, bytes")
    ap.add_argument("--routes", default="micro", choices=["micro", "load"], help="this file's routes or bench.load's")
    ap.add_argument("--sync", action="store_true", help="no loop iteration per request (callback lane only)")
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        runner: Any = uvloop.run
    else:
        runner = asyncio.run
    body = b"x" * args.body
    results = [
        runner(run(args.n, args.profile, args.filters, body, args.routes, args.sync)) for _ in range(args.repeat)
    ]
    mode = " sync" if args.sync else ""
    print(
        f"{args.loop} filters={args.filters} body={args.body} routes={args.routes}{mode}: "
        f"{min(results):.2f} µs of Python per proxied request "
        f"(best of {args.repeat}: " + ", ".join(f"{r:.2f}" for r in results) + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
