"""A load generator cheaper per message than any server it measures.

Frames are encoded once: a batch of whole frames (about 16 KiB) is one ``bytes`` object,
written with one ``write`` per batch. Replies are read into one reusable buffer
(``BufferedProtocol``: no allocation per read) and counted, not decoded: an echo's replies
are its requests, so the reply bytes say how many came back (``frames``); for replies of
another size (the protobuf RPC echo) the varint lengths are scanned (``VarintCounter``).

- ``saturate``: closed loop, ``window`` frames in flight per connection; a batch goes out as
  soon as a batch's worth of replies is back. Messages/s at saturation.
- ``fixed_rate``: open loop, ``rate`` frames/s on a 1 ms tick whatever the replies do, so
  the server's CPU per message (from /proc) is measured at the same rate for every server.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

BATCH_BYTES = 16 * 1024
_RECV = bytearray(1 << 20)  # every connection reads into it: the bytes are only counted
_RECV_VIEW = memoryview(_RECV)


def batch_of(frame: bytes, window: int) -> tuple[bytes, int]:
    """A batch of copies of ``frame``: an eighth of the window (so the pipeline never drains
    while one batch is answered), at most BATCH_BYTES. Returns (bytes, frames)."""
    n = max(1, min(window // 8, BATCH_BYTES // len(frame)))
    return frame * n, n


class Counter:
    def __init__(self) -> None:
        self.replies = 0


class EchoPump(asyncio.BufferedProtocol):
    """Closed loop on one connection: ``batches`` batches in flight; each full batch of replies
    back sends one more batch (one write)."""

    def __init__(self, batch: bytes, batches: int, counter: Counter, frame_len: int) -> None:
        self.batch = batch
        self.batches = batches
        self.batch_len = len(batch)
        self.frame_len = frame_len
        self.counter = counter
        self.got = 0  # reply bytes not yet worth a batch
        self.frames_part = 0  # reply bytes not yet worth a frame
        self.t: Any = None

    def connection_made(self, t: Any) -> None:
        self.t = t
        if self.batches:
            t.write(self.batch * self.batches)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECV_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        fp = self.frames_part + nbytes
        n, self.frames_part = divmod(fp, self.frame_len)
        self.counter.replies += n
        if self.batches:
            got = self.got + nbytes
            k, self.got = divmod(got, self.batch_len)
            if k == 1:
                self.t.write(self.batch)
            elif k:
                self.t.write(self.batch * k)

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class VarintCounter(EchoPump):
    """Counts replies of any size by their varint length prefixes (protobuf delimited)."""

    def __init__(self, counter: Counter) -> None:
        super().__init__(b"", 0, counter, 1)
        self.skip = 0  # bytes of the current reply's body still to come
        self.partial = b""  # a length prefix split across reads

    def buffer_updated(self, nbytes: int) -> None:
        buf = _RECV
        pos = self.skip
        end = nbytes
        if self.partial:
            data = self.partial + bytes(buf[:nbytes])
            self.partial = b""
            buf, end = bytearray(data), len(data)
        n = 0
        while pos < end:
            b = buf[pos]
            if b < 0x80:
                pos += 1 + b
                n += 1
                continue
            i, ln, shift = pos, 0, 0
            while i < end:
                b = buf[i]
                ln |= (b & 0x7F) << shift
                i += 1
                if b < 0x80:
                    break
                shift += 7
            else:
                self.partial = bytes(buf[pos:end])
                pos = end
                break
            pos = i + ln
            n += 1
        self.skip = pos - end if pos > end else 0
        self.counter.replies += n


async def connect(port: int, factory: Any, conns: int) -> list[Any]:
    loop = asyncio.get_running_loop()
    return [(await loop.create_connection(factory, "127.0.0.1", port))[1] for _ in range(conns)]


async def saturate(
    port: int,
    size: int,
    seconds: float,
    cpu: Callable[[], float],
    own_cpu: Callable[[], float],
    syscalls: Callable[[], tuple[int, int]],
    *,
    conns: int = 4,
    window: int = 256,
) -> dict[str, Any]:
    """Closed-loop echo of ``size``-byte messages (4-byte big-endian length first) over ``conns``
    connections with about ``window`` frames in flight on each: replies/s, and the CPU share of
    the server (``cpu()``) and of this process (``own_cpu()``) over the measured span (a server
    share under ~0.95 means something else, the generator or the machine, was the bottleneck),
    messages per server CPU-second, and messages per read and per write syscall of the server."""
    frame = size.to_bytes(4, "big") + os.urandom(size)
    batch, per = batch_of(frame, window)
    batches = max(1, window // per)
    counter = Counter()
    protos = await connect(port, lambda: EchoPump(batch, batches, counter, len(frame)), conns)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.3)  # warm up
    c0, t0, s0, l0, io0 = counter.replies, loop.time(), cpu(), own_cpu(), syscalls()
    await asyncio.sleep(seconds)
    n, dt = counter.replies - c0, loop.time() - t0
    s1, l1, io1 = cpu(), own_cpu(), syscalls()
    for p in protos:
        p.t.close()
    return {
        "msgs_per_s": int(n / dt),
        "in_flight_per_conn": batches * per,
        "conns": conns,
        "server_cpu": round((s1 - s0) / dt, 2),
        "load_cpu": round((l1 - l0) / dt, 2),
        "msgs_per_cpu_s": int(n / max(s1 - s0, 1e-9)),
        "msgs_per_read": round(n / max(1, io1[0] - io0[0]), 1),
        "msgs_per_write": round(n / max(1, io1[1] - io0[1]), 1),
    }


async def fixed_rate(
    port: int,
    frame: bytes,
    rate: int,
    seconds: float,
    cpu: Callable[[], float],
    *,
    conns: int = 4,
    varint: bool = False,
) -> dict[str, Any]:
    """Open loop: ``rate`` copies of ``frame`` per second spread over ``conns`` connections,
    sent each 1 ms tick as one write per connection. Returns frames sent, replies counted and
    the server's CPU seconds (``cpu()``, sampled at the start and end of the measured span)."""
    counter = Counter()
    if varint:
        protos = await connect(port, lambda: VarintCounter(counter), conns)
    else:
        protos = await connect(port, lambda: EchoPump(b"", 0, counter, len(frame)), conns)
    loop = asyncio.get_running_loop()
    # Pre-encoded bursts of every size a tick can ask for, so a tick is one write per connection.
    per_tick = max(1, rate // 1000 // conns + 2)
    bursts = [frame * k for k in range(per_tick * 4 + 1)]
    sent = 0
    start = loop.time()
    warm_until = start + 0.3
    measure_from = None
    m_sent = 0
    m_replies = 0
    cpu0 = cpu1 = 0.0
    rr = 0
    while True:
        now = loop.time()
        if measure_from is None and now >= warm_until:
            measure_from, m_sent, m_replies, cpu0 = now, sent, counter.replies, cpu()
        if measure_from is not None and now - measure_from >= seconds:
            cpu1 = cpu()
            break
        due = int(rate * (now - start)) - sent
        if due > 0:
            per, extra = divmod(due, conns)
            for j, p in enumerate(protos):
                k = per + (1 if (j + rr) % conns < extra else 0)
                while k:
                    c = min(k, len(bursts) - 1)
                    p.t.write(bursts[c])
                    k -= c
            rr += 1
            sent += due
        await asyncio.sleep(0.001)
    assert measure_from is not None
    elapsed = loop.time() - measure_from
    await asyncio.sleep(0.2)  # the last replies
    for p in protos:
        p.t.close()
    return {
        "offered": rate,
        "sent": sent - m_sent,
        "seconds": elapsed,
        "achieved": int((sent - m_sent) / elapsed),
        "replies": counter.replies - m_replies,
        "server_cpu_s": cpu1 - cpu0,
    }
