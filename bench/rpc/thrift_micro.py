"""The Thrift server's Python cost per call, without sockets: ``python -m bench.rpc.thrift_micro``.

A ``ThriftServer`` (echo of a 100 B string, framed binary or TTHeader) gets ``--batch`` call
frames per ``data_received`` on a transport that only counts bytes, in a running loop (an
``async def`` handler may finish in a task). Prints µs per call, best of ``--repeat``: the
part of a call that is ours (framing, dispatch, codec, handler call, reply), which a real
server adds its syscalls and event-loop wakeups to. ``--profile`` prints cProfile's top.
Rerunnable A/B: run it on two checkouts (``PYTHONPATH``) alternately.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import struct
import tempfile
import time
from typing import Any

IDL = "namespace py microecho\nservice Echo {\n  string echo(1: string s)\n}\n"


class _Sink:
    def __init__(self) -> None:
        self.bytes = 0
        self.writes = 0
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None: ...

    def set_protocol(self, p: Any) -> None:
        self.protocol = p  # the first bytes told framed from unframed: the real connection takes over


def frame(transport: str, seq: int) -> bytes:
    name, text = b"echo", b"x" * 100
    msg = struct.pack("!Ii", 0x80010001, len(name)) + name + struct.pack("!i", seq)
    msg += b"\x0b\x00\x01" + struct.pack("!i", len(text)) + text + b"\x00"
    if transport == "framed":
        return struct.pack("!I", len(msg)) + msg
    from monolake.core.proto.thrift import ThriftProtocol, Transport, encode_frame

    return bytes(encode_frame(Transport.TTHEADER, msg, seq_id=seq, protocol=ThriftProtocol.BINARY))


async def run(args: argparse.Namespace, handler: Any) -> list[float]:
    from monolake.apps.config import Server
    from monolake.rpc import ThriftService, build_server

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "echo.thrift")
        with open(path, "w") as f:
            f.write(IDL)
        app = build_server("micro", Server(listener="127.0.0.1:0"), ThriftService(path, handler))
    sniff: Any = app.protocol_factory()
    sink = _Sink()
    sniff.connection_made(sink)
    data = b"".join(frame(args.transport, i) for i in range(args.batch))
    sniff.data_received(data)
    conn = sink.protocol
    times = []
    for _ in range(args.repeat):
        # CPU time of this (single-threaded) process: on a shared machine it varies far less than
        # wall-clock time, which counts the time other processes hold the core.
        t0 = time.process_time()
        for _ in range(args.rounds):
            conn.data_received(data)
            await asyncio.sleep(0)  # tasks of async handlers run; their replies go out
            await asyncio.sleep(0)
        times.append((time.process_time() - t0) / (args.rounds * args.batch) * 1e6)
    assert sink.bytes > 0
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transport", choices=["framed", "ttheader"], default="framed")
    ap.add_argument("--handler", choices=["async", "sync"], default="async")
    ap.add_argument("--batch", type=int, default=16, help="call frames per read")
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    class Async:
        async def echo(self, s: str) -> str:
            return s

    class Sync:
        def echo(self, s: str) -> str:
            return s

    import uvloop

    handler = Async() if args.handler == "async" else Sync()
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        uvloop.run(run(args, handler))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    times = uvloop.run(run(args, handler))
    print(f"{args.transport} {args.handler} batch {args.batch}: {min(times):.2f} CPU µs/call (best of {args.repeat})")


if __name__ == "__main__":
    main()
