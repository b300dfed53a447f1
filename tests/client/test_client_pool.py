"""Pool + UpstreamConnection against a real scripted origin on 127.0.0.1:0.

The origin answers by path: ``/ok`` (keep-alive), ``/close`` (Connection: close),
``/then-close`` (keep-alive answer, then the origin closes the idle connection),
``/hangup`` (reads the request, closes without a byte), ``/silent`` (never answers),
``/partial`` (announces 10 bytes, sends 3, closes), ``/echo`` (returns the body),
``/big`` (512 KiB chunked, streamed), ``/gate`` (answers once ``gate`` is set),
``/drop-upload`` (closes after the head, without reading the body).
Every test runs on stdlib asyncio and on uvloop (conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as ssl_
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from monolake.apps.config import Endpoint
from monolake.core._body import Body
from monolake.core.client import Pool, UpstreamConnection
from monolake.core.errors import ConnectError, ConnectTimeout, ReadError, ReadTimeout, Source, UpstreamError
from monolake.core.proto.http._message import Headers, Response
from monolake.core.proto.http1._serialize import CHUNKED_LINE, content_length_line, request_head

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class Origin:
    def __init__(self) -> None:
        self.accepted = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.eofs = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.path = ""
        self.gate = asyncio.Event()

    async def start(self, unix_path: str | None = None, ssl: ssl_.SSLContext | None = None) -> None:
        if unix_path is not None:
            self._server = await asyncio.start_unix_server(self._handle, unix_path)
            self.path = unix_path
        else:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ssl)
            self.port = self._server.sockets[0].getsockname()[1]

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(path=self.path) if self.path else Endpoint(host="127.0.0.1", port=self.port)

    async def _read_body(self, reader: asyncio.StreamReader, head: bytes) -> bytes:
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            out = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return out
                out += await reader.readexactly(size)
                await reader.readexactly(2)
        marker = b"content-length:"
        if marker in lower:
            n = int(lower.split(marker, 1)[1].split(b"\r\n", 1)[0])
            return await reader.readexactly(n)
        return b""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.eofs += 1
                    return
                path = head.split(b" ", 2)[1]
                if path == b"/drop-upload":
                    self.requests.append((path, b""))
                    return  # closes without reading the body (nor answering)
                body = await self._read_body(reader, head)
                self.requests.append((path, body))
                if path == b"/ok":
                    writer.write(OK)
                elif path == b"/big":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for i in range(64):
                        writer.write(b"2000\r\n" + bytes([65 + i % 26]) * 0x2000 + b"\r\n")
                        await writer.drain()
                    writer.write(b"0\r\n\r\n")
                elif path == b"/echo":
                    writer.write(b"HTTP/1.1 200 OK\r\n" + content_length_line(len(body)) + b"\r\n" + body)
                elif path == b"/close":
                    writer.write(OK_CLOSE)
                    await writer.drain()
                    return
                elif path == b"/then-close":
                    writer.write(OK)
                    await writer.drain()
                    return
                elif path == b"/hangup":
                    return
                elif path == b"/partial":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                    await writer.drain()
                    return
                elif path == b"/gate":
                    await self.gate.wait()
                    writer.write(OK)
                elif path == b"/silent":
                    await asyncio.Event().wait()
                await writer.drain()
        finally:
            writer.close()
            self._writers.discard(writer)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    o = Origin()
    await o.start()
    yield o
    await o.close()


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    p = Pool()
    yield p
    p.close()
    await settle()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait on a condition, polling every 50 ms, for at most ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def acquire(pool: Pool, ep: Endpoint, *, idle_timeout: float = 60.0, max_idle: int = 64) -> UpstreamConnection:
    return await pool.acquire(ep, connect_timeout=5, idle_timeout=idle_timeout, max_idle=max_idle)


def get(path: bytes) -> bytes:
    return request_head(b"GET", path, Headers([(b"Host", b"origin")]), b"")


async def exchange(
    conn: UpstreamConnection, path: bytes, *, body: Body | None = None, chunked: bool = False, read_timeout: float = 5
) -> tuple[Response, bytes]:
    if body is None:
        head = get(path)
    else:
        framing = CHUNKED_LINE if chunked else content_length_line(body.length or 0)
        head = request_head(b"POST", path, Headers([(b"Host", b"origin")]), framing)
    fut = conn.request(head, body, chunked=chunked, head_only=False, read_timeout=read_timeout)
    resp = await asyncio.wait_for(fut, 10)
    if resp.body is None or isinstance(resp.body, bytes):  # small complete bodies come as bytes
        return resp, resp.body or b""
    return resp, await asyncio.wait_for(resp.body.read_all(), 10)


# --- reuse --------------------------------------------------------------------------


async def test_release_and_reuse_same_connection(origin: Origin, pool: Pool) -> None:
    conn = await acquire(pool, origin.endpoint)
    assert conn.reused is False
    resp, data = await exchange(conn, b"/ok")
    assert (resp.status, data) == (200, b"ok")
    assert pool.statistics() == {"idle": 1, "connects": 1, "reuses": 0}

    again = await acquire(pool, origin.endpoint)
    assert again is conn
    assert again.reused is True
    assert pool.reuses == 1 and pool.statistics()["idle"] == 0
    resp, data = await exchange(again, b"/ok")
    assert data == b"ok"
    assert origin.accepted == 1
    assert [p for p, _ in origin.requests] == [b"/ok", b"/ok"]


async def test_streamed_body_then_reuse(origin: Origin, pool: Pool) -> None:
    conn = await acquire(pool, origin.endpoint)
    resp, data = await exchange(conn, b"/big")
    assert resp.content_length is None
    assert len(data) == 64 * 0x2000
    assert data[:1] == b"A" and data[-1:] == bytes([65 + 63 % 26])
    assert await acquire(pool, origin.endpoint) is conn
    _, data = await exchange(conn, b"/ok")
    assert data == b"ok" and origin.accepted == 1


async def test_idle_connections_are_lifo(origin: Origin, pool: Pool) -> None:
    a = await acquire(pool, origin.endpoint)
    b = await acquire(pool, origin.endpoint)
    assert a is not b
    await exchange(a, b"/ok")
    await exchange(b, b"/ok")  # released last
    assert await acquire(pool, origin.endpoint) is b
    assert await acquire(pool, origin.endpoint) is a
    a.close()
    b.close()


async def test_endpoints_have_separate_pools(pool: Pool) -> None:
    one, two = Origin(), Origin()
    await one.start()
    await two.start()
    try:
        c1 = await acquire(pool, one.endpoint)
        await exchange(c1, b"/ok")
        c2 = await acquire(pool, two.endpoint)
        assert c2 is not c1
        await exchange(c2, b"/ok")
        assert (one.accepted, two.accepted) == (1, 1)
        assert pool.statistics()["idle"] == 2
    finally:
        pool.close()
        await settle()
        await one.close()
        await two.close()


async def test_a_key_drained_then_named_again_pools_anew(origin: Origin, pool: Pool) -> None:
    # The pool remembers the idle list of the key used last; draining must make it forget it.
    ep = origin.endpoint
    pool.use([ep.key])
    conn = await acquire(pool, ep)
    await exchange(conn, b"/ok")
    assert pool.statistics()["idle"] == 1
    pool.unuse([ep.key])  # no cluster names it: its idle connection closes
    assert not conn.usable and pool.statistics()["idle"] == 0
    pool.use([ep.key])
    fresh = await acquire(pool, ep)
    assert fresh is not conn
    await exchange(fresh, b"/ok")
    assert pool.statistics()["idle"] == 1  # in the pool's table, where the sweep finds it
    assert pool.take_idle(ep, 60.0, 64) is fresh
    fresh.close()


async def test_max_idle_per_key(origin: Origin, pool: Pool) -> None:
    conns = [await acquire(pool, origin.endpoint, max_idle=2) for _ in range(3)]
    assert pool.connects == 3
    for c in conns:
        await exchange(c, b"/ok")
    assert pool.statistics()["idle"] == 2
    assert [c.usable for c in conns] == [True, True, False]  # the third found the pool full
    await wait_until(lambda: origin.eofs == 1)


async def test_max_idle_zero_keeps_nothing(origin: Origin, pool: Pool) -> None:
    conn = await acquire(pool, origin.endpoint, max_idle=0)
    await exchange(conn, b"/ok")
    assert pool.statistics()["idle"] == 0
    assert not conn.usable


async def test_connection_close_response_is_not_pooled(origin: Origin, pool: Pool) -> None:
    conn = await acquire(pool, origin.endpoint)
    _, data = await exchange(conn, b"/close")
    assert data == b"ok"
    assert pool.statistics()["idle"] == 0
    assert not conn.usable
    assert (await acquire(pool, origin.endpoint)) is not conn


async def test_request_bodies_content_length_and_chunked(origin: Origin, pool: Pool) -> None:
    class Producer:
        def pause_body(self) -> None: ...
        def resume_body(self) -> None: ...
        def cancel_body(self) -> None: ...

    conn = await acquire(pool, origin.endpoint)
    body = Body(Producer(), 11)
    body.feed(b"hello ")
    body.feed(b"world")
    body.feed_eof()
    _, data = await exchange(conn, b"/echo", body=body)
    assert data == b"hello world"

    conn = await acquire(pool, origin.endpoint)
    body = Body(Producer(), None)
    fut = asyncio.ensure_future(exchange(conn, b"/echo", body=body, chunked=True))
    for part in (b"a", b"bc", b"def"):
        body.feed(part)
        await asyncio.sleep(0)
    body.feed_eof()
    _, data = await fut
    assert data == b"abcdef"
    assert origin.requests[-1] == (b"/echo", b"abcdef")
    assert pool.statistics()["idle"] == 1 and origin.accepted == 1


async def test_unix_endpoint_reuse(pool: Pool, tmp_path: Path) -> None:
    o = Origin()
    await o.start(str(tmp_path / "o.sock"))
    try:
        conn = await acquire(pool, o.endpoint)
        await exchange(conn, b"/ok")
        assert await acquire(pool, o.endpoint) is conn
        _, data = await exchange(conn, b"/ok")
        assert data == b"ok" and o.accepted == 1
    finally:
        pool.close()
        await settle()
        await o.close()


# --- idle connections going away ----------------------------------------------------


async def test_idle_timeout_closes(origin: Origin, pool: Pool) -> None:
    conn = await acquire(pool, origin.endpoint, idle_timeout=0.2)
    await exchange(conn, b"/ok")
    assert pool.statistics()["idle"] == 1
    await wait_until(lambda: not conn.usable)
    assert pool.statistics()["idle"] == 0
    await wait_until(lambda: origin.eofs == 1)
    fresh = await acquire(pool, origin.endpoint, idle_timeout=0.2)
    assert fresh is not conn and pool.connects == 2
    fresh.close()


async def test_upstream_closing_an_idle_connection_removes_it(origin: Origin, pool: Pool) -> None:
    conn = await acquire(pool, origin.endpoint)
    _, data = await exchange(conn, b"/then-close")
    assert data == b"ok"
    await wait_until(lambda: pool.statistics()["idle"] == 0)
    assert not conn.usable
    fresh = await acquire(pool, origin.endpoint)
    assert fresh is not conn
    assert pool.reuses == 0 and pool.connects == 2
    fresh.close()


async def test_pool_close_closes_idle_connections(origin: Origin) -> None:
    pool = Pool()
    conn = await acquire(pool, origin.endpoint)
    await exchange(conn, b"/ok")
    pool.close()
    assert not conn.usable
    assert pool.statistics()["idle"] == 0
    await wait_until(lambda: origin.eofs == 1)


# --- failures -----------------------------------------------------------------------


async def test_reused_connection_closed_before_answering_is_retry_safe(origin: Origin, pool: Pool) -> None:
    conn = await acquire(pool, origin.endpoint)
    await exchange(conn, b"/ok")
    conn = await acquire(pool, origin.endpoint)
    assert conn.reused
    # The origin reads the request and closes without a byte: the stale keep-alive race.
    with pytest.raises(ReadError) as info:
        await exchange(conn, b"/hangup")
    assert info.value.retry_safe is True
    assert info.value.source is Source.UPSTREAM
    assert not conn.usable
    assert pool.statistics()["idle"] == 0


async def test_fresh_connection_closed_before_answering_is_not_retry_safe(origin: Origin, pool: Pool) -> None:
    conn = await acquire(pool, origin.endpoint)
    with pytest.raises(ReadError) as info:
        await exchange(conn, b"/hangup")
    assert info.value.retry_safe is False


async def test_close_mid_body_is_an_upstream_error(origin: Origin, pool: Pool) -> None:
    conn = await acquire(pool, origin.endpoint)
    with pytest.raises(UpstreamError, match="mid-response"):
        await exchange(conn, b"/partial")
    assert not conn.usable
    assert pool.statistics()["idle"] == 0


async def test_read_timeout(origin: Origin, pool: Pool) -> None:
    conn = await acquire(pool, origin.endpoint)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(ReadTimeout):
        await exchange(conn, b"/silent", read_timeout=0.2)
    assert 0.15 <= loop.time() - t0 < 5
    assert not conn.usable


async def test_connect_to_a_closed_port(pool: Pool) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ConnectError) as info:
        await pool.acquire(Endpoint(host="127.0.0.1", port=port), connect_timeout=5, idle_timeout=1, max_idle=1)
    assert info.value.retry_safe is True
    assert info.value.source is Source.UPSTREAM
    assert str(port) in str(info.value)
    assert pool.connects == 0


async def test_connect_to_a_missing_unix_socket(pool: Pool, tmp_path: Path) -> None:
    with pytest.raises(ConnectError):
        await pool.connect(Endpoint(path=str(tmp_path / "absent.sock")), connect_timeout=5)


async def test_connect_timeout_on_a_full_backlog(pool: Pool) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        # Fill the accept queue: nobody ever accepts, so further SYNs are dropped.
        for _ in range(8):
            f = socket.socket()
            f.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                f.connect(("127.0.0.1", port))
            fillers.append(f)
        await asyncio.sleep(0.1)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", port))
        except OSError:
            pass
        else:
            pytest.skip("loopback accepted a connection past a full backlog; cannot provoke a connect timeout")
        finally:
            probe.close()

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(ConnectTimeout) as info:
            await pool.connect(Endpoint(host="127.0.0.1", port=port), connect_timeout=0.3)
        assert 0.25 <= loop.time() - t0 < 5
        assert info.value.retry_safe is True
        assert "timed out after 0.3s" in str(info.value)
    finally:
        for f in fillers:
            f.close()
        listener.close()
