"""``python -m bench.hardening.slowloris``: slowloris connections against monolake and nginx in one run.

Each connection sends a request line, then one header byte every ``--interval`` seconds and never ends
its head. Both servers get the same header timeout (monolake ``header_timeout``, nginx
``client_header_timeout``) and their connections are opened at the same time, so they see the same
machine. For each server the run reports how many connections it closed, how (a 408 first, or a bare
close), and when, in seconds after the connection's first byte; a connection still open after
``--wait`` seconds counts as not closed. Results go to bench/results/hardening-slowloris-<UTC>.{json,md}.

A server that treats the header timeout as a deadline for the whole head (nginx; monolake since issue
17) closes every connection at about the timeout plus its timer granularity; one that restarts it on
every byte closes none while the bytes keep coming. ``--rev`` runs monolake as committed at a revision
(e.g. the one before the fix) instead of the working tree.

The figures are the servers' behaviour, not a speed: on a busy machine the close times stretch by the
scheduling delay of the server and of this client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.load import machine
from bench.load.configs import _nginx
from bench.load.procs import Procs, free_port, wait_port

RESULTS = machine.REPO / "bench" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.hardening.slowloris", description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=500, help="slowloris connections per server")
    ap.add_argument("--timeout", type=float, default=5.0, help="header timeout given to both servers (s)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between two header bytes")
    ap.add_argument("--wait", type=float, default=0.0, help="seconds to wait for closes (default 3 x timeout + 5)")
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio", "io_uring"], help="monolake's loop")
    ap.add_argument("--rev", help="run monolake as committed at this git revision instead of the working tree")
    ap.add_argument("--servers", default="monolake,nginx", help="comma-separated subset of monolake,nginx")
    ap.add_argument("--out", default=str(RESULTS), help="results directory")
    args = ap.parse_args(argv)
    if not args.wait:
        args.wait = 3 * args.timeout + 5
    return args


# -- servers -------------------------------------------------------------------------------


def monolake_conf(tmp: Path, port: int, loop: str, timeout: float) -> Path:
    conf = tmp / "monolake.toml"
    # The upstream is never reached: no head is ever complete.
    conf.write_text(f"""[runtime]
workers = 1
cpu_affinity = false
loop = "{loop}"
drain_timeout = 1.0

[upstreams.origin]
endpoints = [{{ endpoint = "http://127.0.0.1:9" }}]

[servers.slow]
listener = "127.0.0.1:{port}"
header_timeout = {timeout}
keepalive_timeout = {timeout}

[[servers.slow.routes]]
path = "/"
upstream = "origin"
""")
    return conf


def nginx_conf(tmp: Path, port: int, timeout: float) -> Path:
    return _nginx(
        tmp,
        "nginx_slow",
        f"""  client_header_timeout {round(timeout * 1000)}ms;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ return 200 "ok\\n"; }}
  }}""",
    )


# -- the slow client ------------------------------------------------------------------------


@dataclass
class Outcome:
    closed_after: float | None = None
    """Seconds from the connection's first byte to the server's close; None: still open at the end."""
    status: int | None = None
    """The status of a response read before the close (408 expected), None if none."""
    how: str = "open"
    """"response+close", "close", "reset", "open" (not closed in time) or "connect-failed"."""
    bytes_sent: int = 0


async def slow_connection(port: int, interval: float, wait: float, out: Outcome) -> None:
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        out.how = "connect-failed"
        return
    t0 = loop.time()
    end = t0 + wait
    got = b""
    try:
        writer.write(b"GET /slowloris HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
        out.bytes_sent = 47
        while True:
            left = end - loop.time()
            if left <= 0:
                return
            try:
                data = await asyncio.wait_for(reader.read(4096), min(interval, left))
            except TimeoutError:
                writer.write(b"s")
                out.bytes_sent += 1
                continue
            if data:
                got += data
                continue
            out.closed_after = loop.time() - t0
            out.how = "response+close" if got else "close"
            break
    except (ConnectionResetError, BrokenPipeError):
        out.closed_after = loop.time() - t0
        out.how = "reset" if not got else "response+close"
    finally:
        if got.startswith(b"HTTP/1.") and len(got) >= 12:
            out.status = int(got[9:12])
        writer.close()


async def attack(ports: dict[str, int], conns: int, interval: float, wait: float) -> dict[str, list[Outcome]]:
    outcomes = {name: [Outcome() for _ in range(conns)] for name in ports}
    tasks = []
    # Interleave the servers so both see connections arrive over the same span of time.
    for i in range(conns):
        for name, port in ports.items():
            tasks.append(asyncio.ensure_future(slow_connection(port, interval, wait, outcomes[name][i])))
        if i % 50 == 49:
            await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    return outcomes


def summarize(outs: list[Outcome], timeout: float) -> dict[str, Any]:
    closed = [o.closed_after for o in outs if o.closed_after is not None]
    hows: dict[str, int] = {}
    statuses: dict[str, int] = {}
    for o in outs:
        hows[o.how] = hows.get(o.how, 0) + 1
        key = str(o.status) if o.status is not None else "none"
        statuses[key] = statuses.get(key, 0) + 1
    doc: dict[str, Any] = {
        "connections": len(outs),
        "closed": len(closed),
        "still_open": sum(1 for o in outs if o.how == "open"),
        "how": hows,
        "status": statuses,
        "max_bytes_sent": max((o.bytes_sent for o in outs), default=0),
    }
    if closed:
        closed.sort()
        doc["closed_after_s"] = {
            "min": round(closed[0], 2),
            "median": round(statistics.median(closed), 2),
            "p99": round(closed[min(len(closed) - 1, int(len(closed) * 0.99))], 2),
            "max": round(closed[-1], 2),
        }
        doc["closed_within_2x_timeout"] = sum(1 for c in closed if c <= 2 * timeout)
    return doc


# -- the run --------------------------------------------------------------------------------


def write_report(doc: dict[str, Any], out_dir: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"hardening-slowloris-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    a = doc["args"]
    lines = [
        f"# Slowloris: {a['conns']} connections per server, header timeout {a['timeout']} s",
        "",
        f"`{doc['command']}` — {doc['started_utc']}, monolake {doc['monolake_source']} "
        f"({doc['machine']['monolake_commit']}), loop {a['loop']}, load average at start "
        f"{doc['loadavg_start']} / end {doc['loadavg_end']} on {doc['machine']['cores']} cores.",
        "",
        f"Each connection sends a request line, then one header byte every {a['interval']} s and never ends its "
        f"head; a connection still open {a['wait']} s after its first byte counts as not closed. Close times are "
        "seconds after the connection's first byte. Rough figures when the load average is high: close times "
        "stretch with scheduling delay.",
        "",
        "| server | closed | still open | answered | close after (s) min / median / p99 / max |",
        "|---|---|---|---|---|",
    ]
    for name, s in doc["results"].items():
        t = s.get("closed_after_s")
        times = f"{t['min']} / {t['median']} / {t['p99']} / {t['max']}" if t else "-"
        answered = ", ".join(f"{k}: {v}" for k, v in sorted(s["status"].items()))
        lines.append(f"| {name} | {s['closed']} / {s['connections']} | {s['still_open']} | {answered} | {times} |")
    lines.append("")
    base.with_suffix(".md").write_text("\n".join(lines))
    return base


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]
    if "nginx" in servers and shutil.which("nginx") is None:
        print("bench: nginx is not installed")
        return 2
    command = shlex.join(["python", "-m", "bench.hardening.slowloris", *(sys.argv[1:] if argv is None else argv)])
    print(f"bench: {command}", flush=True)
    started = datetime.now(UTC)
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    tmp = Path(tempfile.mkdtemp(prefix="monolake-bench-slowloris-"))
    tmp.chmod(0o755)
    src = None
    env = dict(os.environ)
    if args.rev:
        src = machine.extract(args.rev, tmp / "rev")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
    info = machine.info(args.rev, src)
    procs = Procs(tmp)
    ports: dict[str, int] = {}
    ok = False
    try:
        if "monolake" in servers:
            port = ports["monolake"] = free_port()
            conf = monolake_conf(tmp, port, args.loop, args.timeout)
            argv_m = [sys.executable, "-m", "monolake.cli", "run", "-c", str(conf)]
            proc = procs.start("monolake", argv_m, None, env=env)
            wait_port(port, alive=proc.popen)
            deadline = time.monotonic() + 20
            while b"monolake ready" not in proc.log.read_bytes():
                if time.monotonic() > deadline or not proc.alive():
                    raise RuntimeError(f"monolake did not start; see {proc.log}")
                time.sleep(0.05)
        if "nginx" in servers:
            port = ports["nginx"] = free_port()
            nginx = procs.start("nginx", ["nginx", "-c", str(nginx_conf(tmp, port, args.timeout))], None)
            wait_port(port, alive=nginx.popen)
        t0 = time.monotonic()
        outcomes = asyncio.run(attack(ports, args.conns, args.interval, args.wait))
        elapsed = time.monotonic() - t0
        ok = True
    finally:
        procs.stop_all()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"bench: process logs and configs kept in {tmp}")
    name_of = {"monolake": f"monolake ({args.rev})" if args.rev else "monolake", "nginx": "nginx"}
    doc = {
        "command": command,
        "started_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(elapsed, 1),
        "loadavg_start": loadavg_start,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "monolake_source": f"git archive {args.rev}" if args.rev else "working tree",
        "machine": info,
        "args": vars(args),
        "results": {name_of[n]: summarize(outs, args.timeout) for n, outs in outcomes.items()},
    }
    base = write_report(doc, Path(args.out))
    print(base.with_suffix(".md").read_text())
    print(f"bench: wrote {base}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
