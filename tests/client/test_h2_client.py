"""The HTTP/2 client driver (``client._h2``) against a real HTTP/2 origin (the ``h2`` library
server in tests/e2e/h2_origin.py) over real sockets on 127.0.0.1, on every codec."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import issue_certs, load_h2_origin, tls_server_context
from monolake.apps.config import Endpoint
from monolake.core._body import Body
from monolake.core.client._h2 import H2Pool, request_headers
from monolake.core.errors import ConnectError, ConnectTimeout, ReadError, ReadTimeout
from monolake.core.proto.http1 import Headers, Response
from monolake.core.proto.http2 import codec_kinds

h2_origin = load_h2_origin()


@pytest.fixture(params=codec_kinds())
def codec(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def origin() -> AsyncIterator[Any]:
    o = h2_origin.H2Origin(max_streams=100)
    await o.start()
    yield o
    await o.close()


@pytest.fixture
async def pool(codec: str) -> AsyncIterator[H2Pool]:
    p = H2Pool(codec_kind=codec)
    yield p
    p.close()


def ep_of(port: int) -> Endpoint:
    return Endpoint(host="127.0.0.1", port=port)


def get(path: str, port: int, method: bytes = b"GET", length: int | None = None) -> list[tuple[bytes, bytes]]:
    return request_headers(method, path.encode(), Headers(), b"127.0.0.1:%d" % port, b"http", length)


async def fetch(
    pool: H2Pool,
    ep: Endpoint,
    path: str,
    *,
    body: Body | bytes | None = None,
    method: bytes = b"GET",
    read_timeout: float = 30.0,
) -> Response:
    conn = pool.take(ep) or await pool.acquire(ep, connect_timeout=10, idle_timeout=60)
    length = len(body) if isinstance(body, bytes) else body.length if body is not None else None
    st = conn.request(get(path, ep.port, method, length), body, head_only=method == b"HEAD", read_timeout=read_timeout)
    return await st.fut


async def body_bytes(resp: Response) -> bytes:
    if isinstance(resp.body, Body):
        return await resp.body.read_all()
    return resp.body or b""


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` (the origin's counters have no event to wait on) until true or ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


class Upload:
    """A request body's producer: feeds chunks and obeys pause/resume."""

    def __init__(self) -> None:
        self.running = asyncio.Event()
        self.running.set()
        self.pauses = 0

    def pause_body(self) -> None:
        self.pauses += 1
        self.running.clear()

    def resume_body(self) -> None:
        self.running.set()

    def cancel_body(self) -> None:
        self.running.set()

    async def feed(self, body: Body, data: bytes, piece: int = 65536) -> None:
        for i in range(0, len(data), piece):
            await self.running.wait()
            body.feed(data[i : i + piece])
            await asyncio.sleep(0)
        body.feed_eof()


async def test_get(origin: Any, pool: H2Pool) -> None:
    resp = await fetch(pool, ep_of(origin.port), "/hello")
    assert resp.status == 200
    assert await body_bytes(resp) == b"hello from connection 1\n"
    assert resp.content_length == 24
    assert resp.headers.get("content-type") == b"text/plain"
    assert "content-length" not in resp.headers  # framing is the server driver's business


async def test_header_fields_pass_through_as_the_same_tuples(origin: Any, pool: H2Pool) -> None:
    # Compiled, a field typed as a fixed-length tuple is unboxed and built again when it is
    # stored: the drivers keep the tuples they are given (the pure build does so trivially).
    fields = [(b"x-a", b"1"), (b"content-type", b"application/grpc")]
    hl = request_headers(b"POST", b"/p", Headers(list(fields), lower=[b"x-a", b"content-type"]), b"h", b"http", 0)
    assert hl[4] is fields[0] and hl[5] is fields[1]
    ep = ep_of(origin.port)
    conn = await pool.acquire(ep, connect_timeout=10, idle_timeout=60)
    assert pool.take(ep) is conn  # by the endpoint's own key tuple
    st = conn.request(get("/headers", origin.port), None, head_only=False, read_timeout=10)
    head = [(b":status", b"200"), (b"x-up", b"1"), (b"server", b"o")]
    st.on_headers(head, True, [])  # as the codec hands a response head over
    resp = st.fut.result()
    assert resp.status == 200 and resp.headers.pairs() == head[1:]
    assert resp.headers.pairs()[0] is head[1] and resp.headers.pairs()[1] is head[2]


async def test_headers_translated_for_h2(origin: Any, pool: H2Pool) -> None:
    h = Headers(
        [
            (b"Host", b"example.test"),
            (b"Connection", b"keep-alive"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"TE", b"trailers"),
            (b"X-Custom", b"Value"),
        ]
    )
    hl = request_headers(b"GET", b"http://example.test/headers?q=1", h, b"example.test", b"http", None)
    assert hl[:4] == [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"example.test"),
        (b":path", b"/headers?q=1"),
    ]
    ep = ep_of(origin.port)
    conn = await pool.acquire(ep, connect_timeout=10, idle_timeout=60)
    resp = await conn.request(hl, None, head_only=False, read_timeout=10).fut
    seen = json.loads(await body_bytes(resp))
    names = [n for n, _ in seen]
    assert ["te", "trailers"] in seen and ["x-custom", "Value"] in seen
    for banned in ("host", "connection", "keep-alive", "transfer-encoding"):
        assert banned not in names


async def test_many_concurrent_requests_share_one_connection(origin: Any, pool: H2Pool) -> None:
    ep = ep_of(origin.port)
    resps = await asyncio.gather(*(fetch(pool, ep, "/hello") for _ in range(60)))
    assert {await body_bytes(r) for r in resps} == {b"hello from connection 1\n"}
    assert origin.connections == 1
    assert pool.statistics()["connects"] == 1


async def test_stream_limit_opens_a_second_connection(codec: str) -> None:
    origin = h2_origin.H2Origin(max_streams=4)
    await origin.start()
    pool = H2Pool(codec_kind=codec)
    try:
        ep = ep_of(origin.port)
        resps = await asyncio.gather(*(fetch(pool, ep, "/slow/100") for _ in range(10)))
        assert [r.status for r in resps] == [200] * 10
        # 10 streams with at most 4 per connection: at least 3 connections, none refused.
        assert origin.connections >= 3
        assert origin.resets == 0
    finally:
        pool.close()
        await origin.close()


async def test_large_response_streams_with_flow_control(origin: Any, pool: H2Pool) -> None:
    n = 10 * 1024 * 1024 + 7
    resp = await fetch(pool, ep_of(origin.port), f"/bytes/{n}")
    assert resp.status == 200 and resp.content_length == n
    assert isinstance(resp.body, Body)
    data = await resp.body.read_all()
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(h2_origin.pattern(n)).hexdigest()


async def test_large_request_body_is_paused_and_sent_whole(origin: Any, pool: H2Pool) -> None:
    data = h2_origin.pattern(8 * 1024 * 1024 + 3)
    up = Upload()
    body = Body(up, len(data))
    feeder = asyncio.create_task(up.feed(body, data))
    resp = await fetch(pool, ep_of(origin.port), "/sha", body=body, method=b"POST")
    await feeder
    got = json.loads(await body_bytes(resp))
    assert got == {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}
    assert up.pauses > 0  # the 1 MiB windows held the upload back


async def test_echo_streams_both_ways(origin: Any, pool: H2Pool) -> None:
    up = Upload()
    body = Body(up, None)
    resp_task = asyncio.create_task(fetch(pool, ep_of(origin.port), "/echo", body=body, method=b"POST"))
    body.feed(b"first ")
    resp = await resp_task  # the head comes before the request body ended
    assert isinstance(resp.body, Body)
    assert await resp.body.read() == b"first "
    body.feed(b"second")
    body.feed_eof()
    assert await resp.body.read_all() == b"second"


async def test_trailers_reach_the_body(origin: Any, pool: H2Pool) -> None:
    resp = await fetch(pool, ep_of(origin.port), "/trailers")
    assert isinstance(resp.body, Body)
    assert await resp.body.read_all() == b"body before trailers\n"
    assert resp.body.trailers == [(b"x-checksum", b"abc123"), (b"x-done", b"yes")]


async def test_complete_request_body_goes_out_whole(origin: Any, pool: H2Pool) -> None:
    up = Upload()
    body = Body(up, 11)
    body.feed(b"hello ")
    body.feed(b"world")
    body.feed_eof()
    resp = await fetch(pool, ep_of(origin.port), "/sha", body=body, method=b"POST")
    got = json.loads(await body_bytes(resp))
    assert got == {"sha256": hashlib.sha256(b"hello world").hexdigest(), "length": 11}


async def test_whole_response_with_trailers_leaves_no_reference_cycle(origin: Any, pool: H2Pool) -> None:
    await fetch(pool, ep_of(origin.port), "/hello")  # the connection exists
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            resp = await fetch(pool, ep_of(origin.port), "/trailers")
            assert isinstance(resp.body, Body)
            assert await resp.body.read_all() == b"body before trailers\n"
            assert resp.body.trailers == [(b"x-checksum", b"abc123"), (b"x-done", b"yes")]
            del resp
        gc.collect()
        left = [o for o in gc.garbage if type(o).__name__ in ("_Stream", "Response", "Body")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []


async def test_goaway_sends_new_streams_to_a_new_connection(origin: Any, pool: H2Pool) -> None:
    ep = ep_of(origin.port)
    resp = await fetch(pool, ep, "/goaway")
    assert await body_bytes(resp) == b"goaway\n"
    resp = await fetch(pool, ep, "/hello")
    assert await body_bytes(resp) == b"hello from connection 2\n"
    assert origin.connections == 2


async def test_streams_above_goaway_last_stream_fail_retry_safe(origin: Any, pool: H2Pool) -> None:
    ep = ep_of(origin.port)
    conn = await pool.acquire(ep, connect_timeout=10, idle_timeout=60)
    streams = [conn.request(get("/hold", ep.port), None, head_only=False, read_timeout=30) for _ in range(3)]
    results = await asyncio.gather(*(st.fut for st in streams), return_exceptions=True)
    first, *rest = results
    assert isinstance(first, Response) and first.status == 200
    for r in rest:
        assert isinstance(r, ReadError) and r.retry_safe, r
    resp = await fetch(pool, ep, "/hello")
    assert await body_bytes(resp) == b"hello from connection 2\n"


async def test_response_timeout_resets_only_the_stream(origin: Any, pool: H2Pool) -> None:
    ep = ep_of(origin.port)
    with pytest.raises(ReadTimeout):
        await fetch(pool, ep, "/slow/10000", read_timeout=0.2)
    resp = await fetch(pool, ep, "/hello")
    assert await body_bytes(resp) == b"hello from connection 1\n"  # same connection
    assert await wait_for(lambda: origin.resets == 1)


async def test_cancelled_body_resets_the_stream(origin: Any, pool: H2Pool) -> None:
    ep = ep_of(origin.port)
    resp = await fetch(pool, ep, f"/bytes/{4 * 1024 * 1024}")
    assert isinstance(resp.body, Body)
    await resp.body.read()
    resp.body.cancel()
    assert await wait_for(lambda: origin.resets == 1)
    assert await body_bytes(await fetch(pool, ep, "/hello")) == b"hello from connection 1\n"


async def test_connect_refused(pool: H2Pool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError):
        await pool.acquire(ep_of(port), connect_timeout=5, idle_timeout=60)
    assert pool.connect_errors == {f"127.0.0.1:{port}": 1}


async def test_silent_peer_is_a_connect_timeout(pool: H2Pool) -> None:
    # A listener that accepts (the kernel does) but never sends its HTTP/2 preface.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConnectTimeout):
            await pool.acquire(ep_of(s.getsockname()[1]), connect_timeout=0.3, idle_timeout=60)


async def test_http1_peer_is_a_connect_error(pool: H2Pool) -> None:
    async def h1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(h1, "127.0.0.1", 0)
    try:
        with pytest.raises(ConnectError):
            await pool.acquire(ep_of(server.sockets[0].getsockname()[1]), connect_timeout=5, idle_timeout=60)
    finally:
        server.close()
        await server.wait_closed()


async def test_idle_connection_closes(origin: Any, codec: str) -> None:
    pool = H2Pool(codec_kind=codec)
    try:
        ep = ep_of(origin.port)
        conn = await pool.acquire(ep, connect_timeout=10, idle_timeout=0.1)
        await conn.request(get("/hello", ep.port), None, head_only=False, read_timeout=10).fut
        assert await wait_for(lambda: conn.closed)
        assert pool.take(ep) is None
        assert await body_bytes(await fetch(pool, ep, "/hello")) == b"hello from connection 2\n"
    finally:
        pool.close()


async def test_a_paused_stream_does_not_stall_the_others(origin: Any, pool: H2Pool) -> None:
    # Nobody reads the big response: its Body pauses the stream (no more window returned for
    # it). Other streams on the same connection must still get their DATA.
    ep = ep_of(origin.port)
    big = await fetch(pool, ep, f"/bytes/{32 * 1024 * 1024}")
    assert isinstance(big.body, Body)
    for _ in range(3):
        small = await fetch(pool, ep, f"/bytes/{512 * 1024}", read_timeout=2)
        assert len(await body_bytes(small)) == 512 * 1024
    assert origin.connections == 1
    big.body.cancel()


async def test_aborted_upload_resets_the_stream(origin: Any, pool: H2Pool) -> None:
    # The client went away mid-upload: the upstream stream is reset, the response fails,
    # and the connection keeps serving.
    up = Upload()
    body = Body(up, None)
    ep = ep_of(origin.port)
    task = asyncio.create_task(fetch(pool, ep, "/sha", body=body, method=b"POST"))
    body.feed(b"x" * 1000)
    await asyncio.sleep(0)  # the stream opens and the first bytes go out
    body.feed_error(ConnectionResetError("client went away"))
    with pytest.raises(ConnectionResetError):
        await task
    assert await wait_for(lambda: origin.resets == 1)
    assert await body_bytes(await fetch(pool, ep, "/hello")) == b"hello from connection 1\n"


async def test_peer_allowing_no_streams_is_a_connect_error(codec: str) -> None:
    origin = h2_origin.H2Origin(max_streams=0)
    await origin.start()
    pool = H2Pool(codec_kind=codec)
    try:
        with pytest.raises(ConnectError, match="allows no concurrent streams"):
            await pool.acquire(ep_of(origin.port), connect_timeout=5, idle_timeout=60)
        assert origin.connections == 1
    finally:
        pool.close()
        await origin.close()


async def test_refused_stream_is_retry_safe(origin: Any, pool: H2Pool) -> None:
    ep = ep_of(origin.port)
    with pytest.raises(ReadError) as info:
        await fetch(pool, ep, "/refuse")
    assert info.value.retry_safe
    assert await body_bytes(await fetch(pool, ep, "/hello")) == b"hello from connection 1\n"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return issue_certs(tmp_path_factory.mktemp("h2tls"))


@pytest.mark.parametrize("server_alpn", [["h2"], ["http/1.1"]])
async def test_tls_needs_h2_by_alpn(codec: str, tls_files: tuple[Path, Path, Path], server_alpn: list[str]) -> None:
    import dataclasses

    from monolake.apps.config import UpstreamTls
    from monolake.core.tls import client_tls

    ca = tls_files[2]
    origin = h2_origin.H2Origin(ssl_context=tls_server_context(tls_files, server_alpn))
    await origin.start()
    pool = H2Pool(codec_kind=codec)
    ep = dataclasses.replace(
        ep_of(origin.port), scheme="https", tls=client_tls("t", UpstreamTls(ca=str(ca), alpn=["h2"]))
    )
    try:
        if server_alpn == ["h2"]:
            resp = await fetch(pool, ep, "/hello")
            assert await body_bytes(resp) == b"hello from connection 1\n"
        else:
            with pytest.raises(ConnectError, match="did not select h2 by ALPN"):
                await pool.acquire(ep, connect_timeout=5, idle_timeout=60)
            assert pool.connect_errors == {str(ep): 1}
    finally:
        pool.close()
        await origin.close()


async def test_connection_lost_before_any_answer(origin: Any, pool: H2Pool) -> None:
    # On a connection that served before, a stream that saw nothing before the connection died
    # is retry-safe (the stale-connection race); on a fresh one it is not.
    ep = ep_of(origin.port)
    with pytest.raises(ReadError) as info:
        await fetch(pool, ep, "/die")
    assert not info.value.retry_safe
    assert await body_bytes(await fetch(pool, ep, "/hello")) == b"hello from connection 2\n"
    with pytest.raises(ReadError) as info:
        await fetch(pool, ep, "/die")
    assert info.value.retry_safe
