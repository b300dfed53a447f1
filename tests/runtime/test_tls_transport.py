"""monolake's TLS transport (core/tls_transport.py) on real sockets, against stdlib ssl clients.

The server runs in process on each loop (uvloop, asyncio, io_uring where the loop matters) and
each backend (OpenSSL, rustls); the client is a blocking stdlib ``ssl`` socket in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import trustme

from monolake.core.runtime import uring
from monolake.core.runtime._loops import new_event_loop
from monolake.core.tls import ServerTlsContexts
from monolake.core.tls_settings import Certificate, ServerTls
from monolake.core.tls_transport import OpenSslServer, RustlsServer, TlsServer, server_factory

T = TypeVar("T")
BACKENDS = ["openssl", "rustls"]
LOOPS = ["uvloop", "asyncio"] + ([] if uring.unavailable() else ["io_uring"])
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def certfiles(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("tlsx")
    cert = ca.issue_cert("tls.example", key_type=trustme.KeyType.ECDSA)
    chain, key = d / "chain.pem", d / "key.pem"
    chain.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return str(chain), str(key)


def contexts(certfiles: tuple[str, str], backend: str, **kw: Any) -> ServerTlsContexts:
    cfg = ServerTls(backend=backend, certificates=[Certificate(chain=certfiles[0], key=certfiles[1])], **kw)  # type: ignore[arg-type]
    return ServerTlsContexts("servers.t.tls", cfg)


def client(ca: trustme.CA, port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return ctx.wrap_socket(raw, server_hostname="tls.example", suppress_ragged_eofs=False)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(65536, n - len(out)))
        if not chunk:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


class App(asyncio.Protocol):
    """Records what the transport did to it; echoes unless told otherwise."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.transport: Any = None
        self.received = bytearray()
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.paused = 0
        self.resumed = 0
        self.on_data: Callable[[App, bytes], None] | None = None
        self.on_eof: Callable[[App], bool | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.on_data is not None:
            self.on_data(self, data)
        elif self.echo:
            self.transport.write(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        return self.on_eof(self) if self.on_eof is not None else None

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def serve(
    kind: str,
    tls: ServerTlsContexts,
    main: Callable[[int, list[App]], Coroutine[Any, Any, T]],
    *,
    echo: bool = True,
    handshake_timeout: float = 60.0,
    setup: Callable[[App], None] | None = None,
) -> T:
    """Run ``main(port, apps)`` on a new ``kind`` loop serving ``App``s through the TLS transport."""
    loop = new_event_loop(kind)
    apps: list[App] = []

    def factory() -> asyncio.BaseProtocol:
        app = App(echo)
        if setup is not None:
            setup(app)
        apps.append(app)
        return app

    async def run() -> T:
        tls_factory = server_factory(tls.ssl_context, factory, handshake_timeout)
        assert tls_factory is not None
        server = await loop.create_server(tls_factory, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            return await asyncio.wait_for(main(port, apps), TIMEOUT)
        finally:
            server.close()

    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", LOOPS)
def test_large_bodies_both_ways_and_extra_info(kind: str, backend: str, ca: trustme.CA, certfiles: Any) -> None:
    tls = contexts(certfiles, backend)
    body = hashlib.sha256(b"x").digest() * (3 * 2**20 // 32 + 7)  # 3 MiB and a bit: many records

    def talk(port: int) -> tuple[bytes, str | None]:
        with client(ca, port) as c:
            c.sendall(body)
            got = recv_exactly(c, len(body))
            return got, c.selected_alpn_protocol()

    async def main(port: int, apps: list[App]) -> None:
        got, alpn = await asyncio.to_thread(talk, port)
        assert got == body
        assert alpn == "http/1.1"
        t = apps[0].transport
        assert isinstance(t, RustlsServer if backend == "rustls" else OpenSslServer)
        assert t.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        assert t.get_extra_info("sslcontext") is tls.ssl_context
        assert t.get_extra_info("cipher")[1] == "TLSv1.3"
        assert t.get_extra_info("peername")[0] == "127.0.0.1"
        assert isinstance(t.get_extra_info("socket").fileno(), int)
        assert not t.get_extra_info("peercert")  # no client certificate asked for
        assert t.get_extra_info("nothing", "dflt") == "dflt"
        assert not t.can_write_eof()
        assert await apps[0].lost is None
        assert bytes(apps[0].received) == body

    serve(kind, tls, main)


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_sends_close_notify_and_client_close_notify_is_eof(backend: str, ca: trustme.CA, certfiles: Any) -> None:
    tls = contexts(certfiles, backend)

    def server_closes(port: int) -> bytes:
        with client(ca, port) as c:
            c.sendall(b"bye")
            got = recv_exactly(c, 3)
            return got + c.recv(10)  # b"" only for a close_notify (ragged EOFs raise here)

    def client_closes(port: int) -> None:
        with client(ca, port) as c:
            c.sendall(b"hi")
            assert recv_exactly(c, 2) == b"hi"
            c.unwrap()  # our close_notify; returns once the server's arrived

    def reply_and_close(app: App, data: bytes) -> None:
        if data == b"bye":
            app.transport.write(b"ok!")
            app.transport.close()
        else:
            app.transport.write(data)

    def setup(app: App) -> None:
        app.on_data = reply_and_close

    async def main(port: int, apps: list[App]) -> None:
        assert await asyncio.to_thread(server_closes, port) == b"ok!"
        assert await apps[0].lost is None
        await asyncio.to_thread(client_closes, port)
        assert apps[1].eof
        assert await apps[1].lost is None

    serve("uvloop", tls, main, setup=setup)


def send_then_close_notify(ca: trustme.CA, port: int, data: bytes) -> bytes:
    """A client that sends ``data`` and its close_notify in one socket write (so the server reads
    them together), then returns what it reads until the server closes."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="tls.example")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        sock.sendall(outgoing.read())
        obj.write(data)
        with contextlib.suppress(ssl.SSLWantReadError):
            obj.unwrap()
        sock.sendall(outgoing.read())
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", LOOPS)
def test_close_notify_read_with_the_record_the_app_paused_on_is_eof_after_resume(
    kind: str, backend: str, ca: trustme.CA, certfiles: Any
) -> None:
    tls = contexts(certfiles, backend)

    def pause(app: App, data: bytes) -> None:
        app.transport.pause_reading()
        asyncio.get_running_loop().call_soon(app.transport.resume_reading)

    def setup(app: App) -> None:
        app.on_data = pause

    async def main(port: int, apps: list[App]) -> None:
        await asyncio.to_thread(send_then_close_notify, ca, port, b"last")
        assert await apps[0].lost is None  # the end was told after resuming: the app closed
        assert apps[0].received == b"last" and apps[0].eof

    serve(kind, tls, main, setup=setup)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_close_without_close_notify_is_eof_and_the_answer_goes_out(
    backend: str, ca: trustme.CA, certfiles: Any
) -> None:
    tls = contexts(certfiles, backend)

    def talk(port: int) -> bytes:
        with client(ca, port) as c:
            c.sendall(b"question")
            socket.socket.shutdown(c, socket.SHUT_WR)  # TCP FIN, no close_notify (SSLSocket's drops TLS)
            out = b""
            while chunk := c.recv(100):
                out += chunk
            return out

    def answer(app: App) -> None:
        app.transport.write(b"answer:" + bytes(app.received))
        return None  # the transport closes, with close_notify after the answer

    def setup(app: App) -> None:
        app.on_eof = answer

    async def main(port: int, apps: list[App]) -> None:
        assert await asyncio.to_thread(talk, port) == b"answer:question"
        assert await apps[0].lost is None

    serve("uvloop", tls, main, echo=False, setup=setup)


@pytest.mark.parametrize("backend", BACKENDS)
def test_garbage_and_plain_http_are_refused_and_logged(
    backend: str, ca: trustme.CA, certfiles: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tls = contexts(certfiles, backend)

    def send(port: int, data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(data)
            out = b""
            try:
                while chunk := s.recv(4096):
                    out += chunk
            except ConnectionResetError:
                pass
            return out

    def ping(port: int) -> bytes:
        with client(ca, port) as c:
            c.sendall(b"ping")
            return recv_exactly(c, 4)

    async def main(port: int, apps: list[App]) -> None:
        reply = await asyncio.to_thread(send, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply[:1] in (b"\x15", b"")  # an alert record, if the library wrote one
        await asyncio.to_thread(send, port, b"\x16\x03\x01\x00\x05garbage-that-is-no-hello" * 3)
        assert all(a.transport is None and not a.lost.done() for a in apps)  # the app never saw these
        assert await asyncio.to_thread(ping, port) == b"ping"  # and the listener still serves

    with caplog.at_level(logging.INFO, logger="monolake.core.tls"):
        serve("uvloop", tls, main)
    assert "tls handshake failed from 127.0.0.1:" in caplog.text
    assert "(servers.t.tls)" in caplog.text


@pytest.mark.parametrize("backend", BACKENDS)
def test_slow_reader_pauses_writes_and_paused_reading_keeps_records(
    backend: str, ca: trustme.CA, certfiles: Any
) -> None:
    tls = contexts(certfiles, backend)
    chunk = b"z" * 65536
    count = 128  # 8 MiB: well past the socket buffers and the transport's high-water mark

    async def main(port: int, apps: list[App]) -> None:
        c = await asyncio.to_thread(client, ca, port)
        try:
            await asyncio.to_thread(c.sendall, b"go")
            while not apps or not apps[0].received:
                await asyncio.sleep(0.01)
            app = apps[0]
            t = app.transport
            t.set_write_buffer_limits(high=256 * 1024)
            sent = 0
            while sent < count and not app.paused:  # the client reads nothing yet
                t.write(chunk)
                sent += 1
            assert app.paused == 1 and t.get_write_buffer_size() > 0
            # Reading paused: what the client sends meanwhile stays undelivered, in order.
            t.pause_reading()
            assert not t.is_reading()
            await asyncio.to_thread(c.sendall, b"more-1")
            got = await asyncio.to_thread(recv_exactly, c, sent * len(chunk))
            assert got == chunk * sent
            while not app.resumed:
                await asyncio.sleep(0.01)
            assert bytes(app.received) == b"go"
            t.resume_reading()
            while bytes(app.received) != b"gomore-1":
                await asyncio.sleep(0.01)
            assert t.is_reading()
        finally:
            c.close()
        assert await apps[0].lost is None

    serve("uvloop", tls, main, echo=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_handshake_timeout_closes_a_silent_client(backend: str, certfiles: Any) -> None:
    tls = contexts(certfiles, backend)

    def silent(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            try:
                return s.recv(100)  # the server gives up first
            except ConnectionResetError:
                return b""

    async def main(port: int, apps: list[App]) -> None:
        assert await asyncio.to_thread(silent, port) == b""
        assert all(a.transport is None and not a.lost.done() for a in apps)

    serve("uvloop", tls, main, handshake_timeout=0.2)


def test_buffered_protocol_app_and_set_protocol(ca: trustme.CA, certfiles: Any) -> None:
    tls = contexts(certfiles, "openssl")

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self, transport: TlsServer) -> None:
            self.buf = bytearray(7)  # smaller than a record: fed in several pieces
            self.got = bytearray()
            self.transport = transport

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.got += self.buf[:nbytes]
            if self.got.endswith(b"!"):
                self.transport.write(bytes(self.got).upper())

    def talk(port: int) -> bytes:
        with client(ca, port) as c:
            c.sendall(b"switch")
            assert recv_exactly(c, 6) == b"switch"
            c.sendall(b"now buffered!")
            return recv_exactly(c, 13)

    def switch(app: App, data: bytes) -> None:
        app.transport.write(data)
        app.transport.set_protocol(Buffered(app.transport))  # as HTTP/1 hands a connection to HTTP/2

    def setup(app: App) -> None:
        app.on_data = switch

    async def main(port: int, apps: list[App]) -> None:
        assert await asyncio.to_thread(talk, port) == b"NOW BUFFERED!"

    serve("uvloop", tls, main, setup=setup)


def test_loop_transport_setting_keeps_the_loops_layer(certfiles: Any) -> None:
    assert server_factory(contexts(certfiles, "openssl", transport="loop").ssl_context, App) is None
    assert server_factory(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), App) is None
    assert server_factory(None, App) is None


def test_transport_setting_takes_known_values_only() -> None:
    # ServerTls.transport is validated as the rest of the tls table: only known values.
    import msgspec

    with pytest.raises(msgspec.ValidationError, match="transport"):
        msgspec.convert({"certificates": [], "transport": "kernel"}, ServerTls)
