"""HTTP/2 and gRPC through monolake vs nginx: CPU µs per request at a fixed offered rate.

Run: python -m bench.h2 [--seconds 6] [--rounds 2] [--rate 3000] [--grpc-rate 1000] [--only h2|grpc]
[--proxies nginx,monolake-native,...] [--baseline OTHER_TREE/src]

Two scenarios, each measured the way bench/load measures HTTP/1.1 (DESIGN.md, "Measuring"): origin
and load generator on core 0, the proxy (one worker) on core 1, CPU from /proc over a window inside
the main phase, A/B rounds interleaved, medians quoted.

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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .load import configs, drive, machine
from .load.procs import Proc, Procs, free_port, wait_port

RESULTS = machine.REPO / "bench" / "results"
ORIGIN_CPU, PROXY_CPU, LOAD_CPU = 0, 1, 0

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
        f"""  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; keepalive_requests 1000000; }}
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
        f"""  upstream grpc_origin {{ server 127.0.0.1:{origin_port}; keepalive 64; keepalive_requests 1000000; }}
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
    for rnd in range(args.rounds):
        for name, start in starters.items():
            port = free_port()
            proc = start(port)
            try:
                wait_port(port, alive=proc.popen)
                r = drive.h2load_fixed(
                    f"http://127.0.0.1:{port}{path}",
                    args.seconds,
                    rate,
                    10,
                    proc.pids(),
                    origin.pids(),
                    cpu=LOAD_CPU,
                    h1=False,
                    extra=("-m", "10", *extra),
                )
            finally:
                procs.stop(proc)
            r.update(scenario=scenario, proxy=name, round=rnd)
            print(
                f"{scenario:5} {name:18} round {rnd}: {r['user_us']:.1f} user + {r['sys_us']:.1f} sys µs/req, "
                f"p99 {r['p99_us'] / 1000:.2f} ms, {r['achieved_rps']:.0f}/{r['offered_rps']} req/s, "
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
        mine = [r for r in runs if r["scenario"] == scenario]
        med: dict[str, dict[str, float]] = {}
        for name in dict.fromkeys(r["proxy"] for r in mine):
            rs = [r for r in mine if r["proxy"] == name]
            med[name] = {
                k: statistics.median(float(r[k]) for r in rs) for k in ("user_us", "sys_us", "total_us", "p99_us")
            }
            med[name]["kept_up"] = float(all(r["kept_up"] for r in rs))
            med[name]["failed"] = float(sum(int(r["failed"]) + int(r["errored"]) + int(r["non_2xx"]) for r in rs))
        base = med.get("nginx", {}).get("total_us") or 0.0
        base_p99 = med.get("nginx", {}).get("p99_us") or 0.0
        for name, m in med.items():
            rows.append(
                {
                    "scenario": scenario,
                    "proxy": name,
                    **m,
                    "vs_nginx": m["total_us"] / base if base else 0.0,
                    "p99_vs_nginx": m["p99_us"] / base_p99 if base_p99 else 0.0,
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# HTTP/2 and gRPC through monolake vs nginx",
        "",
        f"`python -m bench.h2 --seconds {args.seconds} --rounds {args.rounds} --rate {args.rate} "
        f"--grpc-rate {args.grpc_rate}`; medians of {args.rounds} interleaved rounds; "
        f"commit {info.get('monolake_commit', '?')}.",
        "",
        "| scenario | proxy | user µs/req | sys µs/req | total µs/req | vs nginx | p99 ms | p99 vs nginx "
        "| kept up | failed |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['proxy']} | {r['user_us']:.1f} | {r['sys_us']:.1f} | {r['total_us']:.1f} "
            f"| {r['vs_nginx']:.2f}x | {r['p99_us'] / 1000:.2f} | {r['p99_vs_nginx']:.2f}x "
            f"| {'yes' if r['kept_up'] else 'no'} | {int(r['failed'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.h2", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=int, default=3000, help="h2 scenario: offered req/s over 10 connections")
    ap.add_argument("--grpc-rate", type=int, default=1000, help="grpc scenario: offered calls/s")
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
    results = run(args)
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
