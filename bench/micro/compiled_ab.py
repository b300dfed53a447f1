"""A/B of the compiled (mypyc) and the pure-Python hot path on bench/micro/proxy_path.py.

    python bench/micro/compiled_ab.py [--pairs 3] [-n 20000] [--loop uvloop] [--filters none,sync] [--out DIR]

Runs proxy_path.py in child processes, alternating the same install with and without
``MONOLAKE_PURE=1`` (which imports the hot-path modules from their ``.py``), ``--pairs``
times per filter setting, and prints the µs of Python per proxied request of each run
and their medians. Needs a compiled build (``monolake version``: ``compiled``); with
``--out`` it also writes ``compiled-ab-micro-<UTC time>.json`` and ``.md`` there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
LINE = re.compile(r": ([0-9.]+) µs of Python per proxied request")


def one(pure: bool, n: int, loop: str, filters: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "MONOLAKE_PURE"}
    if pure:
        env["MONOLAKE_PURE"] = "1"
    argv = [sys.executable, str(HERE / "proxy_path.py"), "-n", str(n), "--repeat", "3", "--loop", loop]
    out = subprocess.run([*argv, "--filters", filters], env=env, capture_output=True, text=True, timeout=600)
    m = LINE.search(out.stdout)
    if out.returncode != 0 or m is None:
        raise SystemExit(f"proxy_path.py failed ({'pure' if pure else 'compiled'}): {out.stderr or out.stdout}")
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("--filters", default="none,sync", help="comma-separated proxy_path.py --filters values")
    ap.add_argument("--out", type=Path, help="write the JSON and MD results into this directory")
    args = ap.parse_args()
    check = "from monolake.core import _compiled as c; print(c.COMPILED, c.WHY_PURE)"
    status = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60).stdout.strip()
    if not status.startswith("True"):
        raise SystemExit(f"the hot path is not compiled here: {status}")
    load_start = os.getloadavg()
    rows = []
    for filters in args.filters.split(","):
        runs: dict[str, list[float]] = {"compiled": [], "pure": []}
        for _ in range(args.pairs):
            runs["pure"].append(one(True, args.n, args.loop, filters))
            runs["compiled"].append(one(False, args.n, args.loop, filters))
        pure, compiled = statistics.median(runs["pure"]), statistics.median(runs["compiled"])
        rows.append({"filters": filters, "runs": runs, "pure": pure, "compiled": compiled})
        print(
            f"{args.loop} filters={filters}: pure {pure:.2f} µs, compiled {compiled:.2f} µs "
            f"({(compiled / pure - 1) * 100:+.0f}%); runs pure {runs['pure']}, compiled {runs['compiled']}",
            flush=True,
        )
    load_end = os.getloadavg()
    if args.out:
        when = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
        doc = {
            "when": when,
            "command": " ".join(["python", "bench/micro/compiled_ab.py", *sys.argv[1:]]),
            "loop": args.loop,
            "n": args.n,
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in load_end],
            "rows": rows,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"compiled-ab-micro-{when}.json").write_text(json.dumps(doc, indent=1) + "\n")
        lines = [
            f"# Compiled vs pure hot path, bench/micro/proxy_path.py ({when})",
            "",
            f"`{doc['command']}`; µs of Python per proxied request (no sockets), best of 3 per run, median of "
            f"{args.pairs} alternated runs; load average {doc['loadavg_start']} -> {doc['loadavg_end']}.",
            "",
            "| filters | pure µs | compiled µs | change | pure runs | compiled runs |",
            "|---|--:|--:|--:|---|---|",
        ]
        for r in rows:
            change = (r["compiled"] / r["pure"] - 1) * 100
            lines.append(
                f"| {r['filters']} | {r['pure']:.2f} | {r['compiled']:.2f} | {change:+.0f}% "
                f"| {', '.join(f'{x:.2f}' for x in r['runs']['pure'])} "
                f"| {', '.join(f'{x:.2f}' for x in r['runs']['compiled'])} |"
            )
        (args.out / f"compiled-ab-micro-{when}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
