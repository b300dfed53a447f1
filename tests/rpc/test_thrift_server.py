"""The Thrift RPC server against real clients: thriftpy2 and Apache Thrift (generated code),
every protocol/transport pair, declared exceptions, oneway, unknown methods, bad input."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import thriftpy2
from thrift_support import Handler, LoopThread, apache_module, start_server, stop_server, write_idl
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory

from monolake.apps.config import Server
from monolake.core.proto.thrift import ThriftProtocol, encode_ttheader, message_begin
from monolake.rpc import ThriftService

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Env:
    def __init__(self, tmp: Path) -> None:
        self.idl = write_idl(tmp)
        self.mod = thriftpy2.load(str(self.idl), module_name="echo_test_thrift")
        self.handler = Handler(self.mod.Oops)
        self.lt = LoopThread()
        from monolake.apps.rpc.thrift._server import build_server

        self.service = ThriftService(str(self.idl), self.handler)
        settings = Server(listener="127.0.0.1:0", proxy_type="thrift", max_frame_size=4096)
        self.app = build_server("rpc", settings, self.service)
        self.srv, self.port = start_server(self.lt, self.app)
        self.apache = apache_module(tmp, self.idl)

    def close(self) -> None:
        stop_server(self.lt, self.srv, self.app)
        self.lt.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("rpc"))
    yield e
    e.close()


PROTOS = {"binary": TBinaryProtocolFactory(), "compact": TCompactProtocolFactory()}
TRANS = {"framed": TFramedTransportFactory(), "buffered": TBufferedTransportFactory()}


@pytest.mark.parametrize("trans", sorted(TRANS))
@pytest.mark.parametrize("proto", sorted(PROTOS))
def test_thriftpy2_client(env: Env, proto: str, trans: str) -> None:
    c = make_client(
        env.mod.Echo, "127.0.0.1", env.port, proto_factory=PROTOS[proto], trans_factory=TRANS[trans], timeout=30000
    )
    try:
        assert c.echo("héllo") == "héllo"
        assert c.add(40, 2) == 42
        it = c.item(env.mod.Item(id=7, name="x", tags=["a"], scores={"k": 1.5}))
        assert (it.id, it.name, it.tags, it.scores) == (7, "x", ["a", "seen"], {"k": 1.5})
        with pytest.raises(env.mod.Oops) as oops:
            c.item(env.mod.Item(id=9, name="bad"))
        assert oops.value.why == "bad item 9"
        with pytest.raises(TApplicationException) as app_exc:
            c.boom("kaboom")
        assert app_exc.value.type == TApplicationException.INTERNAL_ERROR
        assert c.nothing() is None
        env.handler.fired_event.clear()
        c.fire(f"{proto}-{trans}")
        assert env.handler.fired_event.wait(30)
        assert c.echo("after oneway") == "after oneway"  # the connection is still in step
        assert f"{proto}-{trans}" in env.handler.fired
    finally:
        c.close()


def _apache_client(env: Env, proto: str, trans: str) -> tuple[Any, Any]:
    from thrift.protocol import TBinaryProtocol, TCompactProtocol
    from thrift.protocol.THeaderProtocol import THeaderProtocol
    from thrift.transport import TSocket, TTransport
    from thrift.transport.THeaderTransport import THeaderClientType

    sock = TSocket.TSocket("127.0.0.1", env.port)
    sock.setTimeout(30000)
    if trans == "theader":
        transport = TTransport.TBufferedTransport(sock)
        protocol = THeaderProtocol(
            transport,
            allowed_client_types=(THeaderClientType.HEADERS,),
            default_protocol=2 if proto == "compact" else 0,
        )
    else:
        transport = TTransport.TFramedTransport(sock) if trans == "framed" else TTransport.TBufferedTransport(sock)
        protocol = (
            TBinaryProtocol.TBinaryProtocolAccelerated(transport)
            if proto == "binary"
            else TCompactProtocol.TCompactProtocolAccelerated(transport)
        )
    transport.open()
    return env.apache.Client(protocol), transport


@pytest.mark.parametrize("trans", ["buffered", "framed", "theader"])
@pytest.mark.parametrize("proto", ["binary", "compact"])
def test_apache_client(env: Env, proto: str, trans: str) -> None:
    from thrift.Thrift import TApplicationException as ApacheAppExc

    c, transport = _apache_client(env, proto, trans)
    tt = env.apache.ttypes
    try:
        assert c.echo("hi") == "hi"
        assert c.add(-5, 3) == -2
        it = c.item(tt.Item(id=1, name="n", tags=[], scores={}))
        assert it.tags == ["seen"]
        with pytest.raises(tt.Oops) as oops:
            c.item(tt.Item(id=3, name="bad"))
        assert oops.value.why == "bad item 3"
        with pytest.raises(ApacheAppExc) as app_exc:
            c.boom("x")
        assert app_exc.value.type == ApacheAppExc.INTERNAL_ERROR
        assert c.echo("still up") == "still up"
    finally:
        transport.close()


def _raw(env: Env) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", env.port), timeout=30)
    return s


def _recv_frame(s: socket.socket) -> bytes:
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        assert chunk, "closed"
        head += chunk
    (n,) = struct.unpack("!I", head)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        assert chunk
        body += chunk
    return body


def _call(name: str, seq: int, args: bytes = b"\x00") -> bytes:
    return message_begin(name, 1, seq, ThriftProtocol.BINARY) + args


def _echo_args(msg: str) -> bytes:
    raw = msg.encode()
    return b"\x0b\x00\x01" + struct.pack("!i", len(raw)) + raw + b"\x00"


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_unknown_method_answered_connection_kept(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "monolake.rpc.thrift"), _raw(env) as s:
        s.sendall(struct.pack("!I", len(_call("nope", 5))) + _call("nope", 5))
        reply = _recv_frame(s)
        assert reply[:4] == b"\x80\x01\x00\x03"  # EXCEPTION
        assert b"Unknown method nope" in reply
        payload = _call("echo", 6, _echo_args("ok"))
        s.sendall(struct.pack("!I", len(payload)) + payload)
        assert _recv_frame(s).endswith(b"ok\x00")
    assert "unknown method 'nope'" in caplog.text


def test_bad_arguments_answered_protocol_error(env: Env) -> None:
    with _raw(env) as s:
        payload = _call("echo", 1, b"\x0b\x00\x01\x7f\xff\xff\xff")  # a string longer than the frame
        s.sendall(struct.pack("!I", len(payload)) + payload)
        reply = _recv_frame(s)
        assert reply[:4] == b"\x80\x01\x00\x03"
        assert b"bad arguments" in reply


def test_wrong_protocol_id_closed(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), _raw(env) as s:
        s.sendall(struct.pack("!I", 12) + b"\x80\x02\x00\x01" + b"\x00" * 8)
        assert _closed(s)
    assert "bad frame" in caplog.text or "bad binary protocol version" in caplog.text


def test_oversized_frame_answered_and_closed(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), _raw(env) as s:
        payload = _call("echo", 77, _echo_args("x" * 5000))
        s.sendall(struct.pack("!I", len(payload)) + payload[:100])
        reply = _recv_frame(s)
        assert reply[:4] == b"\x80\x01\x00\x03"
        assert b"exceeds the limit" in reply
        assert _closed(s)
    assert "exceeds the limit of 4096" in caplog.text


def test_oversized_unframed_closed(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), _raw(env) as s:
        s.sendall(_call("echo", 1, b"\x0b\x00\x01" + struct.pack("!i", 100000) + b"x" * 5000))
        assert _closed(s)
    assert "unframed message over 4096 bytes" in caplog.text


def test_truncated_frame_then_close(env: Env) -> None:
    with _raw(env) as s:
        payload = _call("echo", 3, _echo_args("abc"))
        s.sendall(struct.pack("!I", len(payload)) + payload[:10])
        s.shutdown(socket.SHUT_WR)
        assert _closed(s)
    # The worker is alive: a new connection works.
    with _raw(env) as s2:
        payload = _call("echo", 4, _echo_args("alive"))
        s2.sendall(struct.pack("!I", len(payload)) + payload)
        assert _recv_frame(s2).endswith(b"alive\x00")


def _tt_call(seq: int, name: str, args: bytes) -> bytes:
    return encode_ttheader(_call(name, seq, args), seq_id=seq)


def test_ttheader_replies_out_of_order(env: Env) -> None:
    from monolake.core.proto.thrift import FrameReader, peek_message

    slow = b"\x04\x00\x01" + struct.pack("!d", 0.5) + b"\x0b\x00\x02" + struct.pack("!i", 4) + b"slow" + b"\x00"
    with _raw(env) as s:
        s.sendall(_tt_call(1, "slow", slow) + _tt_call(2, "echo", _echo_args("fast")))
        reader = FrameReader()
        frames: list[Any] = []
        while len(frames) < 2:
            frames += reader.feed(s.recv(65536))
        seqs = [peek_message(f.data, f.payload, ThriftProtocol.BINARY).seq_id for f in frames]
        assert seqs == [2, 1]
        assert [f.seq_id for f in frames] == [2, 1]


def test_framed_replies_in_order(env: Env) -> None:
    slow = b"\x04\x00\x01" + struct.pack("!d", 0.3) + b"\x0b\x00\x02" + struct.pack("!i", 4) + b"slow" + b"\x00"
    with _raw(env) as s:
        a = _call("slow", 1, slow)
        b = _call("echo", 2, _echo_args("fast"))
        s.sendall(struct.pack("!I", len(a)) + a + struct.pack("!I", len(b)) + b)
        first, second = _recv_frame(s), _recv_frame(s)
        assert b"slow" in first and first.endswith(b"slow\x00")
        assert second.endswith(b"fast\x00")


def _framed(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def test_framed_pipelined_replies_in_call_order(env: Env) -> None:
    """One read of seven calls: async handlers that finish without awaiting are answered inline
    (no task), one that awaits goes on in a task, and every reply after it (results, errors,
    an unknown method) waits for its reply: framed clients match replies by order."""
    from monolake.core.proto.thrift import FrameReader, peek_message

    slow = b"\x04\x00\x01" + struct.pack("!d", 0.2) + b"\x0b\x00\x02" + struct.pack("!i", 4) + b"slow" + b"\x00"
    add = b"\x08\x00\x01" + struct.pack("!i", 40) + b"\x08\x00\x02" + struct.pack("!i", 2) + b"\x00"
    calls = [
        _call("echo", 1, _echo_args("a")),
        _call("slow", 2, slow),
        _call("echo", 3, _echo_args("c")),
        _call("add", 4, add),
        _call("boom", 5, _echo_args("x")),
        _call("nope", 6),
        _call("echo", 7, _echo_args("d")),
    ]
    with _raw(env) as s:
        s.sendall(b"".join(_framed(c) for c in calls))
        reader = FrameReader()
        frames: list[Any] = []
        while len(frames) < len(calls):
            chunk = s.recv(65536)
            assert chunk, "closed"
            frames += reader.feed(chunk)
    heads = [peek_message(f.data, f.payload, ThriftProtocol.BINARY) for f in frames]
    assert [h.seq_id for h in heads] == [1, 2, 3, 4, 5, 6, 7]
    assert [h.type for h in heads] == [2, 2, 2, 2, 3, 3, 2]  # REPLY, or EXCEPTION (boom, unknown)
    assert frames[0].data.endswith(b"a\x00") and frames[1].data.endswith(b"slow\x00")
    assert frames[3].data.endswith(struct.pack("!i", 42) + b"\x00")
    assert frames[6].data.endswith(b"d\x00")


@pytest.mark.parametrize("cut", [1, 5, 33, 0])
def test_framed_calls_cut_anywhere_answered_in_order(env: Env, cut: int) -> None:
    """Framed binary calls served in place from the read buffer (``dispatch_framed``) and the
    ones it declines (oneway, unknown, bad arguments, calls after one that awaits) mixed in
    one stream, sent in pieces of ``cut`` bytes (0: all at once): every call answered once,
    in call order, the connection kept."""
    from monolake.core.proto.thrift import FrameReader, peek_message

    slow = b"\x04\x00\x01" + struct.pack("!d", 0.05) + b"\x0b\x00\x02" + struct.pack("!i", 4) + b"slow" + b"\x00"
    add = b"\x08\x00\x01" + struct.pack("!i", 40) + b"\x08\x00\x02" + struct.pack("!i", 2) + b"\x00"
    calls = [
        _call("echo", 1, _echo_args("a")),
        _call("add", 2, add),
        _call("nothing", 3),
        message_begin("fire", 4, 4, ThriftProtocol.BINARY) + _echo_args(f"cut{cut}"),  # oneway: no reply
        _call("nope", 5),
        _call("echo", 6, b"\x0b\x00\x01\x7f\xff\xff\xff"),  # a string longer than the frame
        _call("slow", 7, slow),
        _call("echo", 8, _echo_args("b")),
        _call("echo", 9, _echo_args("c" * 300)),
    ]
    stream = b"".join(_framed(c) for c in calls)
    with _raw(env) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        step = cut or len(stream)
        for i in range(0, len(stream), step):
            s.sendall(stream[i : i + step])
        reader = FrameReader()
        frames: list[Any] = []
        while len(frames) < 8:
            chunk = s.recv(65536)
            assert chunk, "closed"
            frames += reader.feed(chunk)
        heads = [peek_message(f.data, f.payload, ThriftProtocol.BINARY) for f in frames]
        assert [h.seq_id for h in heads] == [1, 2, 3, 5, 6, 7, 8, 9]
        assert [h.type for h in heads] == [2, 2, 2, 3, 3, 2, 2, 2]  # REPLY, or EXCEPTION (unknown, bad args)
        assert frames[0].data.endswith(b"a\x00") and frames[1].data.endswith(struct.pack("!i", 42) + b"\x00")
        assert frames[5].data.endswith(b"slow\x00") and frames[7].data.endswith(b"c" * 300 + b"\x00")
        s.sendall(_framed(_call("echo", 10, _echo_args("kept"))))
        assert _recv_frame(s).endswith(b"kept\x00")
    assert f"cut{cut}" in env.handler.fired


class _Steps:
    """Async handlers that return or raise, before or after waiting (``dispatch_framed``'s pump)."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def step(self, how: str) -> str:
        self.ran.append(how)
        kind = how[:-1]  # the last character numbers the connection
        if kind.startswith("wait"):
            await asyncio.sleep(0)
        if kind.endswith("raise"):
            raise ValueError(how)
        if kind.endswith("cancel"):
            raise asyncio.CancelledError
        return how.upper()


def test_framed_async_handlers_return_raise_wait(env: Env, tmp_path: Path) -> None:
    """Framed calls of ``async def`` handlers that return, raise or are cancelled, at once or
    after a wait, on two connections at once: each answered in call order on its connection
    (an error as ``INTERNAL_ERROR``), and the server serves on after every kind."""
    from monolake.core.proto.thrift import FrameReader, peek_message
    from monolake.rpc import build_server

    idl = tmp_path / "steps.thrift"
    idl.write_text("namespace py steps\nservice Steps {\n  string step(1: string how)\n}\n")
    handler = _Steps()
    app = build_server("steps", Server(listener="127.0.0.1:0"), ThriftService(str(idl), handler))
    srv, port = start_server(env.lt, app)
    kinds = ["now", "wait", "now-raise", "wait-raise", "now-cancel", "wait-cancel", "now", "wait", "now"]
    try:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        for n, s in enumerate(socks):
            s.sendall(b"".join(_framed(_call("step", i, _echo_args(f"{k}{n}"))) for i, k in enumerate(kinds)))
        for n, s in enumerate(socks):
            reader = FrameReader()
            frames: list[Any] = []
            while len(frames) < len(kinds):
                chunk = s.recv(65536)
                assert chunk, "closed"
                frames += reader.feed(chunk)
            heads = [peek_message(f.data, f.payload, ThriftProtocol.BINARY) for f in frames]
            assert [h.seq_id for h in heads] == list(range(len(kinds)))
            assert [h.type for h in heads] == [2, 2, 3, 3, 3, 3, 2, 2, 2]
            for k, f in zip(kinds, frames, strict=True):
                if k in ("now", "wait"):
                    assert f.data.endswith(f"{k}{n}".upper().encode() + b"\x00")
            assert b"step failed: ValueError" in frames[2].data and b"step failed: ValueError" in frames[3].data
            assert b"call cancelled" in frames[4].data and b"call cancelled" in frames[5].data
            s.close()
        assert sorted(handler.ran) == sorted(f"{k}{n}" for n in range(2) for k in kinds)
    finally:
        stop_server(env.lt, srv, app)


def test_ttheader_replies_as_encode_frame_makes_them(env: Env) -> None:
    """TTHeader calls served in place (``dispatch_bytes``) are answered with the bytes
    ``encode_ttheader`` makes: the header's sequence id and the message's kept apart, and
    backward metainfo the handler set (on a call that brought none) in the reply's headers."""
    from monolake.core.proto.thrift import FrameReader, read_header_info

    echo = encode_ttheader(_call("echo", 9, _echo_args("tt")), seq_id=7)
    meta = encode_ttheader(_call("meta", 11, _echo_args("k")), seq_id=10)
    with _raw(env) as s:
        s.sendall(echo + meta)
        reader = FrameReader()
        frames: list[Any] = []
        while len(frames) < 2:
            chunk = s.recv(65536)
            assert chunk, "closed"
            frames += reader.feed(chunk)
    result = b"\x0b\x00\x00" + struct.pack("!i", 2) + b"tt" + b"\x00"
    assert bytes(frames[0].data) == encode_ttheader(
        message_begin("echo", 2, 9, ThriftProtocol.BINARY) + result, seq_id=7
    )
    assert frames[1].seq_id == 10
    assert read_header_info(frames[1]).headers == {"RPC_BACKWARD_seen": "k"}
    assert frames[1].data.endswith(b"\x0b\x00\x00" + struct.pack("!i", 0) + b"\x00")


def test_ttheader_many_calls_in_one_read(env: Env) -> None:
    """64 calls in one read (their replies written together): each answered once, by its seq id."""
    from monolake.core.proto.thrift import FrameReader, peek_message

    with _raw(env) as s:
        s.sendall(b"".join(_tt_call(i, "echo", _echo_args(f"m{i}")) for i in range(1, 65)))
        reader = FrameReader()
        frames: list[Any] = []
        while len(frames) < 64:
            chunk = s.recv(65536)
            assert chunk, "closed"
            frames += reader.feed(chunk)
    got = {peek_message(f.data, f.payload, ThriftProtocol.BINARY).seq_id: bytes(f.data) for f in frames}
    assert sorted(got) == list(range(1, 65))
    assert all(got[i].endswith(f"m{i}".encode() + b"\x00") for i in got)


def test_settings_struct_is_a_server() -> None:
    s = msgspec.structs.replace(Server(listener="127.0.0.1:0"), proxy_type="thrift")
    assert s.max_frame_size > 0


@pytest.mark.parametrize("framing", ["framed", "unframed"])
def test_drain_answers_calls_in_flight_then_closes(tmp_path: Path, framing: str) -> None:
    from monolake.apps.rpc.thrift._server import build_server

    idl = write_idl(tmp_path)
    lt = LoopThread()
    app = build_server("drain", Server(listener="127.0.0.1:0"), ThriftService(str(idl), Handler()))
    srv, port = start_server(lt, app)
    try:
        slow = b"\x04\x00\x01" + struct.pack("!d", 0.3) + b"\x0b\x00\x02" + struct.pack("!i", 4) + b"done" + b"\x00"
        call = _call("slow", 1, slow)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(struct.pack("!I", len(call)) + call if framing == "framed" else call)
            # the call is in flight once the server counts it
            while app.statistics()["in_flight"] == 0:
                lt.call(lambda: None)
            lt.call(app.start_draining)
            drained = asyncio.run_coroutine_threadsafe(app.wait_drained(), lt.loop)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            assert data.endswith(b"done\x00")  # answered, then closed by the server
            drained.result(30)
    finally:
        stop_server(lt, srv, app)
        lt.close()
