"""The per-message Python cost of each echo server, without sockets: CPU ns per message.

    python -m bench.streams.micro [--rounds 5] [--reads 2000]

Each server's protocol is fed reads of whole frames (``FRAMES`` per read, as the saturation
load delivers them) through a transport that only counts what is written, on a running loop.
What this leaves out is the same for every server: the syscalls, one read and one write per
read here (bench/streams/run.py counts them on real sockets). ``rpc`` is the protobuf echo of
examples/streams with protosocket-rpc's envelope (ids, control codes), unary, 256 calls a read;
``def`` is ordered with a plain ``def`` handler.
Servers alternate within each round and the best of the rounds is kept (process CPU time, so other
processes on the machine
matter less than for a rate; caches still do).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from bench.streams.servers import BytesEcho, Floor, FloorCalls, bytes_echo

FRAMES = {64: 256, 4096: 48}


class NullTransport:
    """Counts writes; never pauses."""

    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0

    def write(self, data: Any) -> None:
        self.writes += 1
        self.bytes += len(data)

    def writelines(self, items: Any) -> None:
        self.writes += 1
        for d in items:
            self.bytes += len(d)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def make(kind: str) -> Any:
    from monolake.streams import BytesCodec, MessageServerApp, StreamSettings

    if kind == "floor":
        return Floor()
    if kind == "floor_calls":
        return FloorCalls()
    if kind == "rpc":
        import echo_pb2
        from echo_server import Echo

        from monolake.streams import Fields, ProtobufCodec

        rpc = MessageServerApp(
            "rpc",
            Echo(),
            ProtobufCodec(echo_pb2.Request),
            requests=Fields(echo_pb2.Request),
            responses=Fields(echo_pb2.Response),
        )
        return rpc.protocol_factory()
    semantics = "concurrent" if kind == "concurrent" else "ordered"
    handler: Any = bytes_echo if kind == "def" else BytesEcho()
    app = MessageServerApp("bytes", handler, BytesCodec(), settings=StreamSettings(semantics=semantics))
    return app.protocol_factory()


def rpc_frame() -> bytes:
    import echo_pb2

    body = echo_pb2.Request(
        request_id=1, body=echo_pb2.EchoRequest(message="abcdefgh", nanotime=1), response_behavior=echo_pb2.UNARY
    ).SerializeToString()
    return bytes((len(body),)) + body


async def run_one(kind: str, size: int, reads: int) -> float:
    frame = rpc_frame() if kind == "rpc" else size.to_bytes(4, "big") + os.urandom(size)
    data = frame * FRAMES[size]
    p = make(kind)
    t = NullTransport()
    p.connection_made(t)
    buffered = hasattr(p, "get_buffer")
    n = len(data)
    view = memoryview(data)  # the kernel's copy into the buffer: one copy, not a slice and a copy
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = [reads + 3]  # 3 to warm up: workers exist, buffers sized
    c0 = [0.0]

    def feed() -> None:
        # From a loop callback, as a transport delivers reads (not from inside a task).
        if left[0] == reads:
            c0[0] = time.process_time()
        if left[0] == 0:
            done.set_result(None)
            return
        left[0] -= 1
        if buffered:
            pos = 0
            while pos < n:
                buf = p.get_buffer(-1)
                k = min(len(buf), n - pos)
                buf[:k] = view[pos : pos + k]
                p.buffer_updated(k)
                pos += k
        else:
            p.data_received(bytes(data))  # a Protocol gets a new bytes per read
        loop.call_soon(feed)  # the next read after this iteration: queued replies are flushed

    loop.call_soon(feed)
    await done
    c0 = c0[0]
    dt = time.process_time() - c0
    want = reads * n
    assert kind == "rpc" or t.bytes >= want * 0.99, (kind, t.bytes, want)
    return dt / (reads * FRAMES[size]) * 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reads", type=int, default=2000)
    p.add_argument("--write", action="store_true", help="also write bench/results/streams-micro-<time>.{json,md}")
    args = p.parse_args()
    import uvloop

    result: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg": os.getloadavg(),
        "rounds": args.rounds,
        "ns_per_msg": {},
    }
    for size in (64, 4096):
        kinds = ["floor", "floor_calls", "ordered", "concurrent", "def"] + (["rpc"] if size == 64 else [])
        best: dict[str, float] = {}
        reads = args.reads if size == 64 else args.reads * 2
        for _ in range(args.rounds):
            for kind in kinds:
                ns = uvloop.run(run_one(kind, size, reads))
                best[kind] = min(best.get(kind, ns), ns)
        floor = best["floor"]
        result["ns_per_msg"][str(size)] = {k: round(v) for k, v in best.items()}
        print(
            f"{size:>5} B: "
            + "  ".join(f"{k} {v:.0f} ns ({v / floor:.2f}x floor)" for k, v in best.items())
            + f"  [load {os.getloadavg()[0]:.1f}]",
            flush=True,
        )
    if args.write:
        import json

        base = Path(__file__).resolve().parents[1] / "results" / f"streams-micro-{result['time'].replace(':', '')}"
        base.with_suffix(".json").write_text(json.dumps(result, indent=2))
        load = ", ".join(f"{x:.2f}" for x in result["loadavg"])
        lines = [
            f"# Message streams, Python cost per message without sockets, {result['time']} (load average {load})",
            "",
            "`python -m bench.streams.micro --write` (bench/streams/micro.py); best of "
            f"{args.rounds} alternated rounds, process CPU ns per message (syscalls left out: the same for all).",
            "",
            "| size | " + " | ".join(result["ns_per_msg"]["64"]) + " |",
            "|--:|" + "--:|" * len(result["ns_per_msg"]["64"]),
        ]
        for size, row in result["ns_per_msg"].items():
            lines.append(f"| {size} B | " + " | ".join(str(row.get(k, "")) for k in result["ns_per_msg"]["64"]) + " |")
        base.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print(f"wrote {base}.json/.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
