"""Quick single-worker comparison against nginx: a thin wrapper over the harness in bench/load/.

    python bench/quick_compare.py [--seconds 10] [--rounds 2] [--rate 20000] [--conns 50] [--body 128]
                                  [--loop uvloop] [--out results.json]

Runs ``python -m bench.load --proxies monolake-<loop>,nginx --sizes <body> --no-wrk --no-scaling``:
nginx origin and h2load at a fixed rate on core 0, the proxy (1 worker) on core 1, CPU µs per request
(user, sys) from /proc/PID/stat and p50/p99 from h2load's log, rounds interleaved, medians printed with
the ratio to nginx. Nothing is written to bench/results; ``--out`` copies the run's JSON to a file.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load.run import main as run_main


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--body", default="128", help="bytes, or 4k / 16k / 160k")
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio", "io_uring"])
    ap.add_argument("--out", default="", help="copy the run's JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="quick-compare-") as tmp:
        rc = run_main(
            [
                *("--seconds", str(args.seconds), "--rounds", str(args.rounds)),
                *("--rate", str(args.rate), "--conns", str(args.conns), "--sizes", args.body),
                *("--proxies", f"monolake-{args.loop},nginx", "--no-wrk", "--no-scaling", "--out", tmp),
            ]
        )
        if args.out:
            for path in Path(tmp).glob("*.json"):
                shutil.copyfile(path, args.out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
