"""Message stream servers in process, on real sockets: protosocket-rpc's wire checked with
Google's protobuf runtime, cancellation, semantics, backpressure both ways, bad input, TLS
(both backends), Unix sockets, drain. The loop matters for framing (BufferedProtocol) and
TLS, so those run on uvloop, asyncio and io_uring; the rest on uvloop."""

# ruff: noqa: E402  (the example directory goes on sys.path before its modules are imported)
from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "streams"
sys.path.insert(0, str(EXAMPLES))  # echo_pb2 and echo_server, as the example imports them

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import echo_pb2
import msgspec
import pytest
import trustme
from echo_server import Echo
from google.protobuf.internal.decoder import _DecodeVarint
from google.protobuf.internal.encoder import _VarintBytes

from monolake.apps.config import Certificate, ServerTls, UpstreamTls
from monolake.core.runtime._loops import loop_kind as running_kind
from monolake.core.runtime._loops import new_event_loop
from monolake.core.service import Factory, Layer
from monolake.core.service.layers import TimeoutLayer
from monolake.core.tls import ServerTlsContexts
from monolake.streams import (
    CallCancelled,
    ConnectionClosed,
    Fields,
    MessageConnection,
    MessageServerApp,
    MsgpackCodec,
    ProtobufCodec,
    RpcPool,
    StreamSettings,
    connect,
    connect_rpc,
)

TIMEOUT = 20.0
LOOPS = ["uvloop", "asyncio", "io_uring"]
Req, Resp = echo_pb2.Request, echo_pb2.Response
RPC = (Fields(Req), Fields(Resp))


_started: list[tuple[MessageServerApp, asyncio.AbstractServer]] = []


async def _stop_all() -> None:
    while _started:
        app, server = _started.pop()
        server.close()
        app.close()  # abort what is left: the workers' tasks end with their connections
    for _ in range(3):
        await asyncio.sleep(0.01)


def run(kind: str, test: Callable[[], Awaitable[None]]) -> None:
    loop = new_event_loop(kind)
    try:
        try:
            loop.run_until_complete(asyncio.wait_for(test(), TIMEOUT))
        finally:
            loop.run_until_complete(_stop_all())
        assert running_kind(loop) == kind, f"{kind} fell back to {type(loop)}"
    finally:
        loop.close()


def rpc_app(service: Any, *, semantics: str = "concurrent", max_in_flight: int = 1024, **kw: Any) -> MessageServerApp:
    return MessageServerApp(
        "echo",
        service,
        ProtobufCodec(Req, max_message_size=kw.pop("max_message_size", 4 << 20)),
        settings=StreamSettings(semantics=semantics, max_in_flight=max_in_flight, idle_timeout=kw.pop("idle", None)),  # type: ignore[arg-type]
        requests=RPC[0],
        responses=RPC[1],
        **kw,
    )


async def listen(app: MessageServerApp, **kw: Any) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0, **kw)
    _started.append((app, server))
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


def frame(msg: Any) -> bytes:
    """protobuf's writeDelimitedTo, with Google's varint encoder."""
    body = msg.SerializeToString()
    return _VarintBytes(len(body)) + body


class Wire:
    """A raw client: writes bytes, reads whole length-delimited Responses (Google's decoder)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = b""

    @classmethod
    async def open(cls, address: str) -> Wire:
        host, port = address.rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self) -> bytes:
        """The next whole frame's bytes (prefix included)."""
        while True:
            if self.buf:
                try:
                    n, pos = _DecodeVarint(self.buf, 0)
                except IndexError:
                    n, pos = -1, 0
                if n >= 0 and len(self.buf) >= pos + n:
                    out, self.buf = self.buf[: pos + n], self.buf[pos + n :]
                    return out
            data = await self.reader.read(65536)
            if not data:
                raise EOFError(f"closed with {len(self.buf)} bytes unread")
            self.buf += data

    async def response(self) -> Any:
        f = await self.frame()
        _, pos = _DecodeVarint(f, 0)
        return Resp.FromString(f[pos:])

    async def closed(self) -> bool:
        return await self.reader.read() == b"" and True

    def close(self) -> None:
        self.writer.close()


def echo_req(mid: int, message: str, *, stream: bool = False) -> Any:
    return Req(
        request_id=mid,
        body=echo_pb2.EchoRequest(message=message, nanotime=mid * 10),
        response_behavior=echo_pb2.STREAM if stream else echo_pb2.UNARY,
    )


# -- protosocket-rpc's wire, byte for byte ---------------------------------------------------------


@pytest.mark.parametrize("kind", LOOPS)
def test_wire_bytes_both_ways_split_at_every_byte(kind: str) -> None:
    async def test() -> None:
        server, address = await listen(rpc_app(Echo()))
        w = await Wire.open(address)
        wire = frame(echo_req(7, "hello")) + frame(echo_req(8, "abc", stream=True))
        for i in range(len(wire)):  # one byte per write: the server sees every split
            w.writer.write(wire[i : i + 1])
            await w.writer.drain()
        got = [await w.frame() for _ in range(5)]
        want_unary = frame(Resp(request_id=7, echo=echo_pb2.EchoResponse(message="hello", nanotime=70)))
        want_stream = [
            frame(Resp(request_id=8, stream=echo_pb2.EchoStream(message=c, nanotime=80, sequence=i)))
            for i, c in enumerate("abc")
        ] + [frame(Resp(request_id=8, code=2))]  # protosocket's ended(id)
        assert want_unary in got
        assert [f for f in got if f != want_unary] == want_stream  # a stream's replies in order, then its end
        # A request without a body is refused as protosocket's example does: cancelled(id).
        await w.send(frame(Req(request_id=9)))
        assert await w.frame() == frame(Resp(request_id=9, code=1))
        w.close()
        server.close()

    run(kind, test)


@pytest.mark.parametrize("kind", LOOPS)
def test_client_calls_and_streams(kind: str) -> None:
    async def test() -> None:
        server, address = await listen(rpc_app(Echo()))
        conn = await connect_rpc(address, ProtobufCodec(Resp), *RPC)
        replies = await asyncio.gather(*(conn.call(echo_req(0, f"m{i}")) for i in range(2000)))
        assert [r.echo.message for r in replies] == [f"m{i}" for i in range(2000)]
        parts = [r.stream.message async for r in conn.stream(echo_req(0, "stream me", stream=True))]
        assert "".join(parts) == "stream me"
        with pytest.raises(CallCancelled):
            await conn.call(Req())  # no body: the server cancels the call
        assert conn.in_flight == 0
        conn.close()
        await conn.wait_closed()
        server.close()

    run(kind, test)


# -- cancellation ----------------------------------------------------------------------------------


class Parked:
    """A handler that waits until released; records how each call ended."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.entered = asyncio.Event()

    async def __call__(self, req: Any) -> Any:
        self.started.append(req.request_id)
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(req.request_id)
            raise
        return Resp(echo=echo_pb2.EchoResponse(message=req.body.message))


def test_cancel_aborts_the_handler_and_unknown_ids_are_ignored() -> None:
    async def test() -> None:
        h = Parked()
        server, address = await listen(rpc_app(h))
        w = await Wire.open(address)
        await w.send(frame(echo_req(5, "slow")))
        await h.entered.wait()
        await w.send(frame(Req(request_id=5, code=1)) + frame(Req(request_id=99, code=1)))
        assert await w.frame() == frame(Resp(request_id=5, code=1))
        assert h.cancelled == [5]
        # The unknown id changed nothing: the connection still serves.
        h.release.set()
        await w.send(frame(echo_req(6, "after")))
        assert (await w.response()).echo.message == "after"
        w.close()
        server.close()

    run("uvloop", test)


def test_a_cancelled_caller_cancels_the_server_call() -> None:
    async def test() -> None:
        h = Parked()
        server, address = await listen(rpc_app(h))
        conn = await connect_rpc(address, ProtobufCodec(Resp), *RPC)
        task = asyncio.ensure_future(conn.call(echo_req(0, "x")))
        await h.entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while not h.cancelled:  # the cancel message reaches the server
            await asyncio.sleep(0.01)
        assert h.cancelled == h.started
        h.release.set()
        assert (await conn.call(echo_req(0, "z"))).echo.message == "z"
        conn.close()
        await conn.wait_closed()
        server.close()


@pytest.mark.parametrize("how", ["aclose", "break", "task_cancel"])
def test_leaving_a_stream_early_cancels_it_on_the_server(how: str) -> None:
    ended: list[str] = []

    class Endless:
        async def __call__(self, req: Any) -> AsyncIterator[Any]:
            return self.items()

        async def items(self) -> AsyncIterator[Any]:
            try:
                i = 0
                while True:
                    yield Resp(stream=echo_pb2.EchoStream(message="y", sequence=i))
                    i += 1
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                ended.append("cancelled")
                raise

    async def test() -> None:
        app = rpc_app(Endless())
        _, address = await listen(app)
        conn = await connect_rpc(address, ProtobufCodec(Resp), *RPC)
        if how == "aclose":
            stream = conn.stream(echo_req(0, "y", stream=True))
            assert (await anext(stream)).stream.message == "y"
            await stream.aclose()  # sends cancelled(id)
        elif how == "break":
            async for r in conn.stream(echo_req(0, "y", stream=True)):
                assert r.stream.message == "y"
                break  # the iterator is dropped here: its finalizer sends cancelled(id)
        else:
            got = asyncio.Event()

            async def take() -> None:
                async for _ in conn.stream(echo_req(0, "y", stream=True)):
                    got.set()
                    await asyncio.Event().wait()  # holds the stream open until cancelled

            task = asyncio.ensure_future(take())
            await got.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        while not ended:
            await asyncio.sleep(0.01)
        while app.statistics()["in_flight"]:
            await asyncio.sleep(0.01)
        conn.close()
        await conn.wait_closed()

    run("uvloop", test)


# -- semantics and backpressure ----------------------------------------------------------------------


class ByDelay:
    """Replies after the request's nanotime in milliseconds: the first request is the slowest."""

    async def __call__(self, req: Any) -> Any:
        await asyncio.sleep(req.body.nanotime / 1000)
        return Resp(echo=echo_pb2.EchoResponse(message=req.body.message))


@pytest.mark.parametrize("semantics", ["ordered", "concurrent"])
def test_ordered_and_concurrent(semantics: str) -> None:
    async def test() -> None:
        server, address = await listen(rpc_app(ByDelay(), semantics=semantics))
        w = await Wire.open(address)
        reqs = [
            Req(request_id=i + 1, body=echo_pb2.EchoRequest(message=str(i), nanotime=d))
            for i, d in enumerate((200, 0, 0))
        ]
        await w.send(b"".join(frame(r) for r in reqs))
        ids = [(await w.response()).request_id for _ in reqs]
        if semantics == "ordered":
            assert ids == [1, 2, 3]  # one at a time: the slow first call holds the others
        else:
            assert sorted(ids) == [1, 2, 3] and ids[-1] == 1  # replies as they finish
        w.close()
        server.close()

    run("uvloop", test)


class Mixed:
    """Echoes bytes; ``wait<ms>`` first waits that long. Under ``asyncio.timeout`` (it needs a
    current task): calls started in the read run as a worker task, as queued ones do."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    async def __call__(self, m: bytes) -> bytes:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        async with asyncio.timeout(10):
            if m.startswith(b"wait"):
                await asyncio.sleep(int(m[4:]) / 1000)
        return m


@pytest.mark.parametrize("semantics", ["ordered", "concurrent"])
def test_plain_calls_answer_in_the_read_and_waiting_ones_are_handed_on(semantics: str) -> None:
    from monolake.streams import BytesCodec

    async def test() -> None:
        h = Mixed()
        codec = BytesCodec()
        app = MessageServerApp("bytes", h, codec, settings=StreamSettings(semantics=semantics))  # type: ignore[arg-type]
        server, address = await listen(app)
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        msgs = [b"a", b"wait80", b"b", b"wait0", b"c"] * 3 + [b"%d" % i for i in range(200)]
        for part in (msgs[:9], msgs[9:]):  # two writes: the second arrives with calls in flight
            writer.write(b"".join(codec.encode(m) for m in part))
            await writer.drain()
        got = []
        for _ in msgs:
            n = int.from_bytes(await reader.readexactly(4), "big")
            got.append(await reader.readexactly(n))
        if semantics == "ordered":
            assert got == msgs  # one at a time, replies in order, whoever ran the call
            assert len(h.tasks) == 1  # every call ran as the connection's one worker
        else:
            assert sorted(got) == sorted(msgs)
            assert got.index(b"wait80") > got.index(b"199")  # the slow ones did not hold the rest
        (sconn,) = app.conns
        assert sconn.messages_in == len(msgs) and sconn._in_flight == 0
        writer.close()
        server.close()

    run("uvloop", test)


def _upper(m: bytes) -> bytes | None:
    return None if m == b"none" else m.upper()


class _Upper:
    def __call__(self, m: bytes) -> bytes | None:
        return _upper(m)


async def _slow_upper(m: bytes) -> bytes | None:
    await asyncio.sleep(0)
    return _upper(m)


@pytest.mark.parametrize("hook", [False, True], ids=["plain", "call_hook"])
@pytest.mark.parametrize("handler", ["function", "class", "returns_coroutine"])
def test_a_plain_def_handler_answers_without_a_coroutine(handler: str, hook: bool) -> None:
    from monolake.streams import BytesCodec, CallRecord

    service: Any = {"function": _upper, "class": _Upper(), "returns_coroutine": _slow_upper}[handler]
    if handler == "returns_coroutine":
        service = lambda m: _slow_upper(m)  # noqa: E731  (a def whose result is awaitable: awaited)
    records: list[CallRecord] = []

    async def test() -> None:
        codec = BytesCodec()
        app = MessageServerApp("bytes", service, codec, on_call=records.append if hook else None)
        server, address = await listen(app)
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        msgs = [b"a", b"none", b"bc"] * 50
        writer.write(b"".join(codec.encode(m) for m in msgs))
        got = []
        for _ in range(100):  # "none" gets no reply
            n = int.from_bytes(await reader.readexactly(4), "big")
            got.append(await reader.readexactly(n))
        assert got == [b"A", b"BC"] * 50
        (sconn,) = app.conns
        assert sconn.messages_in == len(msgs) and sconn._in_flight == 0
        assert len(records) == (len(msgs) if hook else 0)
        assert all(r.outcome == "ok" for r in records)
        writer.close()
        server.close()

    run("uvloop", test)


@pytest.mark.parametrize("handler", ["function", "class", "async_def"])
def test_a_plain_def_handler_under_layers_is_awaited_for_them(handler: str) -> None:
    """Layers await what they wrap: the builder puts a plain ``def`` handler under a coroutine
    (``AwaitPlain``), and leaves an ``async def`` one as it is."""
    from monolake.apps.streams._app import StreamsApp, _Awaited
    from monolake.core.service.layers import ConcurrencyLimitLayer, TimeoutLayer
    from monolake.streams import BytesCodec

    service: Any = {"function": _upper, "class": _Upper(), "async_def": _slow_upper}[handler]

    class Make(Factory[Any]):
        def make(self, old: Any) -> Any:
            return service

    spec = StreamsApp(
        name="up",
        listen="127.0.0.1:0",
        factory=Make(),
        codec=BytesCodec(),
        layers=[TimeoutLayer(30.0), ConcurrencyLimitLayer(8)],
    )

    async def test() -> None:
        app = spec.build_app(spec.server_settings(), None)
        leaf = app.service
        while hasattr(leaf, "inner"):
            if isinstance(leaf, _Awaited):
                break
            leaf = leaf.inner
        assert isinstance(leaf, _Awaited) == (handler != "async_def")
        server, address = await listen(app)
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        codec = BytesCodec()
        writer.write(b"".join(codec.encode(m) for m in [b"a", b"none", b"bc"] * 10))
        got = []
        for _ in range(20):  # "none" gets no reply
            n = int.from_bytes(await reader.readexactly(4), "big")
            got.append(await reader.readexactly(n))
        assert got == [b"A", b"BC"] * 10
        writer.close()
        server.close()

    run("uvloop", test)


def test_reading_pauses_when_calls_in_flight_reach_the_bound() -> None:
    async def test() -> None:
        h = Parked()
        app = rpc_app(h, max_in_flight=4)
        server, address = await listen(app)
        conn = await connect_rpc(address, ProtobufCodec(Resp), *RPC)
        calls = [asyncio.ensure_future(conn.call(echo_req(0, str(i)))) for i in range(200)]
        while len(h.started) < 4:
            await asyncio.sleep(0.01)
        for _ in range(20):
            await asyncio.sleep(0)
        (sconn,) = app.conns
        assert sconn._r_paused and len(h.started) == 4  # four handlers run; the rest wait, unread or queued
        h.release.set()
        assert [r.echo.message for r in await asyncio.gather(*calls)] == [str(i) for i in range(200)]
        conn.close()
        await conn.wait_closed()
        server.close()

    run("uvloop", test)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_client_that_does_not_read_stops_the_stream(kind: str) -> None:
    produced = 0
    N = 20_000  # 20 MB: more than the kernel's socket buffers hold

    class Flood:
        async def __call__(self, req: Any) -> AsyncIterator[Any]:
            return self.items()

        async def items(self) -> AsyncIterator[Any]:
            nonlocal produced
            for i in range(N):
                produced += 1
                yield Resp(stream=echo_pb2.EchoStream(message="x" * 1024, sequence=i))

    async def test() -> None:
        app = rpc_app(Flood())
        server, address = await listen(app)
        host, port = address.rsplit(":", 1)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.setblocking(False)
        sock.send(frame(echo_req(1, "go", stream=True)))
        while not app.conns or next(iter(app.conns)).writable:
            await asyncio.sleep(0.01)
        stalled = produced
        for _ in range(50):
            await asyncio.sleep(0)
        assert produced == stalled < N  # the producer waits for room, the buffer does not grow
        sock.setblocking(True)
        end = frame(Resp(request_id=1, code=2))
        tail = b""
        while not tail.endswith(end):  # read everything: the stream goes on to its end
            data = await asyncio.get_running_loop().run_in_executor(None, sock.recv, 1 << 20)
            assert data
            tail = (tail + data)[-64:]
        assert produced == N
        sock.close()
        server.close()

    run(kind, test)


# -- bad input ---------------------------------------------------------------------------------------

BAD = {
    "over max": (_VarintBytes(2000), "over max_message_size"),
    "malformed varint": (b"\xff" * 11, "malformed varint"),
    "undecodable": (b"\x03\xff\xff\xff", "undecodable Request"),
}


@pytest.mark.parametrize("case", [*BAD, "close mid-message"])
def test_bad_input_closes_the_connection_with_a_reason(case: str, caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        server, address = await listen(rpc_app(Echo(), max_message_size=1000))
        ok = await Wire.open(address)  # another connection, open throughout
        await ok.send(frame(echo_req(1, "before")))
        assert (await ok.response()).echo.message == "before"
        w = await Wire.open(address)
        if case == "close mid-message":
            await w.send(frame(echo_req(2, "cut"))[:-2])
            w.writer.write_eof()
            reason = "peer closed in the middle of a message"
        else:
            data, reason = BAD[case]
            await w.send(data)
        assert await w.reader.read() == b""
        w.close()
        assert any(reason in r.getMessage() and "peer=127.0.0.1:" in r.getMessage() for r in caplog.records)
        await ok.send(frame(echo_req(3, "after")))
        assert (await ok.response()).echo.message == "after"
        ok.close()
        server.close()

    with caplog.at_level(logging.INFO, "monolake.streams"):
        run("uvloop", test)


def test_a_failing_handler_answers_one_call_with_cancel(caplog: pytest.LogCaptureFixture) -> None:
    class Fails:
        async def __call__(self, req: Any) -> Any:
            if req.body.message == "boom":
                raise RuntimeError("boom")
            return Resp(echo=echo_pb2.EchoResponse(message=req.body.message))

    async def test() -> None:
        server, address = await listen(rpc_app(Fails()))
        w = await Wire.open(address)
        await w.send(frame(echo_req(1, "boom")) + frame(echo_req(2, "fine")))
        got = {bytes(await w.frame()) for _ in range(2)}
        assert got == {
            frame(Resp(request_id=1, code=1)),
            frame(Resp(request_id=2, echo=echo_pb2.EchoResponse(message="fine"))),
        }
        w.close()
        server.close()

    run("uvloop", test)
    assert any("call 1 failed: RuntimeError: boom" in r.getMessage() for r in caplog.records)


def test_core_layers_apply_timeout(caplog: pytest.LogCaptureFixture) -> None:
    class Slow(Factory[Parked]):
        def make(self, old: Parked | None) -> Parked:
            return Parked()

    async def test() -> None:
        from monolake.core.service import Stack

        layers: list[Layer[Any, Any]] = [TimeoutLayer(0.05)]
        service = Stack(layers, Slow()).build(None)
        server, address = await listen(rpc_app(service))
        conn = await connect_rpc(address, ProtobufCodec(Resp), *RPC)
        with pytest.raises(CallCancelled):  # the deadline passed: the call is answered with a cancel
            await conn.call(echo_req(0, "x"))
        assert any("call 1: DeadlineExceeded" in r.getMessage() for r in caplog.records)
        conn.close()
        await conn.wait_closed()
        server.close()

    run("uvloop", test)


# -- transports ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServerTls, str]:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("certs")
    chain, key, cafile = d / "chain.pem", d / "key.pem", d / "ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(cafile))
    return ServerTls(certificates=[Certificate(chain=str(chain), key=str(key))]), str(cafile)


@pytest.mark.parametrize("backend", ["openssl", "rustls"])
@pytest.mark.parametrize("kind", LOOPS)
def test_tls_both_backends(kind: str, backend: str, certs: tuple[ServerTls, str]) -> None:
    tls, cafile = certs

    async def test() -> None:
        server_tls = msgspec.structs.replace(tls, backend=backend)
        contexts = ServerTlsContexts("servers.echo.tls", server_tls, default_alpn=())
        app = rpc_app(Echo(), tls=contexts)
        server, address = await listen(app, ssl=app.ssl_context)
        conn = await connect_rpc(address, ProtobufCodec(Resp), *RPC, tls=UpstreamTls(ca=cafile, backend=backend))
        assert conn.tls is not None
        replies = await asyncio.gather(*(conn.call(echo_req(0, "t" * i)) for i in range(300)))
        assert [len(r.echo.message) for r in replies] == list(range(300))
        conn.close()
        await conn.wait_closed()
        server.close()

    run(kind, test)


def test_unix_socket_and_a_pool(tmp_path: Path) -> None:
    async def test() -> None:
        app_a, app_b = rpc_app(Echo()), rpc_app(Echo())
        loop = asyncio.get_running_loop()
        sa = await loop.create_unix_server(app_a.protocol_factory, str(tmp_path / "a.sock"))
        sb, address_b = await listen(app_b)
        pool = RpcPool([f"unix:{tmp_path / 'a.sock'}", address_b], ProtobufCodec(Resp), *RPC, connections=2)
        replies = await asyncio.gather(*(pool.call(echo_req(0, str(i))) for i in range(3000)))
        assert [r.echo.message for r in replies] == [str(i) for i in range(3000)]
        a, b = app_a.statistics()["messages_in"], app_b.statistics()["messages_in"]
        assert a + b == 3000 and a > 0 and b > 0  # balanced over both endpoints
        await pool.aclose()
        sa.close()
        sb.close()

    run("uvloop", test)


# -- plain message connections, drain, idle --------------------------------------------------------------


class Point(msgspec.Struct):
    x: int
    y: str


@pytest.mark.parametrize("kind", LOOPS)
def test_message_connection_msgpack(kind: str) -> None:
    class Echoes:
        async def __call__(self, conn: MessageConnection[Point]) -> None:
            async for p in conn:
                conn.send(Point(p.x + 1, p.y))
                if not conn.writable:
                    await conn.wait_writable()

    async def test() -> None:
        app = MessageServerApp("points", Echoes(), MsgpackCodec(Point), per_message=False)
        server, address = await listen(app)
        conn = await connect(address, MsgpackCodec(Point))
        for i in range(1000):
            conn.send(Point(i, "p" * (i % 50)))
        got = [await conn.recv() for _ in range(1000)]
        assert got == [Point(i + 1, "p" * (i % 50)) for i in range(1000)]
        assert running_kind(asyncio.get_running_loop()) == kind
        conn.close()
        await conn.wait_closed()
        server.close()

    run(kind, test)


def test_drain_finishes_calls_in_flight_then_closes() -> None:
    async def test() -> None:
        h = Parked()
        app = rpc_app(h)
        server, address = await listen(app)
        conn = await connect_rpc(address, ProtobufCodec(Resp), *RPC)
        call = asyncio.ensure_future(conn.call(echo_req(0, "in flight")))
        await h.entered.wait()
        app.start_draining()
        drained = asyncio.ensure_future(app.wait_drained())
        h.release.set()
        assert (await call).echo.message == "in flight"
        await drained
        while not conn.closed:
            await asyncio.sleep(0.01)
        assert conn.error is None or isinstance(conn.error, ConnectionResetError)
        server.close()

    run("uvloop", test)


def test_idle_connections_close(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        server, address = await listen(rpc_app(Echo(), idle=0.05))
        w = await Wire.open(address)
        assert await w.reader.read() == b""
        w.close()
        server.close()

    with caplog.at_level(logging.INFO, "monolake.streams"):
        run("uvloop", test)
    assert any("closing: idle for 0.05s" in r.getMessage() for r in caplog.records)


def test_drain_ends_a_connection_services_iteration() -> None:
    class Echoes:
        async def __call__(self, conn: MessageConnection[Point]) -> None:
            async for p in conn:
                conn.send(p)

    async def test() -> None:
        app = MessageServerApp("points", Echoes(), MsgpackCodec(Point), per_message=False)
        _, address = await listen(app)
        conn = await connect(address, MsgpackCodec(Point))
        conn.send(Point(1, "a"))
        assert await conn.recv() == Point(1, "a")
        app.start_draining()  # the service's loop ends, its connection closes, the app is drained
        await app.wait_drained()
        with pytest.raises(ConnectionClosed):  # the client sees the end of the stream
            await conn.recv()
        conn.close()
        await conn.wait_closed()

    run("uvloop", test)
