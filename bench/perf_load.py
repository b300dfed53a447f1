"""Where a worker's CPU goes under bench.load, by ``perf record -g`` (compiled functions by name).

    python -m bench.perf_load [--seconds 8] [--rate 20000] [--conns 50] [--size 128] [--proxy monolake-uvloop]
                              [--out bench/results]

An nginx origin and h2load on core 0, the proxy (1 worker, full features of bench.load: four routes
with the matched one last, a request header set, X-Forwarded-*, a pooled keep-alive upstream, access
log off) on core 1, as bench.load. ``perf record -g --call-graph dwarf`` samples the worker for
``--seconds`` while h2load offers ``--rate`` req/s of ``--size`` GETs; the samples are summarised by
``bench.perf_summary`` (top self and inclusive, and the callees of the main per-request functions;
first of the user-space samples, then of all)
into ``perf-load-<UTC time>-<size>.txt`` under ``--out``. Needs perf, nginx, h2load and a compiled
build (``MONOLAKE_COMPILE_INPLACE=1 python setup.py build_ext --inplace`` in a checkout).
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

from bench.load import configs, run
from bench.load.procs import Procs, free_port, wait_port

LOAD_CPU = 0

FOCUS = [
    "CPyDef_server____http____serve_HttpConnection_gen_____mypyc_generator_helper__",
    "CPyDef__proxy_____call___3_HttpProxy_gen_____mypyc_generator_helper__",
    "CPyDef__upstream___UpstreamCluster___send_h1",
    "CPyDef_server____http___HttpConnection___data_received",
    "CPyDef_client____http___UpstreamConnection___data_received",
    "CPyDef__parse___ResponseReader____native",
    "CPyDef__parse___RequestReader___feed",
    "CPyDef_server____http___HttpConnection____send",
    "CPyDef__parse___RequestReader____native_request",
    "CPyDef_server____http___HttpConnection___request_received",
    "CPyDef__upstream____h1_head",
    "CPyDef_client____http___UpstreamConnection___request",
    "CPyDef_client____http___UpstreamConnection___response_complete",
]


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf_load")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--size", default="128")
    ap.add_argument("--freq", type=int, default=1999)
    ap.add_argument("--proxy", default="monolake-uvloop", choices=sorted(configs.PROXIES))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    for tool in ("perf", "nginx", "h2load"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise SystemExit(f"{tool} is needed")
    load_start = [round(x, 2) for x in os.getloadavg()]
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    tmp = Path(tempfile.mkdtemp(prefix="monolake-perf-"))
    tmp.chmod(0o755)
    procs = Procs(tmp)
    data = tmp / "perf.data"
    try:
        origin_port = free_port()
        origin = procs.start("origin", ["nginx", "-c", str(configs.origin(tmp, origin_port, [args.size]))], 0)
        wait_port(origin_port, alive=origin.popen)
        proc, port, _ = run.start_proxy(procs, tmp, configs.PROXIES[args.proxy], origin_port)
        url = f"http://127.0.0.1:{port}/body/{args.size}"
        load = subprocess.Popen(
            ["taskset", "-c", str(LOAD_CPU), "h2load", "--h1", "-t", "1", "-c", str(args.conns),
             f"--rps={max(1, args.rate // args.conns)}", "-D", str(args.seconds + 3), url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(1.5)
            subprocess.run(
                ["perf", "record", "-F", str(args.freq), "--call-graph", "dwarf,16384", "-o", str(data),
                 "-p", str(proc.pids()[-1]), "--", "sleep", str(args.seconds)],
                capture_output=True, timeout=args.seconds + 120, check=False,
            )  # fmt: skip
        finally:
            load.wait(timeout=args.seconds + 60)
    finally:
        procs.stop_all()
    load_end = [round(x, 2) for x in os.getloadavg()]
    if not data.exists():
        raise SystemExit("perf wrote nothing")
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,tid,ip,sym"], capture_output=True, text=True, check=True
    ).stdout
    summary = ""
    for extra in (["--user"], []):
        summary += subprocess.run(
            [sys.executable, "-m", "bench.perf_summary", "--top", "40", *extra, "--focus", *FOCUS],
            input=script,
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
        summary += "\n\n"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"perf-load-{when}-{args.size}.txt"
    head = (
        f"# perf record -g of a {args.proxy} worker under {args.rate} req/s of {args.size} B GETs "
        f"({args.conns} conns, {args.seconds} s, {args.freq} Hz, dwarf unwinding); load average "
        f"{load_start} -> {load_end}; {when}\n"
    )
    path.write_text(head + summary)
    print(f"bench: {path}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
