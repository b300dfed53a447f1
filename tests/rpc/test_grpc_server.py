"""The gRPC server (monolake.apps.rpc.grpc) against grpcio as the client.

One in-process server per module (a loop on a thread, a real 127.0.0.1 socket, the
HTTP/2 driver with its native codec when built) serves a servicer with all four call
kinds; grpcio's sync client calls it, and grpcio-health-checking and grpcio-reflection's
clients check the built-in services.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_helpers import LoopThread, Served, echo_protos, wait_for

from monolake.apps.rpc.grpc import GrpcServer, HealthServicer, RpcError, StatusCode

P = echo_protos()
M = P.module("grpc_echo.proto")
SVC = "/monolake.test.Echo/"
MB = 1024 * 1024


class Echo:
    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.sleeping = threading.Event()
        self.seen_deadline: list[float | None] = []

    async def Unary(self, req: Any, ctx: Any) -> Any:
        md = dict(ctx.invocation_metadata())
        if req.text == "fail":
            ctx.set_trailing_metadata([("why-bin", b"\x00\xff"), ("why", "because")])
            raise RpcError(StatusCode.FAILED_PRECONDITION, "nope: ünïcode %", details=b"\x08\x09detail")
        if req.text == "boom":
            raise ValueError("handler bug")
        if req.text == "deadline":
            self.seen_deadline.append(ctx.time_remaining())
        if req.sleep:
            self.sleeping.set()
            try:
                await asyncio.sleep(req.sleep)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if req.text == "metadata":
            await ctx.send_initial_metadata([("initial", "yes")])
            ctx.set_trailing_metadata([("echo-bin", md["token-bin"]), ("plain", md["plain"])])
        return M.EchoReply(text=req.text, payload=req.payload)

    async def ServerStream(self, req: Any, ctx: Any) -> Any:
        for i in range(req.count):
            if req.sleep:
                await asyncio.sleep(req.sleep)
            yield M.EchoReply(text=req.text, index=i, payload=req.payload)
        if req.text == "fail-late":
            raise RpcError(StatusCode.ABORTED, "after the messages")

    async def ClientStream(self, reqs: Any, ctx: Any) -> Any:
        n = size = 0
        async for r in reqs:
            n += 1
            size += len(r.payload)
        return M.EchoReply(index=n, text=str(size))

    async def Bidi(self, reqs: Any, ctx: Any) -> Any:
        async for r in reqs:
            yield M.EchoReply(text=r.text.upper(), index=r.count)


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def echo() -> Echo:
    return Echo()


@pytest.fixture(scope="module")
def served(loop_thread: LoopThread, echo: Echo) -> Iterator[Served]:
    factory = GrpcServer(P, echo, max_receive_message_bytes=16 * MB, compression="gzip")
    s = Served(loop_thread, factory)
    yield s
    s.close()


@pytest.fixture(scope="module")
def channel(served: Served) -> Iterator[grpc.Channel]:
    opts = [("grpc.max_receive_message_length", 32 * MB), ("grpc.max_send_message_length", 32 * MB)]
    ch = grpc.insecure_channel(served.address, options=opts)
    yield ch
    ch.close()


def stub(ch: grpc.Channel, name: str, kind: str) -> Any:
    make = getattr(ch, kind)
    return make(
        SVC + name, request_serializer=M.EchoRequest.SerializeToString, response_deserializer=M.EchoReply.FromString
    )


def test_all_four_call_kinds(channel: grpc.Channel) -> None:
    assert stub(channel, "Unary", "unary_unary")(M.EchoRequest(text="hi"), timeout=20).text == "hi"
    replies = list(stub(channel, "ServerStream", "unary_stream")(M.EchoRequest(text="s", count=5), timeout=20))
    assert [(r.text, r.index) for r in replies] == [("s", i) for i in range(5)]
    reqs = [M.EchoRequest(payload=b"x" * i) for i in range(10)]
    got = stub(channel, "ClientStream", "stream_unary")(iter(reqs), timeout=20)
    assert (got.index, got.text) == (10, str(sum(range(10))))
    replies = list(stub(channel, "Bidi", "stream_stream")(iter(M.EchoRequest(text=f"m{i}", count=i) for i in range(4))))
    assert [(r.text, r.index) for r in replies] == [(f"M{i}", i) for i in range(4)]
    # empty client stream, empty server stream
    assert stub(channel, "ClientStream", "stream_unary")(iter([]), timeout=20).index == 0
    assert list(stub(channel, "ServerStream", "unary_stream")(M.EchoRequest(count=0), timeout=20)) == []


def test_bidi_is_interactive(channel: grpc.Channel) -> None:
    """Each reply comes back before the next request is sent (no buffering of the stream)."""
    import queue

    q: queue.Queue[Any] = queue.Queue()

    def gen() -> Iterator[Any]:
        for i in range(3):
            yield M.EchoRequest(text=f"ping{i}")
            assert q.get(timeout=20) == f"PING{i}"

    for r in stub(channel, "Bidi", "stream_stream")(gen(), timeout=20):
        q.put(r.text)


def test_status_message_details_and_trailers(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        stub(channel, "Unary", "unary_unary")(M.EchoRequest(text="fail"), timeout=20)
    err: Any = ei.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "nope: ünïcode %"
    trailers = dict(err.trailing_metadata())
    assert trailers["why-bin"] == b"\x00\xff"
    assert trailers["why"] == "because"
    assert trailers["grpc-status-details-bin"] == b"\x08\x09detail"


def test_handler_exception_is_unknown_and_logged(channel: grpc.Channel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "monolake.grpc"), pytest.raises(grpc.RpcError) as ei:
        stub(channel, "Unary", "unary_unary")(M.EchoRequest(text="boom"), timeout=20)
    assert ei.value.code() == grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    assert wait_for(lambda: any("handler bug" in r.getMessage() for r in caplog.records))
    # the server still answers
    assert stub(channel, "Unary", "unary_unary")(M.EchoRequest(text="after"), timeout=20).text == "after"


def test_status_after_streamed_messages(channel: grpc.Channel) -> None:
    got = []
    with pytest.raises(grpc.RpcError) as ei:
        for r in stub(channel, "ServerStream", "unary_stream")(M.EchoRequest(text="fail-late", count=2), timeout=20):
            got.append(r.index)
    assert got == [0, 1]
    assert ei.value.code() == grpc.StatusCode.ABORTED  # type: ignore[attr-defined]


def test_metadata_in_initial_and_trailing(channel: grpc.Channel) -> None:
    md = [("token-bin", b"\x01\x02\x03\xfe"), ("plain", "text value")]
    reply, call = stub(channel, "Unary", "unary_unary").with_call(
        M.EchoRequest(text="metadata"), metadata=md, timeout=20
    )
    assert reply.text == "metadata"
    assert dict(call.initial_metadata())["initial"] == "yes"
    trailers = dict(call.trailing_metadata())
    assert trailers["echo-bin"] == b"\x01\x02\x03\xfe"
    assert trailers["plain"] == "text value"


def test_deadline_reaches_handler_and_expires(channel: grpc.Channel, echo: Echo) -> None:
    stub(channel, "Unary", "unary_unary")(M.EchoRequest(text="deadline"), timeout=30)
    left = echo.seen_deadline[-1]
    assert left is not None and 0 < left < 60  # the client gave 30 s (grpcio rounds it up a little)
    with pytest.raises(grpc.RpcError) as ei:
        stub(channel, "Unary", "unary_unary")(M.EchoRequest(text="slow", sleep=60), timeout=0.5)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as ei:
        list(stub(channel, "ServerStream", "unary_stream")(M.EchoRequest(count=100, sleep=0.2), timeout=0.5))
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]


def test_cancellation_reaches_the_handler(channel: grpc.Channel, echo: Echo) -> None:
    echo.cancelled.clear()
    echo.sleeping.clear()
    call = stub(channel, "Unary", "unary_unary").future(M.EchoRequest(text="slow", sleep=60), timeout=60)
    # grpcio's future is "running" as soon as it is made: wait for the handler itself, then cancel
    assert echo.sleeping.wait(20)
    call.cancel()
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    assert echo.cancelled.wait(20)


def test_gzip_both_ways(channel: grpc.Channel) -> None:
    payload = b"abc" * 100_000
    reply = stub(channel, "Unary", "unary_unary")(
        M.EchoRequest(payload=payload), compression=grpc.Compression.Gzip, timeout=20
    )
    assert reply.payload == payload
    replies = list(
        stub(channel, "ServerStream", "unary_stream")(
            M.EchoRequest(count=3, payload=payload), compression=grpc.Compression.Gzip, timeout=20
        )
    )
    assert [r.payload == payload for r in replies] == [True] * 3


def test_ten_megabyte_messages_and_the_limit(channel: grpc.Channel) -> None:
    big = bytes(range(256)) * (10 * MB // 256)
    assert stub(channel, "Unary", "unary_unary")(M.EchoRequest(payload=big), timeout=60).payload == big
    replies = list(stub(channel, "Bidi", "stream_stream")(iter([M.EchoRequest(text=big.hex()[:10])]), timeout=60))
    assert len(replies) == 1
    with pytest.raises(grpc.RpcError) as ei:
        stub(channel, "Unary", "unary_unary")(M.EchoRequest(payload=b"\0" * (17 * MB)), timeout=60)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


def test_unknown_method_and_invalid_protobuf(channel: grpc.Channel, caplog: pytest.LogCaptureFixture) -> None:
    raw = channel.unary_unary(SVC + "Nope")
    with pytest.raises(grpc.RpcError) as ei:
        raw(b"", timeout=20)
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    bad = channel.unary_unary(SVC + "Unary")
    with caplog.at_level(logging.WARNING, "monolake.grpc"), pytest.raises(grpc.RpcError) as ei:
        bad(b"\xff\xff\xff", timeout=20)  # a truncated varint key: not a message
    assert ei.value.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
    assert wait_for(lambda: any("invalid request message" in r.getMessage() for r in caplog.records))
    assert stub(channel, "Unary", "unary_unary")(M.EchoRequest(text="alive"), timeout=20).text == "alive"


def test_health_service(channel: grpc.Channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    h = health_pb2_grpc.HealthStub(channel)
    assert (
        h.Check(health_pb2.HealthCheckRequest(service=""), timeout=20).status == health_pb2.HealthCheckResponse.SERVING
    )
    ok = h.Check(health_pb2.HealthCheckRequest(service="monolake.test.Echo"), timeout=20)
    assert ok.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as ei:
        h.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=20)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    watch = h.Watch(health_pb2.HealthCheckRequest(service="monolake.test.Echo"), timeout=20)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_health_watch_sees_changes(loop_thread: LoopThread) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = HealthServicer()  # the user's own, whose statuses their code sets
    s = Served(loop_thread, GrpcServer(P, Echo(), health=health))
    try:
        with grpc.insecure_channel(s.address) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="monolake.test.Echo"))
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            loop_thread.loop.call_soon_threadsafe(health.set, "monolake.test.Echo", 2)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
    finally:
        s.close()


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
def test_reflection(channel: grpc.Channel, version: str) -> None:
    from google.protobuf import descriptor_pb2

    from monolake.apps.rpc.grpc._protos import builtin_protos

    if version == "v1alpha":
        from grpc_reflection.v1alpha import reflection_pb2 as pb

        request, response = pb.ServerReflectionRequest, pb.ServerReflectionResponse
    else:  # grpcio-reflection has no v1 module: the messages are the same but for the package
        b = builtin_protos()
        request = b.message("grpc.reflection.v1.ServerReflectionRequest")
        response = b.message("grpc.reflection.v1.ServerReflectionResponse")
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=request.SerializeToString,
        response_deserializer=response.FromString,
    )
    reqs = [
        request(list_services=""),
        request(file_containing_symbol="monolake.test.Echo"),
        request(file_by_filename="nope.proto"),
    ]
    listed, by_symbol, missing = list(call(iter(reqs), timeout=20))
    names = {s.name for s in listed.list_services_response.service}
    assert {"monolake.test.Echo", "grpc.health.v1.Health", f"grpc.reflection.{version}.ServerReflection"} <= names
    found = by_symbol.file_descriptor_response.file_descriptor_proto
    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in found]
    assert files[0].name == "grpc_echo.proto"
    assert "google/protobuf/empty.proto" in {f.name for f in files}  # its imports too
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_reflection_descriptor_database(channel: grpc.Channel) -> None:
    """What grpcurl does: list services, fetch a method's types through reflection."""
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    db = ProtoReflectionDescriptorDatabase(channel)
    assert "monolake.test.Echo" in db.get_services()
    method = DescriptorPool(db).FindServiceByName("monolake.test.Echo").FindMethodByName("Bidi")
    assert method.input_type.full_name == "monolake.test.EchoRequest"


def test_not_grpc_and_http1(served: Served) -> None:
    import httpx

    r = httpx.post(
        f"http://{served.address}{SVC}Unary", content=b"x", headers={"content-type": "text/plain"}, timeout=20
    )
    assert r.status_code == 415
    r = httpx.get(f"http://{served.address}{SVC}Unary", timeout=20)
    assert r.status_code == 405
    r = httpx.post(f"http://{served.address}{SVC}Unary", content=b"", headers={"content-type": "application/grpc"})
    assert r.status_code == 505  # HTTP/1.1: no trailers for the status


def test_calls_counted_by_method_and_status(loop_thread: LoopThread, caplog: pytest.LogCaptureFixture) -> None:
    from monolake.apps.rpc.grpc._app import CallRecorder
    from monolake.apps.rpc.grpc._metrics import GrpcStats

    stats = GrpcStats("m")
    s = Served(loop_thread, GrpcServer(P, Echo(), on_call=CallRecorder("m", stats, True)))
    try:
        with grpc.insecure_channel(s.address) as ch, caplog.at_level(logging.INFO, "monolake.grpc.access"):
            stub(ch, "Unary", "unary_unary")(M.EchoRequest(text="a"), timeout=20)
            stub(ch, "Unary", "unary_unary")(M.EchoRequest(text="b"), timeout=20)
            with pytest.raises(grpc.RpcError):
                stub(ch, "Unary", "unary_unary")(M.EchoRequest(text="fail"), timeout=20)
            list(stub(ch, "ServerStream", "unary_stream")(M.EchoRequest(count=2), timeout=20))
            with pytest.raises(grpc.RpcError):
                ch.unary_unary("/no.Such/Method")(b"", timeout=20)
        assert wait_for(lambda: sum(stats.counts().values()) == 5)
        assert stats.counts() == {
            (SVC + "Unary", "OK"): 2,
            (SVC + "Unary", "FAILED_PRECONDITION"): 1,
            (SVC + "ServerStream", "OK"): 1,
            ("-unknown-", "UNIMPLEMENTED"): 1,  # a client's path is not a label
        }
        lines = [r.getMessage() for r in caplog.records if r.name == "monolake.grpc.access"]
        assert f"grpc server=m method={SVC}Unary code=9" in " ".join(lines)
    finally:
        s.close()


@pytest.mark.parametrize(
    ("body", "headers", "code"),
    [
        (b"\x00\x00\x00\x00\x10abc", {}, "13"),  # declares 16 bytes, ends after 3: INTERNAL
        (b"\x00\x00\x00", {}, "13"),  # ends inside the 5-byte prefix
        (b"\x01\x00\x00\x00\x01x", {}, "13"),  # compressed flag, no grpc-encoding
        (b"\x00\x00\x00\x00\x00", {"grpc-encoding": "snappy"}, "12"),  # unknown encoding: UNIMPLEMENTED
        (b"\x00\x00\x00\x00\x00" * 2, {}, "13"),  # two messages on a unary call
        (b"", {}, "13"),  # no message at all
    ],
)
def test_bad_frames_answered_with_a_status(served: Served, body: bytes, headers: dict[str, str], code: str) -> None:
    import httpx

    with httpx.Client(http1=False, http2=True, timeout=20) as c:  # h2c by prior knowledge
        h = {"content-type": "application/grpc", "te": "trailers", **headers}
        r = c.post(f"http://{served.address}{SVC}Unary", content=body, headers=h)
        assert r.status_code == 200
        assert r.headers["grpc-status"] == code  # Trailers-Only: the status is in the headers
        # the server still answers
        plain = {"content-type": "application/grpc", "te": "trailers"}
        ok = c.post(f"http://{served.address}{SVC}Unary", content=b"\x00\x00\x00\x00\x00", headers=plain)
        assert ok.content == b"\x00\x00\x00\x00\x00"  # an empty EchoReply


def test_a_stream_to_a_client_that_stops_reading_pauses_its_handler(loop_thread: LoopThread) -> None:
    """The handler's writes wait while the client's window is closed: nothing piles up in the worker."""
    state: dict[str, Any] = {"sent": 0, "ctx": None, "cancelled": threading.Event()}

    class Flood:
        async def ServerStream(self, req: Any, ctx: Any) -> None:
            state["ctx"] = ctx
            chunk = M.EchoReply(payload=b"z" * 65536)
            try:
                for _ in range(100_000):  # 6.5 GB if nothing held it back
                    await ctx.write(chunk)
                    state["sent"] += 1
            except asyncio.CancelledError:
                state["cancelled"].set()
                raise

    s = Served(loop_thread, GrpcServer(P, Flood()))
    try:
        with grpc.insecure_channel(s.address) as ch:
            it = stub(ch, "ServerStream", "unary_stream")(M.EchoRequest(count=1), timeout=60)
            next(it)
            assert wait_for(lambda: state["ctx"] is not None and state["ctx"]._call.paused)
            assert state["sent"] < 1000  # held back by flow control (windows and buffers: a few MB)
            it.cancel()
            assert state["cancelled"].wait(20)
    finally:
        s.close()
