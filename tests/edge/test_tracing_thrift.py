"""Tracing on a thrift server: the caller's ``RPC_TRANSIT_traceparent`` (TTHeader, Kitex's key) is the
SERVER span's parent, and the upstream receives the proxy's CLIENT span as its parent in the same key."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip(
    "opentelemetry.proto", reason="the OTLP receiver decodes with opentelemetry-proto (a test dependency)"
)

from monolake.core.proto.thrift import (
    FrameReader,
    MessageType,
    ThriftProtocol,
    encode_ttheader,
    message_begin,
    peek_message,
    read_header_info,
)

from ._support import InProcessProxy, LoopThread
from .test_tracing import PID, TID, Receiver

BINARY = ThriftProtocol.BINARY


class TTUpstream:
    """A TTHeader Thrift server answering every call with an empty reply; ``headers`` records each
    call's TTHeader string headers."""

    def __init__(self, lt: LoopThread) -> None:
        self.headers: list[dict[str, str]] = []
        self.server: asyncio.Server = lt.run(self._start())
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        self.lt = lt
        self.writers: set[asyncio.StreamWriter] = set()

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        frames = FrameReader()
        try:
            while data := await reader.read(65536):
                for f in frames.feed(data):
                    self.headers.append(read_header_info(f).headers)
                    head = peek_message(f.data, f.payload, BINARY)
                    reply = message_begin(head.name, MessageType.REPLY, head.seq_id, BINARY) + b"\x00"
                    writer.write(encode_ttheader(reply, seq_id=f.seq_id, protocol=BINARY))
        except ConnectionError:
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for w in list(self.writers):
                w.close()
            await self.server.wait_closed()

        self.lt.run(stop())


def call(address: str, seq: int, headers: dict[str, str]) -> Any:
    """One TTHeader call of ``Calc.ping`` (no arguments); the reply frame."""
    payload = message_begin("ping", MessageType.CALL, seq, BINARY) + b"\x00"
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(encode_ttheader(payload, seq_id=seq, protocol=BINARY, headers=headers))
        reader = FrameReader()
        while True:
            frames = reader.feed(s.recv(65536))
            if frames:
                return frames[0]


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Receiver, TTUpstream, InProcessProxy]]:
    lt = LoopThread()
    receiver = Receiver(lt)
    up = TTUpstream(lt)
    args = {"endpoint": receiver.url, "export_interval": 0.05, "service_name": "thrift-edge"}
    proxy = InProcessProxy(
        lt,
        {
            "servers": {
                "rpc": {
                    "listener": "127.0.0.1:0",
                    "proxy_type": "thrift",
                    "filters": [{"use": "tracing", "args": args}],
                    "routes": [{"upstreams": [{"endpoint": up.address}]}],
                }
            }
        },
    )
    yield receiver, up, proxy
    proxy.close()
    up.close()
    receiver.close()
    lt.close()


def test_thrift_call_spans_and_ttheader_propagation(env: Any) -> None:
    receiver, up, proxy = env
    address = proxy.url.removeprefix("http://")
    reply = call(address, 7, {"RPC_TRANSIT_traceparent": f"00-{TID}-{PID}-01", "isn": "Calc", "other": "kept"})
    head = peek_message(reply.data, reply.payload, BINARY)
    assert head.type == MessageType.REPLY and head.seq_id == 7
    deadline = time.monotonic() + 30
    while len(receiver.spans) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    server = next(s for s in receiver.spans if s.kind == s.SPAN_KIND_SERVER)
    client = next(s for s in receiver.spans if s.kind == s.SPAN_KIND_CLIENT)
    assert server.trace_id.hex() == client.trace_id.hex() == TID
    assert server.parent_span_id.hex() == PID and client.parent_span_id == server.span_id
    assert server.name == client.name == "Calc/ping"
    attrs = {a.key: a.value.string_value for a in client.attributes}
    assert attrs["rpc.system"] == "apache_thrift" and attrs["rpc.method"] == "ping"
    assert attrs["server.address"] == up.address
    # the upstream got the client span as its parent, and the caller's other headers unchanged
    sent = up.headers[-1]
    assert sent["RPC_TRANSIT_traceparent"] == f"00-{TID}-{client.span_id.hex()}-01"
    assert sent["isn"] == "Calc" and sent["other"] == "kept"
