"""A gRPC service in Python on monolake: a servicer for greeter.proto, served from Python or TOML.

    python examples/rpc/grpc/greeter.py --listen 127.0.0.1:50051
    monolake run -c examples/rpc/grpc/greeter.toml
    monolake rpc call 127.0.0.1:50051 --idl examples/rpc/grpc/greeter.proto Greeter.SayHello '{"name": "you"}'

The servicer is a plain class with one ``async def`` per RPC (grpcio's asyncio names and
signatures); a streaming reply is an async generator. ``load_protos`` compiles the
``.proto`` once (protoc from grpcio-tools, cached) and hands back its generated module.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from monolake import serve
from monolake.apps.rpc.grpc import RpcError, ServicerContext, StatusCode, grpc_app, load_protos

PROTOS = load_protos([Path(__file__).with_name("greeter.proto")])
pb = PROTOS.module("greeter.proto")


class Greeter:
    """One instance per worker process: ``greeted`` counts that worker's calls and survives a reload."""

    def __init__(self) -> None:
        self.greeted = 0

    async def SayHello(self, request: Any, context: ServicerContext) -> Any:
        if not request.name:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "name is empty")
        self.greeted += 1
        return pb.HelloReply(message=f"Hello, {request.name}!", count=self.greeted)

    async def Chat(self, requests: AsyncIterator[Any], context: ServicerContext) -> AsyncIterator[Any]:
        async for r in requests:
            self.greeted += 1
            yield pb.HelloReply(message=f"Hi {r.name}", count=self.greeted)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:50051")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio", "io_uring", "auto"])
    args = p.parse_args()
    return serve(grpc_app("greeter", args.listen, PROTOS, Greeter), workers=args.workers, loop=args.loop)


if __name__ == "__main__":
    raise SystemExit(main())
