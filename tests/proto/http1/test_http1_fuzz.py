"""The fuzz rule of fuzz/fuzz_http1.py, run by hypothesis for a bounded number of
examples: random bytes, and mutations of valid requests, fed whole and in pieces,
are accepted or rejected with a ProtocolError, never anything else."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st


def _load_target() -> ModuleType:
    path = Path(__file__).resolve().parents[3] / "fuzz" / "fuzz_http1.py"
    spec = importlib.util.spec_from_file_location("fuzz_http1", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


target = _load_target()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(target.SEEDS)))
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(data)))
        if op == 0:
            del data[pos : pos + draw(st.integers(1, 6))]
        elif op == 1:
            data[pos:pos] = draw(st.sampled_from(target.TOKENS))
        elif op == 2 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        else:  # duplicate a slice of itself somewhere else
            start = draw(st.integers(0, len(data)))
            data[pos:pos] = data[start : start + draw(st.integers(0, 40))]
    return bytes(data)


steps = st.integers(0, 8)


def test_seeds_are_accepted_or_rejected_cleanly() -> None:
    for seed in target.SEEDS:
        for step in range(9):
            target.check_request_bytes(seed, step)


def test_valid_seed_parses() -> None:
    msgs = target.check_request_bytes(target.SEEDS[2])
    assert msgs is not None
    assert [(r.method, body) for r, body in msgs] == [(b"POST", b"abc")]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), steps)
def test_random_bytes(data: bytes, step: int) -> None:
    target.check_request_bytes(data, step)


@settings(max_examples=600, deadline=None)
@given(mutated(), steps)
def test_mutated_requests(data: bytes, step: int) -> None:
    target.check_request_bytes(data, step)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_libfuzzer_entry_point(data: bytes) -> None:
    target.TestOneInput(data)
