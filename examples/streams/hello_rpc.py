"""A protobuf RPC service over message streams, wire-compatible with protosocket-rpc clients.

    python examples/streams/hello_rpc.py 127.0.0.1:9000
    python examples/streams/echo_client.py --connect 127.0.0.1:9000
"""

import os
import sys
from collections.abc import AsyncIterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import echo_pb2  # generated from echo.proto

from monolake import Factory, serve
from monolake.streams import Fields, ProtobufCodec, StreamsApp

Request, Response = echo_pb2.Request, echo_pb2.Response


class Echo:  # a Service: one reply, or an async iterator of replies (a server stream)
    async def __call__(self, req: Request) -> Response | AsyncIterator[Response]:
        if req.response_behavior == echo_pb2.STREAM:
            return self.letters(req.body)
        return Response(echo=echo_pb2.EchoResponse(message=req.body.message, nanotime=req.body.nanotime))

    async def letters(self, body: echo_pb2.EchoRequest) -> AsyncIterator[Response]:
        for i, c in enumerate(body.message):
            yield Response(stream=echo_pb2.EchoStream(message=c, nanotime=body.nanotime, sequence=i))


class EchoFactory(Factory[Echo]):
    def make(self, old: Echo | None) -> Echo:
        return Echo()


if __name__ == "__main__":
    rpc = (Fields(Request), Fields(Response))  # request_id and code carry the call id and control code
    codec = ProtobufCodec(Request)  # varint length-delimited, as protosocket-prost
    app = StreamsApp(name="echo", listen=sys.argv[1], factory=EchoFactory(), codec=codec, rpc=rpc)
    raise SystemExit(serve(app, workers=1))
