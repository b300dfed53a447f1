"""Metainfo over TTHeader along a chain: our client -> our server A -> (A's handler calls on
with our client) -> our server B. Persistent values reach every hop, transient ones the next
hop only, backward ones come back one hop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from thrift_support import Handler, LoopThread, start_server, stop_server, write_idl

from monolake.apps.config import Server
from monolake.apps.rpc.thrift._server import build_server
from monolake.core.proto.thrift import FrameReader, ThriftProtocol, encode_ttheader, message_begin, read_header_info
from monolake.rpc import ThriftClient, ThriftService, metainfo


class Relay(Handler):
    """Server A: reports what it received, calls B, reports what B saw and sent back."""

    def __init__(self, oops: Any) -> None:
        super().__init__(oops)
        self.downstream: ThriftClient | None = None

    async def meta(self, key: str) -> str:
        assert self.downstream is not None
        mi = metainfo()
        here = f"{mi.get('trace')},{mi.get('tx')}"
        mi.set_transient("hop", "A")
        seen = [await self.downstream.meta(k) for k in ("trace", "tx", "hop")]
        back = mi.received_backward.get("seen")
        mi.set_backward("a", "1")
        return f"{here}|{','.join(seen)}|{back}"


class Env:
    def __init__(self, tmp: Path) -> None:
        idl = write_idl(tmp)
        self.mod = thriftpy2.load(str(idl), module_name="echo_meta_thrift")
        self.lt = LoopThread()
        self.b = build_server("b", Server(listener="127.0.0.1:0"), ThriftService(self.mod.Echo, Handler()))
        self.b_srv, self.b_port = start_server(self.lt, self.b)
        self.relay = Relay(self.mod.Oops)
        self.a = build_server("a", Server(listener="127.0.0.1:0"), ThriftService(self.mod.Echo, self.relay))
        self.a_srv, self.a_port = start_server(self.lt, self.a)
        self.relay.downstream = self.lt.call(lambda: ThriftClient(self.mod.Echo, [f"127.0.0.1:{self.b_port}"]))

    def close(self) -> None:
        assert self.relay.downstream is not None
        self.lt.call(self.relay.downstream.close)
        stop_server(self.lt, self.a_srv, self.a)
        stop_server(self.lt, self.b_srv, self.b)
        self.lt.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("meta"))
    yield e
    e.close()


async def test_persistent_transient_backward_along_a_chain(env: Env) -> None:
    mi = metainfo()
    mi.set_persistent("trace", "t1")
    mi.set_transient("tx", "x1")
    async with ThriftClient(env.mod.Echo, [f"127.0.0.1:{env.a_port}"]) as c:
        # A saw both; B saw the persistent one, not ours transient, and A's own transient;
        # A got B's backward value; we get A's only.
        assert await c.meta("k") == "t1,x1|t1,,A|hop"  # B sent back the key of the last call
    assert mi.received_backward == {"a": "1"}


async def test_per_call_transient_values(env: Env) -> None:
    async with ThriftClient(env.mod.Echo, [f"127.0.0.1:{env.b_port}"]) as c:
        assert await c.call("meta", "only", metainfo={"only": "this call"}) == "this call"
        assert await c.meta("only") == ""


def test_kitex_header_names_on_the_wire(env: Env) -> None:
    """A raw TTHeader call with Kitex's key prefixes; the reply carries RPC_BACKWARD_seen."""
    import socket
    import struct

    raw = b"key"
    args = b"\x0b\x00\x01" + struct.pack("!i", len(raw)) + raw + b"\x00"
    payload = message_begin("meta", 1, 9, ThriftProtocol.BINARY) + args
    frame = encode_ttheader(payload, seq_id=9, headers={"RPC_PERSIST_key": "p", "RPC_TRANSIT_other": "t"})
    with socket.create_connection(("127.0.0.1", env.b_port), timeout=30) as s:
        s.sendall(frame)
        reader = FrameReader()
        frames: list[Any] = []
        while not frames:
            frames = reader.feed(s.recv(65536))
    info = read_header_info(frames[0])
    assert info.headers == {"RPC_BACKWARD_seen": "key"}
    assert frames[0].data.endswith(b"p\x00")  # the handler read RPC_PERSIST_key as "key"
