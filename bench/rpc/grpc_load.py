"""A cheap gRPC load generator on raw HTTP/2: ``python -m bench.rpc.grpc_load MODE PORT SECONDS ARG``.

It writes pre-encoded frames and only counts what comes back (frame headers and DATA
lengths; no HPACK decoding, no protobuf), so it costs far less per message than the
servers it drives and is not the bottleneck of ``bench/rpc/grpc.py``:

- ``bidi-saturate``: ``--conns`` connections x ``--streams`` bidi streams to ``/bench.Echo/Bidi``,
  each keeping ARG messages in flight (a reply out, the next message in); messages/s.
- ``bidi-rate``: ARG messages/s over all the streams (round robin), each timed from when it
  was due (no coordinated omission): p50/p99/max.
- ``unary-rate``: ARG unary calls/s to ``/bench.Echo/Unary`` (a stream each), timed the same way.

The message is a 102-byte ``bench.Msg`` (5-byte gRPC prefix); the servers echo it, so a reply
is the same length and a stream's DATA bytes / 107 is its replies. Prints one JSON line.
Our receive windows are opened wide at the start; the server's are honoured (SETTINGS and
WINDOW_UPDATE tracked), a message waits when either window is short.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import time
from collections import deque
from typing import Any

PAYLOAD = b"x" * 100
MSG = b"\x0a" + bytes([len(PAYLOAD)]) + PAYLOAD
GRPC_MSG = b"\x00" + struct.pack("!I", len(MSG)) + MSG
MLEN = len(GRPC_MSG)
_HDR = struct.Struct("!HBBBI")  # length (24 bits as H+B), type, flags, stream id
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
BIG = 0x7FFFFFFF


def frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    n = len(payload)
    return _HDR.pack(n >> 8, n & 0xFF, ftype, flags, stream) + payload


def _lit(name: str, value: str) -> bytes:
    # HPACK literal header field without indexing, new name, no Huffman (lengths < 127).
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def request_headers(path: str, authority: str) -> bytes:
    return b"".join(
        _lit(k, v)
        for k, v in (
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
            ("content-type", "application/grpc"), ("te", "trailers"),
        )
    )  # fmt: skip


class Conn(asyncio.Protocol):
    def __init__(self, authority: str) -> None:
        self.authority = authority
        self.transport: Any = None
        self.buf = b""
        self.peer_initial = 65535  # the server's SETTINGS_INITIAL_WINDOW_SIZE
        self.conn_window = 65535  # what we may still send, connection-wide
        self.windows: dict[int, int] = {}  # ... and per stream
        self.got: dict[int, int] = {}  # DATA bytes received per stream
        self.owed: dict[int, int] = {}  # messages due on a stream that its windows held back
        self.end_owed: set[int] = set()  # streams whose owed last message ends them (unary)
        self.next_id = 1
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_replies: Any = None  # (conn, stream id, replies) -> None
        self.on_end: Any = None  # (conn, stream id, ok) -> None: a unary call's trailers, or its reset
        self.errors = 0
        self.resets: list[int] = []  # RST_STREAM error codes
        self.goaway: int | None = None  # GOAWAY's error code
        self.max_streams = 1 << 31  # the server's SETTINGS_MAX_CONCURRENT_STREAMS

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = struct.pack("!HI", 4, BIG) + struct.pack("!HI", 2, 0)  # wide window, no push
        transport.write(PREFACE + frame(4, 0, 0, settings) + frame(8, 0, 0, struct.pack("!I", BIG - 65535)))

    def open_stream(self, path: str, end_stream: bool = False) -> int:
        sid = self.next_id
        self.next_id += 2
        self.windows[sid] = self.peer_initial
        self.got[sid] = 0
        self.transport.write(frame(1, 0x4 | (0x1 if end_stream else 0), sid, request_headers(path, self.authority)))
        return sid

    def unary_call(self, path: str) -> int:
        """A new stream with its headers and its one message in one write (as gRPC clients send them)."""
        sid = self.next_id
        self.next_id += 2
        self.windows[sid] = self.peer_initial
        self.got[sid] = 0
        head = frame(1, 0x4, sid, request_headers(path, self.authority))
        if self.conn_window >= MLEN and self.windows[sid] >= MLEN:
            self.transport.write(head + frame(0, 0x1, sid, GRPC_MSG))
            self.conn_window -= MLEN
            self.windows[sid] -= MLEN
        else:
            self.transport.write(head)
            self.send(sid, 1, end_stream=True)
        return sid

    def send(self, sid: int, n: int, end_stream: bool = False) -> int:
        """Up to ``n`` messages on ``sid`` as the windows allow (one write); the rest are owed.
        ``end_stream`` (a unary call's one message) sets END_STREAM on what is sent."""
        fit = min(n, self.conn_window // MLEN, self.windows[sid] // MLEN)
        if fit:
            one = frame(0, 0x1 if end_stream else 0, sid, GRPC_MSG)
            self.transport.write(one * fit)
            self.conn_window -= fit * MLEN
            self.windows[sid] -= fit * MLEN
        if fit < n:
            self.owed[sid] = self.owed.get(sid, 0) + n - fit
            if end_stream:
                self.end_owed.add(sid)
        return fit

    def _pay_owed(self) -> None:
        for sid in list(self.owed):
            n = self.owed.pop(sid)
            end = sid in self.end_owed
            self.end_owed.discard(sid)
            if sid in self.windows:
                self.send(sid, n, end_stream=end)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        i, end = 0, len(buf)
        replies: dict[int, int] = {}
        window_moved = False
        while end - i >= 9:
            hi, lo, ftype, flags, sid = _HDR.unpack_from(buf, i)
            n = (hi << 8) | lo
            sid &= 0x7FFFFFFF
            if end - i < 9 + n:
                break
            p = i + 9
            i = p + n
            if ftype == 0:  # DATA
                size = n - 1 - buf[p] if flags & 0x8 else n
                if sid in self.got:
                    got = self.got[sid] + size
                    done, self.got[sid] = divmod(got, MLEN)
                    self.got[sid] = got - done * MLEN
                    if done:
                        replies[sid] = replies.get(sid, 0) + done
                if flags & 0x1 and self.on_end is not None:
                    self.on_end(self, sid, True)
            elif ftype == 1:  # HEADERS: response headers, or trailers when they end the stream
                if flags & 0x1 and self.on_end is not None:
                    self.on_end(self, sid, True)
            elif ftype == 4:  # SETTINGS
                if not flags & 0x1:
                    for k in range(p, p + n - 5, 6):
                        ident, value = struct.unpack_from("!HI", buf, k)
                        if ident == 3:
                            self.max_streams = value
                        if ident == 4:
                            delta = value - self.peer_initial
                            self.peer_initial = value
                            for s in self.windows:
                                self.windows[s] += delta
                            window_moved = True
                    self.transport.write(frame(4, 0x1, 0, b""))
                    if not self.settled.done():
                        self.settled.set_result(None)
            elif ftype == 8:  # WINDOW_UPDATE
                inc = struct.unpack_from("!I", buf, p)[0] & 0x7FFFFFFF
                if sid == 0:
                    self.conn_window += inc
                elif sid in self.windows:
                    self.windows[sid] += inc
                window_moved = True
            elif ftype == 6 and not flags & 0x1:  # PING
                self.transport.write(frame(6, 0x1, 0, buf[p : p + 8]))
            elif ftype == 3:  # RST_STREAM
                self.errors += 1
                self.resets.append(struct.unpack_from("!I", buf, p)[0])
                if self.on_end is not None:
                    self.on_end(self, sid, False)
            elif ftype == 7:  # GOAWAY: last stream id, error code
                self.errors += 1
                self.goaway = struct.unpack_from("!I", buf, p + 4)[0]
        self.buf = buf[i:] if i < end else b""
        if window_moved and self.owed:
            self._pay_owed()
        if replies and self.on_replies is not None:
            for sid, k in replies.items():
                self.on_replies(self, sid, k)


async def connect(port: int, conns: int) -> list[Conn]:
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(conns):
        _, c = await loop.create_connection(lambda: Conn(f"127.0.0.1:{port}"), "127.0.0.1", port)
        await asyncio.wait_for(c.settled, 10)
        out.append(c)
    return out


def _pcts(lat: list[float]) -> dict[str, float]:
    lat.sort()

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6, 1) if lat else float("nan")

    return {"p50_us": pct(0.5), "p99_us": pct(0.99), "max_us": round(lat[-1] * 1e6, 1) if lat else float("nan")}


async def bidi(port: int, args: argparse.Namespace, rate: float | None, depth: int) -> dict[str, Any]:
    cs = await connect(port, args.conns)
    streams = [(c, c.open_stream("/bench.Echo/Bidi")) for c in cs for _ in range(args.streams)]
    loop = asyncio.get_running_loop()
    count = 0
    sent: dict[tuple[int, int], deque[float]] = {(id(c), s): deque() for c, s in streams}
    lat: list[float] = []
    stop = 0.0
    finished: asyncio.Future[None] = loop.create_future()
    in_flight = 0

    def echo_on(c: Conn, sid: int, k: int) -> None:  # saturation: a reply in, the next message out
        nonlocal count, in_flight
        count += k
        in_flight -= k
        if time.perf_counter() < stop:
            in_flight += k
            c.send(sid, k)
        elif in_flight <= 0 and not finished.done():
            finished.set_result(None)

    def timed(c: Conn, sid: int, k: int) -> None:
        nonlocal in_flight
        now = time.perf_counter()
        q = sent[(id(c), sid)]
        for _ in range(k):
            lat.append(now - q.popleft())
        in_flight -= k
        if in_flight == 0 and stop and not finished.done():
            finished.set_result(None)

    # warm-up: a message round trip on every stream
    for c in cs:
        c.on_replies = timed
    t = time.perf_counter()
    for c, s in streams:
        sent[(id(c), s)].append(t)
        c.send(s, 1)
    in_flight = len(streams)
    stop = 1.0
    await asyncio.wait_for(finished, 30)
    lat.clear()
    finished = loop.create_future()
    if rate is None:
        for c in cs:
            c.on_replies = echo_on
        t0 = time.perf_counter()
        stop = t0 + args.seconds
        in_flight = depth * len(streams)
        for c, s in streams:
            c.send(s, depth)
        await asyncio.wait_for(finished, args.seconds + 60)
        res: dict[str, Any] = {"msgs_per_s": count / (time.perf_counter() - t0), "depth": depth}
    else:
        stop = 0.0
        start = time.perf_counter() + 0.01
        total = int(rate * args.seconds)
        n = 0
        while n < total:
            due_n = min(total, int((time.perf_counter() - start) * rate) + 1)
            while n < due_n:
                c, s = streams[n % len(streams)]
                sent[(id(c), s)].append(start + n / rate)
                c.send(s, 1)
                in_flight += 1
                n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
        stop = 1.0
        if in_flight:
            await asyncio.wait_for(finished, 60)
        res = {"rate": rate, "msgs": len(lat), **_pcts(lat)}
    res["errors"] = sum(c.errors for c in cs)
    for c in cs:
        c.transport.close()
    return res


async def unary(port: int, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    cs = await connect(port, args.conns)
    loop = asyncio.get_running_loop()
    due: dict[tuple[int, int], float] = {}
    lat: list[float] = []
    pending = 0
    finished: asyncio.Future[None] = loop.create_future()
    sending = True

    open_on: dict[int, int] = {id(c): 0 for c in cs}  # streams open per connection
    shed = 0  # calls not sent: every connection at the server's stream limit, or closed

    def ended(c: Conn, sid: int, ok: bool) -> None:
        nonlocal pending
        t = due.pop((id(c), sid), None)
        if t is None:
            return
        if ok:
            lat.append(time.perf_counter() - t)
        open_on[id(c)] -= 1
        c.windows.pop(sid, None)
        c.got.pop(sid, None)
        pending -= 1
        if not sending and pending == 0 and not finished.done():
            finished.set_result(None)

    for c in cs:
        c.on_end = ended
    start = time.perf_counter() + 0.01
    total = int(rate * args.seconds)
    n = 0
    while n < total:
        due_n = min(total, int((time.perf_counter() - start) * rate) + 1)
        while n < due_n:
            c = min(cs, key=lambda c: open_on[id(c)])
            if c.transport.is_closing() or open_on[id(c)] >= c.max_streams:
                shed += 1
            else:
                sid = c.unary_call("/bench.Echo/Unary")
                due[(id(c), sid)] = start + n / rate
                open_on[id(c)] += 1
                pending += 1
            n += 1
        await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
    sending = False
    if pending:
        await asyncio.wait_for(finished, 60)
    for c in cs:
        c.transport.close()
    return {
        "rate": rate, "calls": len(lat), **_pcts(lat), "errors": sum(c.errors for c in cs), "shed": shed,
        "resets": sorted({r for c in cs for r in c.resets}), "goaway": [c.goaway for c in cs if c.goaway is not None],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["bidi-saturate", "bidi-rate", "unary-rate"])
    ap.add_argument("port", type=int)
    ap.add_argument("seconds", type=float)
    ap.add_argument("arg", type=float, help="messages in flight per stream (saturate), or messages/calls per s")
    ap.add_argument("--conns", type=int, default=2)
    ap.add_argument("--streams", type=int, default=8, help="bidi streams per connection")
    args = ap.parse_args()
    import uvloop

    t = time.process_time()
    if args.mode == "bidi-saturate":
        res = uvloop.run(bidi(args.port, args, None, int(args.arg)))
    elif args.mode == "bidi-rate":
        res = uvloop.run(bidi(args.port, args, args.arg, 1))
    else:
        res = uvloop.run(unary(args.port, args, args.arg))
    res["client_cpu_s"] = time.process_time() - t
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
