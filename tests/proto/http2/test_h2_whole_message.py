"""The codecs' whole-message calls, ``send_response`` and ``send_request``, checked on the wire.

Both codecs (the ``h2`` reference and the native one) hand their bytes to the real
``h2.connection.H2Connection`` on the other side, which decodes them; the frame
sequence itself is read with ``hyperframe``. Pure bytes, no sockets.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from hyperframe.frame import Frame

from monolake.core.proto.http2 import DATA, DRAINED, HEADERS, RESET, SETTINGS, Codec
from monolake.core.proto.http2._codec import CANCEL
from monolake.core.proto.http2._select import native_available, new_codec

KINDS = [
    "h2",
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            not native_available(), reason="monolake.core.proto.http2._nghttp2 not built (no libnghttp2-dev at install)"
        ),
    ),
]

REQ = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.Svc/Call"), (b":authority", b"example.test")]
OK = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
MSG = b"\x00\x00\x00\x00\x05hello"
H, D, END = "HeadersFrame", "DataFrame", {"END_STREAM"}


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _peer(client_side: bool, window: int = 65535) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side, header_encoding=None))
    conn.local_settings.initial_window_size = window
    conn.initiate_connection()
    return conn


def _frames(data: bytes) -> list[tuple[str, int, set[str], int]]:
    """(type, stream id, flags, payload length) of each frame in ``data``."""
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append((type(frame).__name__, frame.stream_id, set(frame.flags), length))
        data = data[9 + length :]
    return out


def _server_with_request(kind: str, window: int = 65535) -> tuple[Codec, h2.connection.H2Connection, int]:
    """A server codec that got one request (headers and body) from an ``h2`` client."""
    server = new_codec(False, kind=kind)
    server.initiate()
    peer = _peer(True, window)
    server.feed(peer.data_to_send())
    peer.receive_data(server.pending())
    server.feed(peer.data_to_send())  # the SETTINGS ACK
    sid = peer.get_next_available_stream_id()
    peer.send_headers(sid, REQ)
    peer.send_data(sid, MSG, end_stream=True)
    events = [e for e in server.feed(peer.data_to_send()) if e[0] != SETTINGS]
    assert events[0] == (HEADERS, sid, REQ, False)
    server.consumed(sid, len(MSG))
    return server, peer, sid


def _stream_frames(data: bytes, sid: int) -> list[tuple[str, set[str], int]]:
    return [(t, flags, n) for t, s, flags, n in _frames(data) if s == sid]


@pytest.mark.parametrize(
    ("data", "trailers", "frames"),
    [
        (MSG, TRAILERS, [(H, set(), 0), (D, set(), len(MSG)), (H, END, 0)]),
        (MSG, None, [(H, set(), 0), (D, END, len(MSG))]),
        (None, None, [(H, END, 0)]),
        (b"", [], [(H, END, 0)]),
    ],
    ids=["body-and-trailers", "body", "head-only", "empty-body-and-trailers"],
)
def test_send_response_frames_decode_in_h2(
    kind: str, data: bytes | None, trailers: list[tuple[bytes, bytes]] | None, frames: list[tuple[str, set[str], int]]
) -> None:
    server, peer, sid = _server_with_request(kind)
    assert server.send_response(sid, OK, data, trailers) == 0
    wire = server.pending()
    got = [(t, flags & END, n if t == D else 0) for t, flags, n in _stream_frames(wire, sid)]
    if kind == "h2" and data and not trailers:
        # The reference codec ends a body with an empty DATA frame of its own.
        frames = [frames[0], (D, set(), len(MSG)), (D, END, 0)]
    assert got == frames
    events = peer.receive_data(wire)
    response = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert response[0].headers == OK
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == (data or b"")
    trailer_events = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert [e.headers for e in trailer_events] == ([trailers] if trailers else [])
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_send_response_beyond_the_window_returns_what_waits(kind: str) -> None:
    window = 65535
    server, peer, sid = _server_with_request(kind, window)
    body = bytes(range(256)) * 400  # 102400 bytes, more than the stream window
    queued = server.send_response(sid, OK, body, TRAILERS)
    assert queued == len(body) - window == server.buffered(sid)
    got = b""
    trailers = None
    drained = False
    for _ in range(100):
        for ev in peer.receive_data(server.pending()):
            if isinstance(ev, h2.events.DataReceived):
                got += ev.data
                peer.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.TrailersReceived):
                assert got == body, "trailers overtook the body"
                trailers = ev.headers
        if trailers is not None:
            break
        drained = drained or (DRAINED, sid) in server.feed(peer.data_to_send())
    assert got == body and trailers == TRAILERS
    assert drained and server.buffered(sid) == 0


def test_send_response_on_a_reset_stream_sends_nothing(kind: str) -> None:
    server, peer, sid = _server_with_request(kind)
    peer.reset_stream(sid, CANCEL)
    assert (RESET, sid, CANCEL) in server.feed(peer.data_to_send())
    assert server.send_response(sid, OK, MSG, TRAILERS) == 0
    assert _stream_frames(server.pending(), sid) == []


@pytest.mark.parametrize(
    ("data", "trailers"),
    [(MSG, None), (None, None), (MSG, TRAILERS)],
    ids=["body", "head-only", "body-and-trailers"],
)
def test_send_request_decodes_in_h2(kind: str, data: bytes | None, trailers: list[tuple[bytes, bytes]] | None) -> None:
    client = new_codec(True, kind=kind)
    client.initiate()
    peer = _peer(False)
    peer.receive_data(client.pending())
    client.feed(peer.data_to_send())
    peer.receive_data(client.pending())  # the SETTINGS ACK
    sids = [client.send_request(REQ, data, trailers) for _ in range(2)]
    assert sids == [1, 3] and client.buffered(1) == 0
    events = peer.receive_data(client.pending())
    for sid in sids:
        mine = [e for e in events if getattr(e, "stream_id", None) == sid]
        assert isinstance(mine[0], h2.events.RequestReceived) and mine[0].headers == REQ
        assert b"".join(e.data for e in mine if isinstance(e, h2.events.DataReceived)) == (data or b"")
        got_trailers = [e.headers for e in mine if isinstance(e, h2.events.TrailersReceived)]
        assert got_trailers == ([trailers] if trailers else [])
        assert isinstance(mine[-1], h2.events.StreamEnded)
    # The answer comes back to the codec as usual.
    peer.send_headers(1, OK)
    peer.send_data(1, MSG)
    peer.send_headers(1, TRAILERS, end_stream=True)
    back = [e for e in client.feed(peer.data_to_send()) if e[0] != SETTINGS]
    assert back == [(HEADERS, 1, OK, False), (DATA, 1, MSG, False), (HEADERS, 1, TRAILERS, True)]


def test_native_whole_message_calls_reject_misuse(kind: str) -> None:
    if kind != "native":
        pytest.skip("the h2 library reports misuse its own way (the reference codec is for correctness only)")
    server, _, sid = _server_with_request(kind)
    with pytest.raises(TypeError, match="trailers"):
        server.send_response(sid, OK, MSG, [(b"grpc-status", "0")])  # type: ignore[list-item]
    with pytest.raises(RuntimeError, match="on a server codec"):
        server.send_request(REQ, None, None)
    assert server.send_response(sid, OK, b"x" * 100_000, TRAILERS) > 0  # the stream stays open
    with pytest.raises(ValueError, match="already started"):
        server.send_response(sid, OK, MSG, None)
    client = new_codec(True, kind=kind)
    client.initiate()
    with pytest.raises(RuntimeError, match="on a client codec"):
        client.send_response(1, OK, None, None)


def test_repeated_and_evicted_fields_decode_exactly(kind: str) -> None:
    """Many streams on one connection whose fields repeat, change, share lengths and fall out
    of the HPACK dynamic table: every request reads back exactly as sent (the native codec
    reuses the objects it made for repeated fields)."""
    server = new_codec(False, kind=kind)
    server.initiate()
    client = new_codec(True, kind=kind)
    client.initiate()
    server.feed(client.pending())
    client.feed(server.pending())
    server.feed(client.pending())
    sent = {}
    got = {}
    for i in range(400):
        # Same lengths, other bytes (x-v-07 / x-v-17...); long values push entries out of the table.
        big = (b"x-big-%d" % (i % 3), b"%c" % (65 + i % 26) * (300 + i % 7))
        fields = [*REQ, (b"x-k", b"x-v-%02d" % (i % 37)), big]
        if i % 5 == 0:
            fields.append((b"x-once", b"%d" % i))
        sid = client.send_request(fields, None, None)
        sent[sid] = fields
        for ev in server.feed(client.pending()):
            if ev[0] == HEADERS:
                got[ev[1]] = ev[2]
                server.send_response(ev[1], OK, None, None)
        client.feed(server.pending())
    assert got == sent
