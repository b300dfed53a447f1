"""gRPC unary and bidi streaming: monolake's gRPC server vs grpcio's asyncio server, one core each.

Run: python -m bench.rpc.grpc [--seconds 5] [--rounds 1] [--only unary-h2load,bidi-raw,...] [--out DIR]

Each server runs alone on core 1 (taskset; monolake: one worker), the load generator on core 0:

- ``unary-h2load``: h2load (HTTP/2, ``-c 4 -m 16``, saturating) posting one gRPC frame (a 102-byte
  ``bench.Msg``) to ``/bench.Echo/Unary``: calls/s, p99 from its request log, the server's CPU per call;
- ``bidi-raw``: ``bench/rpc/grpc_load.py``, raw HTTP/2 with pre-encoded frames (far cheaper per
  message than either server), ``--conns`` x ``--streams`` bidi streams with ``--depth`` messages in
  flight each: messages/s and the server's CPU per message;
- ``unary-rate``, ``bidi-rate``: the same client at a fixed ``--unary-rate`` calls/s / ``--rate``
  messages/s: the server's CPU per call (user+sys of all its processes, /proc) and p50/p99 timed from
  when each call was due;
- ``unary-grpcio``, ``bidi-grpcio``: grpcio's asyncio client (``bench/rpc/grpc_client.py``), ``--conc``
  callers / streams, one call or message in flight each (that client is itself the bottleneck);
- ``unary-monolake``, ``bidi-monolake``: the same with monolake's ``GrpcClient`` (uvloop): the client
  side, against both servers.

The servers (``bench/rpc/grpc_servers.py``) echo the message they parsed. Results:
bench/results/grpc-<UTC time>.json, .md and .png. Timings never gate CI; quote them with the
machine's load (CPU per call is the figure that holds on a shared machine).
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
from ..load.procs import Procs, cpu_of, free_port, wait_port

RESULTS = machine.REPO / "bench" / "results"
SERVER_CPU, LOAD_CPU = 1, 0
SCENARIOS = (
    "unary-h2load", "bidi-raw", "unary-rate", "bidi-rate",
    "unary-grpcio", "bidi-grpcio", "unary-monolake", "bidi-monolake",
)  # fmt: skip
RAW = {"bidi-raw": "bidi-saturate", "unary-rate": "unary-rate", "bidi-rate": "bidi-rate"}


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


def raw_load(scenario: str, port: int, seconds: int, args: argparse.Namespace, pids: list[int]) -> dict[str, Any]:
    """``bench/rpc/grpc_load.py`` (raw HTTP/2, cheap per message) and the server's CPU over its run."""
    mode = RAW[scenario]
    arg = {"bidi-saturate": args.depth, "bidi-rate": args.rate, "unary-rate": args.unary_rate}[mode]
    argv = ["taskset", "-c", str(LOAD_CPU), sys.executable, "-m", "bench.rpc.grpc_load", mode, str(port)]
    argv += [str(seconds), str(arg), "--conns", str(args.conns), "--streams", str(args.streams)]
    cpu0 = sum(cpu_of(pids))
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 90, cwd=machine.REPO)
    cpu = sum(cpu_of(pids)) - cpu0
    if r.returncode != 0:
        raise RuntimeError(f"grpc_load failed: {r.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    if mode == "bidi-saturate":
        n = res["msgs_per_s"] * seconds
        res["calls_per_s"] = res["msgs_per_s"]
        res["p50_us"] = res["p99_us"] = float("nan")  # saturation: latency is the queue's, not reported
    else:
        n = res.get("msgs", res.get("calls", 0))
        res["calls_per_s"] = arg
    res["server_cpu_us_per_call"] = cpu / n * 1e6 if n else float("nan")
    res["client_cpu_us_per_call"] = res["client_cpu_s"] / n * 1e6 if n else float("nan")
    return res


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
                            cpu0 = sum(cpu_of(proc.pids()))
                            if scenario == "unary-h2load":
                                r = h2load_unary(port, args.seconds, frame)
                                # h2load's warm-up second runs at the same rate and is in the CPU time
                                calls = r["calls_per_s"] * (args.seconds + 1)
                                r["server_cpu_us_per_call"] = (sum(cpu_of(proc.pids())) - cpu0) / calls * 1e6
                            elif scenario in RAW:
                                r = raw_load(scenario, port, args.seconds, args, proc.pids())
                            else:
                                mode, client = scenario.split("-")
                                mode = mode if client == "grpcio" else f"ml-{mode}"
                                r = grpcio_client(mode, port, args.seconds, args.conc)
                            r.update(server=server, scenario=scenario, round=rnd, load=os.getloadavg()[0])
                            print(
                                f"{scenario:13} {server:9} round {rnd}: {r['calls_per_s']:9.0f} calls/s  "
                                f"p50 {r['p50_us'] / 1000:6.2f} ms  p99 {r['p99_us'] / 1000:6.2f} ms  "
                                f"server {r.get('server_cpu_us_per_call', float('nan')):6.1f} µs/call",
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


def _best(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (scenario, server): the best round on each measure (the least disturbed by the machine)."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results["runs"]:
        key = (r["scenario"], r["server"])
        b = best.get(key)
        if b is None:
            best[key] = dict(r)
            continue
        b["calls_per_s"] = max(b["calls_per_s"], r["calls_per_s"])
        for k in ("p50_us", "p99_us", "server_cpu_us_per_call"):
            v, old = r.get(k), b.get(k)
            if v is not None and v == v:  # not NaN
                b[k] = v if old is None or old != old else min(old, v)
    return best


def markdown(results: dict[str, Any]) -> str:
    rows = [
        "| scenario | server | calls/s | server CPU µs/call | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    best = _best(results)
    for (scenario, server), r in sorted(best.items(), key=lambda kv: (SCENARIOS.index(kv[0][0]), kv[0][1])):
        cpu = r.get("server_cpu_us_per_call", float("nan"))
        rows.append(
            f"| {scenario} | {server} | {r['calls_per_s']:.0f} | {cpu:.1f} | {r['p50_us'] / 1000:.2f} | "
            f"{r['p99_us'] / 1000:.2f} |"
        )
    ratios = []
    for scenario in SCENARIOS:
        a, b = best.get((scenario, "monolake")), best.get((scenario, "grpcio"))
        if not (a and b):
            continue
        if scenario in ("unary-rate", "bidi-rate"):
            ca, cb = a.get("server_cpu_us_per_call"), b.get("server_cpu_us_per_call")
            if ca and cb:
                ratios.append(f"- {scenario}: grpcio's server CPU per call is {cb / ca:.2f}x monolake's")
        elif b["calls_per_s"]:
            ratios.append(f"- {scenario}: monolake {a['calls_per_s'] / b['calls_per_s']:.2f}x grpcio's calls/s")
    load = results.get("load_before")
    a = results["args"]
    return (
        "# gRPC server: monolake vs grpcio (asyncio), one core each\n\n"
        f"Load average before: {load}. Rough unless the machine was quiet; rerun with "
        "`python -m bench.rpc.grpc`. Server on core 1, load on core 0. `unary-h2load`: h2load -c 4 -m 16; "
        f"`bidi-raw`: bench/rpc/grpc_load.py (raw HTTP/2), {a['conns']} connections x {a['streams']} bidi streams, "
        f"{a['depth']} messages in flight each (messages/s); `unary-rate` / `bidi-rate`: the same client at a "
        f"fixed {a['unary_rate']:g} calls/s / {a['rate']:g} messages/s, the server's CPU per call (user+sys, "
        "all its processes, from /proc) and p50/p99 timed from when each was due; `*-grpcio` / `*-monolake`: "
        "grpcio's and monolake's own clients, "
        f"{a['conc']} callers (the client side; those clients are the bottleneck).\n\n"
        + "\n".join(rows)
        + "\n\n"
        + "\n".join(ratios)
        + "\n"
    )


def plot(results: dict[str, Any], path: Path) -> bool:
    """Calls/s at saturation and server CPU µs per call at the fixed rates, monolake vs grpcio."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing, no plot")
        return False
    best = _best(results)
    panels = [
        (["unary-h2load", "bidi-raw"], "calls_per_s", "calls (messages)/s at saturation, higher is better"),
        (["unary-rate", "bidi-rate"], "server_cpu_us_per_call", "server CPU µs/call at a fixed rate, lower is better"),
        (["unary-rate", "bidi-rate"], "p99_us", "p99 µs at a fixed rate, lower is better"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (scen, key, title) in zip(axes, panels, strict=True):
        for j, server in enumerate(("monolake", "grpcio")):
            vals = [best.get((sc, server), {}).get(key, 0.0) for sc in scen]
            xs = [i + (j - 0.5) * 0.38 for i in range(len(scen))]
            ax.bar(xs, vals, width=0.38, label=server, color="#1f77b4" if server == "monolake" else "#aaaaaa",
                   edgecolor="black", linewidth=0.4)  # fmt: skip
            for x, v in zip(xs, vals, strict=True):
                ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(scen)), scen, fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    load = results.get("load_before") or (0.0,)
    fig.suptitle(f"gRPC echo, one server core each (load average {load[0]:.2f} on {os.cpu_count()} CPUs: rough)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--conc", type=int, default=16)
    p.add_argument("--only", default="")
    p.add_argument("--out", default=str(RESULTS), help="where the JSON, MD and PNG go")
    p.add_argument("--depth", type=int, default=16, help="bidi-raw: messages in flight per stream")
    p.add_argument("--rate", type=float, default=2000.0, help="bidi-rate: messages/s")
    p.add_argument("--unary-rate", type=float, default=1000.0, help="unary-rate: calls/s")
    p.add_argument("--conns", type=int, default=2, help="bidi-raw, *-rate: connections")
    p.add_argument("--streams", type=int, default=8, help="bidi-raw, bidi-rate: streams per connection")
    args = p.parse_args(argv)
    missing = machine.missing_tools(["h2load"])
    if missing:
        print(f"missing tools: {missing}", file=sys.stderr)
        return 2
    results = run(args)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"grpc-{stamp}.json").write_text(json.dumps(results, indent=2))
    (out / f"grpc-{stamp}.md").write_text(markdown(results))
    plot(results, out / f"grpc-{stamp}.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
