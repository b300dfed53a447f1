"""Control channels: framing, descriptors over SCM_RIGHTS, partial reads and writes, EOF."""

from __future__ import annotations

import os
import select
import socket
import struct

import pytest

from monolake.core.runtime._control import Channel, ChannelClosed, channel_pair


def pair() -> tuple[Channel, Channel]:
    a, b = channel_pair()
    return a, Channel(b)


def drain(ch: Channel, want: int, timeout: float = 5.0) -> list[tuple[dict[str, object], list[int]]]:
    out: list[tuple[dict[str, object], list[int]]] = []
    while len(out) < want:
        ready, _, _ = select.select([ch.sock], [], [], timeout)
        assert ready, f"got {len(out)} of {want} messages"
        out += ch.receive()
    return out


def test_messages_and_descriptors_arrive_in_order() -> None:
    a, b = pair()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        a.send({"op": "one"})
        a.send({"op": "two", "x": [1, 2]}, [w1, w2])
        a.send({"op": "three"})
        got = drain(b, 3)
        assert [m["op"] for m, _ in got] == ["one", "two", "three"]
        assert got[0][1] == [] and got[2][1] == [] and got[1][0]["x"] == [1, 2]
        fa, fb = got[1][1]
        assert fa not in (w1, w2) and os.get_inheritable(fa) is False  # duplicates, close-on-exec
        os.write(fa, b"A")
        os.write(fb, b"B")
        assert os.read(r1, 1) == b"A" and os.read(r2, 1) == b"B"
        os.close(fa)
        os.close(fb)
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)
        a.close()
        b.close()


def test_a_frame_split_anywhere_is_reassembled() -> None:
    left, right = socket.socketpair()
    ch = Channel(right)
    body = b'{"op":"split","nfds":0}'
    frame = struct.pack(">I", len(body)) + body
    try:
        for i in range(len(frame)):
            left.sendall(frame[i : i + 1])
            got = ch.receive()
            assert got == ([] if i < len(frame) - 1 else [({"op": "split"}, [])])
    finally:
        left.close()
        ch.close()


def test_a_large_message_is_queued_and_flushed_as_the_peer_reads() -> None:
    a, b = pair()
    big = "x" * (4 << 20)
    a.send({"op": "big", "data": big})
    assert a.wants_write  # more than the socket buffer holds
    got: list[tuple[dict[str, object], list[int]]] = []
    while not got:
        readable, writable, _ = select.select([b.sock], [a.sock] if a.wants_write else [], [], 5)
        assert readable or writable
        if writable:
            a.flush()
        if readable:
            got += b.receive()
    assert got[0][0]["data"] == big
    a.close()
    b.close()


def test_receive_blocking_keeps_the_messages_it_did_not_return() -> None:
    a, b = pair()
    for i in range(3):
        a.send({"i": i})
    assert [b.receive_blocking(5)[0]["i"] for _ in range(3)] == [0, 1, 2]
    with pytest.raises(TimeoutError):
        b.receive_blocking(0.05)
    a.close()
    b.close()


def test_eof_is_channel_closed_after_the_last_message() -> None:
    a, b = pair()
    a.send({"op": "last"})
    a.close()
    assert drain(b, 1)[0][0] == {"op": "last"}
    with pytest.raises(ChannelClosed):
        b.receive()
    assert b.closed
