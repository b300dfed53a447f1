"""The HTTP/2 server driver over an in-memory transport, against a client codec and a scripted service.

No sockets: ``MemoryTransport`` collects what the driver writes, a client codec of
the same kind reads it, and the service is a coroutine the test writes. Each test
runs on both codecs (the native one is skipped where it is not built).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from monolake.apps.config import Http2, Limits, Server
from monolake.core._body import HIGH_WATER, Body
from monolake.core.errors import ConnectError
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.proto.http2 import DATA, GOAWAY, HEADERS, RESET, Codec, new_codec
from monolake.core.proto.http2._codec import ENHANCE_YOUR_CALM, NO_ERROR
from monolake.core.proto.http2._select import native_available
from monolake.core.server import HttpServerApp
from monolake.core.server._h2 import H2Connection, host_only

KINDS = [
    "h2",
    pytest.param("native", marks=pytest.mark.skipif(not native_available(), reason="native codec not built")),
]

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/p?q=1"), (b":authority", b"Example.test:8080")]
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/up"), (b":authority", b"example.test")]

Service = Callable[[Request], Awaitable[Response]]


class MemoryTransport:
    """What an asyncio transport offers a protocol, writing into a buffer."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts: list[bytes]) -> None:
        for p in parts:
            self.out += p

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


class Harness:
    def __init__(self, kind: str, service: Service, *, max_body: int = 100 * 1024 * 1024, **http2: Any) -> None:
        cfg = Server(listener="127.0.0.1:0", http2=Http2(**http2), limits=Limits(max_body_bytes=max_body))
        self.app = HttpServerApp("web", cfg, service)
        self.transport = MemoryTransport()
        first = self.app.protocol_factory()
        first.connection_made(self.transport)  # type: ignore[arg-type]
        self.first = first
        self.client: Codec = new_codec(True, kind=kind, initial_window_size=65535)
        self.client.initiate()
        self.events: list[tuple[Any, ...]] = []

    @property
    def conn(self) -> H2Connection:
        proto = self.transport.protocol
        assert isinstance(proto, H2Connection)
        return proto

    async def pump(self, rounds: int = 20) -> list[tuple[Any, ...]]:
        """Move bytes both ways and let the driver's tasks run; return the client's new events."""
        new: list[tuple[Any, ...]] = []
        for _ in range(rounds):
            data = self.client.pending()
            if data:
                proto = self.transport.protocol or self.first
                proto.data_received(data)
            await asyncio.sleep(0)
            out = self.transport.take()
            if out:
                new += [e for e in self.client.feed(out) if e[0] != 6]
        self.events += new
        return new

    def close(self) -> None:
        self.app.close()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("MONOLAKE_H2_CODEC", str(request.param))
    yield str(request.param)


def headers(events: list[tuple[Any, ...]], sid: int) -> list[list[tuple[bytes, bytes]]]:
    return [e[2] for e in events if e[0] == HEADERS and e[1] == sid]


def body_of(events: list[tuple[Any, ...]], sid: int) -> bytes:
    return b"".join(e[2] for e in events if e[0] == DATA and e[1] == sid)


def ended(events: list[tuple[Any, ...]], sid: int) -> bool:
    return any(e[0] in (HEADERS, DATA) and e[1] == sid and e[3] for e in events)


def test_host_only() -> None:
    assert host_only(b"Example.COM:8443") == b"example.com"
    assert host_only(b"[::1]:80") == b"[::1]"
    assert host_only(b"plain") == b"plain"


async def test_preface_hands_the_transport_over_and_headers_translate(kind: str) -> None:
    seen: list[Request] = []

    async def service(req: Request) -> Response:
        seen.append(req)
        h = Headers(
            [
                (b"Content-Type", b"text/plain"),
                (b"Connection", b"close"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Transfer-Encoding", b"chunked"),
                (b"X-Up", b"1"),
            ]
        )
        return Response(200, h, b"hello")

    h = Harness(kind, service)
    sid = h.client.request([*GET, (b"cookie", b"a=1"), (b"x-a", b"b"), (b"cookie", b"b=2"), (b"te", b"trailers")], True)
    await h.pump()
    assert isinstance(h.transport.protocol, H2Connection)
    assert h.first not in h.app.conns and h.conn in h.app.conns
    (req,) = seen
    assert (req.method, req.target, req.version) == (b"GET", b"/p?q=1", b"2")
    assert (req.host, req.raw_host) == (b"example.test", b"Example.test:8080")
    assert req.headers.pairs() == [
        (b"host", b"Example.test:8080"),
        (b"x-a", b"b"),
        (b"te", b"trailers"),
        (b"cookie", b"a=1; b=2"),
    ]
    assert req.body is None
    (resp_headers,) = headers(h.events, sid)
    assert resp_headers == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"x-up", b"1"),
        (b"content-length", b"5"),
    ]
    assert body_of(h.events, sid) == b"hello" and ended(h.events, sid)
    assert h.app.in_flight == 0
    h.close()


async def test_request_fields_pass_through_as_the_same_tuples(kind: str) -> None:
    # Compiled, a field typed as a fixed-length tuple is unboxed and built again when it is
    # stored: the driver keeps the codec's tuples in the request (the pure build trivially).
    seen: list[Request] = []

    async def service(req: Request) -> Response:
        seen.append(req)
        await asyncio.get_running_loop().create_future()  # held open; cancelled by close
        raise AssertionError("unreachable")

    h = Harness(kind, service)
    await h.pump(2)  # the client's preface: the connection is handed over
    fields = [(b"x-a", b"1"), (b"content-type", b"application/grpc")]
    h.conn._on_headers(101, [*POST, *fields], False)  # as the codec hands a stream's head over
    await h.pump(3)
    (req,) = seen
    assert req.headers.pairs() == [(b"host", b"example.test"), *fields]
    assert req.headers.pairs()[1] is fields[0] and req.headers.pairs()[2] is fields[1]
    h.close()


class Upstream:
    """A stand-in for the upstream connection that produces a response body."""

    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0
        self.cancelled = False

    def pause_body(self) -> None:
        self.paused += 1

    def resume_body(self) -> None:
        self.resumed += 1

    def cancel_body(self) -> None:
        self.cancelled = True


async def test_streamed_response_with_trailers(kind: str) -> None:
    up = Upstream()
    body = Body(up)

    async def service(req: Request) -> Response:
        return Response(200, Headers([(b"content-type", b"application/grpc")]), body)

    h = Harness(kind, service)
    sid = h.client.request(GET, True)
    await h.pump()
    body.feed(b"part1-")
    body.feed(b"part2")
    await h.pump()
    assert body_of(h.events, sid) == b"part1-part2" and not ended(h.events, sid)
    body.trailers = [(b"Grpc-Status", b"0"), (b"grpc-message", b"ok")]
    body.feed_eof()
    await h.pump()
    blocks = headers(h.events, sid)
    assert blocks[-1] == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]
    assert ended(h.events, sid)
    h.close()


async def test_complete_response_with_trailers_and_no_reference_cycles(kind: str) -> None:
    # A unary gRPC answer: the body and its trailers are all there when the head goes out.
    async def service(req: Request) -> Response:
        assert isinstance(req.body, Body)
        data = await req.body.read_all()
        body = Body(Upstream())
        body.feed(data[::-1])
        body.trailers = [(b"Grpc-Status", b"0"), (b"Connection", b"close")]
        body.feed_eof()
        return Response(200, Headers([(b"content-type", b"application/grpc")]), body)

    h = Harness(kind, service)
    await h.pump(3)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        sid = h.client.request(POST, False)
        h.client.send_data(sid, b"call", True)
        await h.pump()
        gc.collect()
        left = [o for o in gc.garbage if type(o).__name__ in ("_Stream", "Request", "Body")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert body_of(h.events, sid) == b"llac"
    assert headers(h.events, sid)[-1] == [(b"grpc-status", b"0")]
    assert ended(h.events, sid)
    assert left == []  # freed by reference counting, not left to the collector
    h.close()


async def test_response_body_pauses_the_upstream_until_drained(kind: str) -> None:
    up = Upstream()
    body = Body(up)

    async def service(req: Request) -> Response:
        return Response(200, Headers(), body)

    h = Harness(kind, service)
    sid = h.client.request(GET, True)
    await h.pump()
    # The client never returns window: past 64 KiB the codec queues, past HIGH_WATER the upstream pauses.
    body.feed(b"x" * (HIGH_WATER + 100_000))
    await h.pump()
    assert up.paused == 1 and up.resumed == 0
    acked = 0
    for _ in range(50):  # the client reads and returns window, as a real one would
        got = len(body_of(h.events, sid))
        h.client.consumed(sid, got - acked)
        acked = got
        await h.pump(2)
        if up.resumed:
            break
    assert up.resumed == 1
    h.close()


async def test_request_body_window_is_withheld_while_the_consumer_is_paused(kind: str) -> None:
    got: list[Body] = []
    release = asyncio.Event()
    total = 2 * 1024 * 1024

    async def service(req: Request) -> Response:
        assert isinstance(req.body, Body)
        got.append(req.body)
        await release.wait()
        data = await req.body.read_all()
        return Response(200, Headers(), b"%d" % len(data))

    h = Harness(kind, service, initial_window_size=1024 * 1024)
    sid = h.client.request([*POST, (b"content-length", b"%d" % total)], False)
    h.client.send_data(sid, b"y" * total, True)
    await h.pump(40)
    # Nobody reads: the Body holds HIGH_WATER and pauses; the rest of the window is not returned.
    (body,) = got
    assert body.received < total
    assert h.client.buffered(sid) > 0
    release.set()
    await h.pump(200)
    assert h.client.buffered(sid) == 0
    assert body_of(h.events, sid) == b"%d" % total
    h.close()


async def test_client_reset_cancels_the_service_and_the_upstream_body(kind: str) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def service(req: Request) -> Response:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("not reached")

    h = Harness(kind, service)
    sid = h.client.request(GET, True)
    await h.pump()
    assert started.is_set() and h.app.in_flight == 1
    h.client.reset(sid, 0x8)
    await h.pump()
    assert cancelled.is_set()
    assert h.app.in_flight == 0 and not h.conn.streams
    h.close()


async def test_rapid_resets_get_enhance_your_calm(kind: str) -> None:
    async def service(req: Request) -> Response:
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    h = Harness(kind, service, max_resets_per_10s=5)
    for _ in range(8):  # each reset read apart from its request, as over a socket
        if h.transport.closed:
            break
        sid = h.client.request(GET, True)
        await h.pump(1)
        h.client.reset(sid, 0x8)
        await h.pump(1)
    assert h.transport.closed
    assert not h.conn.streams and h.app.in_flight == 0
    assert [e for e in h.events if e[0] == GOAWAY and e[2] == ENHANCE_YOUR_CALM]
    h.close()


async def test_drain_sends_goaway_and_finishes_the_stream_first(kind: str) -> None:
    release = asyncio.Event()

    async def service(req: Request) -> Response:
        await release.wait()
        return Response(200, Headers(), b"done")

    h = Harness(kind, service)
    if native_available():
        # The h2 library as a client closes on any GOAWAY, so it cannot read the rest.
        h.client = new_codec(True, kind="native", initial_window_size=65535)
        h.client.initiate()
    elif kind == "h2":
        pytest.skip("needs the native codec as the client: the h2 library as a client closes on any GOAWAY")
    sid = h.client.request(GET, True)
    await h.pump()
    h.app.start_draining()
    new = await h.pump()
    assert [e for e in new if e[0] == GOAWAY and e[2] == NO_ERROR]
    assert not h.transport.closed
    release.set()
    await h.pump()
    assert body_of(h.events, sid) == b"done" and ended(h.events, sid)
    assert h.transport.closed
    h.close()


async def test_service_failure_is_answered_502(kind: str) -> None:
    async def service(req: Request) -> Response:
        raise ConnectError("no upstream")

    h = Harness(kind, service)
    sid = h.client.request(GET, True)
    await h.pump()
    (block,) = headers(h.events, sid)
    assert block[0] == (b":status", b"502")
    assert ended(h.events, sid)
    h.close()


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ([(b"connection", b"close")], b"400"),
        ([(b"te", b"gzip")], b"400"),
        ([(b"content-length", b"200000000")], b"413"),
        ([(b"x-h%d" % i, b"v") for i in range(150)], b"431"),  # limits.max_headers = 100
    ],
)
async def test_bad_requests_are_answered_without_the_service(
    kind: str, extra: list[tuple[bytes, bytes]], status: bytes
) -> None:
    called = []

    async def service(req: Request) -> Response:
        called.append(req)
        return Response(200)

    h = Harness(kind, service)
    sid = h.client.request([*POST, *extra], False)
    events = await h.pump()
    refused = [e for e in events if (e[0] == RESET and e[1] == sid) or (e[0] == GOAWAY and e[2] != NO_ERROR)]
    blocks = headers(events, sid)
    # A codec may refuse a malformed request itself (RST_STREAM, or the h2 library's
    # connection error) before the driver sees it; else the driver answers.
    assert refused or blocks[0][0] == (b":status", status)
    assert not called
    assert not h.conn.streams and h.app.in_flight == 0
    h.close()


async def test_body_over_the_limit_is_413_then_the_upload_is_stopped(kind: str) -> None:
    async def service(req: Request) -> Response:
        assert isinstance(req.body, Body)
        await req.body.read_all()
        return Response(200)

    h = Harness(kind, service, max_body=1000)
    sid = h.client.request(POST, False)  # no content-length: the limit is found while reading
    h.client.send_data(sid, b"z" * 5000, False)  # and the client is not done
    events = await h.pump()
    (block,) = headers(events, sid)
    assert block[0] == (b":status", b"413")
    assert [e for e in events if e[0] == RESET and e[1] == sid and e[2] == NO_ERROR]
    assert not h.conn.streams and h.app.in_flight == 0
    h.close()


async def test_response_body_already_over_the_mark_stays_paused(kind: str) -> None:
    up = Upstream()
    body = Body(up)
    body.feed(b"x" * (HIGH_WATER + 200_000))  # arrived before the response head went out

    async def service(req: Request) -> Response:
        return Response(200, Headers(), body)

    h = Harness(kind, service)
    h.client.request(GET, True)
    await h.pump()
    assert up.paused == up.resumed + 1  # the producer is left paused: the client has not read
    h.close()


async def test_http1_request_split_inside_the_preface_prefix_is_still_http1() -> None:
    async def service(req: Request) -> Response:
        return Response(200, Headers(), b"h1:" + req.method)

    app = HttpServerApp("web", Server(listener="127.0.0.1:0"), service)
    t = MemoryTransport()
    conn = app.protocol_factory()
    conn.connection_made(t)  # type: ignore[arg-type]
    conn.data_received(b"P")  # could still be "PRI * HTTP/2.0": held back
    conn.data_received(b"OST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    for _ in range(5):
        await asyncio.sleep(0)
    out = t.take()
    assert t.protocol is None  # never handed over
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"h1:POST")
    app.close()


# -- slow readers ---------------------------------------------------------------------

CHUNK = 20_000


async def stalled_streams(h: Harness, bodies: list[Body], ups: list[Upstream]) -> None:
    """Open a stream per body and feed each like an upstream would: a chunk per read, until paused."""
    for _ in bodies:
        h.client.request(GET, True)
    await h.pump()
    for _ in range(100):
        fed = False
        for body, up in zip(bodies, ups, strict=True):
            if up.paused == up.resumed and not up.cancelled:
                body.feed(b"x" * CHUNK)
                fed = True
        await h.pump(2)
        if not fed:
            return
    raise AssertionError("some upstream was never paused")


@pytest.mark.parametrize(
    ("caps", "bound"),
    [
        # The stream's share (1 MiB / 16) plus one upstream read each: 256 KiB each before.
        ({"max_buffered_bytes": 1 << 20, "max_concurrent_streams": 16}, 8 * (65536 + CHUNK)),
        # Over the connection's cap: every stream stops after one more read.
        ({"max_buffered_bytes": 65536, "max_concurrent_streams": 16}, 65536 + 8 * CHUNK),
    ],
)
async def test_stalled_streams_hold_a_bounded_amount(kind: str, caps: dict[str, int], bound: int) -> None:
    from monolake.core.server._h2 import worker_buffered_bytes

    ups = [Upstream() for _ in range(8)]
    bodies = [Body(up) for up in ups]
    it = iter(bodies)

    async def service(req: Request) -> Response:
        return Response(200, Headers(), next(it))

    before = worker_buffered_bytes()
    h = Harness(kind, service, **{"max_concurrent_streams": 8, **caps})
    # The client never returns window: after its first 64 KiB everything waits in the codec.
    await stalled_streams(h, bodies, ups)
    queued = h.conn.queued
    assert 0 < queued <= bound
    assert worker_buffered_bytes() - before == queued
    assert all(up.paused == up.resumed + 1 for up in ups)
    h.conn.connection_lost(None)
    assert worker_buffered_bytes() == before
    assert all(up.cancelled for up in ups)
    h.close()


async def test_send_timeout_resets_a_stream_without_window_progress(kind: str) -> None:
    from monolake.core.server._h2 import worker_buffered_bytes

    ups = [Upstream(), Upstream()]
    bodies = [Body(up) for up in ups]
    it = iter(bodies)
    logged: list[int] = []

    async def service(req: Request) -> Response:
        return Response(200, Headers(), next(it))

    # A share of 128 KiB: what the client's window lets out later leaves some queued.
    h = Harness(kind, service, send_timeout=5.0, max_buffered_bytes=16 << 20)
    h.app.on_complete = lambda req, resp, sent: logged.append(sent)
    await stalled_streams(h, bodies, ups)
    slow, moving = sorted(h.conn.stalled)
    now = h.conn.loop.time()
    h.conn.check_timeouts(now + 4.0, 75.0, 60.0)  # not yet
    assert not [e for e in await h.pump() if e[0] == RESET]
    for st in h.conn.stalled.values():
        st.since -= 10.0  # both stalled for longer than send_timeout...
    # ...but the client now lets some bytes of one out: its clock restarts.
    h.client.consumed(moving, len(body_of(h.events, moving)))
    await h.pump()
    h.conn.check_timeouts(h.conn.loop.time(), 75.0, 60.0)
    resets = [e for e in await h.pump() if e[0] == RESET]
    assert resets == [(RESET, slow, 0x8)]  # CANCEL
    assert ups[0].cancelled and not ups[1].cancelled  # the upstream exchange is cancelled, not pooled
    assert slow not in h.conn.streams and moving in h.conn.streams
    assert logged and h.app.in_flight == 1  # the reset stream reached the access log
    assert worker_buffered_bytes() >= h.conn.queued > 0
    h.close()


async def test_answered_stream_whose_tail_waits_for_window_is_counted_and_timed_out(kind: str) -> None:
    from monolake.core.server._h2 import worker_buffered_bytes

    async def service(req: Request) -> Response:
        return Response(200, Headers(), b"z" * 200_000)  # complete at once: no pipe

    before = worker_buffered_bytes()
    h = Harness(kind, service, send_timeout=5.0)
    sid = h.client.request(GET, True)
    await h.pump()
    assert h.app.in_flight == 0 and not h.conn.streams  # answered and logged
    assert sid in h.conn.stalled and worker_buffered_bytes() - before == h.conn.queued > 0
    h.conn.check_timeouts(h.conn.loop.time() + 6.0, 75.0, 60.0)
    assert (RESET, sid, 0x8) in await h.pump()
    assert not h.conn.stalled and worker_buffered_bytes() == before
    h.close()


async def test_early_answer_is_sent_whole_before_the_no_error_reset(kind: str) -> None:
    # Answered while the client still uploads: RST_STREAM(NO_ERROR) stops the upload (RFC 9113
    # §8.1), but only once the response is out; sent at once, it would drop the queued tail.
    size = 200_000

    async def service(req: Request) -> Response:
        return Response(200, Headers(), b"r" * size)

    h = Harness(kind, service)
    sid = h.client.request([*POST, (b"content-length", b"1000000")], False)
    h.client.send_data(sid, b"u" * 1000, False)
    await h.pump()
    acked = 0
    for _ in range(50):  # the client reads and returns window
        got = len(body_of(h.events, sid))
        if got == size or any(e[0] == RESET for e in h.events):
            break
        h.client.consumed(sid, got - acked)
        acked = got
        await h.pump(2)
    assert len(body_of(h.events, sid)) == size and ended(h.events, sid)
    await h.pump()
    assert (RESET, sid, NO_ERROR) in h.events
    h.close()


async def test_over_the_worker_cap_stalled_streams_are_shed(kind: str) -> None:
    from monolake.core.server._h2 import worker_buffered_bytes

    ups = [Upstream() for _ in range(8)]
    bodies = [Body(up) for up in ups]
    it = iter(bodies)

    async def service(req: Request) -> Response:
        return Response(200, Headers(), next(it))

    before = worker_buffered_bytes()
    cap = 100_000
    h = Harness(kind, service, max_worker_buffered_bytes=cap + before)
    await stalled_streams(h, bodies, ups)
    await h.pump()
    assert worker_buffered_bytes() - before <= cap  # a hard bound: each write over it was shed
    shed = [sid for e in h.events if e[0] == RESET and (sid := e[1])]
    assert shed and all(e[2] == 0x8 for e in h.events if e[0] == RESET)  # CANCEL
    assert sum(up.cancelled for up in ups) == len(shed)  # their upstreams are closed, not pooled
    assert all(up.paused == up.resumed + 1 for up in ups if not up.cancelled)  # the rest wait
    assert h.app.in_flight == 8 - len(shed)
    h.conn.connection_lost(None)
    assert worker_buffered_bytes() == before
    h.close()
