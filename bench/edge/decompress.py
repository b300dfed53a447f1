"""CPU per MB of streamed request decompression (``decompress``): the ``_Inflate`` pipe a request body
goes through (client chunks of 64 KiB in, decoded pieces out to a sink as the upstream's would take
them), against the codec's own one-shot decode of the same bytes (the floor), per codec.

    python -m bench.edge.decompress [--mb 8] [--rounds 5]

The body is text-like (rows of a log, ~5-8x compressible). Each row is the best of ``--rounds``
interleaved rounds; the load average is printed. Rough on a busy machine: compare rows of one run.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
import zlib
from collections.abc import Callable

import brotli
import zstandard

from monolake.apps.edge.compress import _DECODERS, _Inflate
from monolake.core._body import Body


class _Client:
    def pause_body(self) -> None:
        pass

    def resume_body(self) -> None:
        pass

    def cancel_body(self) -> None:
        pass


class _Upstream:
    """Takes what it is given, as an upstream socket with room would."""

    def __init__(self) -> None:
        self.n = 0
        self.ended = False

    def write(self, data: bytes) -> None:
        self.n += len(data)

    def end(self) -> None:
        self.ended = True

    def abort(self, exc: BaseException) -> None:
        raise exc


def streamed(enc: bytes, packed: bytes, size: int) -> Callable[[], None]:
    chunks = [packed[i : i + 65536] for i in range(0, len(packed), 65536)]

    def run() -> None:
        up = Body(_Client(), None)
        pipe = _Inflate(up, _DECODERS[enc](), size + 1)
        sink = _Upstream()
        pipe.out.pipe(sink)
        for c in chunks:
            up.feed(c)
        up.feed_eof()
        assert sink.ended and sink.n == size, (enc, sink.n, size)

    return run


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rows = b"".join(
        b"2026-12-07T15:%02d:%02d GET /api/v1/items/%d 200 %d bytes ua=%s\n"
        % (i // 60 % 60, i % 60, i * 7919 % 100000, i * 31 % 5000, os.urandom(4).hex().encode())
        for i in range(200000)
    )
    data = (rows * (args.mb * 2**20 // len(rows) + 1))[: args.mb * 2**20]
    packed = {
        b"gzip": gzip.compress(data, 6),
        b"br": bytes(brotli.compress(data, quality=4)),
        b"zstd": zstandard.ZstdCompressor(level=3).compress(data),
    }
    floor: dict[bytes, Callable[[], object]] = {
        b"gzip": lambda: zlib.decompress(packed[b"gzip"], 47),
        b"br": lambda: brotli.decompress(packed[b"br"]),
        b"zstd": lambda: zstandard.ZstdDecompressor().decompress(packed[b"zstd"]),
    }
    cases: dict[tuple[str, str], Callable[[], object]] = {}
    for enc in packed:
        cases[(enc.decode(), "decompress filter (streamed, 64 KiB chunks)")] = streamed(enc, packed[enc], len(data))
        cases[(enc.decode(), "floor: the codec's one-shot decode")] = floor[enc]
    load = os.getloadavg()[0]
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for case, f in cases.items():
            t0 = time.process_time()
            f()
            ms = (time.process_time() - t0) * 1000 / args.mb
            best[case] = min(best.get(case, ms), ms)
    print(
        f"request decompression, ms of CPU per decoded MB (best of {args.rounds}, {args.mb} MB body); "
        f"load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    for (enc, name), ms in best.items():
        ratio = len(data) / len(packed[enc.encode()])
        print(f"{enc:5} {name:48} {ms:7.2f}   (packed {ratio:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
