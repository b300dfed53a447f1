"""Fuzz target for request-target handling (``monolake.core.proto._target``).

The rule: for any bytes, ``normalize_path`` (any settings) and ``split_absolute``
either return or raise ``ProtocolError`` with status 400; never anything else.
What they return is checked too: a normalised path normalises to itself, starts
with "/", and holds no dot segment (nor "//" when slashes are merged); an
absolute-form target gives a non-empty authority without "/" or "@" and an
origin-form rest.

Run it:

    python fuzz/fuzz_target.py                 # atheris (libFuzzer) if installed
    python fuzz/fuzz_target.py --hypothesis N  # otherwise: N hypothesis examples

The first byte of each input picks the settings (bits 0-2) and whether the rest
is a path or the tail of an ``http://`` target (bit 3). The same property runs
under pytest for a bounded number of examples in ``tests/proto/test_target.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from monolake.core.errors import ProtocolError
from monolake.core.proto._target import normalize_path, split_absolute

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared runner beside this file
from _runner import main, run_hypothesis


def check(data: bytes) -> None:
    """Raise AssertionError (or whatever leaks) when the rule is broken."""
    mode = data[0] if data else 0
    rest = data[1:]
    if mode & 8:
        try:
            authority, target = split_absolute(b"http://" + rest)
        except ProtocolError as exc:
            assert exc.status_hint == 400
            return
        assert authority and b"/" not in authority and b"@" not in authority, authority
        assert target.startswith(b"/"), target
        return
    decode, dots, merge = bool(mode & 1), bool(mode & 2), bool(mode & 4)
    path = b"/" + rest
    try:
        once = normalize_path(path, decode=decode, dots=dots, merge_slashes=merge)
    except ProtocolError as exc:
        assert exc.status_hint == 400
        return
    assert once.startswith(b"/"), once
    assert normalize_path(once, decode=decode, dots=dots, merge_slashes=merge) == once, (path, once)
    if dots:
        assert b"/./" not in once and b"/../" not in once and not once.endswith((b"/.", b"/..")), once
    if merge:
        assert b"//" not in once, once


def TestOneInput(data: bytes) -> None:
    check(data)


def _run_hypothesis(n: int) -> None:
    run_hypothesis(TestOneInput, n, max_size=64)


if __name__ == "__main__":
    main(sys.argv, TestOneInput, max_size=64)
