"""The io_uring transport's CPU per round trip, on real loopback sockets.

    python bench/micro/uring_transport.py [-n 20000] [--repeat 3] [--size 128]

One io_uring loop runs an echo server and a client over 127.0.0.1: the client writes
``--size`` bytes, the server's protocol writes them back, the client waits for all of them,
``-n`` times. Both ends are ``UringSocketTransport``s (a recv completion, ``data_received``,
a send, a send completion each way), so what a build changes in the transport's Python and the
loop's dispatch shows in the CPU per round trip (user+sys: Linux splits the two by tick
samples, so the user share alone is noisy). For an A/B of two builds,
run it with each one's ``src`` first on PYTHONPATH, alternating (the in-place compiled
build runs compiled; ``MONOLAKE_PURE=1`` the same install from source).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Client(asyncio.Protocol):
    def __init__(self, size: int) -> None:
        self.size = size
        self.got = 0
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= self.size and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


async def run(n: int, size: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(lambda: Client(size), "127.0.0.1", port)
    payload = b"x" * size

    async def trip() -> None:
        client.got = 0
        client.waiter = loop.create_future()
        client.transport.write(payload)
        await client.waiter

    for _ in range(500):
        await trip()
    t0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(n):
        await trip()
    t1 = resource.getrusage(resource.RUSAGE_SELF)
    client.transport.close()
    server.close()
    await server.wait_closed()
    return (t1.ru_utime - t0.ru_utime) * 1e6 / n, (t1.ru_stime - t0.ru_stime) * 1e6 / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    from monolake.core import _compiled
    from monolake.core.runtime.uring import factory, unavailable

    reason = unavailable()
    if reason:
        raise SystemExit(f"io_uring unavailable: {reason}")
    results = []
    for _ in range(args.repeat):
        loop = factory()()
        try:
            results.append(loop.run_until_complete(run(args.n, args.size)))
        finally:
            loop.close()
    best = min(results, key=sum)
    print(
        f"io_uring transport ({'compiled' if _compiled.COMPILED else 'pure'}): {best[0] + best[1]:.2f} µs CPU "
        f"({best[0]:.2f} user + {best[1]:.2f} sys; Linux splits the two by tick samples) per {args.size} B "
        f"round trip (best of {args.repeat} by user+sys: " + ", ".join(f"{u + k:.2f}" for u, k in results) + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
