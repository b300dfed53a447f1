"""A/B of source trees (each built in place, compiled or not) on one micro benchmark.

    python bench/micro/tree_ab.py TREE... [--rounds 8] [--script proxy_path.py] -- [script args]

Runs ``bench/micro/SCRIPT`` (``proxy_path.py``, ``proxy_layers.py``, or any script printing
``N µs``) in a child process per tree with ``PYTHONPATH=TREE/src``, the trees alternated round by
round so a busy machine weighs on each alike, and prints each run and, per tree, the median and
minimum of the µs figures. Build every tree first (``MONOLAKE_COMPILE_INPLACE=1 python setup.py
build_ext --inplace``): a tree whose compiled files are stale runs as pure Python, and its start-up
warning is shown. Example, main against a branch::

    python bench/micro/tree_ab.py /tmp/main-build . --script proxy_layers.py -- --case both
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIGURE = re.compile(r"([0-9.]+) µs")


def one(tree: Path, script: str, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run(
        [sys.executable, str(HERE / script), *args], env=env, capture_output=True, text=True, timeout=900
    )
    m = FIGURE.search(out.stdout)
    if out.returncode != 0 or m is None:
        raise SystemExit(f"{script} failed on {tree}: {out.stderr or out.stdout}")
    if "pure Python" in out.stderr:
        print(f"  warning: {tree} ran as pure Python: {out.stderr.strip().splitlines()[-1]}")
    return float(m.group(1))


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs="+", type=Path)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--script", default="proxy_path.py")
    args = ap.parse_args(argv)
    trees = [t.resolve() for t in args.trees]
    runs: dict[Path, list[float]] = {t: [] for t in trees}
    for r in range(args.rounds):
        for t in trees:
            runs[t].append(one(t, args.script, extra))
            print(f"round {r + 1}: {t}: {runs[t][-1]:.2f} µs", flush=True)
    print(f"{args.script} {' '.join(extra)}, {args.rounds} rounds (µs, median / min):")
    for t, v in runs.items():
        print(f"  {t}: {statistics.median(v):.2f} / {min(v):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
