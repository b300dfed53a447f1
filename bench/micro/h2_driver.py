"""CPU cost of the HTTP/2 drivers per stream (server and client side), without sockets.

    PYTHONPATH=src python bench/micro/h2_driver.py [-n 20000] [--runs 7] [--codec native]

What the proxy's two HTTP/2 halves do per stream, minus the proxy and the socket:

- ``server``: ``core.server._h2.H2Connection`` over an in-memory transport, a client codec
  opening ``--batch`` streams per read (as h2load ``-m 10`` does), a service that answers at
  once. ``get``: a GET answered with 128 bytes; ``grpc``: a POST with a 105-byte gRPC frame
  answered with a 105-byte frame and ``grpc-status`` trailers (a whole ``Body``, as the
  h2 upstream hands it over).
- ``client``: ``core.client._h2.H2Connection`` (the upstream side) sending ``--batch`` unary
  gRPC requests per round to a server codec that answers each with a frame and trailers.

The figure is µs of process CPU time per stream (median of interleaved runs): the
driver's work, the codec's and asyncio's (the server's task per stream), not the
kernel's. The machine is shared: compare A/B runs made back to back, and quote
``uptime``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from typing import Any

from monolake.apps.config import Http2, Server
from monolake.core._body import Body
from monolake.core.client._h2 import H2Connection as ClientConnection
from monolake.core.client._h2 import H2Pool, request_headers
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.proto.http2 import DATA, HEADERS, Codec, new_codec
from monolake.core.server import HttpServerApp

FRAME = b"\x00\x00\x00\x00\x64" + b"x" * 100
GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/body/128"), (b":authority", b"127.0.0.1:8080")]
GRPC = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/bench.Echo/Echo"),
    (b":authority", b"127.0.0.1:8080"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]
HEADERS_IN = Headers([(b"host", b"127.0.0.1:8080"), *GRPC[4:]], lower=[b"host", *(n for n, _ in GRPC[4:])])
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


class MemoryTransport:
    """The part of an asyncio transport the drivers use, writing into a buffer."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts: list[bytes]) -> None:
        for p in parts:
            self.out += p

    def close(self) -> None:
        return None

    def abort(self) -> None:
        return None

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


async def _service(req: Request) -> Response:
    if req.method == b"GET":
        return Response(200, Headers([(b"content-type", b"text/plain")]), body=b"x" * 128)
    body = req.body
    assert isinstance(body, Body)
    payload = await body.read_all()
    out = Body(None, None)
    out.feed(payload)
    out.trailers = TRAILERS
    out.feed_eof()
    return Response(200, Headers([(b"content-type", b"application/grpc")]), body=out)


class ServerSide:
    def __init__(self, kind: str, variant: str) -> None:
        cfg = Server(listener="127.0.0.1:0", http2=Http2())
        self.app = HttpServerApp("bench", cfg, _service)
        self.transport = MemoryTransport()
        first = self.app.protocol_factory()
        first.connection_made(self.transport)  # type: ignore[arg-type]
        self.first = first
        self.client: Codec = new_codec(True, kind=kind)
        self.client.initiate()
        self.variant = variant
        self.done = 0

    async def round(self, batch: int) -> None:
        client = self.client
        if self.variant == "get":
            for _ in range(batch):
                client.request(GET, True)
        else:
            for _ in range(batch):
                sid = client.request(GRPC, False)
                client.send_data(sid, FRAME, True)
        (self.transport.protocol or self.first).data_received(client.pending())
        want = self.done + batch
        for _ in range(50):
            await asyncio.sleep(0)
            out = self.transport.take()
            if out:
                for ev in client.feed(out):
                    if ev[0] == DATA and ev[2]:
                        client.consumed(ev[1], len(ev[2]))
                    if (ev[0] == DATA or ev[0] == HEADERS) and ev[3]:
                        self.done += 1
                ack = client.pending()
                if ack:
                    self.transport.protocol.data_received(ack)
            if self.done >= want:
                return
        raise AssertionError(f"server side: {want - self.done} streams unanswered")


class ClientSide:
    def __init__(self, kind: str) -> None:
        self.pool = H2Pool(asyncio.get_running_loop(), codec_kind=kind)
        self.server: Codec = new_codec(False, kind=kind)
        self.server.initiate()
        codec = new_codec(True, initial_window_size=1024 * 1024, kind=kind)
        self.conn = ClientConnection(self.pool, ("http", "127.0.0.1", 8080, ""), codec)
        self.transport = MemoryTransport()
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]

    async def round(self, batch: int) -> None:
        conn, server = self.conn, self.server
        streams = []
        for _ in range(batch):
            # The head as the proxy builds it from the client's request.
            head = request_headers(b"POST", b"/bench.Echo/Echo", HEADERS_IN, b"127.0.0.1:8080", b"http", len(FRAME))
            streams.append(conn.request(head, FRAME, head_only=False, read_timeout=60.0, grpc=True))
        await asyncio.sleep(0)  # the client's flush
        for ev in server.feed(self.transport.take()):
            if ev[0] == DATA:
                if ev[2]:
                    server.consumed(ev[1], len(ev[2]))
                if ev[3]:
                    server.send_headers(ev[1], [(b":status", b"200"), (b"content-type", b"application/grpc")], False)
                    server.send_data(ev[1], FRAME, False)
                    server.send_headers(ev[1], TRAILERS, True)
        conn.data_received(server.pending())
        for st in streams:
            resp = st.fut.result()
            body = resp.body
            assert isinstance(body, Body) and body.trailers == TRAILERS, body
            assert b"".join(body.take()) == FRAME
        await asyncio.sleep(0)  # window updates out
        server.feed(self.transport.take())


async def _measure(side: str, variant: str, kind: str, n: int, batch: int) -> float:
    runner: ServerSide | ClientSide
    if side == "server":
        runner = ServerSide(kind, variant)
    else:
        runner = ClientSide(kind)
        server = runner.server
        runner.conn.data_received(server.pending())
        server.feed(runner.transport.take())
    if side == "server":
        await asyncio.sleep(0)
    rounds = max(1, n // batch)
    for _ in range(max(1, rounds // 10)):
        await runner.round(batch)
    gc.collect()
    t0 = time.process_time()
    for _ in range(rounds):
        await runner.round(batch)
    return (time.process_time() - t0) / (rounds * batch) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20_000, help="streams per run")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--batch", type=int, default=10, help="streams per read")
    ap.add_argument("--codec", default=os.environ.get("MONOLAKE_H2_CODEC", "native"))
    ap.add_argument("--only", help="one case: server-get, server-grpc or client-grpc")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    import monolake.core.server._h2 as sh2

    compiled = not sh2.__file__.endswith(".py")
    cases = [("server", "get"), ("server", "grpc"), ("client", "grpc")]
    if args.only:
        cases = [c for c in cases if f"{c[0]}-{c[1]}" == args.only]
    results: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
    for _ in range(args.runs):
        for side, variant in cases:
            results[side, variant].append(asyncio.run(_measure(side, variant, args.codec, args.n, args.batch)))
    print(
        f"µs CPU per stream, {args.codec} codec, {args.loop}, {'compiled' if compiled else 'pure'} drivers, "
        f"median of {args.runs} interleaved runs (load {os.getloadavg()[0]:.2f}):"
    )
    for side, variant in cases:
        xs = results[side, variant]
        print(f"  {side:>6} {variant:>5}: {statistics.median(xs):7.2f}   (min {min(xs):.2f}, max {max(xs):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
