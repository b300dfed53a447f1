"""Why a request costs more CPU at a low offered rate: the same proxy at two rates, per request and per wake-up.

Run: python -m bench.lowrate [--rates 4000,20000] [--seconds 6] [--rounds 2] [--conns 50]
[--proxies monolake-uvloop,monolake-io_uring,nginx]

The bench.https plain-HTTP set-up (an nginx origin and ``h2load --h1`` on core 0, one proxy worker on core 1,
50 keep-alive connections, GET of a 128-byte body), run at each rate, proxies and rates interleaved. Over a
window inside the main phase, from /proc of the worker:

- CPU per request two ways: ``utime+stime`` (tick-sampled, what bench.load and bench.https quote) and
  ``/proc/PID/schedstat``'s run time (the scheduler's exact ns on CPU);
- wake-ups per request: the worker's voluntary context switches (each one is the event loop blocking in
  epoll_wait / io_uring_enter with nothing to do, then waking), so requests per wake-up = the batch the
  loop gets;
- ``perf stat -e instructions,cycles`` of the worker over the same window when the CPU exposes hardware
  counters (many VMs do not: then it says so).

A proxy whose per-request CPU rises at the low rate while its wake-ups per request rise too pays a fixed
cost per wake-up (loop iteration, epoll, the scheduler's switch, caches refilled after the idle gap); the
fit ``cpu/req = a + b * wakeups/req`` over the two rates gives that cost ``b`` and the per-request part ``a``.

Without hardware counters, ``cold_penalty`` answers "same instructions, more cycles?" directly: the CPU
time of one fixed piece of interpreter work right after an idle gap of 0.2, 2.5 and 12.5 ms (the gap
between a connection's requests at 20k and 4k req/s over 50 connections) against the same work right
after it.

Results: bench/results/lowrate-<UTC time>.json and .md. Timings never gate CI.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import https
from .load import configs, drive, machine
from .load.procs import Procs, cpu_of, free_port, perf_counters, wait_port

PROXIES = {"monolake-uvloop": "uvloop", "monolake-io_uring": "io_uring", "nginx": None}


def sample(pid: int) -> dict[str, float]:
    """The worker's CPU (tick-sampled and exact) and context switches, now."""
    user, sys_ = cpu_of([pid])
    tasks = os.listdir(f"/proc/{pid}/task")
    run_ns = sum(int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0]) for t in tasks)
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {
        "t": time.time(),
        "user": user,
        "sys": sys_,
        "run": run_ns / 1e9,
        "vol": float(status["voluntary_ctxt_switches"]),
        "invol": float(status["nonvoluntary_ctxt_switches"]),
        "threads": float(len(tasks)),
    }


def one(
    args: argparse.Namespace,
    procs: Procs,
    tmp: Path,
    name: str,
    rate: int,
    conns: int,
    origin: Any,
    origin_port: int,
    rnd: int,
) -> dict[str, Any]:
    port = free_port()
    loop = PROXIES[name]
    if loop is None:
        proc = procs.start(name, ["nginx", "-c", str(https.nginx_conf(tmp, name, port, origin_port, None))], 1)
        wait_port(port, alive=proc.popen)
    else:
        conf = https.monolake_conf(tmp, name, port, origin_port, None, (tmp, tmp), loop=loop)
        proc = https.start_conf(procs, name, conf, port)
    try:
        https.probe(port, False)
        pid = https.worker_pid(proc)
        marks: dict[str, Any] = {}

        def window() -> None:
            time.sleep(1.7)  # h2load's 1 s warm-up and connection set-up behind us
            marks["a"] = sample(pid)
            span = args.seconds - 1.2  # ends before h2load's main phase does
            marks["perf"] = perf_counters(pid, span)
            time.sleep(max(0.0, marks["a"]["t"] + span - time.time()))
            marks["b"] = sample(pid)

        sampler = threading.Thread(target=window)
        sampler.start()
        r: dict[str, Any] = drive.h2load_fixed(
            f"http://127.0.0.1:{port}/body/128", args.seconds, rate, conns, proc.pids(), origin.pids(), cpu=0
        )
        sampler.join()
    finally:
        procs.stop(proc)
    a, b = marks["a"], marks["b"]
    n = max(1.0, r["achieved_rps"] * (b["t"] - a["t"]))
    out = {
        "proxy": name,
        "rate": rate,
        "conns": conns,
        "round": rnd,
        "achieved_rps": r["achieved_rps"],
        "kept_up": r["kept_up"],
        "p50_us": r["p50_us"],
        "p99_us": r["p99_us"],
        "failed": r["failed"] + r["errored"] + r["non_2xx"],
        "tick_us": r["total_us"],
        "user_us": r["user_us"],
        "sys_us": r["sys_us"],
        "run_us": (b["run"] - a["run"]) * 1e6 / n,
        "wakeups_per_req": (b["vol"] - a["vol"]) / n,
        "preempted_per_req": (b["invol"] - a["invol"]) / n,
        "others_cpu1": r["others_busy_pct"]["cpu1"],
        "threads": b["threads"],
        "h2load_window_requests": r["cpu_window_requests"],
        "h2load_window_s": r["cpu_window_s"],
        "window_requests": n,
        "window_s": b["t"] - a["t"],
    }
    perf = marks.get("perf")
    if perf:
        out["instructions_per_req"] = perf.get("instructions", 0.0) / n
        out["cycles_per_req"] = perf.get("cycles", 0.0) / n
    print(
        f"{name:18} {rate:6} req/s x {conns:3} conns round {rnd}: {out['tick_us']:.1f} µs/req "
        f"(ticks; user {out['user_us']:.1f}), "
        f"{out['run_us']:.1f} µs/req on CPU (schedstat), {out['wakeups_per_req']:.3f} wake-ups/req, "
        f"p50 {out['p50_us'] / 1000:.2f} ms, {out['achieved_rps']:.0f} req/s"
        + (f", {out['instructions_per_req']:.0f} instr/req" if "instructions_per_req" in out else ""),
        flush=True,
    )
    return out


def _work() -> int:
    """A fixed piece of interpreter work (~10 µs hot): dicts, tuples, bytes, splits."""
    d: dict[str, tuple[int, bytes]] = {}
    for i in range(60):
        d[str(i)] = (i, b"x" * 10)
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".split(b"\r\n")
    return len(d)


def cold_penalty(cpu: int = 1, gaps_ms: tuple[float, ...] = (0.0, 0.2, 2.5, 12.5)) -> list[dict[str, float]]:
    """The same instructions after an idle gap (no hardware counters needed): CPU time (thread_time) of
    the first and the second ``_work()`` after sleeping ``gap`` ms, pinned to the proxy's core. What the
    first costs above the second is the price of running cold (caches and TLB refilled after other work
    ran or the core idled, frequency ramp-up) that a proxy pays per wake-up and per connection touched."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    out = []
    try:
        for gap in gaps_ms:
            first: list[int] = []
            second: list[int] = []
            for _ in range(int(min(2000, 1500 / (gap + 0.05)))):
                if gap:
                    time.sleep(gap / 1000)
                t0 = time.thread_time_ns()
                _work()
                t1 = time.thread_time_ns()
                _work()
                first.append(t1 - t0)
                second.append(time.thread_time_ns() - t1)
            out.append(
                {
                    "gap_ms": gap,
                    "first_us": statistics.median(first) / 1000,
                    "second_us": statistics.median(second) / 1000,
                }
            )
    finally:
        os.sched_setaffinity(0, before)
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    keys = ("tick_us", "user_us", "sys_us", "run_us", "wakeups_per_req", "preempted_per_req", "p50_us", "p99_us")
    keys += ("achieved_rps", "others_cpu1", "instructions_per_req", "cycles_per_req")
    out: dict[str, list[dict[str, Any]]] = {}
    for name in dict.fromkeys(r["proxy"] for r in runs):
        for rate, conns in dict.fromkeys((r["rate"], r["conns"]) for r in runs):
            rs = [r for r in runs if r["proxy"] == name and (r["rate"], r["conns"]) == (rate, conns)]
            med = {k: statistics.median(float(r[k]) for r in rs) for k in keys if all(k in r for r in rs)}
            med["kept_up"] = all(r["kept_up"] for r in rs)
            out.setdefault(name, []).append({"rate": rate, "conns": conns, **med})
    return out


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# CPU per request at a low and a high offered rate (plain HTTP/1.1 proxy, 128 B)",
        "",
        f"`python -m bench.lowrate {f'--points {args.points}' if args.points else f'--rates {args.rates}'} "
        f"--seconds {args.seconds} --rounds {args.rounds} --conns {args.conns}`; {results.get('when', '?')} UTC; "
        "commit "
        f"{results['machine'].get('monolake_commit', '?')}; medians of {args.rounds} interleaved rounds; "
        f"load average at start and end {results['loadavg']}; monolake ran {results['build']}.",
        "",
        "ticks = utime+stime from /proc (what bench.load/bench.https quote); on CPU = schedstat run time (exact); "
        "wake-ups = the worker's voluntary context switches (the loop blocked with nothing to do, then woke); "
        "⚠ = did not complete the offered rate (the worker's core was saturated: its CPU per request is then "
        "the busy-loop cost, not the offered rate's).",
        "",
        "| proxy | rate | conns | ms between a connection's requests | µs/req (ticks) | user | sys "
        "| µs/req on CPU | wake-ups/req | req/wake-up | p50 ms | req/s done | instr/req | others' % core 1 |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, rows in results["summary"].items():
        for r in rows:
            w = r["wakeups_per_req"]
            ins = f"{r['instructions_per_req']:.0f}" if "instructions_per_req" in r else "n/a"
            lines.append(
                f"| {name} | {r['rate']} | {r['conns']} | {1000 * r['conns'] / r['rate']:.1f} | {r['tick_us']:.1f} "
                f"| {r['user_us']:.1f} | {r['sys_us']:.1f} "
                f"| {r['run_us']:.1f} | {w:.3f} | {1 / w if w else 0:.1f} | {r['p50_us'] / 1000:.2f} "
                f"| {r['achieved_rps']:.0f}{'' if r['kept_up'] else ' ⚠'} | {ins} "
                f"| {r['others_cpu1']:.0f} |"
            )
    cold = results.get("cold_penalty")
    if cold:
        lines += [
            "",
            "The same interpreter work (bench.lowrate._work) after an idle gap, on the proxy's core: CPU µs of the "
            "first call after the gap and of the second right after it (thread_time, medians):",
            "",
            "| idle gap ms | first call µs | second call µs |",
            "|--:|--:|--:|",
            *[f"| {c['gap_ms']:g} | {c['first_us']:.1f} | {c['second_us']:.1f} |" for c in cold],
        ]
    if not results.get("hw_counters"):
        lines += ["", "perf: this CPU exposes no hardware counters (instructions, cycles): not supported here."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lowrate", description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="4000,20000")
    ap.add_argument(
        "--points",
        default="",
        help="rate x connections pairs instead of --rates at --conns, e.g. 4000x50,4000x10,20000x50,20000x250",
    )
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--proxies", default=",".join(PROXIES))
    ap.add_argument("--out", default=str(https.RESULTS))
    args = ap.parse_args(argv)
    missing = machine.missing_tools(["nginx", "h2load"])
    if missing:
        print(f"bench.lowrate: missing tools {missing}; run python -m bench.load --setup", file=sys.stderr)
        return 2
    points = [(int(x), args.conns) for x in args.rates.split(",")]
    if args.points:
        points = [(int(r), int(c)) for r, _, c in (p.partition("x") for p in args.points.split(","))]
    names = [p for p in PROXIES if p in args.proxies.split(",")]
    results: dict[str, Any] = {"machine": machine.info(), "args": vars(args), "runs": []}
    results["loadavg"] = [[round(x, 2) for x in os.getloadavg()]]
    results["when"] = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
    results["build"] = https.compiled_build()
    with tempfile.TemporaryDirectory(prefix="bench-lowrate-") as d:
        tmp = Path(d)
        tmp.chmod(0o755)
        procs = Procs(tmp)
        try:
            origin_port = free_port()
            origin = procs.start("origin", ["nginx", "-c", str(configs.origin(tmp, origin_port, ["128"]))], 0)
            wait_port(origin_port, alive=origin.popen)
            for rnd in range(args.rounds):
                for rate, conns in points if rnd % 2 == 0 else points[::-1]:
                    for name in names if rnd % 2 == 0 else names[::-1]:
                        results["runs"].append(one(args, procs, tmp, name, rate, conns, origin, origin_port, rnd))
        finally:
            procs.stop_all()
    results["loadavg"].append([round(x, 2) for x in os.getloadavg()])
    results["cold_penalty"] = cold_penalty()
    results["summary"] = summarize(results["runs"])
    results["hw_counters"] = any("instructions_per_req" in r for r in results["runs"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"lowrate-{stamp}.json").write_text(json.dumps(results, indent=1, default=str))
    md = markdown(results, args)
    (out / f"lowrate-{stamp}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
