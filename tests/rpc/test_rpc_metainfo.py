"""Metainfo across protocols (one shared module, apps/rpc/_metainfo.py): a gRPC caller -> our gRPC
server whose handler calls a Thrift service with our ThriftClient -> our Thrift server. The
persistent value the gRPC caller set arrives at the Thrift hop (rpc-persist-trace-id becomes
RPC_PERSIST_TRACE_ID), its transient one stops at the gRPC hop, and the Thrift server's
backward value comes back to the gRPC handler, one hop only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("grpc_tools")
import thriftpy2
from grpc_helpers import LoopThread, Served, echo_protos
from thrift_support import Handler, start_server, stop_server, write_idl

from monolake.apps.config import Server
from monolake.apps.rpc.grpc import GrpcClient, GrpcServer, metainfo
from monolake.apps.rpc.thrift._server import build_server
from monolake.rpc import ThriftClient, ThriftService

P = echo_protos()
M = P.module("grpc_echo.proto")


def test_persistent_value_crosses_grpc_to_thrift(tmp_path: Path) -> None:
    mod = thriftpy2.load(str(write_idl(tmp_path)), module_name="echo_cross_thrift")
    lt = LoopThread()
    tapp = build_server("t", Server(listener="127.0.0.1:0"), ThriftService(mod.Echo, Handler()))
    tsrv, tport = start_server(lt, tapp)  # type: ignore[arg-type]
    seen: dict[str, Any] = {}

    class Front:
        client: ThriftClient | None = None

        async def Unary(self, req: Any, ctx: Any) -> Any:
            if self.client is None:  # made on the server's loop
                self.client = ThriftClient(mod.Echo, [f"127.0.0.1:{tport}"], timeout=20)
            mi = metainfo.current()
            seen["grpc_hop"] = (mi.get_persistent("TRACE_ID"), mi.get_transient("HOP"))
            # Handler.meta answers the value of a key as the Thrift server received it.
            seen["thrift_trace"] = await self.client.meta("TRACE_ID")
            seen["thrift_hop"] = await self.client.meta("HOP")
            seen["back_from_thrift"] = mi.received_backward.get("seen")
            mi.set_backward("FROM_GRPC", "g")
            return M.EchoReply(text="ok")

    front = Front()
    served = Served(lt, GrpcServer(P, front))
    try:

        async def main() -> None:
            metainfo.reset()
            mi = metainfo.current()
            mi.set_persistent("TRACE_ID", "t-42")
            mi.set_transient("HOP", "first")
            c = GrpcClient(P, [served.address], timeout=30)
            try:
                assert (await c.unary("Echo.Unary", M.EchoRequest())).text == "ok"
            finally:
                await c.aclose()
            assert mi.get_backward("FROM_GRPC") == "g"
            assert mi.get_backward("SEEN") is None  # the Thrift hop's backward value stopped one hop up

        asyncio.run(asyncio.wait_for(main(), 60))
        assert seen["grpc_hop"] == ("t-42", "first")
        assert seen["thrift_trace"] == "t-42"  # persistent: every hop, across protocols
        assert seen["thrift_hop"] == ""  # transient: the next hop only
        assert seen["back_from_thrift"] == "HOP"
    finally:
        if front.client is not None:
            lt.loop.call_soon_threadsafe(front.client.close)
        served.close()
        stop_server(lt, tsrv, tapp)  # type: ignore[arg-type]
        lt.close()
