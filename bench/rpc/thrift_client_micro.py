"""Our Thrift client's Python cost per call, without sockets: ``python -m bench.rpc.thrift_client_micro``.

A ``ThriftClient`` (TTHeader, binary, ``echo`` of a 100 B string) whose pool holds one real
``ThriftUpstream`` on a transport that answers in process: what the client writes is cut
into frames and each call's reply (a template with the call's sequence id patched in) is
fed back to the upstream's ``data_received`` on the next loop iteration, all of one write's
replies in one read. ``--callers`` tasks call in a loop. Prints CPU µs per call, best of
``--repeat``: the client's chain (``call`` -> balancing -> transport -> ``ThriftPool``) and the
reply's way back, plus this harness's share (a frame walk and a template copy per call,
the same on both sides of an A/B). ``--profile`` prints cProfile's top.
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
_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")


class _Answering:
    """A transport that answers every echo call written to it, one loop iteration later."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from monolake.core.proto.thrift import MessageType, ThriftProtocol, Transport, encode_frame, message_begin

        self.loop = loop
        self.protocol: Any = None
        text = b"x" * 100
        payload = message_begin("echo", MessageType.REPLY, 0, ThriftProtocol.BINARY)
        payload += b"\x0b\x00\x00" + _I32.pack(len(text)) + text + b"\x00"
        self.reply = bytes(encode_frame(Transport.TTHEADER, payload, seq_id=0, protocol=ThriftProtocol.BINARY))
        self.msg_seq = len(self.reply) - len(payload) + 8 + len(b"echo")  # the message's sequence id

    def write(self, data: bytes) -> None:
        out = bytearray()
        i = 0
        while i < len(data):
            n = _U32.unpack_from(data, i)[0]
            seq = data[i + 8 : i + 12]  # TTHeader's sequence id (the pool sets both)
            at = len(out)
            out += self.reply
            out[at + 8 : at + 12] = seq
            out[at + self.msg_seq : at + self.msg_seq + 4] = seq
            i += 4 + n
        self.loop.call_soon(self.protocol.data_received, bytes(out))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...

    def abort(self) -> None: ...


async def run(args: argparse.Namespace) -> list[float]:
    from monolake.core.client._thrift import ThriftUpstream, _Slot
    from monolake.core.proto.thrift import ThriftProtocol, Transport
    from monolake.rpc import ThriftClient

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "echo.thrift")
        with open(path, "w") as f:
            f.write(IDL)
        client = ThriftClient(path, ["127.0.0.1:1"])
    ep = client.discovery.endpoints()[0]
    pool = client.pool
    key = (ep.key, Transport.TTHEADER, ThriftProtocol.BINARY)
    slot = pool.slots[key] = _Slot(key, ep)
    up = ThriftUpstream(pool, slot)
    transport = _Answering(asyncio.get_running_loop())
    transport.protocol = up
    up.connection_made(transport)
    slot.conns.append(up)
    text = "x" * 100
    count = 0

    async def caller(n: int) -> None:
        nonlocal count
        for _ in range(n):
            assert await client.echo(text) == text
        count += n

    times = []
    for _ in range(args.repeat):
        count = 0
        t0 = time.process_time()
        await asyncio.gather(*(caller(args.calls) for _ in range(args.callers)))
        times.append((time.process_time() - t0) / count * 1e6)
    client.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--calls", type=int, default=2000, help="per caller per repeat")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    import uvloop

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        uvloop.run(run(args))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    times = uvloop.run(run(args))
    print(f"client ttheader {args.callers} callers: {min(times):.2f} CPU µs/call (best of {args.repeat})")


if __name__ == "__main__":
    main()
