"""A client of the echo example (or of protosocket's own example-proto server).

    python examples/streams/echo_client.py --connect 127.0.0.1:9000 --calls 1000

Sends ``--calls`` unary echoes at once over one connection (their replies come back in
any order, matched by id), then one server-streaming call, and prints what came back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import echo_pb2  # noqa: E402

from monolake.streams import Fields, ProtobufCodec, connect_rpc  # noqa: E402


async def run(address: str, calls: int) -> None:
    conn = await connect_rpc(address, ProtobufCodec(echo_pb2.Response), Fields(echo_pb2.Request), Fields(echo_pb2.Response))

    async def one(i: int) -> None:
        req = echo_pb2.Request(body=echo_pb2.EchoRequest(message=f"hello {i}", nanotime=time.monotonic_ns()))
        resp = await conn.call(req)
        assert resp.echo.message == f"hello {i}", resp

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(calls)))
    took = time.perf_counter() - start
    print(f"{calls} unary calls in {took * 1000:.1f} ms ({calls / took:,.0f}/s)")
    req = echo_pb2.Request(body=echo_pb2.EchoRequest(message="stream"), response_behavior=echo_pb2.STREAM)
    parts = [r.stream.message async for r in conn.stream(req)]
    print("stream:", "".join(parts), f"({len(parts)} messages)")
    conn.close()
    await conn.wait_closed()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connect", default="127.0.0.1:9000")
    p.add_argument("--calls", type=int, default=1000)
    args = p.parse_args()
    asyncio.run(run(args.connect, args.calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
