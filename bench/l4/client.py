"""The client side of the L4 benchmark; prints one JSON object.

- ``upload --port P --bytes N --data FILE``: one connection, N bytes sent with ``os.sendfile``, then
  ``shutdown(SHUT_WR)``; done when the sink's byte count comes back (it must equal N);
- ``download --port P --bytes N``: one connection, asks the source for N bytes and discards them with
  ``os.splice`` into /dev/null until EOF (the count must equal N);
- ``conns --port P --count C --size S --concurrency K``: C short connections, K at a time; each sends S
  bytes, reads the S-byte echo (checked), then closes (asyncio protocol, uvloop when installed).

Times are wall-clock from before the first connect to the last byte; the harness reads the proxy's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import time
from typing import Any

from .peers import drain, send_bytes


def upload(port: int, count: int, data: str) -> dict[str, Any]:
    fd = os.open(data, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            s.settimeout(None)  # blocking: sendfile and splice on a socket with a timeout get EAGAIN
            send_bytes(s, fd, size, count)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(64):
                reply += chunk
        seconds = time.perf_counter() - t0
    finally:
        os.close(fd)
    got = int(reply or b"-1")
    if got != count:
        raise SystemExit(f"upload: the sink read {got} bytes, sent {count}")
    return {"bytes": count, "seconds": seconds}


def download(port: int, count: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.settimeout(None)
        s.sendall(f"{count}\n".encode())
        got = drain(s)
    seconds = time.perf_counter() - t0
    if got != count:
        raise SystemExit(f"download: read {got} bytes, the source sent {count}")
    return {"bytes": count, "seconds": seconds}


class _EchoClient(asyncio.Protocol):
    def __init__(self, payload: bytes, done: asyncio.Future[None]) -> None:
        self.payload = payload
        self.done = done
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= len(self.payload):
            if not self.done.done():
                if self.buf == self.payload:
                    self.done.set_result(None)
                else:
                    self.done.set_exception(RuntimeError("echo differs from what was sent"))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError(f"closed after {len(self.buf)} echo bytes"))


async def _conns(port: int, count: int, size: int, concurrency: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    payload = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    left = count
    errors: list[str] = []
    times: list[float] = []

    async def one() -> None:
        done: asyncio.Future[None] = loop.create_future()
        t = time.perf_counter()
        transport, _ = await loop.create_connection(lambda: _EchoClient(payload, done), "127.0.0.1", port)
        try:
            await asyncio.wait_for(done, 10)
        finally:
            transport.close()
        times.append(time.perf_counter() - t)

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            try:
                await one()
            except (OSError, RuntimeError, TimeoutError) as exc:
                errors.append(repr(exc))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    times.sort()
    return {
        "connections": count,
        "ok": len(times),
        "errors": len(errors),
        "first_errors": errors[:5],
        "seconds": seconds,
        "p50_us": round(statistics.median(times) * 1e6, 1) if times else None,
        "p99_us": round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1e6, 1) if times else None,
    }


def conns(port: int, count: int, size: int, concurrency: int) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(_conns(port, count, size, concurrency))
    except ImportError:
        return asyncio.run(_conns(port, count, size, concurrency))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.l4.client")
    ap.add_argument("mode", choices=["upload", "download", "conns"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bytes", type=int, default=1 << 30)
    ap.add_argument("--data", help="file to send (upload)")
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args(argv)
    if args.mode == "upload":
        out = upload(args.port, args.bytes, args.data)
    elif args.mode == "download":
        out = download(args.port, args.bytes)
    else:
        out = conns(args.port, args.count, args.size, args.concurrency)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
