"""An HTTP service that answers itself: a counter, a streamed body and Server-Sent Events.

    python examples/services/hello_stream.py --listen 127.0.0.1:8080
    monolake run -c examples/services/hello_stream.toml

    curl http://127.0.0.1:8080/count          # 1, 2, 3... (kept across `monolake reload` / SIGHUP)
    curl -N http://127.0.0.1:8080/stream      # five chunks, one at a time
    curl -N http://127.0.0.1:8080/events      # an SSE event; POST /release sends the next one

``HelloFactory.make(old)`` hands the running service's counter to the new one, so
a reload keeps it. Counters are per worker process (run one worker to see 1, 2, 3).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

from monolake import Factory, Headers, HttpApp, Request, Response, serve, sse_response


class Hello:
    """The service: one instance per worker, rebuilt (with its state) on reload."""

    def __init__(self, count: int = 0) -> None:
        self.count = count
        self.release = asyncio.Event()

    async def __call__(self, req: Request) -> Response:
        if req.path == b"/count":
            self.count += 1
            return Response(200, Headers([(b"Content-Type", b"text/plain")]), b"%d\n" % self.count)
        if req.path == b"/stream":
            return Response(200, Headers([(b"Content-Type", b"text/plain")]), self.chunks(5))
        if req.path == b"/events":
            return sse_response(self.events())
        if req.path == b"/release" and req.method == b"POST":
            self.release.set()  # the open /events stream sends its next event
            return Response(204)
        if req.path == b"/echo" and req.method == b"POST":
            body = await req.body.read_all(limit=1 << 20) if req.body is not None else b""
            return Response(200, Headers([(b"Content-Type", b"application/octet-stream")]), body)
        if req.path == b"/fail":
            raise RuntimeError("a bug in the handler")
        if req.path == b"/slow":
            await asyncio.sleep(3600)
        return Response(404, Headers([(b"Content-Type", b"text/plain")]), b"not found\n")

    async def chunks(self, n: int) -> AsyncIterator[bytes]:
        for i in range(n):
            yield b"chunk %d\n" % i
            await asyncio.sleep(0)

    async def events(self) -> AsyncIterator[str]:
        yield "hello"
        for i in range(1, 3):
            self.release.clear()
            await asyncio.wait_for(self.release.wait(), 30)
            yield f"event {i}"


class HelloFactory(Factory[Hello]):
    def make(self, old: Hello | None) -> Hello:
        return Hello(old.count if old is not None else 0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:8080")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio", "io_uring", "auto"])
    args = p.parse_args()
    app = HttpApp(name="hello", listen=args.listen, factory=HelloFactory())
    return serve(app, workers=args.workers, loop=args.loop)


if __name__ == "__main__":
    raise SystemExit(main())
