"""Quick single-worker comparison against nginx, following DESIGN.md "Measuring".

    python bench/quick_compare.py [--seconds 10] [--rounds 2] [--rate 20000] [--body 128]

nginx origin (1 worker) and the load generator (h2load --h1 at a fixed rate) are
pinned to core 0; the proxy under test (nginx as reverse proxy with upstream
keepalive, or monolake with 1 worker) is pinned to core 1. CPU time per request
(user and sys) comes from /proc/PID/stat of the proxy's processes; latency from
h2load. Rounds alternate A/B and medians are printed. Only loopback is used.
The full harness (HAProxy, body sizes, plots) is bench/load/, a separate issue.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def cpu_of(pids: list[int]) -> tuple[float, float]:
    user = sys_ = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11]) / TCK
        sys_ += int(fields[12]) / TCK
    return user, sys_


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def nginx_conf(tmp: Path, name: str, body: str) -> Path:
    conf = tmp / f"{name}.conf"
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / f"{name}_{d}").mkdir(exist_ok=True)
    temps = "\n".join(
        f"  {d}_temp_path {tmp}/{name}_{d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temps}
  keepalive_requests 1000000;
  {body}
}}
"""
    )
    return conf


def start_pinned(cpu: int, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", str(cpu), *argv], **kw)  # type: ignore[call-overload]


def run_load(port: int, seconds: int, rate: int, conns: int) -> dict[str, float]:
    per_client = max(1, rate // conns)
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            "h2load",
            "--h1",
            "-c",
            str(conns),
            "-t",
            "1",
            f"--rps={per_client}",
            "-D",
            str(seconds),
            "--warm-up-time=1",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    assert m and lat, out

    def us(v: str) -> float:
        if v.endswith("us"):
            return float(v[:-2])
        if v.endswith("ms"):
            return float(v[:-2]) * 1000
        return float(v[:-1]) * 1e6

    return {"done": int(m.group(3)), "failed": int(m.group(5)), "mean_us": us(lat.group(3))}


def percentile_run(port: int, seconds: int, rate: int, conns: int) -> dict[str, float]:
    """h2load prints no percentiles; wrk2 is not packaged. Use h2load's --log-file."""
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        per_client = max(1, rate // conns)
        out = subprocess.run(
            [
                "taskset",
                "-c",
                "0",
                "h2load",
                "--h1",
                "-c",
                str(conns),
                "-t",
                "1",
                f"--rps={per_client}",
                "-D",
                str(seconds),
                "--warm-up-time=1",
                f"--log-file={log.name}",
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        lats = sorted(int(line.split()[2]) for line in open(log.name) if line.strip())
    m = re.search(r"(\d+) succeeded, (\d+) failed", out)
    assert m, out
    n = len(lats)
    return {
        "done": int(m.group(1)),
        "failed": int(m.group(2)),
        "p50_us": lats[n // 2] if n else 0.0,
        "p99_us": lats[int(n * 0.99)] if n else 0.0,
    }


def measure(pids: list[int], port: int, seconds: int, rate: int, conns: int) -> dict[str, float]:
    u0, s0 = cpu_of(pids)
    r = percentile_run(port, seconds, rate, conns)
    u1, s1 = cpu_of(pids)
    n = max(1, r["done"])
    return {
        **r,
        "user_us": (u1 - u0) * 1e6 / n,
        "sys_us": (s1 - s0) * 1e6 / n,
        "total_us": ((u1 - u0) + (s1 - s0)) * 1e6 / n,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--body", type=int, default=128)
    ap.add_argument("--loop", default="uvloop")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mlbench-"))
    tmp.chmod(0o755)  # nginx workers run unprivileged
    procs: list[subprocess.Popen[bytes]] = []
    try:
        origin_port, nginx_port, ml_port = free_port(), free_port(), free_port()
        (tmp / "www").mkdir()
        (tmp / "www" / "index.html").write_bytes(b"x" * args.body)
        oconf = nginx_conf(tmp, "origin", f"server {{ listen 127.0.0.1:{origin_port}; root {tmp}/www; }}")
        procs.append(start_pinned(0, ["nginx", "-c", str(oconf)]))
        pconf = nginx_conf(
            tmp,
            "proxy",
            f"""
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}
  server {{ listen 127.0.0.1:{nginx_port};
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}""",
        )
        nginx_proxy = start_pinned(1, ["nginx", "-c", str(pconf)])
        procs.append(nginx_proxy)
        mconf = tmp / "monolake.toml"
        mconf.write_text(f"""
[runtime]
workers = 1
cpu_affinity = false
loop = "{args.loop}"
[servers.bench]
listener = "127.0.0.1:{ml_port}"
[[servers.bench.routes]]
path = "/"
upstreams = [{{ endpoint = "http://127.0.0.1:{origin_port}" }}]
""")
        ml = start_pinned(1, [sys.executable, "-m", "monolake.cli", "run", "-c", str(mconf)], stderr=subprocess.DEVNULL)
        procs.append(ml)
        for p in (origin_port, nginx_port, ml_port):
            wait_port(p)
        nginx_pids = children(nginx_proxy.pid) + [nginx_proxy.pid]
        ml_pids = children(ml.pid) + [ml.pid]
        for port in (nginx_port, ml_port):  # warm both
            run_load(port, 2, args.rate, args.conns)
        results: dict[str, list[dict[str, float]]] = {"nginx": [], "monolake": []}
        for _ in range(args.rounds):
            results["nginx"].append(measure(nginx_pids, nginx_port, args.seconds, args.rate, args.conns))
            results["monolake"].append(measure(ml_pids, ml_port, args.seconds, args.rate, args.conns))
        summary = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
        print(
            f"body={args.body}B rate={args.rate}/s conns={args.conns} seconds={args.seconds} "
            f"rounds={args.rounds} loop={args.loop} (medians)"
        )
        print(f"{'proxy':10} {'user µs':>8} {'sys µs':>8} {'total µs':>9} {'p50 µs':>8} {'p99 µs':>8} {'failed':>7}")
        for name, s in summary.items():
            print(
                f"{name:10} {s['user_us']:8.1f} {s['sys_us']:8.1f} {s['total_us']:9.1f} "
                f"{s['p50_us']:8.0f} {s['p99_us']:8.0f} {s['failed']:7.0f}"
            )
        ratio = summary["monolake"]["total_us"] / summary["nginx"]["total_us"]
        print(
            f"monolake/nginx CPU per request: {ratio:.2f}x; "
            f"p99 ratio {summary['monolake']['p99_us'] / max(1, summary['nginx']['p99_us']):.2f}x"
        )
        if args.out:
            Path(args.out).write_text(json.dumps({"args": vars(args), "summary": summary, "runs": results}, indent=1))
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
