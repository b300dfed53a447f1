"""gRPC unary and bidi streaming: monolake's gRPC server vs grpcio's asyncio server, one core each.

Run: python -m bench.rpc.grpc [--seconds 5] [--rounds 1] [--conc 16] [--only unary-h2load,bidi-monolake,...]

Each server runs alone on core 1 (taskset; monolake: one worker), the load generator on core 0:

- ``unary-h2load``: h2load (HTTP/2, ``-c 4 -m 16``, saturating) posting one gRPC frame (a 102-byte
  ``bench.Msg``) to ``/bench.Echo/Unary``: calls/s and p99 from its request log;
- ``unary-grpcio``: grpcio's asyncio client (``bench/rpc/grpc_client.py``), ``--conc`` callers back to back;
- ``bidi-grpcio``: the same client, ``--conc`` bidi streams each echoing one message at a time:
  messages/s and the p99 of a message's round trip;
- ``unary-monolake``, ``bidi-monolake``: the same with monolake's ``GrpcClient`` (uvloop) as the client:
  the client side, against both servers.

The servers (``bench/rpc/grpc_servers.py``) echo the message they parsed. The grpcio client is
itself slow (it may be the bottleneck: then both servers show about the same rate); h2load is
the fair saturating client for unary. Results: bench/results/grpc-<UTC time>.json and .md.
Timings never gate CI; quote them with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..load import machine
from ..load.procs import Procs, free_port, wait_port

RESULTS = machine.REPO / "bench" / "results"
SERVER_CPU, LOAD_CPU = 1, 0
SCENARIOS = ("unary-h2load", "unary-grpcio", "bidi-grpcio", "unary-monolake", "bidi-monolake")


def _frame(tmp: Path) -> Path:
    payload = b"x" * 100
    msg = b"\x0a" + bytes([len(payload)]) + payload  # bench.Msg{payload: 100 bytes}
    path = tmp / "grpc-unary.bin"
    path.write_bytes(b"\x00" + len(msg).to_bytes(4, "big") + msg)
    return path


def _pct(sorted_vals: list[int], q: float) -> float:
    return float(sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]) if sorted_vals else 0.0


def h2load_unary(port: int, seconds: int, frame: Path) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("r", prefix="h2load-", suffix=".log") as log:
        argv = ["taskset", "-c", str(LOAD_CPU), "h2load", "-t", "1", "-c", "4", "-m", "16", "-D", str(seconds)]
        argv += ["--warm-up-time=1", f"--log-file={log.name}", "-d", str(frame)]
        argv += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        argv.append(f"http://127.0.0.1:{port}/bench.Echo/Unary")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
        lats = sorted(int(line.split()[2]) for line in log if len(line.split()) >= 3)
    fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if not fin:
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    return {
        "calls_per_s": float(fin.group(3)),
        "p50_us": _pct(lats, 0.5),
        "p99_us": _pct(lats, 0.99),
        "ok_2xx": int(codes.group(1)) if codes else 0,
        "n": len(lats),
    }


def grpcio_client(mode: str, port: int, seconds: int, conc: int) -> dict[str, Any]:
    argv = ["taskset", "-c", str(LOAD_CPU), sys.executable, "-m", "bench.rpc.grpc_client", mode]
    argv += [f"127.0.0.1:{port}", str(seconds), str(conc)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, cwd=machine.REPO)
    if r.returncode != 0:
        raise RuntimeError(f"grpc_client failed: {r.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def check(port: int) -> None:
    """One call through grpcio first: the server answers OK (h2load cannot see a gRPC status)."""
    import grpc

    frame_msg = b"\x0a\x03abc"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        assert ch.unary_unary("/bench.Echo/Unary")(frame_msg, timeout=10) == frame_msg


def run(args: argparse.Namespace) -> dict[str, Any]:
    only = args.only.split(",") if args.only else list(SCENARIOS)
    results: dict[str, Any] = {"machine": machine.info(), "args": vars(args), "load_before": os.getloadavg()}
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as d:
        tmp = Path(d)
        frame = _frame(tmp)
        procs = Procs(tmp)
        try:
            for rnd in range(args.rounds):
                for server in ("monolake", "grpcio"):
                    port = free_port()
                    proc = procs.start(
                        server, [sys.executable, "-m", "bench.rpc.grpc_servers", server, str(port)], SERVER_CPU
                    )
                    try:
                        wait_port(port, alive=proc.popen)
                        check(port)
                        for scenario in only:
                            if scenario == "unary-h2load":
                                r = h2load_unary(port, args.seconds, frame)
                            else:
                                mode, client = scenario.split("-")
                                mode = mode if client == "grpcio" else f"ml-{mode}"
                                r = grpcio_client(mode, port, args.seconds, args.conc)
                            r.update(server=server, scenario=scenario, round=rnd, load=os.getloadavg()[0])
                            print(
                                f"{scenario:13} {server:9} round {rnd}: {r['calls_per_s']:9.0f} calls/s  "
                                f"p50 {r['p50_us'] / 1000:6.2f} ms  p99 {r['p99_us'] / 1000:6.2f} ms",
                                flush=True,
                            )
                            runs.append(r)
                    finally:
                        procs.stop(proc)
        finally:
            procs.stop_all()
    results["runs"] = runs
    results["load_after"] = os.getloadavg()
    return results


def markdown(results: dict[str, Any]) -> str:
    rows = ["| scenario | server | calls/s | p50 ms | p99 ms |", "|---|---|---:|---:|---:|"]
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results["runs"]:
        key = (r["scenario"], r["server"])
        if key not in best or r["calls_per_s"] > best[key]["calls_per_s"]:
            best[key] = r
    for (scenario, server), r in sorted(best.items()):
        rows.append(
            f"| {scenario} | {server} | {r['calls_per_s']:.0f} | {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} |"
        )
    ratios = []
    for scenario in SCENARIOS:
        a, b = best.get((scenario, "monolake")), best.get((scenario, "grpcio"))
        if a and b and b["calls_per_s"]:
            ratios.append(f"- {scenario}: monolake {a['calls_per_s'] / b['calls_per_s']:.2f}x grpcio's calls/s")
    load = results.get("load_before")
    return (
        "# gRPC server: monolake vs grpcio (asyncio), one core each\n\n"
        f"Load average before: {load}. Rough unless the machine was quiet; rerun with "
        "`python -m bench.rpc.grpc`.\n\n" + "\n".join(rows) + "\n\n" + "\n".join(ratios) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--conc", type=int, default=16)
    p.add_argument("--only", default="")
    args = p.parse_args(argv)
    missing = machine.missing_tools(["h2load"])
    if missing:
        print(f"missing tools: {missing}", file=sys.stderr)
        return 2
    results = run(args)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"grpc-{stamp}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"grpc-{stamp}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
