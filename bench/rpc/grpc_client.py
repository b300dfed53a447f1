"""A load generator: ``python -m bench.rpc.grpc_client MODE ADDRESS SECONDS CONC``.

MODE ``unary``: CONC concurrent callers, each making unary calls back to back; ``bidi``: CONC bidi
streams, each sending a message and waiting for its echo, back to back; with grpcio's asyncio
client, or with monolake's ``GrpcClient`` (``ml-unary``, ``ml-bidi``; on uvloop). Prints one JSON
line: calls (messages echoed) per second and latency percentiles (µs), after a 1 s warm-up.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from monolake.apps.rpc.grpc import load_protos

pb = load_protos([Path(__file__).with_name("grpc_bench.proto")]).module("grpc_bench.proto")
PAYLOAD = b"x" * 100


async def ml_main(mode: str, address: str, seconds: float, conc: int, lats: list[float]) -> None:
    from monolake.apps.rpc.grpc import GrpcClient

    client = GrpcClient([pb], [address])
    measure_from = time.perf_counter() + 1.0
    end = measure_from + seconds
    msg = pb.Msg(payload=PAYLOAD)

    async def unary_worker() -> None:
        while (now := time.perf_counter()) < end:
            await client.unary("bench.Echo.Unary", msg)
            if now >= measure_from:
                lats.append(time.perf_counter() - now)

    async def bidi_worker() -> None:
        got: asyncio.Queue[None] = asyncio.Queue()
        sent_at: list[float] = []

        async def requests() -> Any:
            while time.perf_counter() < end:
                sent_at.append(time.perf_counter())
                yield msg
                await got.get()

        async for _ in client.bidi("bench.Echo.Bidi", requests()):
            t = sent_at[-1]
            if t >= measure_from:
                lats.append(time.perf_counter() - t)
            got.put_nowait(None)

    worker = unary_worker if mode == "unary" else bidi_worker
    try:
        await asyncio.gather(*(worker() for _ in range(conc)))
    finally:
        client.close()


async def main(mode: str, address: str, seconds: float, conc: int) -> dict[str, Any]:
    lats: list[float] = []
    if mode.startswith("ml-"):
        await ml_main(mode[3:], address, seconds, conc, lats)
        return _result(lats, seconds)
    async with grpc.aio.insecure_channel(address) as ch:
        ser, de = pb.Msg.SerializeToString, pb.Msg.FromString
        unary = ch.unary_unary("/bench.Echo/Unary", request_serializer=ser, response_deserializer=de)
        bidi = ch.stream_stream("/bench.Echo/Bidi", request_serializer=ser, response_deserializer=de)
        loop = asyncio.get_running_loop()
        start = loop.time()
        measure_from = start + 1.0
        end = measure_from + seconds
        msg = pb.Msg(payload=PAYLOAD)

        async def unary_worker() -> None:
            while (now := loop.time()) < end:
                await unary(msg)
                if now >= measure_from:
                    lats.append(loop.time() - now)

        async def bidi_worker() -> None:
            call = bidi()
            while (now := loop.time()) < end:
                await call.write(msg)
                await call.read()
                if now >= measure_from:
                    lats.append(loop.time() - now)
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass

        worker = unary_worker if mode == "unary" else bidi_worker
        await asyncio.gather(*(worker() for _ in range(conc)))
    return _result(lats, seconds)


def _result(lats: list[float], seconds: float) -> dict[str, Any]:
    lats.sort()

    def pct(q: float) -> float:
        return round(lats[min(len(lats) - 1, int(q * len(lats)))] * 1e6, 1) if lats else 0.0

    return {"calls_per_s": round(len(lats) / seconds, 1), "p50_us": pct(0.5), "p99_us": pct(0.99), "n": len(lats)}


if __name__ == "__main__":
    mode, address, seconds, conc = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    if mode.startswith("ml-"):
        import uvloop

        print(json.dumps(uvloop.run(main(mode, address, seconds, conc))))
    else:
        print(json.dumps(asyncio.run(main(mode, address, seconds, conc))))
