"""protosocket's example-proto echo, served by monolake: protobuf messages over TCP with
protosocket-rpc's envelope (request_id, code), unary and server-streaming.

    monolake run -c examples/streams/echo.toml          # or:
    python examples/streams/echo_server.py --listen 127.0.0.1:9000
    python examples/streams/echo_client.py --connect 127.0.0.1:9000

A request with ``response_behavior = UNARY`` is answered with one ``EchoResponse``; with
``STREAM``, with one ``EchoStream`` per character of the message, then an end message.
A request without a body is refused (the client gets a cancel), as protosocket's server does.
``echo_pb2`` is generated from echo.proto (``python -m grpc_tools.protoc -I. --python_out=. echo.proto``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # echo_pb2 beside this file

import echo_pb2  # noqa: E402

from monolake import Factory, serve  # noqa: E402
from monolake.streams import Fields, ProtobufCodec, RejectCall, StreamsApp  # noqa: E402


class Echo:
    """The handler: a ``Service[Request, Response | AsyncIterator[Response]]``. The framework
    stamps the request's id on every reply and sends the end message after a stream."""

    async def __call__(self, req: echo_pb2.Request) -> echo_pb2.Response | AsyncIterator[echo_pb2.Response]:
        if not req.HasField("body"):
            raise RejectCall("request without a body")
        if req.response_behavior == echo_pb2.STREAM:
            return self.stream(req.body)
        return echo_pb2.Response(echo=echo_pb2.EchoResponse(message=req.body.message, nanotime=req.body.nanotime))

    async def stream(self, body: echo_pb2.EchoRequest) -> AsyncIterator[echo_pb2.Response]:
        for i, c in enumerate(body.message):
            yield echo_pb2.Response(stream=echo_pb2.EchoStream(message=c, nanotime=body.nanotime, sequence=i))


class EchoFactory(Factory[Echo]):
    def make(self, old: Echo | None) -> Echo:
        return Echo()  # a reload makes a new one (of the new code); Echo keeps no state to hand over


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:9000")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio", "io_uring", "auto"])
    args = p.parse_args()
    app = StreamsApp(
        name="echo",
        listen=args.listen,
        factory=EchoFactory(),
        codec=ProtobufCodec(echo_pb2.Request),
        rpc=(Fields(echo_pb2.Request), Fields(echo_pb2.Response)),
    )
    return serve(app, workers=args.workers, loop=args.loop)


if __name__ == "__main__":
    raise SystemExit(main())
