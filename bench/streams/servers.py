"""Echo servers for the streams benchmark, one per process (pin it with taskset).

    python -m bench.streams.servers KIND --port PORT [--loop uvloop]

KIND: ``rpc`` (monolake streams, protosocket-rpc echo of examples/streams: protobuf, unary and
server stream), ``bytes`` (monolake streams, a per-message handler echoing 4-byte length-prefixed
bytes, ordered), ``bytes_concurrent`` (the same, concurrent semantics),
``bytes_def`` (ordered, a plain ``def`` handler), ``floor`` (a plain
asyncio Protocol echoing 4-byte length-prefixed frames: the Python floor),
``floor_join`` (the floor writing one joined buffer per read), ``floor_calls`` (the floor calling an
``async def`` handler per frame), ``grpc`` (grpcio's asyncio
server: unary, server-streaming and bidi echo of the same messages).
The monolake servers run on a bare loop (no supervisor) so exactly one process serves.
Prints "ready PORT" once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "streams"))

import echo_pb2


class Floor(asyncio.Protocol):
    """Length-prefixed echo with nothing but asyncio: frames found and written back per read."""

    def __init__(self) -> None:
        self.buf = b""
        self.t: Any = None

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        out = []
        while end - pos >= 4:
            n = int.from_bytes(buf[pos : pos + 4], "big")
            if end - pos - 4 < n:
                break
            out.append(buf[pos : pos + 4 + n])
            pos += 4 + n
        self.buf = buf[pos:]
        if out:
            self.t.writelines(out)


class FloorJoin(Floor):
    """The floor writing its replies as one joined buffer (one ``write``, as monolake does) instead of
    ``writelines`` of the slices: the floor with the best write it could do."""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        while end - pos >= 4:
            n = int.from_bytes(buf[pos : pos + 4], "big")
            if end - pos - 4 < n:
                break
            pos += 4 + n
        self.buf = buf[pos:]
        if pos:
            self.t.write(buf[:pos] if pos < end else buf)


class FloorCalls(Floor):
    """The floor with a handler: each frame goes through ``await handler(frame)``, driven with
    ``coro.send(None)`` (the cheapest way to call an async def that does not wait)."""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        out = []
        handler = _echo
        while end - pos >= 4:
            n = int.from_bytes(buf[pos : pos + 4], "big")
            if end - pos - 4 < n:
                break
            coro = handler(buf[pos + 4 : pos + 4 + n])
            try:
                coro.send(None)
            except StopIteration as done:
                m = done.value
                out.append(len(m).to_bytes(4, "big") + m)
            pos += 4 + n
        self.buf = buf[pos:]
        if out:
            self.t.writelines(out)


async def _echo(m: bytes) -> bytes:
    return m


class BytesEcho:
    async def __call__(self, m: bytes) -> bytes:
        return m


def bytes_echo(m: bytes) -> bytes:
    """A plain ``def`` handler: called with no coroutine."""
    return m


async def serve(kind: str, port: int) -> None:
    from echo_server import Echo

    from monolake.streams import BytesCodec, Fields, MessageServerApp, ProtobufCodec, StreamSettings

    loop = asyncio.get_running_loop()
    if kind == "floor":
        server = await loop.create_server(Floor, "127.0.0.1", port)
    elif kind == "floor_calls":
        server = await loop.create_server(FloorCalls, "127.0.0.1", port)
    elif kind == "floor_join":
        server = await loop.create_server(FloorJoin, "127.0.0.1", port)
    elif kind in ("bytes", "bytes_concurrent", "bytes_def"):
        semantics = "concurrent" if kind == "bytes_concurrent" else "ordered"
        handler: Any = bytes_echo if kind == "bytes_def" else BytesEcho()
        app = MessageServerApp("bytes", handler, BytesCodec(), settings=StreamSettings(semantics=semantics))
        server = await loop.create_server(app.protocol_factory, "127.0.0.1", port)
    else:
        rpc = (Fields(echo_pb2.Request), Fields(echo_pb2.Response))
        app = MessageServerApp("rpc", Echo(), ProtobufCodec(echo_pb2.Request), requests=rpc[0], responses=rpc[1])
        server = await loop.create_server(app.protocol_factory, "127.0.0.1", port)
    print("ready", port, flush=True)
    async with server:
        await server.serve_forever()


def serve_grpc(port: int) -> None:
    import grpc

    async def unary(req: Any, ctx: Any) -> Any:
        return echo_pb2.Response(
            request_id=req.request_id, echo=echo_pb2.EchoResponse(message=req.body.message, nanotime=req.body.nanotime)
        )

    async def server_stream(req: Any, ctx: Any) -> AsyncIterator[Any]:
        for i, c in enumerate(req.body.message):
            yield echo_pb2.Response(
                request_id=req.request_id, stream=echo_pb2.EchoStream(message=c, nanotime=req.body.nanotime, sequence=i)
            )

    async def bidi(reqs: Any, ctx: Any) -> AsyncIterator[Any]:
        async for req in reqs:
            yield echo_pb2.Response(
                request_id=req.request_id,
                echo=echo_pb2.EchoResponse(message=req.body.message, nanotime=req.body.nanotime),
            )

    kw = {
        "request_deserializer": echo_pb2.Request.FromString,
        "response_serializer": echo_pb2.Response.SerializeToString,
    }
    handler = grpc.method_handlers_generic_handler(
        "echo.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, **kw),
            "Stream": grpc.unary_stream_rpc_method_handler(server_stream, **kw),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi, **kw),
        },
    )

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", port, flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "kind", choices=["rpc", "bytes", "bytes_concurrent", "bytes_def", "floor", "floor_join", "floor_calls", "grpc"]
    )
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio", "io_uring"])
    args = p.parse_args()
    if args.kind == "grpc":
        serve_grpc(args.port)
        return
    from monolake.core.runtime._loops import new_event_loop

    loop = new_event_loop(args.loop)
    loop.run_until_complete(serve(args.kind, args.port))


if __name__ == "__main__":
    main()
