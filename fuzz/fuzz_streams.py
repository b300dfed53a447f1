"""Fuzz target for the message stream codecs (``monolake.apps.streams._codec``).

The rule: for any bytes, a codec's ``decode`` appends messages and returns how many
bytes they took (0 to all of them), or raises ``FrameError``; never anything else.
And feeding the same bytes in two pieces (the second with what the first left)
yields the same messages, or the same FrameError, as feeding them whole.

Run it:

    python fuzz/fuzz_streams.py                 # atheris (libFuzzer) if installed
    python fuzz/fuzz_streams.py --hypothesis N  # otherwise: N hypothesis examples

The first byte picks the codec (bits 0-1: protobuf, msgpack, bytes) and the split
point (the other bits). A bounded run is part of ``tests/streams/test_streams_codec.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from monolake.apps.streams._codec import BytesCodec, FrameError, MsgpackCodec, ProtobufCodec

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared runner beside this file
from _runner import main, run_hypothesis


def _codecs() -> list[Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "streams"))
    import echo_pb2

    return [
        ProtobufCodec(echo_pb2.Request, max_message_size=4096),
        MsgpackCodec(max_message_size=4096),
        BytesCodec(max_message_size=4096),
    ]


CODECS = _codecs()


def _feed(codec: Any, chunks: list[bytes]) -> tuple[list[Any], int, str | None]:
    buf = b""
    out: list[Any] = []
    for c in chunks:
        buf += c
        try:
            used = codec.decode(memoryview(buf), out)
        except FrameError as exc:
            return out, -1, type(exc).__name__
        assert 0 <= used <= len(buf), (used, len(buf))
        buf = buf[used:]
    return out, len(buf), None


def check(data: bytes) -> None:
    """Raise AssertionError (or whatever leaks) when the rule is broken."""
    if not data:
        return
    codec = CODECS[(data[0] & 3) % 3]
    rest = data[1:]
    cut = (data[0] >> 2) % (len(rest) + 1)
    whole = _feed(codec, [rest])
    split = _feed(codec, [rest[:cut], rest[cut:]])
    if whole[2] is None and split[2] is None:
        assert repr(whole) == repr(split), (whole, split)  # repr: a msgpack NaN is not equal to itself
    else:  # an error may show only once its bytes arrive: then both end in it
        assert whole[2] == split[2], (whole, split)


def TestOneInput(data: bytes) -> None:
    check(data)


def _run_hypothesis(n: int) -> None:
    run_hypothesis(TestOneInput, n, max_size=256)


if __name__ == "__main__":
    main(sys.argv, TestOneInput, max_size=256)
