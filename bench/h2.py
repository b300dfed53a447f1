"""HTTP/2 and gRPC through monolake vs nginx: CPU µs per request at a fixed offered rate.

Run: python -m bench.h2 [--seconds 4] [--rounds 7] [--rate 8000] [--grpc-rate 2000] [--only h2|grpc]
[--proxies nginx,monolake-native,...] [--baseline OTHER_TREE/src]

Two scenarios, each measured the way bench/load measures HTTP/1.1 (DESIGN.md, "Measuring"): origin
and load generator on core 0, the proxy (one worker) on core 1, CPU over a window inside the main
phase, A/B rounds interleaved, medians quoted. What keeps two runs of one build within a few %:

- CPU time from /proc/PID/task/TID/schedstat (ns), not /proc/PID/stat's 10 ms ticks (at 1000
  calls/s over a 3 s window one tick was 3 µs per call; the ticks only split user from sys);
- rates where each proxy's CPU per request is dominated by its own work rather than by one wake-up
  per request (8000 req/s, 2000 gRPC calls/s; the grpcio origin needs ~30 % of core 0 at 2000);
- the ratio to nginx taken per round (both measured minutes apart at most, under the same other
  load on the machine) and its median over the rounds, not the ratio of the medians; each round
  starts with a different proxy; rounds where a proxy fell behind the offered rate are left out
  of the ratio (it batches more per wake-up and looks cheaper).

On a shared machine the absolute µs move with the other load (nginx's h2 figure went from 25 to
35 µs under a load average of 7); the per-round ratio moves much less. Quote the load average.

- ``h2``: h2load (HTTP/2 prior knowledge, ``-c 10 -m 10``) GET of a 128 B body; the proxy speaks h2c
  to the client and HTTP/1.1 keep-alive to an nginx origin. nginx: ``listen ... http2`` and
  ``proxy_pass`` with upstream keepalive. monolake: once per codec (``MONOLAKE_H2_CODEC``: ``h2``, the
  pure-Python reference, and ``native``, libnghttp2, when built).
- ``grpc``: unary calls (a 100-byte message echoed) from h2load posting a gRPC frame; the origin is a
  grpcio server (generic handler, bytes in and out); nginx uses ``grpc_pass`` with keepalive,
  monolake an h2c upstream.

Results: bench/results/h2-<UTC time>.json and .md, and h2-latest.md. Timings never gate CI.

``--profile N``: instead of the comparison, N seconds of ``py-spy record --native`` (500 Hz) of the
monolake worker (native codec) in each scenario at the same offered rate; collapsed stacks and a
summary (self time by frame, inclusive time by monolake function) in bench/results/h2-profile-<time>.*.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .load import configs, machine
from .load.drive import KEEP_UP
from .load.procs import Proc, Procs, core_busy, core_times, cpu_of, free_port, wait_port

RESULTS = machine.REPO / "bench" / "results"
ORIGIN_CPU, PROXY_CPU, LOAD_CPU = 0, 1, 0
KEEPALIVE = 128
"""Idle upstream connections each proxy keeps (nginx ``keepalive``, monolake ``max_idle_per_key``):
above h2load's 100 concurrent streams (10 connections x 10). At 64, a burst of streams (h2load
catching up after being descheduled) made both proxies close and reopen upstream connections, a
cost that came and went with the machine's other load."""

GRPC_ORIGIN = """
import sys
from concurrent import futures
import grpc

def echo(request, context):
    return request

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""


def nginx_h2(tmp: Path, port: int, origin_port: int) -> Path:
    return configs._nginx(
        tmp,
        "nginx-h2",
        f"""  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive {KEEPALIVE}; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} http2;
    http2_max_concurrent_streams 128;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_max_temp_file_size 0;
    }}
  }}""",
    )


def nginx_grpc(tmp: Path, port: int, origin_port: int) -> Path:
    return configs._nginx(
        tmp,
        "nginx-grpc",
        f"""  upstream grpc_origin {{ server 127.0.0.1:{origin_port}; keepalive {KEEPALIVE};
    keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} http2;
    http2_max_concurrent_streams 128;
    location / {{ grpc_pass grpc://grpc_origin; }}
  }}""",
    )


def monolake_conf(tmp: Path, name: str, port: int, origin_port: int, upstream_protocol: str) -> Path:
    conf = tmp / f"{name}.toml"
    proto = f'protocol = "{upstream_protocol}"\n' if upstream_protocol != "http1" else ""
    conf.write_text(f"""[runtime]
workers = 1
cpu_affinity = false
drain_timeout = 2.0

[upstreams.origin]
endpoints = [{{ endpoint = "http://127.0.0.1:{origin_port}" }}]
max_idle_per_key = {KEEPALIVE}
{proto}
[servers.bench]
listener = "127.0.0.1:{port}"

[[servers.bench.routes]]
path = "/"
upstream = "origin"
""")
    return conf


def grpc_frame(tmp: Path, size: int = 100) -> Path:
    path = tmp / "grpc-request.bin"
    path.write_bytes(b"\x00" + size.to_bytes(4, "big") + b"x" * size)
    return path


def _proxy_pids(proc: Proc) -> list[int]:
    return proc.pids()


def run_ns(pids: list[int]) -> int:
    """CPU time (user + sys, ns) of the processes' threads from /proc/PID/task/TID/schedstat: exact,
    where /proc/PID/stat counts 10 ms ticks (at 1000 calls/s over 3 s one tick is 3 µs per call)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


def h2load_window(
    url: str,
    seconds: float,
    rate: int,
    conns: int,
    proxy: Proc,
    origin: Proc,
    extra: tuple[str, ...],
) -> dict[str, Any]:
    """``h2load`` (HTTP/2, ``-m 10``) at ``rate`` req/s over ``conns`` connections, 1 s of warm-up, the
    proxy's CPU over a window inside the main phase divided by the requests completed in it.

    As ``bench.load.drive.h2load_fixed``, except that the CPU total is schedstat's (ns), split into
    user and sys by the tick counters' ratio, and that the window starts 0.5 s into the main phase."""
    per_client = max(1, rate // conns)
    with tempfile.NamedTemporaryFile("r", prefix="h2load-", suffix=".log") as log:
        argv = ["taskset", "-c", str(LOAD_CPU), "h2load", *extra, "-t", "1", "-c", str(conns), "-m", "10",
                f"--rps={per_client}", "-D", str(seconds), "--warm-up-time=1", f"--log-file={log.name}",
                url]  # fmt: skip
        launched = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(max(0.0, launched + 1.5 - time.monotonic()))
            # The process trees are read at the window's start, not before the load: nginx forks its
            # worker after it listens, and a list taken too early left the worker out (0 µs rounds).
            pids = proxy.pids()
            gen = [*origin.pids(), proc.pid]
            t0, c0, (u0, s0), n0, g0 = time.time(), core_times(), cpu_of(pids), run_ns(pids), run_ns(gen)
            time.sleep(max(0.1, launched + 1.0 + seconds - 0.3 - time.monotonic()))
            t1, c1, (u1, s1), n1, g1 = time.time(), core_times(), cpu_of(pids), run_ns(pids), run_ns(gen)
            out, err = proc.communicate(timeout=seconds + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lats: list[int] = []
        in_window = 0
        lo, hi = int(t0 * 1e6), int(t1 * 1e6)
        for line in log:
            parts = line.split()
            if len(parts) >= 3:
                lat = int(parts[2])
                lats.append(lat)
                if lo <= int(parts[0]) + lat < hi:
                    in_window += 1
    if proc.returncode != 0:
        raise RuntimeError(f"h2load failed ({proc.returncode}): {err.strip()[-500:]} {out[-500:]}")
    fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    req = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (fin and req and codes):
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    lats.sort()
    offered = per_client * conns
    achieved = float(fin.group(3))
    n = max(1, in_window)
    window = max(1e-6, t1 - t0)
    total_us = (n1 - n0) / 1e3 / n
    ticks = (u1 - u0) + (s1 - s0)
    user_share = (u1 - u0) / ticks if ticks else 0.5
    busy = core_busy(c0, c1)
    proxy_pct = 100.0 * (n1 - n0) / 1e9 / window
    gen_pct = 100.0 * (g1 - g0) / 1e9 / window

    def pct(q: float) -> float:
        return float(lats[min(len(lats) - 1, int(len(lats) * q))]) if lats else 0.0

    return {
        "offered_rps": offered,
        "achieved_rps": achieved,
        "kept_up": achieved >= KEEP_UP * offered,
        "done": int(req.group(3)),
        "succeeded": int(req.group(4)),
        "failed": int(req.group(5)),
        "errored": int(req.group(6)),
        "non_2xx": int(codes.group(2)) + int(codes.group(3)) + int(codes.group(4)),
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": float(lats[-1]) if lats else 0.0,
        "cpu_window_s": round(window, 3),
        "cpu_window_requests": in_window,
        "user_us": total_us * user_share,
        "sys_us": total_us * (1.0 - user_share),
        "total_us": total_us,
        "total_us_ticks": ticks * 1e6 / n,  # /proc/PID/stat's 10 ms ticks, what the bench used before
        "proxy_cpu_pct": round(proxy_pct, 1),
        "origin_and_h2load_cpu_pct": round(gen_pct, 1),
        "cores_busy_pct": busy,
        "others_busy_pct": {
            "cpu0": round(max(0.0, busy.get(f"cpu{LOAD_CPU}", 0.0) - gen_pct), 1),
            "cpu1": round(max(0.0, busy.get(f"cpu{PROXY_CPU}", 0.0) - proxy_pct), 1),
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine.info(), "args": vars(args), "runs": []}
    codecs = ["h2"]
    try:
        from monolake.core.proto.http2 import native_available

        if native_available():
            codecs.append("native")
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as d:
        tmp = Path(d)
        tmp.chmod(0o755)  # nginx's worker (nobody) serves the origin's files from here
        procs = Procs(tmp)
        try:
            if args.only in (None, "h2"):
                results["runs"] += _scenario_h2(args, procs, tmp, codecs)
            if args.only in (None, "grpc"):
                results["runs"] += _scenario_grpc(args, procs, tmp, codecs)
        finally:
            procs.stop_all()
    return results


def _monolake(procs: Procs, tmp: Path, name: str, conf: Path, codec: str, src: str | None = None) -> Proc:
    env = dict(os.environ, MONOLAKE_H2_CODEC=codec)
    if src:
        env["PYTHONPATH"] = src
    return procs.start(name, [sys.executable, "-m", "monolake.product.cli", "run", "-c", str(conf)], PROXY_CPU, env=env)


def _measure(
    args: argparse.Namespace,
    procs: Procs,
    scenario: str,
    starters: dict[str, Any],
    origin: Proc,
    rate: int,
    extra: tuple[str, ...],
    path: str,
) -> list[dict[str, Any]]:
    if args.proxies:
        starters = {k: v for k, v in starters.items() if k in args.proxies.split(",")}
    out = []
    names = list(starters)
    for rnd in range(args.rounds):
        # Each round starts with a different proxy: a drift in the machine's load (other work, the
        # origin warming up) then falls on every proxy alike instead of always on the same one.
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            start = starters[name]
            port = free_port()
            proc = start(port)
            try:
                wait_port(port, alive=proc.popen)
                r = h2load_window(f"http://127.0.0.1:{port}{path}", args.seconds, rate, 10, proc, origin, extra)
            finally:
                procs.stop(proc)
            r.update(scenario=scenario, proxy=name, round=rnd, loadavg=os.getloadavg()[0])
            print(
                f"{scenario:5} {name:18} round {rnd}: {r['user_us']:.1f} user + {r['sys_us']:.1f} sys µs/req, "
                f"p99 {r['p99_us'] / 1000:.2f} ms, {r['achieved_rps']:.0f}/{r['offered_rps']} req/s, "
                f"others on the proxy's core {r['others_busy_pct']['cpu1']}%, "
                f"failed {r['failed']} errored {r['errored']} non-2xx {r['non_2xx']}",
                flush=True,
            )
            out.append(r)
    return out


def _scenario_h2(args: argparse.Namespace, procs: Procs, tmp: Path, codecs: list[str]) -> list[dict[str, Any]]:
    origin_port = free_port()
    origin = procs.start("origin", ["nginx", "-c", str(configs.origin(tmp, origin_port, ["128"]))], ORIGIN_CPU)
    wait_port(origin_port, alive=origin.popen)
    starters: dict[str, Any] = {
        "nginx": lambda port: procs.start(
            "nginx-h2", ["nginx", "-c", str(nginx_h2(tmp, port, origin_port))], PROXY_CPU
        ),
    }
    for codec in codecs:
        starters[f"monolake-{codec}"] = lambda port, codec=codec: _monolake(
            procs, tmp, f"monolake-h2-{codec}", monolake_conf(tmp, f"h2-{codec}", port, origin_port, "http1"), codec
        )
    if args.baseline:
        starters["monolake-baseline"] = lambda port: _monolake(
            procs,
            tmp,
            "monolake-h2-baseline",
            monolake_conf(tmp, "h2-baseline", port, origin_port, "http1"),
            "native",
            args.baseline,
        )
    try:
        return _measure(args, procs, "h2", starters, origin, args.rate, (), "/body/128")
    finally:
        procs.stop(origin)


def _scenario_grpc(args: argparse.Namespace, procs: Procs, tmp: Path, codecs: list[str]) -> list[dict[str, Any]]:
    origin_port = free_port()
    script = tmp / "grpc_origin.py"
    script.write_text(GRPC_ORIGIN)
    origin = procs.start("grpc-origin", [sys.executable, str(script), str(origin_port)], ORIGIN_CPU)
    wait_port(origin_port, alive=origin.popen)
    frame = grpc_frame(tmp)
    starters: dict[str, Any] = {
        "nginx": lambda port: procs.start(
            "nginx-grpc", ["nginx", "-c", str(nginx_grpc(tmp, port, origin_port))], PROXY_CPU
        ),
    }
    for codec in codecs:
        starters[f"monolake-{codec}"] = lambda port, codec=codec: _monolake(
            procs, tmp, f"monolake-grpc-{codec}", monolake_conf(tmp, f"grpc-{codec}", port, origin_port, "h2c"), codec
        )
    if args.baseline:
        starters["monolake-baseline"] = lambda port: _monolake(
            procs,
            tmp,
            "monolake-grpc-baseline",
            monolake_conf(tmp, "grpc-baseline", port, origin_port, "h2c"),
            "native",
            args.baseline,
        )
    extra = ("-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers")
    try:
        return _measure(args, procs, "grpc", starters, origin, args.grpc_rate, extra, "/bench.Echo/Echo")
    finally:
        procs.stop(origin)


def profile(args: argparse.Namespace) -> dict[str, Any]:
    """py-spy on the monolake worker (native codec) while h2load offers each scenario's load."""
    out: dict[str, Any] = {"machine": machine.info(), "args": vars(args), "loadavg": [os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as d:
        tmp = Path(d)
        tmp.chmod(0o755)
        procs = Procs(tmp)
        try:
            for scenario in ("h2", "grpc"):
                if args.only not in (None, scenario):
                    continue
                origin_port = free_port()
                if scenario == "h2":
                    conf = configs.origin(tmp, origin_port, ["128"])
                    origin = procs.start("origin", ["nginx", "-c", str(conf)], ORIGIN_CPU)
                    extra: tuple[str, ...] = ()
                    path, rate, upstream = "/body/128", args.rate, "http1"
                else:
                    script = tmp / "grpc_origin.py"
                    script.write_text(GRPC_ORIGIN)
                    origin = procs.start("grpc-origin", [sys.executable, str(script), str(origin_port)], ORIGIN_CPU)
                    frame = grpc_frame(tmp)
                    extra = ("-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers")
                    path, rate, upstream = "/bench.Echo/Echo", args.grpc_rate, "h2c"
                wait_port(origin_port, alive=origin.popen)
                port = free_port()
                conf = monolake_conf(tmp, f"prof-{scenario}", port, origin_port, upstream)
                proc = _monolake(procs, tmp, f"monolake-prof-{scenario}", conf, "native")
                stacks = tmp / f"{scenario}.stacks"
                try:
                    wait_port(port, alive=proc.popen)
                    load = subprocess.Popen(
                        ["taskset", "-c", str(LOAD_CPU), "h2load", *extra, "-t", "1", "-c", "10", "-m", "10",
                         f"--rps={max(1, rate // 10)}", "-D", str(args.profile + 3), f"http://127.0.0.1:{port}{path}"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    try:
                        time.sleep(1.5)  # past h2load's connection set-up
                        subprocess.run(
                            ["py-spy", "record", "--native", "-r", "500", "-d", str(args.profile), "-f", "raw",
                             "-o", str(stacks), "-p", str(proc.pids()[-1])],
                            capture_output=True, timeout=args.profile + 60, check=False,
                        )  # fmt: skip
                    finally:
                        load.wait(timeout=args.profile + 60)
                finally:
                    procs.stop(proc)
                    procs.stop(origin)
                if stacks.exists():
                    raw = stacks.read_text()
                    out[scenario] = summarize_stacks(raw)
                    out[scenario]["stacks"] = raw
        finally:
            procs.stop_all()
    out["loadavg"].append(os.getloadavg())
    return out


SYSCALLS = ("read (libc", "write (libc", "writev (libc", "sendmsg", "recvmsg", "send (libc", "recv (libc")


def summarize_stacks(raw: str) -> dict[str, Any]:
    """Collapsed stacks -> busy samples (not waiting in epoll); self time by leaf frame; inclusive
    time by monolake/asyncio function (a sample counts once for each function in its stack)."""
    self_time: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[-1].startswith("epoll_"):
            idle += n
            continue
        total += n
        leaf = frames[-1]
        self_time["system call" if any(k in leaf for k in SYSCALLS) else leaf] += n
        seen = set()
        for f in frames:
            if "monolake/" in f or "asyncio/" in f or "CPyDef" in f:
                name = f.split(" (")[0]
                if name not in seen:
                    seen.add(name)
                    incl[name] += n
    pct = 100.0 / max(1, total)
    return {
        "samples": total,
        "idle_samples": idle,
        "top_self": [(f, round(n * pct, 1)) for f, n in self_time.most_common(30)],
        "top_inclusive": [(f, round(n * pct, 1)) for f, n in incl.most_common(40)],
    }


def profile_markdown(res: dict[str, Any], args: argparse.Namespace) -> str:
    la = res["loadavg"]
    lines = [
        "# Profile of a monolake worker under HTTP/2 load (native codec)",
        "",
        f"`python -m bench.h2 --profile {args.profile} --rate {args.rate} --grpc-rate {args.grpc_rate}`: py-spy "
        f"--native at 500 Hz; load average {[round(x, 2) for x in la[0]]} -> {[round(x, 2) for x in la[-1]]}; "
        f"commit {res['machine'].get('monolake_commit', '?')}. Shares are of busy samples (not in epoll).",
    ]
    for scenario in ("h2", "grpc"):
        p = res.get(scenario)
        if not p:
            continue
        lines += ["", f"## {scenario}: {p['samples']} busy samples, {p['idle_samples']} idle", ""]
        lines += ["| self time | share |", "|---|--:|"]
        lines += [f"| `{f}` | {v}% |" for f, v in p["top_self"][:20]]
        lines += ["", "| inclusive (monolake, asyncio) | share |", "|---|--:|"]
        lines += [f"| `{f}` | {v}% |" for f, v in p["top_inclusive"][:30]]
    return "\n".join(lines) + "\n"


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for scenario in dict.fromkeys(r["scenario"] for r in runs):
        # A round without CPU (a process tree read wrong) says nothing: left out.
        mine = [r for r in runs if r["scenario"] == scenario and r["total_us"] > 0]
        med: dict[str, dict[str, float]] = {}
        for name in dict.fromkeys(r["proxy"] for r in mine):
            rs = [r for r in mine if r["proxy"] == name]
            med[name] = {
                k: statistics.median(float(r[k]) for r in rs) for k in ("user_us", "sys_us", "total_us", "p99_us")
            }
            med[name]["kept_up"] = float(all(r["kept_up"] for r in rs))
            med[name]["failed"] = float(sum(int(r["failed"]) + int(r["errored"]) + int(r["non_2xx"]) for r in rs))
        base_p99 = med.get("nginx", {}).get("p99_us") or 0.0
        nginx_by_round = {r["round"]: r for r in mine if r["proxy"] == "nginx"}
        for name, m in med.items():
            # Paired: each round's figure over nginx's in the same round, then the median of those
            # ratios (a slow drift of the machine cancels out within a round). Rounds where either
            # fell behind the offered rate are left out when others remain: a proxy that falls
            # behind batches more per wake-up and looks cheaper per request.
            pairs = [
                (r, nginx_by_round[r["round"]]) for r in mine if r["proxy"] == name and r["round"] in nginx_by_round
            ]
            good = [(r, n) for r, n in pairs if r["kept_up"] and n["kept_up"]] or pairs
            ratios = sorted(float(r["total_us"]) / float(n["total_us"]) for r, n in good if n["total_us"])
            m["ratio_rounds"] = float(len(ratios))
            totals = [float(r["total_us"]) for r in mine if r["proxy"] == name]
            rows.append(
                {
                    "scenario": scenario,
                    "proxy": name,
                    **m,
                    "vs_nginx": statistics.median(ratios) if ratios else 0.0,
                    "vs_nginx_min": ratios[0] if ratios else 0.0,
                    "vs_nginx_max": ratios[-1] if ratios else 0.0,
                    "spread": (max(totals) - min(totals)) / m["total_us"] if m["total_us"] else 0.0,
                    "p99_vs_nginx": m["p99_us"] / base_p99 if base_p99 else 0.0,
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    la = info.get("loadavg_run") or []
    load = " -> ".join(f"{x:.2f}" for x in la) or "?"
    lines = [
        "# HTTP/2 and gRPC through monolake vs nginx",
        "",
        f"`python -m bench.h2 --seconds {args.seconds} --rounds {args.rounds} --rate {args.rate} "
        f"--grpc-rate {args.grpc_rate}`; medians of {args.rounds} interleaved rounds; "
        f"commit {info.get('monolake_commit', '?')}; load average {load}.",
        "",
        "CPU from schedstat (ns) over a window of each round's main phase. *vs nginx* is the median of the "
        "rounds' ratios to nginx in the same round (range and rounds used beside it: rounds where either fell "
        "behind the offered rate are left out); *spread* is (max - min) / median of the proxy's own total over "
        "the rounds.",
        "",
        "| scenario | proxy | user µs/req | sys µs/req | total µs/req | vs nginx | p99 ms | p99 vs nginx "
        "| kept up | failed | ratio range | spread |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['proxy']} | {r['user_us']:.1f} | {r['sys_us']:.1f} | {r['total_us']:.1f} "
            f"| {r['vs_nginx']:.2f}x | {r['p99_us'] / 1000:.2f} | {r['p99_vs_nginx']:.2f}x "
            f"| {'yes' if r['kept_up'] else 'no'} | {int(r['failed'])} "
            f"| {r.get('vs_nginx_min', 0.0):.2f}-{r.get('vs_nginx_max', 0.0):.2f} ({int(r.get('ratio_rounds', 0))}) "
            f"| {100 * r.get('spread', 0.0):.0f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.h2", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--rate", type=int, default=8000, help="h2 scenario: offered req/s over 10 connections")
    ap.add_argument("--grpc-rate", type=int, default=2000, help="grpc scenario: offered calls/s")
    ap.add_argument("--only", choices=["h2", "grpc"])
    ap.add_argument("--proxies", help="comma-separated subset of nginx,monolake-h2,monolake-native")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument(
        "--baseline", help="another tree's src/ (PYTHONPATH) run as 'monolake-baseline' (native codec), for an A/B"
    )
    ap.add_argument("--profile", type=int, default=0, help="seconds of py-spy per scenario instead of the comparison")
    args = ap.parse_args(argv)
    missing = machine.missing_tools(["nginx", "h2load"])
    if missing:
        print(f"bench.h2: missing tools {missing}; run python -m bench.load --setup", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        if shutil.which("py-spy") is None:
            print("bench.h2: --profile needs py-spy", file=sys.stderr)
            return 2
        res = profile(args)
        for scenario in ("h2", "grpc"):
            if scenario in res:
                (out / f"h2-profile-{stamp}-{scenario}.stacks").write_text(res[scenario].pop("stacks"))
        (out / f"h2-profile-{stamp}.json").write_text(json.dumps(res, indent=1, default=str))
        md = profile_markdown(res, args)
        (out / f"h2-profile-{stamp}.md").write_text(md)
        print(md)
        return 0
    load0 = os.getloadavg()[0]
    results = run(args)
    results["machine"]["loadavg_run"] = [load0, os.getloadavg()[0]]
    rows = summarize(results["runs"])
    results["summary"] = rows
    (out / f"h2-{stamp}.json").write_text(json.dumps(results, indent=1, default=str))
    md = markdown(rows, results["machine"], args)
    (out / f"h2-{stamp}.md").write_text(md)
    (out / "h2-latest.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
