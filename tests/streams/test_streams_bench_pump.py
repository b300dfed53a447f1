"""The streams benchmark's load generator counts replies without decoding them: by bytes for an
echo (replies are the requests) and by varint length prefixes for protobuf replies. The counts must
be exact whatever the reads' boundaries, or every figure of bench/streams is off."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: bench is a package

from bench.streams.pump import Counter, EchoPump, VarintCounter
from google.protobuf.internal.encoder import _VarintBytes


def feed(p: EchoPump, chunks: list[bytes]) -> None:
    for c in chunks:
        view = p.get_buffer(-1)
        view[: len(c)] = c
        p.buffer_updated(len(c))


class Sink:
    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)


def test_varint_counter_counts_frames_split_anywhere() -> None:
    bodies = [b"x" * n for n in (0, 1, 127, 128, 300, 5, 16_384, 2)]  # one-, two- and three-byte prefixes
    wire = b"".join(_VarintBytes(len(b)) + b for b in bodies)
    for cut in range(len(wire) + 1):
        counter = Counter()
        feed(VarintCounter(counter), [wire[:cut], wire[cut:]])
        assert counter.replies == len(bodies), cut
    counter = Counter()
    feed(VarintCounter(counter), [bytes([b]) for b in wire[:400]] + [wire[400:]])
    assert counter.replies == len(bodies)


def test_echo_pump_counts_replies_and_refills_one_batch_per_batch_back() -> None:
    frame = (64).to_bytes(4, "big") + b"y" * 64
    batch = frame * 8
    counter = Counter()
    p = EchoPump(batch, 3, counter, len(frame))
    sink = Sink()
    p.connection_made(sink)
    assert sink.written == 3 * len(batch)  # the window goes out at once
    back = batch * 5
    feed(p, [back[i : i + 100] for i in range(0, len(back), 100)])  # replies in odd-sized reads
    assert counter.replies == 40 and sink.written == 8 * len(batch)  # 5 batches back, 5 more out
