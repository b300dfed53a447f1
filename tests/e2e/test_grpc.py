"""gRPC through the proxy end to end: a grpcio client (h2c by prior knowledge) → monolake
(HTTP/2 server, HTTP/2 upstream) → a grpcio server, on each HTTP/2 codec.

Unary, server-streaming, client-streaming and bidi calls, a 10 MB message each way,
statuses and trailing metadata forwarded, and the proxy's own failures as gRPC
statuses: DEADLINE_EXCEEDED (route timeout; grpc-timeout before and after the
response head) and UNAVAILABLE (dead upstream). The stubs are generated at test time
with grpc_tools.protoc.

The deadline tests must see the proxy's deadline fire, never a peer's. The proxy
forwards grpc-timeout rewritten to what is left, so a grpcio origin holds nearly the
same deadline as the proxy and, on a busy machine, its own "Deadline Exceeded" could
arrive first. Those tests therefore run against ``DeafOrigin``, which ignores
grpc-timeout and never finishes a call, and the grpc-timeout tests use a raw ``h2``
client, which keeps no deadline of its own: the status they read can only come from
the proxy.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from types import ModuleType
from typing import Any

import pytest

from conftest import Proxy, ProxyFactory, free_port
from monolake.core.proto.grpc import parse_timeout
from monolake.core.proto.http2 import codec_kinds

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (pip install -e .[test])")
protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is not installed (pip install -e .[test])")

pytestmark = pytest.mark.e2e


def _server_side_h2() -> str | None:
    try:
        importlib.import_module("monolake.core.server._h2")
    except ImportError as exc:
        return f"the HTTP/2 server driver (monolake.core.server._h2) is not available: {exc}"
    return None


_NO_H2_SERVER = _server_side_h2()
if _NO_H2_SERVER is not None:
    pytest.skip(_NO_H2_SERVER, allow_module_level=True)

PROTO = """
syntax = "proto3";
package monolake.proxytest;

service Echo {
  rpc Unary(Msg) returns (Msg);
  rpc ServerStream(Msg) returns (stream Msg);
  rpc ClientStream(stream Msg) returns (Msg);
  rpc Bidi(stream Msg) returns (stream Msg);
}

message Msg {
  bytes data = 1;
  int32 count = 2;     // ServerStream: how many replies
  int32 delay_ms = 3;  // wait before answering (ServerStream: before each reply after the first)
  int32 fail = 4;      // Unary: abort with this status code
}
"""

MAX = 64 * 1024 * 1024
OPTIONS = [("grpc.max_send_message_length", MAX), ("grpc.max_receive_message_length", MAX)]


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    d = tmp_path_factory.mktemp("grpc_stubs")
    (d / "proxy_echo.proto").write_text(PROTO)
    code = protoc.main(["protoc", f"-I{d}", f"--python_out={d}", f"--grpc_python_out={d}", str(d / "proxy_echo.proto")])
    assert code == 0, "protoc failed"
    sys.path.insert(0, str(d))
    try:
        pb2 = importlib.import_module("proxy_echo_pb2")
        pb2_grpc = importlib.import_module("proxy_echo_pb2_grpc")
    finally:
        sys.path.remove(str(d))
    return pb2, pb2_grpc


class Servicer:
    def __init__(self, pb2: ModuleType) -> None:
        self.pb2 = pb2

    def Unary(self, req: Any, ctx: Any) -> Any:
        if req.delay_ms:
            time.sleep(req.delay_ms / 1000)
        if req.fail:
            ctx.set_trailing_metadata([("x-why", "asked to")])
            ctx.abort(grpc.StatusCode(next(s for s in grpc.StatusCode if s.value[0] == req.fail)), "failing on purpose")
        ctx.set_trailing_metadata([("x-served-by", "grpcio"), ("x-len", str(len(req.data)))])
        return self.pb2.Msg(data=req.data, count=len(req.data))

    def ServerStream(self, req: Any, ctx: Any) -> Iterator[Any]:
        for i in range(req.count):
            if i and req.delay_ms:
                time.sleep(req.delay_ms / 1000)
            yield self.pb2.Msg(data=req.data + b"%d" % i, count=i)

    def ClientStream(self, reqs: Iterator[Any], ctx: Any) -> Any:
        parts = [r.data for r in reqs]
        return self.pb2.Msg(data=b"".join(parts), count=len(parts))

    def Bidi(self, reqs: Iterator[Any], ctx: Any) -> Iterator[Any]:
        for r in reqs:
            yield self.pb2.Msg(data=r.data[::-1], count=r.count)


@pytest.fixture(scope="module")
def grpc_server(stubs: tuple[ModuleType, ModuleType]) -> Iterator[tuple[int, Servicer]]:
    pb2, pb2_grpc = stubs
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    servicer = Servicer(pb2)
    pb2_grpc.add_EchoServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(grace=None)


class DeafOrigin:
    """A gRPC-over-h2c origin that ignores grpc-timeout and never finishes a call.

    Unary calls get no answer at all; ServerStream calls get the response head and one
    message, then nothing. Only a reset from the proxy (or the connection closing) ends
    a stream, so whatever status a client reads came from the proxy. Each call's
    grpc-timeout header is kept in ``timeouts``; ``reset`` is set when the proxy
    resets a stream. Threads with blocking sockets: no event loop of its own.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.timeouts: list[bytes | None] = []
        self.reset = threading.Event()
        self.socks: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.socks.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        import h2.config
        import h2.connection
        import h2.events

        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        with contextlib.suppress(OSError), sock:
            sock.sendall(conn.data_to_send())
            while chunk := sock.recv(65536):
                for ev in conn.receive_data(chunk):
                    if isinstance(ev, h2.events.RequestReceived):
                        headers = dict(ev.headers)
                        self.timeouts.append(headers.get(b"grpc-timeout"))
                        if headers.get(b":path", b"").endswith(b"/ServerStream"):
                            conn.send_headers(
                                ev.stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")]
                            )
                            conn.send_data(ev.stream_id, b"\x00\x00\x00\x00\x02\x0a\x00")  # one Msg(data=b"")
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamReset):
                        self.reset.set()
                sock.sendall(conn.data_to_send())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        self.listener.close()
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)


@pytest.fixture(scope="module")
def deaf_origin() -> Iterator[DeafOrigin]:
    origin = DeafOrigin()
    yield origin
    origin.close()


@pytest.fixture(params=codec_kinds())
def codec(request: pytest.FixtureRequest) -> str:
    return str(request.param)


CONFIG = """
[runtime]
drain_timeout = 1

[upstreams.grpc]
endpoints = [{ endpoint = "127.0.0.1:{port}" }]
protocol = "h2c"

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/monolake.proxytest.Echo/Unary"
upstream = "grpc"
timeout = {route_timeout}

[[servers.web.routes]]
path = "/"
upstream = "grpc"
"""


@pytest.fixture
def grpc_proxy(proxy: ProxyFactory, grpc_server: tuple[int, Servicer], codec: str) -> Proxy:
    return proxy(CONFIG, port=grpc_server[0], route_timeout=30, env={"MONOLAKE_H2_CODEC": codec})


@pytest.fixture
def stub(grpc_proxy: Proxy, stubs: tuple[ModuleType, ModuleType]) -> Iterator[Any]:
    with grpc.insecure_channel(grpc_proxy.address, options=OPTIONS) as channel:
        yield stubs[1].EchoStub(channel)


def test_unary_with_trailing_metadata(stub: Any, stubs: tuple[ModuleType, ModuleType]) -> None:
    pb2 = stubs[0]
    reply, call = stub.Unary.with_call(pb2.Msg(data=b"hello"), timeout=30)
    assert reply.data == b"hello" and reply.count == 5
    assert call.code() == grpc.StatusCode.OK
    trailing = dict(call.trailing_metadata())
    assert trailing["x-served-by"] == "grpcio" and trailing["x-len"] == "5"


def test_error_status_and_message_forwarded(stub: Any, stubs: tuple[ModuleType, ModuleType]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(stubs[0].Msg(data=b"x", fail=grpc.StatusCode.NOT_FOUND.value[0]), timeout=30)
    err = info.value
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "failing on purpose"
    assert dict(err.trailing_metadata())["x-why"] == "asked to"


def test_server_streaming(stub: Any, stubs: tuple[ModuleType, ModuleType]) -> None:
    replies = list(stub.ServerStream(stubs[0].Msg(data=b"n", count=50), timeout=30))
    assert [r.data for r in replies] == [b"n%d" % i for i in range(50)]


def test_client_streaming(stub: Any, stubs: tuple[ModuleType, ModuleType]) -> None:
    pb2 = stubs[0]
    reply = stub.ClientStream(iter([pb2.Msg(data=b"%d," % i) for i in range(100)]), timeout=30)
    assert reply.count == 100
    assert reply.data == b"".join(b"%d," % i for i in range(100))


def test_bidi_streaming_interleaved(stub: Any, stubs: tuple[ModuleType, ModuleType]) -> None:
    # Each reply is read before the next request is sent: the proxy must relay both
    # directions of the one stream as they come, not at the end of either.
    pb2 = stubs[0]
    outbox: list[Any] = []
    ready = threading.Semaphore(0)

    def requests() -> Iterator[Any]:
        for i in range(20):
            ready.acquire()
            yield outbox[i]

    outbox.append(pb2.Msg(data=b"abc0", count=0))
    ready.release()
    replies = stub.Bidi(requests(), timeout=30)
    for i in range(20):
        reply = next(replies)
        assert reply.data == (b"abc%d" % i)[::-1] and reply.count == i
        if i + 1 < 20:
            outbox.append(pb2.Msg(data=b"abc%d" % (i + 1), count=i + 1))
            ready.release()
    with pytest.raises(StopIteration):
        next(replies)


def test_ten_megabyte_messages(stub: Any, stubs: tuple[ModuleType, ModuleType]) -> None:
    data = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    reply = stub.Unary(stubs[0].Msg(data=data), timeout=60)
    assert reply.count == len(data) and reply.data == data
    replies = list(stub.Bidi(iter([stubs[0].Msg(data=data, count=1)] * 2), timeout=60))
    assert [r.data == data[::-1] for r in replies] == [True, True]


def test_route_timeout_is_deadline_exceeded(
    proxy: ProxyFactory, deaf_origin: DeafOrigin, stubs: tuple[ModuleType, ModuleType], codec: str
) -> None:
    # The origin never answers and the client's deadline is 100 times the route's:
    # only the route timeout can end the call.
    p = proxy(CONFIG, port=deaf_origin.port, route_timeout=0.3, env={"MONOLAKE_H2_CODEC": codec})
    with grpc.insecure_channel(p.address) as channel, pytest.raises(grpc.RpcError) as info:
        stubs[1].EchoStub(channel).Unary(stubs[0].Msg(data=b"x"), timeout=30)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.details() == "monolake: upstream deadline exceeded"


def test_dead_upstream_is_unavailable(proxy: ProxyFactory, stubs: tuple[ModuleType, ModuleType], codec: str) -> None:
    p = proxy(CONFIG, port=free_port(), route_timeout=30, env={"MONOLAKE_H2_CODEC": codec})
    with grpc.insecure_channel(p.address) as channel, pytest.raises(grpc.RpcError) as info:
        stubs[1].EchoStub(channel).Unary(stubs[0].Msg(data=b"x"), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "monolake: cannot connect to the upstream"
    p.log.wait_line(r"upstream connect failed: cluster=grpc")


# -- grpc-timeout, read by a client without a deadline of its own ----------------------------


def raw_call(address: str, path: str, message: bytes, timeout_header: bytes) -> tuple[list[Any], list[bytes], dict]:
    """One gRPC call over a raw ``h2`` connection: (response headers, DATA pieces, trailers)."""
    import h2.config
    import h2.connection
    import h2.events

    host, port = address.rsplit(":", 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        conn.initiate_connection()
        frame = b"\x00" + len(message).to_bytes(4, "big") + message
        conn.send_headers(
            1,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":authority", address.encode()),
                (b":path", path.encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"grpc-timeout", timeout_header),
            ],
        )
        conn.send_data(1, frame, end_stream=True)
        sock.sendall(conn.data_to_send())
        headers: list[Any] = []
        data: list[bytes] = []
        trailers: dict[bytes, bytes] = {}
        done = False
        while not done:
            chunk = sock.recv(65536)
            assert chunk, "the proxy closed the connection"
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived):
                    headers = list(ev.headers)
                    if ev.stream_ended is not None:
                        trailers = dict(ev.headers)  # trailers-only
                        done = True
                elif isinstance(ev, h2.events.DataReceived):
                    data.append(ev.data)
                    conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                elif isinstance(ev, h2.events.TrailersReceived):
                    trailers = dict(ev.headers)
                    done = True
                elif isinstance(ev, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    raise AssertionError(f"stream ended without a status: {ev}")
            sock.sendall(conn.data_to_send())
    return headers, data, trailers


@pytest.fixture
def deaf_proxy(proxy: ProxyFactory, deaf_origin: DeafOrigin, codec: str) -> Proxy:
    deaf_origin.reset.clear()
    deaf_origin.timeouts.clear()
    return proxy(CONFIG, port=deaf_origin.port, route_timeout=30, env={"MONOLAKE_H2_CODEC": codec})


def test_grpc_timeout_before_the_response_is_deadline_exceeded(
    deaf_proxy: Proxy, deaf_origin: DeafOrigin, stubs: tuple[ModuleType, ModuleType]
) -> None:
    msg = stubs[0].Msg(data=b"x").SerializeToString()
    headers, data, trailers = raw_call(deaf_proxy.address, "/monolake.proxytest.Echo/Unary", msg, b"300m")
    assert dict(headers)[b":status"] == b"200"
    assert trailers[b"grpc-status"] == b"4"
    assert trailers[b"grpc-message"] == b"monolake: upstream deadline exceeded"
    assert data == []
    assert deaf_origin.reset.wait(10)  # the proxy reset the upstream stream
    # The origin was told what was left of the client's 300 ms, not more.
    (forwarded,) = deaf_origin.timeouts
    seconds = parse_timeout(forwarded or b"")
    assert seconds is not None and 0 < seconds <= 0.3


def test_grpc_timeout_mid_stream_ends_with_deadline_exceeded(
    deaf_proxy: Proxy, deaf_origin: DeafOrigin, stubs: tuple[ModuleType, ModuleType]
) -> None:
    msg = stubs[0].Msg(data=b"s", count=3).SerializeToString()
    headers, data, trailers = raw_call(deaf_proxy.address, "/monolake.proxytest.Echo/ServerStream", msg, b"500m")
    assert dict(headers)[b":status"] == b"200"
    assert b"".join(data) == b"\x00\x00\x00\x00\x02\x0a\x00"  # the one reply the origin sent
    assert trailers[b"grpc-status"] == b"4"
    assert trailers[b"grpc-message"] == b"monolake: upstream deadline exceeded"
    assert deaf_origin.reset.wait(10)
