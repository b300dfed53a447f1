"""Where a compiled worker's time goes: py-spy --native on monolake (uvloop, full features of
bench.load) at a fixed rate, the compiled hot path and the same install with MONOLAKE_PURE=1.

    python -m bench.profile_compiled [--seconds 10] [--rate 8000] [--conns 50] [--out bench/results]

An nginx origin and h2load on core 0, the proxy (1 worker) on core 1, as bench.load; py-spy
records the worker at 500 Hz for ``--seconds`` while h2load offers ``--rate`` req/s of 128 B
GETs. Writes ``compiled-profile-<UTC time>.md`` (shares of the busy samples by code group,
and the top frames by self time) and the raw collapsed stacks next to it. Needs py-spy, nginx,
h2load and a compiled build.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.https import summarize_stacks
from bench.load import configs, run
from bench.load.procs import Procs, free_port, wait_port

LOAD_CPU = 0


def profile(args: argparse.Namespace, procs: Procs, tmp: Path, pure: bool, origin_port: int) -> dict[str, Any]:
    kind = configs.PROXIES["monolake-uvloop-pure" if pure else "monolake-uvloop"]
    proc, port, _ = run.start_proxy(procs, tmp, kind, origin_port)
    stacks = tmp / f"{kind.name}.stacks"
    try:
        url = f"http://127.0.0.1:{port}/body/128"
        load = subprocess.Popen(
            ["taskset", "-c", str(LOAD_CPU), "h2load", "--h1", "-t", "1", "-c", str(args.conns),
             f"--rps={max(1, args.rate // args.conns)}", "-D", str(args.seconds + 3), url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(1.5)
            subprocess.run(
                ["py-spy", "record", "--native", "-r", "500", "-d", str(args.seconds), "-f", "raw",
                 "-o", str(stacks), "-p", str(proc.pids()[-1])],
                capture_output=True, timeout=args.seconds + 60, check=False,
            )  # fmt: skip
        finally:
            load.wait(timeout=args.seconds + 60)
    finally:
        procs.stop(proc)
    if not stacks.exists():
        return {"error": "py-spy wrote nothing"}
    raw = stacks.read_text()
    out: dict[str, Any] = summarize_stacks(raw)
    out["stacks"] = stacks
    out["where"] = where(raw)
    return out


def where(raw: str) -> dict[str, float]:
    """Busy samples by where their leaf frame is: a system call, compiled monolake code (mypyc's
    ``__native__hotpath.c``), monolake's own ``.py``, httptools, the interpreter or other C.
    (Compiled frames are named ``CPyDef_<module>___<function>``, not by path, so the path
    groups of summarize_stacks do not see them.)"""
    from bench.https import SYSCALL_LEAVES

    counts: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or stack.split(";")[-1].startswith("epoll_"):
            continue
        n, leaf = int(count), stack.split(";")[-1]
        total += n
        if any(k in leaf for k in SYSCALL_LEAVES):
            key = "system call (read/write/send/recv)"
        elif "__native__hotpath" in leaf:
            key = "compiled monolake code (mypyc)"
        elif "monolake/" in leaf:
            key = "monolake .py (interpreted)"
        elif "parser.c" in leaf or "httptools" in leaf or "llhttp" in leaf:
            key = "httptools / llhttp"
        elif "libpython" in leaf or "object.h" in leaf or ".py:" in leaf or "pythoncapi" in leaf:
            key = "CPython runtime (refcounts, dicts, calls, other .py)"
        else:
            key = "other native (uvloop, libc, ...)"
        counts[key] = counts.get(key, 0) + n
    return {k: round(100.0 * v / max(1, total), 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_compiled")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rate", type=int, default=8000)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    for tool in ("py-spy", "nginx", "h2load"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise SystemExit(f"{tool} is needed")
    load_start = [round(x, 2) for x in os.getloadavg()]
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    tmp = Path(tempfile.mkdtemp(prefix="monolake-profile-"))
    tmp.chmod(0o755)
    procs = Procs(tmp)
    results: dict[str, dict[str, Any]] = {}
    try:
        origin_port = free_port()
        origin = procs.start("origin", ["nginx", "-c", str(configs.origin(tmp, origin_port, ["128"]))], 0)
        wait_port(origin_port, alive=origin.popen)
        for pure in (False, True):
            results["pure" if pure else "compiled"] = profile(args, procs, tmp, pure, origin_port)
    finally:
        procs.stop_all()
    load_end = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Profile of a monolake worker, compiled vs pure hot path ({when})",
        "",
        f"`python -m bench.profile_compiled --seconds {args.seconds} --rate {args.rate} --conns {args.conns}`: "
        f"uvloop, 1 worker on core 1, nginx origin and h2load on core 0, {args.rate} req/s of 128 B offered; "
        f"py-spy --native at 500 Hz. Load average {load_start} -> {load_end}. Group shares are inclusive "
        "(a sample counts for each group with a frame in its stack), of the busy samples.",
    ]
    for name, prof in results.items():
        lines += ["", f"## {name}", ""]
        if "error" in prof:
            lines.append(f"error: {prof['error']}")
            continue
        stacks = args.out / f"compiled-profile-{when}-{name}.stacks"
        shutil.copy(prof["stacks"], stacks)
        lines += [f"{prof['samples']} busy samples ({prof['idle_samples']} idle); stacks: {stacks.name}", ""]
        lines += ["| leaf frame in | share |", "|---|--:|"]
        lines += [f"| {k} | {v}% |" for k, v in prof["where"].items()]
        lines += ["", "| group | share |", "|---|--:|"]
        lines += [f"| {g} | {p}% |" for g, p in prof["groups_pct"].items()]
        lines += ["", "| top frames by self time | share |", "|---|--:|"]
        lines += [f"| `{f[:110]}` | {p}% |" for f, p in prof["top_self"][:20]]
    path = args.out / f"compiled-profile-{when}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"bench: {path}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
