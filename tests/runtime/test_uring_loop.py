"""The io_uring event loop, on real sockets, with stdlib asyncio's behaviour as the reference."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import socket
import ssl
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme
import uvloop

from conftest import Origin, Proxy
from monolake.apps.config import Endpoint
from monolake.core._body import Body
from monolake.core.client import Pool
from monolake.core.proto.http._message import Headers
from monolake.core.proto.http1._serialize import content_length_line, request_head
from monolake.core.runtime import uring
from monolake.core.runtime._loops import LoopOptions, new_event_loop

if uring.unavailable() is not None:  # pragma: no cover - depends on the machine
    pytest.skip(f"io_uring unavailable here: {uring.unavailable()}", allow_module_level=True)

from monolake.core.runtime.uring._loop import UringEventLoop

T = TypeVar("T")


@pytest.fixture
def loop() -> Iterator[UringEventLoop]:
    lp = UringEventLoop(entries=64)
    try:
        yield lp
    finally:
        lp.close()


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return loop.run_until_complete(asyncio.wait_for(coro, 30))


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> None:
        return None  # the transport closes once what was echoed is sent


async def echo_roundtrip(host: str, port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(payload)
    writer.write_eof()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


# -- scheduling ------------------------------------------------------------------------


def test_call_soon_is_fifo_and_timers_fire_in_deadline_order(loop: UringEventLoop) -> None:
    seen: list[str] = []
    loop.call_later(0.03, seen.append, "late")
    loop.call_later(0.01, seen.append, "early")
    for i in range(5):
        loop.call_soon(seen.append, f"soon{i}")
    run(loop, asyncio.sleep(0.06))
    assert seen == ["soon0", "soon1", "soon2", "soon3", "soon4", "early", "late"]


def test_call_soon_threadsafe_wakes_a_waiting_loop(loop: UringEventLoop) -> None:
    async def main() -> str:
        fut: asyncio.Future[str] = loop.create_future()
        threading.Thread(target=loop.call_soon_threadsafe, args=(fut.set_result, "woken")).start()
        return await fut

    assert run(loop, main()) == "woken"


def test_run_in_executor(loop: UringEventLoop) -> None:
    assert run(loop, loop.run_in_executor(None, sum, [1, 2, 3])) == 6


def test_signal_handler_runs_on_the_loop(loop: UringEventLoop) -> None:
    got: list[int] = []

    async def main() -> None:
        fut: asyncio.Future[None] = loop.create_future()

        def handler() -> None:
            got.append(signal.SIGUSR1)
            fut.set_result(None)

        loop.add_signal_handler(signal.SIGUSR1, handler)
        os.kill(os.getpid(), signal.SIGUSR1)
        await fut
        assert loop.remove_signal_handler(signal.SIGUSR1)

    run(loop, main())
    assert got == [signal.SIGUSR1]


def test_add_reader_on_a_pipe(loop: UringEventLoop) -> None:
    r, w = os.pipe()
    try:

        async def main() -> bytes:
            fut: asyncio.Future[bytes] = loop.create_future()

            def readable() -> None:
                loop.remove_reader(r)
                fut.set_result(os.read(r, 100))

            loop.add_reader(r, readable)
            loop.call_later(0.01, os.write, w, b"ping")
            return await fut

        assert run(loop, main()) == b"ping"
    finally:
        os.close(r)
        os.close(w)


# -- sockets -------------------------------------------------------------------------


def test_create_server_and_connection_echo(loop: UringEventLoop) -> None:
    async def main() -> bytes:
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await echo_roundtrip("127.0.0.1", port, b"hello io_uring")
        finally:
            server.close()
            await server.wait_closed()

    assert run(loop, main()) == b"hello io_uring"


def test_unix_socket_server_and_connection(loop: UringEventLoop, tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")

    async def main() -> bytes:
        server = await loop.create_unix_server(Echo, path)
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"over unix")
            writer.write_eof()
            data = await reader.read()
            writer.close()
            await writer.wait_closed()
            return data
        finally:
            server.close()
            await server.wait_closed()

    assert run(loop, main()) == b"over unix"


def test_peername_and_sockname_of_accepted_connections(loop: UringEventLoop) -> None:
    async def main() -> tuple[Any, Any]:
        got: asyncio.Future[tuple[Any, Any]] = loop.create_future()

        class Peer(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                got.set_result((transport.get_extra_info("peername"), transport.get_extra_info("sockname")))
                transport.close()

        server = await loop.create_server(Peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        client_name = writer.get_extra_info("sockname")
        peer, sockname = await got
        writer.close()
        server.close()
        await server.wait_closed()
        assert peer == client_name
        return peer, sockname

    peer, sockname = run(loop, main())
    assert sockname[0] == "127.0.0.1" and peer[0] == "127.0.0.1"


def test_connect_refused_is_an_oserror(loop: UringEventLoop) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connecting is refused
        with pytest.raises(ConnectionRefusedError):
            run(loop, loop.create_connection(asyncio.Protocol, "127.0.0.1", port))


def test_large_write_applies_backpressure_and_arrives_intact(loop: UringEventLoop) -> None:
    size = 16 * 1024 * 1024
    block = os.urandom(1 << 20)
    expected = hashlib.sha256(block * (size // len(block))).hexdigest()

    class Sender(asyncio.Protocol):
        paused = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transport.set_write_buffer_limits(high=256 * 1024)
            for _ in range(size // len(block)):
                transport.write(block)
            transport.write_eof()

        def pause_writing(self) -> None:
            Sender.paused += 1

    async def main() -> str:
        server = await loop.create_server(Sender, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        h = hashlib.sha256()
        n = 0
        while chunk := await reader.read(1 << 16):
            h.update(chunk)
            n += len(chunk)
            if n < size // 2:
                await asyncio.sleep(0)  # a slow reader: the client pauses reading (its buffer fills)
        writer.close()
        server.close()
        await server.wait_closed()
        assert n == size
        return h.hexdigest()

    assert run(loop, main()) == expected
    assert Sender.paused >= 1


def test_pause_reading_keeps_order(loop: UringEventLoop) -> None:
    """Chunks received while paused are delivered after resume, in order, before newer ones."""
    total = 4 * 1024 * 1024

    class Pausing(asyncio.Protocol):
        def __init__(self) -> None:
            self.h = hashlib.sha256()
            self.n = 0
            self.pauses = 0
            self.done: asyncio.Future[str] = loop.create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.h.update(data)
            self.n += len(data)
            self.pauses += 1
            self.transport.pause_reading()
            assert not self.transport.is_reading()
            loop.call_later(0.001, self.transport.resume_reading)

        def eof_received(self) -> None:
            self.done.set_result(self.h.hexdigest())

    data = os.urandom(total)
    proto = Pausing()

    async def main() -> str:
        server = await loop.create_server(lambda: proto, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        writer.write_eof()
        await writer.drain()
        result = await proto.done
        writer.close()
        server.close()
        await server.wait_closed()
        return result

    assert run(loop, main()) == hashlib.sha256(data).hexdigest()
    assert proto.n == total and proto.pauses > 1


def test_many_concurrent_connections(loop: UringEventLoop) -> None:
    async def main() -> list[bytes]:
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=512)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.gather(*(echo_roundtrip("127.0.0.1", port, b"c%d" % i) for i in range(300)))
        finally:
            server.close()
            await server.wait_closed()

    assert run(loop, main()) == [b"c%d" % i for i in range(300)]
    assert loop.statistics()["acceptors"] == 0


def test_cancelled_read_leaves_the_connection_usable(loop: UringEventLoop) -> None:
    async def main() -> bytes:
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(10), 0.05)  # nothing sent yet: cancelled
        writer.write(b"after")
        data = await reader.readexactly(5)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return data

    assert run(loop, main()) == b"after"


def test_cancelled_connect(loop: UringEventLoop) -> None:
    async def main() -> None:
        # 192.0.2.0/24 (TEST-NET-1) is unroutable: the connect stays in progress until cancelled.
        task = loop.create_task(loop.create_connection(asyncio.Protocol, "192.0.2.1", 9))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises((asyncio.CancelledError, OSError)):
            await task

    run(loop, main())


def test_peer_reset_reaches_connection_lost(loop: UringEventLoop) -> None:
    async def main() -> BaseException | None:
        lost: asyncio.Future[BaseException | None] = loop.create_future()

        class Watch(asyncio.Protocol):
            def connection_lost(self, exc: BaseException | None) -> None:
                lost.set_result(exc)

        server = await loop.create_server(Watch, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # linger 0: RST
        exc = await lost
        server.close()
        await server.wait_closed()
        return exc

    assert isinstance(run(loop, main()), ConnectionResetError)


def test_tls_through_the_ssl_protocol_layer(loop: UringEventLoop) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def main() -> tuple[bytes, str | None]:
        server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        payload = os.urandom(300_000)
        writer.write(payload)
        data = await reader.readexactly(len(payload))
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        assert data == payload
        return data[:0], version

    _, version = run(loop, main())
    assert version is not None and version.startswith("TLS")


def test_transport_write_type_errors(loop: UringEventLoop) -> None:
    async def main() -> None:
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        with pytest.raises(TypeError):
            transport.write("text")  # type: ignore[arg-type]
        transport.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


# -- selection and fallback -------------------------------------------------------------


def test_io_uring_kind_makes_a_uring_loop_with_the_configured_ring() -> None:
    lp = new_event_loop("io_uring", LoopOptions(uring_entries=32))
    try:
        assert isinstance(lp, UringEventLoop)
        assert lp.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        lp.close()


def test_sqpoll_ring_serves_connections() -> None:
    lp = new_event_loop("io_uring", LoopOptions(uring_entries=32, sqpoll_idle_ms=50))
    try:

        async def main() -> bytes:
            server = await lp.create_server(Echo, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            try:
                return await echo_roundtrip("127.0.0.1", port, b"sqpoll")
            finally:
                server.close()
                await server.wait_closed()

        assert run(lp, main()) == b"sqpoll"
    finally:
        lp.close()


@pytest.mark.parametrize("kind", ["io_uring", "auto"])
def test_forced_setup_failure_falls_back_to_uvloop_with_a_warning(
    kind: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(uring.FAIL_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="monolake.core.runtime"):
        lp = new_event_loop(kind)
    try:
        assert isinstance(lp, uvloop.Loop)
    finally:
        lp.close()
    assert "io_uring unavailable, using uvloop instead: io_uring_setup: Operation not permitted" in caplog.text


FALLBACK_CONFIG = """
[runtime]
drain_timeout = 2

[upstreams.origin]
endpoints = [{{ endpoint = "{origin}" }}]

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


def test_proxy_falls_back_and_serves_when_io_uring_setup_fails(origin: Origin, tmp_path: Path) -> None:
    proxy = Proxy(FALLBACK_CONFIG.format(origin=origin.url), tmp_path, loop="io_uring", env={uring.FAIL_ENV: "1"})
    try:
        proxy.log.wait_line(r"io_uring unavailable, using uvloop instead: io_uring_setup: Operation not permitted")
        with socket.create_connection(_hostport(proxy.address), timeout=30) as s:
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            response = _read_all(s)
        assert response.startswith(b"HTTP/1.1 200 ")
    finally:
        proxy.close()


SQPOLL_CONFIG = """
[runtime]
drain_timeout = 2
uring_entries = 64
sqpoll_idle_ms = 20

[log]
level = "debug"

[upstreams.origin]
endpoints = [{{ endpoint = "{origin}" }}]

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


@pytest.mark.parametrize("kind", ["auto", "io_uring"])
def test_proxy_serves_on_an_sqpoll_ring_from_config(kind: str, origin: Origin, tmp_path: Path) -> None:
    proxy = Proxy(SQPOLL_CONFIG.format(origin=origin.url), tmp_path, loop=kind)
    try:
        proxy.log.wait_line(r"Using selector: _RingSelector")  # the worker's loop is the io_uring one
        for _ in range(3):
            with socket.create_connection(_hostport(proxy.address), timeout=30) as s:
                s.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                assert _read_all(s).startswith(b"HTTP/1.1 200 ")
        assert "io_uring unavailable" not in proxy.log.text
    finally:
        proxy.close()


def _hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# -- the ring itself ---------------------------------------------------------------------


def test_ring_refuses_bad_arguments_and_use_after_close() -> None:
    from monolake.core.runtime._uring import Ring

    with pytest.raises(ValueError, match="entries"):
        Ring(1)
    with pytest.raises(ValueError, match="power of two"):
        Ring(8, 0, 3, 4096)
    ring = Ring(8)
    ring.close()
    assert ring.closed
    with pytest.raises(ValueError, match="closed"):
        ring.run(0)
    with pytest.raises(ValueError, match="closed"):
        ring.send(0, b"x", print)


def test_ring_is_unusable_in_a_forked_child() -> None:
    from monolake.core.runtime._uring import Ring

    ring = Ring(8)
    try:
        pid = os.fork()
        if pid == 0:  # child: the ring's mappings are the parent's
            try:
                ring.run(0)
            except RuntimeError:
                os._exit(0)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert ring.run(0) == 0  # still fine in the parent
    finally:
        ring.close()


def test_writelines_gathers_into_one_stream(loop: UringEventLoop) -> None:
    parts = [os.urandom(n) for n in (1, 100, 70_000, 3, 200_000)] * 20

    async def main() -> bytes:
        got: asyncio.Future[bytes] = loop.create_future()

        class Collect(asyncio.Protocol):
            def __init__(self) -> None:
                self.buf = bytearray()

            def data_received(self, data: bytes) -> None:
                self.buf += data

            def eof_received(self) -> None:
                got.set_result(bytes(self.buf))

        server = await loop.create_server(Collect, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        for i in range(0, len(parts), 7):
            transport.writelines([memoryview(p) if i % 2 else p for p in parts[i : i + 7]])
        transport.write_eof()
        data = await got
        transport.close()
        server.close()
        await server.wait_closed()
        return data

    assert run(loop, main()) == b"".join(parts)


def test_a_complete_request_body_that_fills_the_send_leaves_its_producer_resumed(loop: UringEventLoop) -> None:
    """An upstream request whose head and complete body go out in one writelines: on io_uring the
    send is in flight when writelines returns, so the write buffer is over its high-water mark and
    the body's producer (the client's connection) is paused. Once the body is sent the producer
    must be resumed, or a keep-alive client's next request is never read (it was, with a body
    that arrived whole before the upstream connection was ready, e.g. over TLS)."""
    size = 100_000

    class Producer:
        """Stands for the server connection the request body is read from."""

        def __init__(self) -> None:
            self.calls: list[str] = []

        def pause_body(self) -> None:
            self.calls.append("pause")

        def resume_body(self) -> None:
            self.calls.append("resume")

        def cancel_body(self) -> None:
            self.calls.append("cancel")

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        n = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        body = await reader.readexactly(n)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(len(body))), len(body)))
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    async def main() -> tuple[bytes, list[str]]:
        server = await asyncio.start_server(origin, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = Pool(loop)
        try:
            conn = await pool.acquire(
                Endpoint(host="127.0.0.1", port=port), connect_timeout=10, idle_timeout=60, max_idle=8
            )
            producer = Producer()
            body = Body(producer, size)
            body.feed(b"x" * size)  # the whole body came before the upstream was ready
            body.feed_eof()
            head = request_head(b"POST", b"/", Headers([(b"Host", b"origin")]), content_length_line(size))
            resp = await conn.request(head, body, chunked=False, head_only=False, read_timeout=10)
            data = resp.body if isinstance(resp.body, bytes) else await resp.body.read_all()
            return data, producer.calls
        finally:
            pool.close()
            await asyncio.sleep(0)  # the closed connection's connection_lost
            server.close()
            await server.wait_closed()

    data, calls = run(loop, main())
    assert data == b"%d" % size
    assert "pause" in calls  # the in-flight send was over the high-water mark (else this tests nothing)
    assert calls[-1] == "resume"


def test_a_buffered_protocol_gets_each_chunk_through_its_small_buffers(loop: UringEventLoop) -> None:
    data = os.urandom(300_000)

    class Small(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(1000)  # smaller than any chunk the ring reads: several rounds each
            self.got = bytearray()
            self.rounds = 0
            self.done: asyncio.Future[bytes] = loop.create_future()

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.got += self.buf[:nbytes]
            self.rounds += 1

        def eof_received(self) -> None:
            self.done.set_result(bytes(self.got))

    proto = Small()

    async def main() -> bytes:
        server = await loop.create_server(lambda: proto, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        writer.write_eof()
        got = await proto.done
        writer.close()
        server.close()
        await server.wait_closed()
        return got

    assert run(loop, main()) == data
    assert proto.rounds >= len(data) // 1000
