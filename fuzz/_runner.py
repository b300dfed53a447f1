"""The command line every fuzz target here shares: atheris (libFuzzer) when it is
installed, else a bounded hypothesis run of the same ``check(data)`` rule.

    python fuzz/fuzz_NAME.py                 # atheris if installed
    python fuzz/fuzz_NAME.py --hypothesis N  # N hypothesis examples
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_hypothesis(check: Callable[[bytes], None], n: int, max_size: int) -> None:
    """Run ``check`` on ``n`` hypothesis-drawn inputs of at most ``max_size`` bytes."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=n, deadline=None, database=None)
    @given(st.binary(max_size=max_size))
    def run(data: bytes) -> None:
        check(data)

    run()


def main(argv: list[str], check: Callable[[bytes], None], max_size: int) -> None:
    if len(argv) >= 2 and argv[1] == "--hypothesis":
        run_hypothesis(check, int(argv[2]) if len(argv) > 2 else 10_000, max_size)
        return
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        print("atheris is not installed; running the hypothesis fallback", file=sys.stderr)
        run_hypothesis(check, 10_000, max_size)
        return
    atheris.Setup(argv, check)
    atheris.Fuzz()
