"""CPU cost of one unary HTTP/2 exchange in each codec, without sockets.

    python bench/micro/h2_codec.py [-n 20000] [--runs 7] [--leak 100000]

A client codec and a server codec of the same kind share one connection in memory.
One exchange is what a proxy's two sides do per unary call: the client opens a
stream with small headers and a 128-byte body, the server reads it, returns the
window, answers with headers and a 128-byte body, and the client reads that and
returns the window. The "grpc" variant ends the response with trailers instead.
The "-whole" variants send each message with one call (``send_request`` /
``send_response``) instead of one call per frame.
The figure is µs of process CPU time (user+sys) per exchange, both codecs' halves
together; runs alternate between the codecs and the
median is reported, since the machine is shared and noisy.

``--leak N`` runs N exchanges on the native codec and prints the RSS along the way:
it must stay flat once the allocator has warmed up.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

from monolake.core.proto.http2._codec import Codec
from monolake.core.proto.http2._select import codec_kinds, new_codec

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/helloworld.Greeter/SayHello"),
    (b":authority", b"backend.local:50051"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"user-agent", b"grpc-python/1.66"),
]
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
BODY = b"x" * 128


def connect(kind: str) -> tuple[Codec, Codec]:
    client, server = new_codec(True, kind=kind), new_codec(False, kind=kind)
    client.initiate()
    server.initiate()
    server.feed(client.pending())
    client.feed(server.pending())
    server.feed(client.pending())
    return client, server


def exchange(client: Codec, server: Codec, trailers: bool = False, whole: bool = False) -> None:
    if whole:
        sid = client.send_request(REQUEST, BODY, None)
    else:
        sid = client.request(REQUEST, False)
        client.send_data(sid, BODY, True)
    for ev in server.feed(client.pending()):
        if ev[0] == 2:  # DATA
            server.consumed(ev[1], len(ev[2]))
    if whole:
        server.send_response(sid, RESPONSE, BODY, TRAILERS if trailers else None)
    elif trailers:
        server.send_headers(sid, RESPONSE, False)
        server.send_data(sid, BODY, False)
        server.send_headers(sid, TRAILERS, True)
    else:
        server.send_headers(sid, RESPONSE, False)
        server.send_data(sid, BODY, True)
    for ev in client.feed(server.pending()):
        if ev[0] == 2:
            client.consumed(ev[1], len(ev[2]))


def check(kind: str) -> None:
    """One exchange, asserted, so the benchmark cannot measure a broken codec."""
    client, server = connect(kind)
    sid = client.request(REQUEST, False)
    client.send_data(sid, BODY, True)
    sev = server.feed(client.pending())
    assert sev[0] == (1, sid, REQUEST, False), sev
    assert b"".join(e[2] for e in sev if e[0] == 2) == BODY and sev[-1][0] == 2 and sev[-1][3], sev
    server.send_headers(sid, RESPONSE, False)
    server.send_data(sid, BODY, False)
    server.send_headers(sid, TRAILERS, True)
    cev = client.feed(server.pending())
    assert cev[0] == (1, sid, RESPONSE, False) and cev[-1] == (1, sid, TRAILERS, True), cev
    assert b"".join(e[2] for e in cev if e[0] == 2) == BODY, cev


def cpu_us_per_exchange(kind: str, n: int, trailers: bool, whole: bool) -> float:
    client, server = connect(kind)
    for _ in range(200):
        exchange(client, server, trailers, whole)
    gc.collect()
    t0 = time.process_time()
    for _ in range(n):
        exchange(client, server, trailers, whole)
    return (time.process_time() - t0) / n * 1e6


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def leak(n: int) -> None:
    client, server = connect("native")
    step = max(n // 10, 1)
    for i in range(n):
        # A new connection now and then, so connection teardown is covered too.
        if i and i % 10_000 == 0:
            client, server = connect("native")
        exchange(client, server, trailers=i % 2 == 0, whole=i % 4 < 2)
        if i % step == 0 or i == n - 1:
            print(f"  {i + 1:>7} exchanges: RSS {rss_kib()} KiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20_000, help="exchanges per run (the h2 codec gets n/10)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--leak", type=int, default=0, metavar="N")
    args = ap.parse_args()
    kinds = codec_kinds()
    for kind in kinds:
        check(kind)
    variants = ("unary", "grpc", "unary-whole", "grpc-whole")
    cases = [(kind, variant) for variant in variants for kind in kinds]
    results: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
    for _ in range(args.runs):
        for kind, variant in cases:
            n = args.n if kind == "native" else max(args.n // 10, 100)
            results[kind, variant].append(
                cpu_us_per_exchange(kind, n, variant.startswith("grpc"), variant.endswith("-whole"))
            )
    print(f"µs CPU per exchange (client+server codec), median of {args.runs} interleaved runs:")
    for kind, variant in cases:
        xs = results[kind, variant]
        print(f"  {variant:>11} {kind:>6}: {statistics.median(xs):8.2f}   (min {min(xs):.2f}, max {max(xs):.2f})")
    if len(kinds) == 2:
        for variant in variants:
            ratio = statistics.median(results["h2", variant]) / statistics.median(results["native", variant])
            print(f"  {variant:>11} h2/native: {ratio:.1f}x")
    if args.leak:
        if "native" not in kinds:
            print("native codec not built: no leak check", file=sys.stderr)
            return 1
        leak(args.leak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
