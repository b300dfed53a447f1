"""The HTTP/1 driver's dispatch and write-out per request, without the proxy or sockets.

    python bench/micro/http1_chain.py [--loop uvloop|asyncio] [-n 50000] [--repeat 3] [--no-panic]

An ``HttpServerApp`` over a fake transport serves a one-line GET with a service behind
``CatchPanic`` (as the proxy's stacks have it; ``--no-panic``: the service alone) that waits
on a future the harness resolves, as the proxy waits on its upstream, and answers a canned
128 B response. What is timed is the chain around the service: the connection's task woken
for the request, the service call, the wait, the response written, the task's wait for the
next request. The request parsing is in it too but small (one header). Prints CPU µs per
request (best of ``--repeat``); compare trees with ``tree_ab.py --script http1_chain.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from monolake.apps.config import Server
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.server import HttpServerApp, error_response
from monolake.core.service import Factory, Layer, Stack
from monolake.core.service.layers import CatchPanicLayer

REQUEST = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
BODY = b"x" * 128


class FakeTransport:
    def __init__(self) -> None:
        self.out: list[Any] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, parts: Any) -> None:
        self.out.append(parts)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        return None

    def abort(self) -> None:
        return None


class Upstreamish:
    """Waits on a future per request, as the proxy waits on its upstream connection's."""

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] | None = None

    async def __call__(self, req: Request) -> Response:
        fut = self.fut = asyncio.get_running_loop().create_future()
        await fut
        return Response(200, Headers([(b"Content-Type", b"text/plain")]), BODY)


class Leaf(Factory[Upstreamish]):
    def __init__(self, svc: Upstreamish) -> None:
        self.svc = svc

    def make(self, old: Upstreamish | None) -> Upstreamish:
        return self.svc


def _panic(req: Request, exc: BaseException) -> Response:
    return error_response(500)


async def run(n: int, panic: bool) -> float:
    svc = Upstreamish()
    layers: list[Layer[Request, Response]] = [CatchPanicLayer(_panic)] if panic else []
    service = Stack(layers, Leaf(svc), provided=("peer", "server", "start")).build()
    app = HttpServerApp("chain", Server(listener="127.0.0.1:0"), service)
    conn = app.protocol_factory()
    t = FakeTransport()
    conn.connection_made(t)  # type: ignore[arg-type]

    async def one() -> None:
        conn.data_received(REQUEST)
        await asyncio.sleep(0)  # the connection's task runs the service up to its wait
        fut = svc.fut
        assert fut is not None
        fut.set_result(None)
        await asyncio.sleep(0)  # the task wakes, the response is written
        await asyncio.sleep(0)

    for _ in range(500):
        await one()
    assert t.out and t.out[-1][-1] == BODY, t.out[-1]
    t.out.clear()
    t0 = time.process_time()
    for i in range(n):
        await one()
        if i % 1000 == 999:
            t.out.clear()
    elapsed = time.process_time() - t0
    app.close()
    return elapsed * 1e6 / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("-n", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-panic", action="store_true", help="the service alone, without CatchPanic")
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        runner: Any = uvloop.run
    else:
        runner = asyncio.run
    results = [runner(run(args.n, not args.no_panic)) for _ in range(args.repeat)]
    print(
        f"{args.loop} panic={not args.no_panic}: {min(results):.2f} µs per request through the HTTP/1 driver "
        f"(best of {args.repeat}: " + ", ".join(f"{r:.2f}" for r in results) + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
