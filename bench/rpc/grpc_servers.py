"""The servers bench/rpc/grpc.py measures: ``python -m bench.rpc.grpc_servers KIND PORT``.

KIND ``monolake``: a ``GrpcServer`` (one worker, uvloop) with an echo servicer; ``grpcio``: grpcio's
asyncio server with the same servicer written for it. Both parse and serialize the messages.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

PROTO = Path(__file__).with_name("grpc_bench.proto")


def monolake(port: int) -> int:
    from monolake import serve
    from monolake.apps.rpc.grpc import grpc_app, load_protos

    protos = load_protos([PROTO])

    class Echo:
        async def Unary(self, request: Any, context: Any) -> Any:
            return request

        async def Bidi(self, requests: Any, context: Any) -> Any:
            async for r in requests:
                yield r

    app = grpc_app("bench", f"127.0.0.1:{port}", protos, Echo(), health=False, reflection=False)
    return serve(app, workers=1, loop="uvloop", log_level="warning")


def grpcio(port: int) -> int:
    import grpc

    from monolake.apps.rpc.grpc import load_protos

    pb = load_protos([PROTO]).module("grpc_bench.proto")

    async def unary(request: Any, context: Any) -> Any:
        return request

    async def bidi(requests: Any, context: Any) -> Any:
        async for r in requests:
            yield r

    async def main() -> None:
        ser, de = pb.Msg.SerializeToString, pb.Msg.FromString
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, de, ser),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi, de, ser),
        }
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", handlers)])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    return 0


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    raise SystemExit(monolake(port) if kind == "monolake" else grpcio(port))
