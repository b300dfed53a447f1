"""The gRPC client (monolake.apps.rpc.grpc.GrpcClient) against grpcio servers, and metainfo
along a chain of monolake servers and clients."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_helpers import LoopThread, Served, echo_protos

from monolake.apps.rpc.grpc import (
    DnsDiscover,
    GrpcCall,
    GrpcClient,
    GrpcReply,
    GrpcServer,
    RpcError,
    StatusCode,
    metainfo,
)
from monolake.core.service import Layer

P = echo_protos()
M = P.module("grpc_echo.proto")


class GrpcioEcho:
    """A grpcio (sync, thread pool) servicer, registered with generic handlers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.unavailable_left = 0
        self.lock = threading.Lock()

    def Unary(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        with self.lock:
            self.calls += 1
            if self.unavailable_left > 0:
                self.unavailable_left -= 1
                ctx.abort(grpc.StatusCode.UNAVAILABLE, "try elsewhere")
        if req.text == "invalid":
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad text")
        if req.sleep:
            time.sleep(req.sleep)
        md = dict(ctx.invocation_metadata())
        ctx.set_trailing_metadata((("served-by", self.name), ("echo-bin", md.get("token-bin", b""))))
        return M.EchoReply(text=req.text, payload=req.payload)

    def ServerStream(self, req: Any, ctx: grpc.ServicerContext) -> Iterator[Any]:
        for i in range(req.count):
            if req.sleep:
                time.sleep(req.sleep)
            yield M.EchoReply(text=req.text, index=i)

    def ClientStream(self, reqs: Iterator[Any], ctx: grpc.ServicerContext) -> Any:
        with self.lock:
            self.calls += 1
            if self.unavailable_left > 0:
                self.unavailable_left -= 1
                ctx.abort(grpc.StatusCode.UNAVAILABLE, "try elsewhere")
        n = sum(1 for _ in reqs)
        return M.EchoReply(index=n)

    def Bidi(self, reqs: Iterator[Any], ctx: grpc.ServicerContext) -> Iterator[Any]:
        for r in reqs:
            yield M.EchoReply(text=r.text.upper())


def start_grpcio(servicer: GrpcioEcho) -> tuple[grpc.Server, str]:
    ser, de = M.EchoReply.SerializeToString, M.EchoRequest.FromString
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(servicer.Unary, de, ser),
        "ServerStream": grpc.unary_stream_rpc_method_handler(servicer.ServerStream, de, ser),
        "ClientStream": grpc.stream_unary_rpc_method_handler(servicer.ClientStream, de, ser),
        "Bidi": grpc.stream_stream_rpc_method_handler(servicer.Bidi, de, ser),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("monolake.test.Echo", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def grpcio_servers() -> Iterator[list[tuple[GrpcioEcho, str]]]:
    out = []
    servers = []
    for name in ("a", "b"):
        svc = GrpcioEcho(name)
        server, address = start_grpcio(svc)
        servers.append(server)
        out.append((svc, address))
    yield out
    for s in servers:
        s.stop(None)


@pytest.fixture
def refused() -> Iterator[str]:
    """An address that refuses connections (bound, not listening)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield f"127.0.0.1:{s.getsockname()[1]}"
    s.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_all_four_call_kinds(grpcio_servers: list[tuple[GrpcioEcho, str]]) -> None:
    address = grpcio_servers[0][1]

    async def main() -> None:
        c = GrpcClient(P, [address], timeout=30)
        try:
            assert (await c.unary("Echo.Unary", M.EchoRequest(text="hi"))).text == "hi"
            got = [r.index async for r in c.server_stream("Echo.ServerStream", M.EchoRequest(count=4))]
            assert got == [0, 1, 2, 3]

            async def reqs() -> AsyncIterator[Any]:
                for _ in range(5):
                    yield M.EchoRequest()

            assert (await c.client_stream("Echo.ClientStream", reqs())).index == 5
            assert (await c.client_stream("monolake.test.Echo.ClientStream", [M.EchoRequest()] * 2)).index == 2
            texts = [r.text async for r in c.bidi("/monolake.test.Echo/Bidi", [M.EchoRequest(text=t) for t in "abc"])]
            assert texts == ["A", "B", "C"]
            # many calls at once share the connection (streams multiplexed)
            replies = await asyncio.gather(*(c.unary("Echo.Unary", M.EchoRequest(text=str(i))) for i in range(50)))
            assert [r.text for r in replies] == [str(i) for i in range(50)]
            assert c.pool.connects == 1
        finally:
            c.close()

    run(main())


def test_metadata_status_and_trailers(grpcio_servers: list[tuple[GrpcioEcho, str]]) -> None:
    address = grpcio_servers[0][1]

    async def main() -> None:
        c = GrpcClient(P, [address], metadata=[("token-bin", b"\x00\x01\xff")])
        try:
            reply = await c.call("Echo.Unary", M.EchoRequest(text="x"), metadata=[("plain", "v")])
            trailers = dict(reply.trailing_metadata)
            assert trailers["served-by"] == "a"
            assert trailers["echo-bin"] == b"\x00\x01\xff"
            with pytest.raises(RpcError) as ei:
                await c.unary("Echo.Unary", M.EchoRequest(text="invalid"))
            assert ei.value.code == StatusCode.INVALID_ARGUMENT
            assert ei.value.message == "bad text"
        finally:
            c.close()

    run(main())


def test_deadlines_per_call_and_per_client(grpcio_servers: list[tuple[GrpcioEcho, str]]) -> None:
    address = grpcio_servers[0][1]

    async def main() -> None:
        c = GrpcClient(P, [address], timeout=0.3)
        try:
            with pytest.raises(RpcError) as ei:
                await c.unary("Echo.Unary", M.EchoRequest(sleep=5))
            assert ei.value.code == StatusCode.DEADLINE_EXCEEDED
            # a call's own timeout wins over the client's
            assert (await c.unary("Echo.Unary", M.EchoRequest(text="ok", sleep=0.5), timeout=30)).text == "ok"
            with pytest.raises(RpcError) as ei:
                async for _ in c.server_stream("Echo.ServerStream", M.EchoRequest(count=50, sleep=0.1)):
                    pass
            assert ei.value.code == StatusCode.DEADLINE_EXCEEDED
        finally:
            c.close()

    run(main())


def test_retry_on_another_instance(grpcio_servers: list[tuple[GrpcioEcho, str]], refused: str) -> None:
    (a, addr_a), (b, addr_b) = grpcio_servers

    async def main() -> None:
        # a dead endpoint first: the connect fails (UNAVAILABLE) and the call goes to a live one
        c = GrpcClient(P, [refused, addr_a], timeout=30)
        try:
            for _ in range(4):
                reply = await c.call("Echo.Unary", M.EchoRequest(text="r"))
                assert reply.endpoint is not None and str(reply.endpoint) == addr_a
            assert c.budget.retries >= 2
        finally:
            c.close()
        # a server that answers UNAVAILABLE: retried on the other instance
        c = GrpcClient(P, [addr_a, addr_b], timeout=30)
        try:
            a.unavailable_left = b.unavailable_left = 1
            before_a, before_b = a.calls, b.calls
            reply = await c.call("Echo.Unary", M.EchoRequest(text="r"))
            assert dict(reply.trailing_metadata)["served-by"] in ("a", "b")
            # the first try failed on one, the retry went to the other (failed too), the third succeeded
            assert (a.calls - before_a, b.calls - before_b) in ((2, 1), (1, 2))
            # not retried: a status that is not retryable, and a client stream (not replayable)
            before = a.calls + b.calls
            with pytest.raises(RpcError) as ei:
                await c.unary("Echo.Unary", M.EchoRequest(text="invalid"))
            assert ei.value.code == StatusCode.INVALID_ARGUMENT
            assert a.calls + b.calls - before == 1
            a.unavailable_left = b.unavailable_left = 1
            before = a.calls + b.calls
            with pytest.raises(RpcError) as ei:
                await c.client_stream("Echo.ClientStream", [M.EchoRequest()])
            assert ei.value.code == StatusCode.UNAVAILABLE
            assert a.calls + b.calls - before == 1
            a.unavailable_left = b.unavailable_left = 0
        finally:
            c.close()
        # all instances down: the last failure stands, after at most ``attempts`` tries
        c = GrpcClient(P, [refused], attempts=2)
        try:
            with pytest.raises(RpcError) as ei:
                await c.unary("Echo.Unary", M.EchoRequest())
            assert ei.value.code == StatusCode.UNAVAILABLE
            assert c.budget.retries == 1
        finally:
            c.close()

    run(main())


class Recording(Layer[GrpcCall, GrpcReply]):
    def __init__(self, seen: list[tuple[str, float | None, str | None]], name: str) -> None:
        self.seen = seen
        self.label = name

    def layer(self, inner: Any) -> Any:
        seen, label = self.seen, self.label

        class Svc:
            def __init__(self) -> None:
                self.inner = inner

            async def __call__(self, call: GrpcCall) -> GrpcReply:
                seen.append((label, call.deadline, str(call.endpoint) if call.endpoint else None))
                return await inner(call)  # type: ignore[no-any-return]

        return Svc()


def test_stack_order_is_volos(grpcio_servers: list[tuple[GrpcioEcho, str]]) -> None:
    """user layers -> timeout -> discovery/LB -> inner layers -> transport."""
    address = grpcio_servers[0][1]
    seen: list[tuple[str, float | None, str | None]] = []

    async def main() -> None:
        c = GrpcClient(
            P, [address], timeout=30, layers=[Recording(seen, "outer")], inner_layers=[Recording(seen, "inner")]
        )
        try:
            await c.unary("Echo.Unary", M.EchoRequest())
        finally:
            c.close()

    run(main())
    (o_name, o_deadline, o_ep), (i_name, i_deadline, i_ep) = seen
    assert (o_name, o_deadline, o_ep) == ("outer", None, None)
    assert (i_name, i_ep) == ("inner", address)
    assert i_deadline is not None


def test_client_against_our_own_server() -> None:
    """All four kinds against a monolake server (the server tests use grpcio's client)."""
    lt = LoopThread()

    class Echo:  # plain def for unary and server streaming: CPU-only handlers
        def Unary(self, req: Any, ctx: Any) -> Any:
            return M.EchoReply(text=req.text)

        def ServerStream(self, req: Any, ctx: Any) -> Any:
            for i in range(req.count):
                yield M.EchoReply(index=i)

        async def ClientStream(self, reqs: Any, ctx: Any) -> Any:
            return M.EchoReply(index=len([r async for r in reqs]))

        async def Bidi(self, reqs: Any, ctx: Any) -> Any:
            async for r in reqs:
                yield M.EchoReply(text=r.text)

    s = Served(lt, GrpcServer(P, Echo()))
    try:

        async def main() -> None:
            c = GrpcClient(P, [s.address], timeout=30)
            try:
                assert (await c.unary("Echo.Unary", M.EchoRequest(text="x"))).text == "x"
                assert [r.index async for r in c.server_stream("Echo.ServerStream", M.EchoRequest(count=3))] == [
                    0,
                    1,
                    2,
                ]
                assert (await c.client_stream("Echo.ClientStream", [M.EchoRequest()] * 3)).index == 3
                assert [r.text async for r in c.bidi("Echo.Bidi", [M.EchoRequest(text="q")])] == ["q"]
                with pytest.raises(RpcError) as ei:
                    await c.unary("Echo.Nothing", P.message("google.protobuf.Empty")())
                assert ei.value.code == StatusCode.UNIMPLEMENTED
            finally:
                c.close()

        run(main())
    finally:
        s.close()
        lt.close()


def test_metainfo_along_a_chain() -> None:
    """client -> A (monolake) -> B (monolake): persistent reaches B, transient only A, backward
    comes back one hop (B's to A, A's to the client)."""
    lt = LoopThread()
    seen: dict[str, dict[str, str | None]] = {}

    class B:
        async def Unary(self, req: Any, ctx: Any) -> Any:
            mi = metainfo.current()
            seen["b"] = {"persist": mi.get_persistent("TRACE_ID"), "transit": mi.get_transient("HOP")}
            mi.set_backward("FROM_B", "b-was-here")
            return M.EchoReply(text="b")

    sb = Served(lt, GrpcServer(P, B()))
    client_b = GrpcClient(P, [sb.address], timeout=30)

    class A:
        async def Unary(self, req: Any, ctx: Any) -> Any:
            mi = metainfo.current()
            seen["a"] = {"persist": mi.get_persistent("TRACE_ID"), "transit": mi.get_transient("HOP")}
            await client_b.unary("Echo.Unary", M.EchoRequest())
            seen["a-back"] = {"from_b": mi.get_backward("FROM_B")}
            mi.set_backward("FROM_A", "a-was-here")
            return M.EchoReply(text="a")

    sa = Served(lt, GrpcServer(P, A()))
    try:

        async def main() -> None:
            metainfo.reset()
            mi = metainfo.current()
            mi.set_persistent("TRACE_ID", "t-1")
            mi.set_transient("HOP", "first")
            c = GrpcClient(P, [sa.address], timeout=30)
            try:
                assert (await c.unary("Echo.Unary", M.EchoRequest())).text == "a"
            finally:
                c.close()
            assert mi.get_backward("FROM_A") == "a-was-here"
            assert mi.get_backward("FROM_B") is None  # backward goes back one hop

        run(main())
        assert seen["a"] == {"persist": "t-1", "transit": "first"}
        assert seen["b"] == {"persist": "t-1", "transit": None}
        assert seen["a-back"] == {"from_b": "b-was-here"}
    finally:
        lt.run(_close(client_b))
        sa.close()
        sb.close()
        lt.close()


async def _close(c: GrpcClient) -> None:
    c.close()


def test_dns_discovery(grpcio_servers: list[tuple[GrpcioEcho, str]]) -> None:
    port = int(grpcio_servers[0][1].rpartition(":")[2])

    async def main() -> None:
        d = DnsDiscover("localhost", port)
        c = GrpcClient(P, discover=d, timeout=30)
        try:
            reply = await c.call("Echo.Unary", M.EchoRequest(text="dns"))
            assert reply.message.text == "dns"
            assert reply.endpoint is not None and reply.endpoint.port == port
            assert any(ep.host == "127.0.0.1" for ep in d.list)
        finally:
            c.close()
        bad = GrpcClient(P, discover=DnsDiscover("no-such-host.invalid", port), attempts=1)
        with pytest.raises(RpcError) as ei:
            await bad.unary("Echo.Unary", M.EchoRequest())
        assert ei.value.code == StatusCode.UNAVAILABLE
        bad.close()

    run(main())


def test_deadline_propagates_down_a_chain() -> None:
    """client (0.5 s) -> A -> B: A's client has no timeout, yet its call to B carries the
    client's deadline (B sees one) and the whole chain ends with DEADLINE_EXCEEDED."""
    lt = LoopThread()
    seen: dict[str, Any] = {}

    class B:
        async def Unary(self, req: Any, ctx: Any) -> Any:
            seen["b_deadline"] = ctx.time_remaining()
            await asyncio.sleep(60)
            return M.EchoReply()

    sb = Served(lt, GrpcServer(P, B()))
    client_b = GrpcClient(P, [sb.address])

    class A:
        async def Unary(self, req: Any, ctx: Any) -> Any:
            await client_b.unary("Echo.Unary", M.EchoRequest())
            return M.EchoReply()

    sa = Served(lt, GrpcServer(P, A()))
    try:

        async def main() -> None:
            c = GrpcClient(P, [sa.address], timeout=0.5)
            try:
                with pytest.raises(RpcError) as ei:
                    await c.unary("Echo.Unary", M.EchoRequest())
                assert ei.value.code == StatusCode.DEADLINE_EXCEEDED
            finally:
                c.close()

        run(main())
        assert seen["b_deadline"] is not None
    finally:
        lt.run(_close(client_b))
        sa.close()
        sb.close()
        lt.close()
