"""Calling the greeter with monolake's gRPC client: python examples/rpc/grpc/greeter_client.py 127.0.0.1:50051

A ``GrpcClient`` multiplexes calls over HTTP/2 streams, balances them over its endpoints and
retries UNAVAILABLE on another one. Metainfo set here travels with the calls
(``rpc-persist-*`` to every hop below, ``rpc-transit-*`` to the next one only).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from monolake.apps.rpc.grpc import GrpcClient, RpcError, load_protos, metainfo

PROTOS = load_protos([Path(__file__).with_name("greeter.proto")])
pb = PROTOS.module("greeter.proto")


async def main(endpoints: list[str]) -> None:
    metainfo.current().set_persistent("TRACE_ID", "demo-1")
    client = GrpcClient(PROTOS, endpoints, timeout=5.0)
    try:
        reply = await client.unary("Greeter.SayHello", pb.HelloRequest(name="monolake"))
        print(reply.message)
        async for r in client.bidi("Greeter.Chat", [pb.HelloRequest(name=n) for n in ("a", "b")]):
            print(r.message)
        try:
            await client.unary("Greeter.SayHello", pb.HelloRequest(name=""), timeout=1.0)
        except RpcError as exc:
            print(f"error: {exc.code.name} {exc.message}")
    finally:
        client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["127.0.0.1:50051"]))
