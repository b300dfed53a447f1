"""The L4 (tcp/unix) proxy and PROXY protocol, over real sockets through ``monolake run``.

Upstreams are asyncio servers on one background thread of this process:
- ``scripted``: says ``ready``, then the client's first line picks the behaviour (``echo``,
  ``reply-after-eof``, ``greet-then-shut``, ``big N``); whatever it must report
  (byte counts and sha256 of what it received) goes to a queue the test reads;
- ``pp``: expects a PROXY header (v1 or v2), queues its exact bytes, then echoes.

Every relay behaviour runs through a splice server (``splice_after = 0``) and a loop-path
server (the 100 MB transfer also through ``auto``, which moves to splice mid-stream), on
both loop kinds (module-scoped ``loop_kind``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import queue
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import httpx
import msgspec
import pytest

from conftest import (
    TIMEOUT,
    Origin,
    Proxy,
    ProxyFactory,
    RawClient,
    pattern,
    pattern_sha,
    raw_request,
    refused_port,
)
from monolake.apps.config import parse_config
from monolake.core.errors import ConfigError

pytestmark = pytest.mark.e2e

DOWN_BLOCK = hashlib.shake_256(b"monolake l4 downstream").digest(65536)
"""What the ``big`` upstream sends, repeated: unlike ``pattern``, so a mix-up of directions shows."""


def down_pattern(n: int) -> Iterator[bytes]:
    full, rest = divmod(n, len(DOWN_BLOCK))
    for _ in range(full):
        yield DOWN_BLOCK
    if rest:
        yield DOWN_BLOCK[:rest]


def down_sha(n: int) -> str:
    h = hashlib.sha256()
    for piece in down_pattern(n):
        h.update(piece)
    return h.hexdigest()


# -- upstream servers (one asyncio loop on a thread) -----------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "queue.Queue[object]"], Awaitable[None]]


class Served:
    def __init__(self, address: str) -> None:
        self.address = address
        self.records: queue.Queue[object] = queue.Queue()

    def record(self, timeout: float = TIMEOUT) -> object:
        return self.records.get(timeout=timeout)


class UpstreamLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.AbstractServer] = []

    def serve(self, handler: Handler, *, path: str | None = None) -> Served:
        async def start() -> Served:
            served: Served

            async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    await handler(reader, writer, served.records)
                except (ConnectionError, asyncio.IncompleteReadError):
                    pass
                finally:
                    writer.close()
                    with contextlib.suppress(ConnectionError):
                        await writer.wait_closed()

            if path is not None:
                srv = await asyncio.start_unix_server(on_conn, path, backlog=1024)
                served = Served(f"unix:{path}")
            else:
                srv = await asyncio.start_server(on_conn, "127.0.0.1", 0, backlog=1024)
                served = Served(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}")
            self.servers.append(srv)
            return served

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(TIMEOUT)

    def close(self) -> None:
        async def stop() -> None:
            for srv in self.servers:
                srv.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


async def _hash_until_eof(reader: asyncio.StreamReader) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    while data := await reader.read(1 << 18):
        n += len(data)
        h.update(data)
    return n, h.hexdigest()


async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rec: queue.Queue[object]) -> None:
    # "ready" first: a client that waited for it knows the relay is up, so its next bytes
    # are relayed (and, on a splice_after = 0 server, spliced) rather than buffered.
    writer.write(b"ready\n")
    cmd, *args = (await reader.readline()).split()
    if cmd == b"echo":
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    elif cmd == b"reply-after-eof":
        n, sha = await _hash_until_eof(reader)
        writer.write(f"got {n} {sha}\n".encode())
        await writer.drain()
    elif cmd == b"greet-then-shut":
        writer.write(b"hello\n")
        await writer.drain()
        writer.write_eof()
        rec.put(await _hash_until_eof(reader))
    elif cmd == b"big":
        size = int(args[0])

        async def send() -> None:
            for piece in down_pattern(size):
                writer.write(piece)
                await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        rec.put(await _hash_until_eof(reader))
        await sender


async def pp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rec: queue.Queue[object]) -> None:
    first = await reader.readexactly(1)
    if first == b"P":
        header = first + await reader.readuntil(b"\r\n")
    else:
        fixed = first + await reader.readexactly(15)
        header = fixed + await reader.readexactly(int.from_bytes(fixed[14:16], "big"))
    rec.put(header)
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.write_eof()


# -- client helpers ----------------------------------------------------------------------


def connect_ready(address: str, timeout: float = TIMEOUT) -> socket.socket:
    """A connection through the proxy to ``scripted``, past its ``ready`` line."""
    s = connect(address, timeout)
    got = b""
    while len(got) < 6:
        data = s.recv(6 - len(got))
        assert data, f"closed after {got!r}"
        got += data
    assert got == b"ready\n"
    return s


def connect(address: str, timeout: float = TIMEOUT) -> socket.socket:
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(address[5:])
        return s
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_to_eof(s: socket.socket) -> bytes:
    parts = []
    while data := s.recv(1 << 16):
        parts.append(data)
    return b"".join(parts)


def closed_by_peer(s: socket.socket, timeout: float = TIMEOUT) -> bool:
    """True if the peer closes (EOF or reset) within ``timeout`` without sending anything."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def v2_inet(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A v2 PROXY header, written out byte by byte from the spec (independently of monolake's builder)."""
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    fam = 0x11 if s.version == 4 else 0x21
    body = s.packed + d.packed + src[1].to_bytes(2, "big") + dst[1].to_bytes(2, "big")
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes((0x21, fam)) + len(body).to_bytes(2, "big") + body


# -- the shared proxy ----------------------------------------------------------------------

CONFIG = """
[runtime]
drain_timeout = 2

[log]
level = "debug"
access_log = "stderr"

[upstreams.scripted]
endpoints = [{ endpoint = "{scripted}" }]
connect_timeout = 2

[upstreams.unix_scripted]
endpoints = [{ endpoint = "{unix_scripted}" }]

[upstreams.dead]
endpoints = [{ endpoint = "127.0.0.1:{dead_port}" }]
connect_timeout = 2

[upstreams.pp_v1]
endpoints = [{ endpoint = "{pp}" }]
send_proxy_protocol = "v1"

[upstreams.pp_v2]
endpoints = [{ endpoint = "{pp}" }]
send_proxy_protocol = "v2"

[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.splice]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "scripted"
splice_after = 0

[servers.auto]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "scripted"

[servers.loop]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "scripted"
splice = false

[servers.unix_splice]
listener = "unix:{sock_dir}/splice.sock"
proxy_type = "tcp"
upstream = "unix_scripted"
splice_after = 0

[servers.unix_loop]
listener = "unix:{sock_dir}/loop.sock"
proxy_type = "tcp"
upstreams = [{ endpoint = "{unix_scripted}" }]
splice = false

[servers.dead]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "dead"

[servers.idle_splice]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "scripted"
idle_timeout = 0.6
splice_after = 0

[servers.idle_loop]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "scripted"
idle_timeout = 0.6
splice = false

[servers.send_v1]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "pp_v1"

[servers.send_v2_loop]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "pp_v2"
splice = false

[servers.accept_v1]
listener = "127.0.0.1:0"
proxy_type = "tcp"
proxy_protocol = "v1"
upstream = "pp_v2"
splice = false

[servers.accept_v2]
listener = "127.0.0.1:0"
proxy_type = "tcp"
proxy_protocol = "v2"
upstream = "pp_v1"

[servers.accept_optional]
listener = "127.0.0.1:0"
proxy_type = "tcp"
proxy_protocol = "optional"
upstream = "pp_v1"

[servers.header_timeout]
listener = "127.0.0.1:0"
proxy_type = "tcp"
proxy_protocol = "v1"
header_timeout = 0.5
upstream = "scripted"

[servers.web]
listener = "127.0.0.1:0"
proxy_protocol = "v1"

[[servers.web.routes]]
path = "/"
upstream = "origin"

[servers.web_optional]
listener = "127.0.0.1:0"
proxy_protocol = "optional"

[[servers.web_optional.routes]]
path = "/"
upstream = "origin"
"""

RELAYS = ["splice", "loop", "auto"]


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:
    ul = UpstreamLoop()
    sock_dir = tmp_path_factory.mktemp("l4-up")
    try:
        yield {
            "scripted": ul.serve(scripted),
            "unix_scripted": ul.serve(scripted, path=str(sock_dir / "up.sock")),
            "pp": ul.serve(pp),
        }
    finally:
        ul.close()


@pytest.fixture(scope="module")
def l4(
    module_proxy: ProxyFactory,
    upstreams: dict[str, Served],
    origin: Origin,
    tmp_path_factory: pytest.TempPathFactory,
) -> Proxy:
    return module_proxy(
        CONFIG,
        scripted=upstreams["scripted"].address,
        unix_scripted=upstreams["unix_scripted"].address,
        pp=upstreams["pp"].address,
        origin=origin.url,
        dead_port=refused_port(),
        sock_dir=tmp_path_factory.mktemp("l4-listen"),
    )


def drain_records(served: Served) -> None:
    while True:
        try:
            served.records.get_nowait()
        except queue.Empty:
            return


# -- relaying ------------------------------------------------------------------------------


SPLICING = {"splice", "unix_splice", "idle_splice", "auto"}
"""Servers whose connections move to the splice relay (``auto`` only past 1 MiB)."""


def check_path(l4: Proxy, server: str, mark: int) -> None:
    """The connection just made on ``server`` was spliced if and only if the server splices.

    The io_uring loop never splices (its multishot recv reads ahead of the relay): there the
    same transfers run on the loop path and must arrive just as whole."""
    if server in SPLICING and l4.loop != "io_uring":
        l4.log.wait_line(rf"l4 spliced: server={server} client=", after=mark)
    else:
        assert l4.log.count(rf"l4 spliced: server={server} ", after=mark) == 0


@pytest.mark.parametrize("server", RELAYS)
def test_large_bidirectional_transfer(l4: Proxy, upstreams: dict[str, Served], server: str) -> None:
    """100 MB each way at once, both checked by sha256; neither side holds it all.

    On ``auto`` the connection starts on the loop path and moves to splice mid-stream.
    """
    size = 100 * 1024 * 1024
    drain_records(upstreams["scripted"])
    mark = l4.log.mark()
    s = connect_ready(l4.servers[server], timeout=60)
    s.sendall(b"big %d\n" % size)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            for piece in pattern(size):
                s.sendall(piece)
            s.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            errors.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    h = hashlib.sha256()
    n = 0
    while data := s.recv(1 << 20):
        n += len(data)
        h.update(data)
    sender.join(60)
    s.close()
    assert not errors
    assert n == size
    assert h.hexdigest() == down_sha(size)
    assert upstreams["scripted"].record(60) == (size, pattern_sha(size))
    check_path(l4, server, mark)


@pytest.mark.parametrize("server", ["splice", "loop", "unix_splice", "unix_loop"])
def test_client_half_close_still_gets_the_reply(l4: Proxy, server: str) -> None:
    mark = l4.log.mark()
    with connect_ready(l4.servers[server]) as s:
        body = b"x" * 300_000
        s.sendall(b"reply-after-eof\n" + body)
        s.shutdown(socket.SHUT_WR)
        reply = read_to_eof(s)
    assert reply == f"got {len(body)} {hashlib.sha256(body).hexdigest()}\n".encode()
    check_path(l4, server, mark)


@pytest.mark.parametrize("server", ["splice", "loop", "unix_splice", "unix_loop"])
def test_upstream_half_close_still_gets_the_client_data(l4: Proxy, upstreams: dict[str, Served], server: str) -> None:
    served = upstreams["unix_scripted" if server.startswith("unix") else "scripted"]
    drain_records(served)
    mark = l4.log.mark()
    with connect_ready(l4.servers[server]) as s:
        s.sendall(b"greet-then-shut\n")
        assert read_to_eof(s) == b"hello\n"  # the upstream is done writing...
        body = b"y" * 200_000
        s.sendall(body)  # ...but still reading
        s.shutdown(socket.SHUT_WR)
        assert served.record() == (len(body), hashlib.sha256(body).hexdigest())
        assert read_to_eof(s) == b""
    check_path(l4, server, mark)


@pytest.mark.parametrize("server", ["splice", "loop"])
def test_many_concurrent_connections(l4: Proxy, server: str) -> None:
    host, _, port = l4.servers[server].rpartition(":")
    mark = l4.log.mark()

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        assert await reader.readexactly(6) == b"ready\n"
        payload = (b"%d-" % i) * (1000 + i * 10)
        writer.write(b"echo\n" + payload)
        await writer.drain()
        writer.write_eof()
        got = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert got == payload, i

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 60)

    asyncio.run(main())
    if server == "splice" and l4.loop != "io_uring":
        assert l4.log.wait_count(r"l4 spliced: server=splice ", 200, after=mark)
        assert l4.log.count(r"l4 spliced: server=splice ", after=mark) == 200
    else:
        assert l4.log.count(r"l4 spliced: server=splice ", after=mark) == 0


@pytest.mark.parametrize("server", ["unix_splice", "unix_loop"])
def test_unix_listener_to_unix_upstream_echo(l4: Proxy, server: str) -> None:
    assert l4.servers[server].startswith("unix:")
    mark = l4.log.mark()
    with connect_ready(l4.servers[server]) as s:
        s.sendall(b"echo\n")
        for i in range(20):
            msg = b"message %d " % i * 100
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(1 << 16)
            assert got == msg
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == b""
    check_path(l4, server, mark)


# -- failures and timeouts ---------------------------------------------------------------


def test_upstream_down_closes_the_client_and_logs(l4: Proxy) -> None:
    mark = l4.log.mark()
    with connect(l4.servers["dead"]) as s:
        cport = s.getsockname()[1]
        s.sendall(b"anyone there?\n")
        assert closed_by_peer(s)
    m = l4.log.wait_line(
        rf"l4 connect failed: server=dead client=127\.0\.0\.1:{cport} endpoint=127\.0\.0\.1:\d+", after=mark
    )
    assert "cluster=dead" in m.string


@pytest.mark.parametrize("server", ["idle_splice", "idle_loop"])
def test_idle_timeout_closes_both_sides(l4: Proxy, server: str) -> None:
    mark = l4.log.mark()
    with connect_ready(l4.servers[server]) as s:
        s.sendall(b"echo\n")
        # Traffic every 0.2 s keeps it open well past the 0.6 s idle timeout...
        for i in range(8):
            s.sendall(b"ping %d\n" % i)
            assert s.recv(100) == b"ping %d\n" % i
            time.sleep(0.2)  # the pause *is* the behaviour under test
        # ...silence closes it.
        assert closed_by_peer(s, timeout=5)  # the log line below says it was the idle timeout
    l4.log.wait_line(rf"l4 idle timeout: server={server} client=127\.0\.0\.1:\d+", after=mark)
    check_path(l4, server, mark)


# -- PROXY protocol --------------------------------------------------------------------------


def test_send_v1_names_the_client(l4: Proxy, upstreams: dict[str, Served]) -> None:
    drain_records(upstreams["pp"])
    with connect(l4.servers["send_v1"]) as s:
        cport = s.getsockname()[1]
        s.sendall(b"after the header")
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == b"after the header"
    pport = int(l4.servers["send_v1"].rpartition(":")[2])
    assert upstreams["pp"].record() == f"PROXY TCP4 127.0.0.1 127.0.0.1 {cport} {pport}\r\n".encode()


def test_send_v2_names_the_client(l4: Proxy, upstreams: dict[str, Served]) -> None:
    drain_records(upstreams["pp"])
    with connect(l4.servers["send_v2_loop"]) as s:
        cport = s.getsockname()[1]
        s.sendall(b"v2 payload")
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == b"v2 payload"
    pport = int(l4.servers["send_v2_loop"].rpartition(":")[2])
    assert upstreams["pp"].record() == v2_inet(("127.0.0.1", cport), ("127.0.0.1", pport))


def test_accept_v1_then_send_v2(l4: Proxy, upstreams: dict[str, Served]) -> None:
    """The client named in the received header is the one named upstream; bytes after the header pass."""
    drain_records(upstreams["pp"])
    with connect(l4.servers["accept_v1"]) as s:
        s.sendall(b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\nhello")
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == b"hello"
    assert upstreams["pp"].record() == v2_inet(("203.0.113.7", 4242), ("198.51.100.1", 443))


def test_accept_v2_byte_by_byte_then_send_v1(l4: Proxy, upstreams: dict[str, Served]) -> None:
    drain_records(upstreams["pp"])
    header = v2_inet(("2001:db8::7", 5555), ("2001:db8::1", 8443)) + b"\x01\x00\x02h2"  # a TLV, skipped
    header = header[:14] + (len(header) - 16).to_bytes(2, "big") + header[16:]
    with connect(l4.servers["accept_v2"]) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in header:
            s.send(bytes((b,)))
        s.sendall(b"tail")
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == b"tail"
    assert upstreams["pp"].record() == b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 8443\r\n"


def test_accept_local_command_keeps_the_real_peer(l4: Proxy, upstreams: dict[str, Served]) -> None:
    drain_records(upstreams["pp"])
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"  # LOCAL, UNSPEC: a health check
    with connect(l4.servers["accept_v2"]) as s:
        cport = s.getsockname()[1]
        s.sendall(local + b"ok")
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == b"ok"
    pport = int(l4.servers["accept_v2"].rpartition(":")[2])
    assert upstreams["pp"].record() == f"PROXY TCP4 127.0.0.1 127.0.0.1 {cport} {pport}\r\n".encode()


def test_optional_accepts_a_header_or_none(l4: Proxy, upstreams: dict[str, Served]) -> None:
    drain_records(upstreams["pp"])
    address = l4.servers["accept_optional"]
    pport = int(address.rpartition(":")[2])
    with connect(address) as s:
        s.sendall(b"PROXY TCP4 192.0.2.10 192.0.2.20 1000 2000\r\nwith")
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == b"with"
    assert upstreams["pp"].record() == b"PROXY TCP4 192.0.2.10 192.0.2.20 1000 2000\r\n"
    with connect(address) as s:
        cport = s.getsockname()[1]
        s.sendall(b"without")
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == b"without"
    assert upstreams["pp"].record() == f"PROXY TCP4 127.0.0.1 127.0.0.1 {cport} {pport}\r\n".encode()


@pytest.mark.parametrize(
    ("server", "data"),
    [
        ("accept_v1", b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n"),
        ("accept_v1", b"GET / HTTP/1.1\r\n\r\n"),
        ("accept_v1", v2_inet(("192.0.2.1", 1), ("192.0.2.2", 2))),  # v2 where v1 is required
        ("accept_v2", b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x05abcde"),  # too short for INET
        ("accept_optional", b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n"),
        ("web", b"PROXY TCP4 not-an-ip 5.6.7.8 1 2\r\n"),
    ],
)
def test_malformed_header_is_closed_and_logged(l4: Proxy, server: str, data: bytes) -> None:
    mark = l4.log.mark()
    with connect(l4.servers[server]) as s:
        cport = s.getsockname()[1]
        s.sendall(data)
        assert closed_by_peer(s)
    l4.log.wait_line(rf"bad PROXY header: server={server} client=127\.0\.0\.1:{cport}: ", after=mark)


def test_missing_header_times_out(l4: Proxy) -> None:
    mark = l4.log.mark()
    with connect(l4.servers["header_timeout"]) as s:
        cport = s.getsockname()[1]
        s.sendall(b"PROXY TCP4 ")  # and then nothing
        assert closed_by_peer(s, timeout=5)
    l4.log.wait_line(
        rf"bad PROXY header: server=header_timeout client=127\.0\.0\.1:{cport}: no PROXY header", after=mark
    )


def test_header_cut_short_by_eof(l4: Proxy) -> None:
    mark = l4.log.mark()
    with connect(l4.servers["accept_v1"]) as s:
        s.sendall(b"PROXY TCP4 1.2.3.4")
        s.shutdown(socket.SHUT_WR)
        assert closed_by_peer(s)
    l4.log.wait_line(r"bad PROXY header: server=accept_v1 .*connection closed before the PROXY header", after=mark)


# -- PROXY protocol on an HTTP listener -----------------------------------------------------


def _http_get(address: str, prefix: bytes) -> tuple[int, dict[str, str]]:
    with connect(address) as s:
        s.sendall(prefix + b"GET /echo HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
        raw = read_to_eof(s)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    echo = msgspec.json.decode(body)
    return status, {k.lower(): v for k, v in echo["headers"]}


def test_http_listener_uses_the_proxy_header_client(l4: Proxy) -> None:
    mark = l4.log.mark()
    status, headers = _http_get(l4.servers["web"], b"PROXY TCP4 203.0.113.9 198.51.100.3 51000 80\r\n")
    assert status == 200
    assert headers["x-forwarded-for"] == "203.0.113.9"
    # the access log's $remote_addr is the same client
    l4.log.wait_line(r'^203\.0\.113\.9 "GET /echo HTTP/1\.1" 200 .* web\b', after=mark)


def test_http_listener_v6_client_and_keepalive(l4: Proxy) -> None:
    with RawClient(l4.servers["web"]) as c:
        c.send(b"PROXY TCP6 2001:db8::9 2001:db8::1 51000 80\r\n" + raw_request("GET", "/echo"))
        first = c.read_response()
        # the next request on the connection has no header in front and keeps the header's client
        c.send(raw_request("GET", "/echo"))
        second = c.read_response()
    for resp in (first, second):
        assert resp.status == 200
        headers = {k.lower(): v for k, v in msgspec.json.decode(resp.body)["headers"]}
        assert headers["x-forwarded-for"] == "2001:db8::9"


def test_http_optional_listener_with_and_without_header(l4: Proxy) -> None:
    status, headers = _http_get(l4.servers["web_optional"], b"PROXY TCP4 198.51.100.77 198.51.100.3 1 80\r\n")
    assert status == 200 and headers["x-forwarded-for"] == "198.51.100.77"
    status, headers = _http_get(l4.servers["web_optional"], b"")
    assert status == 200 and headers["x-forwarded-for"] == "127.0.0.1"
    with httpx.Client(trust_env=False, timeout=30) as client:
        r = client.get(f"http://{l4.servers['web_optional']}/echo")
    assert r.status_code == 200


# -- drain -------------------------------------------------------------------------------------

DRAIN_CONFIG = """
[runtime]
drain_timeout = {drain}

[servers.t]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstreams = [{ endpoint = "{scripted}" }]
{mode}
"""
MODES = {"splice": "splice_after = 0", "loop": "splice = false"}


@pytest.mark.parametrize("mode", ["splice", "loop"])
def test_drain_lets_open_connections_finish(proxy: ProxyFactory, upstreams: dict[str, Served], mode: str) -> None:
    p = proxy(DRAIN_CONFIG, drain=10, scripted=upstreams["scripted"].address, mode=MODES[mode])
    with connect_ready(p.address) as s:
        s.sendall(b"echo\nbefore")
        assert s.recv(100) == b"before"
        mark = p.log.mark()
        p.proc.send_signal(15)
        p.log.wait_line(r"draining \(listeners closed\)", after=mark)
        with pytest.raises(OSError):  # no new connections
            connect(p.address, timeout=2).close()
        s.sendall(b"during")
        assert s.recv(100) == b"during"
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s) == b""
    started = time.monotonic()
    assert p.proc.wait(TIMEOUT) == 0
    assert time.monotonic() - started < 5  # well before the 10 s drain timeout


@pytest.mark.parametrize("mode", ["splice", "loop"])
def test_drain_timeout_closes_what_is_left(proxy: ProxyFactory, upstreams: dict[str, Served], mode: str) -> None:
    p = proxy(DRAIN_CONFIG, drain=0.5, scripted=upstreams["scripted"].address, mode=MODES[mode])
    with connect_ready(p.address) as s:
        s.sendall(b"echo\nstill here")
        assert s.recv(100) == b"still here"
        p.proc.send_signal(15)
        assert closed_by_peer(s, timeout=10)
    assert p.proc.wait(TIMEOUT) == 0
    p.log.wait_line(r"drain timeout 0\.5s")


# -- config and example ------------------------------------------------------------------------

TCP = {"listener": "127.0.0.1:0", "proxy_type": "tcp", "upstreams": [{"endpoint": "127.0.0.1:9"}]}
HTTP_ROUTE = {"path": "/", "upstream": "c"}


@pytest.mark.parametrize(
    ("servers", "upstreams", "path", "fragment"),
    [
        ({"t": {**TCP, "routes": [HTTP_ROUTE]}}, {}, "servers.t.routes", "no routes"),
        ({"t": {**TCP, "filters": ["nocolon"]}}, {}, "servers.t.filters[0]", "module:Class"),
        ({"t": {**TCP, "layers": ["a:B"]}}, {}, "servers.t.layers", "layers wrap an http server"),
        ({"t": {"listener": "127.0.0.1:0", "proxy_type": "tcp"}}, {}, "servers.t", "needs 'upstream'"),
        ({"t": {**TCP, "upstream": "c"}}, {"c": {"endpoints": [{"endpoint": "127.0.0.1:9"}]}}, "servers.t", "not both"),
        ({"t": {**TCP, "upstreams": None, "upstream": "nope"}}, {}, "servers.t.upstream", "unknown cluster"),
        ({"t": {**TCP, "upstreams": []}}, {}, "servers.t.upstreams", "at least one"),
        ({"t": {**TCP, "upstreams": [{"endpoint": "nowhere"}]}}, {}, "servers.t.upstreams[0]", "no port"),
        (
            {"t": {**TCP, "load_balancer": "consistent_hash", "hash_on": "header:X-User"}},
            {},
            "servers.t.hash_on",
            "client_ip",
        ),
        ({"t": {**TCP, "idle_timeout": 0}}, {}, "servers.t.idle_timeout", "> 0"),
        ({"t": {**TCP, "proxy_protocol": "v3"}}, {}, "servers.t.proxy_protocol", "v3"),
        ({"t": {**TCP, "proxy_type": "udp"}}, {}, "servers.t.proxy_type", "udp"),
        (
            {"w": {"listener": "127.0.0.1:0", "upstream": "c", "routes": [HTTP_ROUTE]}},
            {"c": {"endpoints": [{"endpoint": "127.0.0.1:9"}]}},
            "servers.w.upstream",
            "tcp",
        ),
        (
            {"w": {"listener": "127.0.0.1:0", "routes": [HTTP_ROUTE]}},
            {"c": {"endpoints": [{"endpoint": "127.0.0.1:9"}], "send_proxy_protocol": "v1"}},
            "servers.w.routes[0].upstream",
            "PROXY protocol",
        ),
        (
            {"t": {**TCP, "upstreams": None, "upstream": "c"}},
            {"c": {"endpoints": [{"endpoint": "127.0.0.1:9"}], "send_proxy_protocol": "v4"}},
            "upstreams.c.send_proxy_protocol",
            "v4",
        ),
    ],
)
def test_config_errors_name_the_key(
    servers: dict[str, dict[str, object]], upstreams: dict[str, object], path: str, fragment: str
) -> None:
    for s in servers.values():
        if s.get("upstreams", 1) is None:
            del s["upstreams"]
    with pytest.raises(ConfigError) as info:
        parse_config({"servers": servers, "upstreams": upstreams})
    assert info.value.path == path
    assert fragment in info.value.reason


def test_tcp_config_defaults() -> None:
    cfg = parse_config({"servers": {"t": TCP}})
    t = cfg.servers["t"]
    assert (t.proxy_type, t.idle_timeout, t.proxy_protocol, t.splice) == ("tcp", 600.0, "off", True)
    assert parse_config({"servers": {"t": TCP}, "upstreams": {}}).upstreams == {}
