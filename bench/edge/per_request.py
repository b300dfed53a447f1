"""Added CPU per request of each edge built-in: a route with the feature vs the same route
without it, in the same run (the ``bench/micro/proxy_path.py`` harness: the real server →
proxy → upstream client path over fake transports, so only Python work is measured).

    python -m bench.edge.per_request [--loop uvloop|asyncio] [-n 20000] [--repeat 3] [--only tracing]

(An A/B of two trees, as the tracing numbers in docs/edge.md were taken: run it with ``--only`` under
each tree's ``PYTHONPATH=TREE/src:.``, alternating, and compare the "added" columns.)

Rows: the plain route, then one per feature (request_id; cors on an allowed origin;
compress choosing gzip for a 128-byte response under min_length, i.e. negotiation and
Vary only; compress with min_length 0, which gzips the 128 bytes; ip_rules with an
allow list; tracing at 100% and 0% sampling, whose export thread's CPU (it runs in the same
process: encoding the batches and POSTing them to a collector that discards them, a subprocess
whose CPU is not counted) is in the "process" column, and that thread's own CPU in "export"; the
access log as text vs JSON with the default format, written to
/dev/null). Each row's delta is against the plain route measured in the same run.
Rough on a busy machine: compare deltas, rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.micro.proxy_path import BODY, Harness
from monolake.apps.config import parse_config

REQUEST = (
    b"GET /api/v1/items?id=7 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nCookie: a=b\r\n"
    b"Origin: https://app.example.com\r\n\r\n"
)

FEATURES: dict[str, dict[str, Any]] = {
    "plain": {},
    "request_id": {"filters": ["request_id"]},
    "cors": {"filters": [{"use": "cors", "args": {"allow_origins": ["https://app.example.com"]}}]},
    "compress (negotiate, under min_length)": {"filters": ["compress"]},
    "compress (gzip 128 B)": {"filters": [{"use": "compress", "args": {"min_length": 0, "encodings": ["gzip"]}}]},
    "ip_rules": {"filters": [{"use": "ip_rules", "args": {"allow": ["127.0.0.0/8", "10.0.0.0/8"]}}]},
    "tracing (100% sampled)": {"filters": [{"use": "tracing", "args": {"endpoint": "SINK", "export_interval": 0.1}}]},
    "tracing (0% sampled)": {"filters": [{"use": "tracing", "args": {"endpoint": "SINK", "sample_ratio": 0.0}}]},
    "access log text": {"log": "text"},
    "access log json": {"log": "json"},
}


SINK = """
import http.server
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(server.server_address[1], flush=True)
server.serve_forever()
"""
"""An OTLP/HTTP collector that accepts and discards, in its own process (its CPU is not counted)."""


def start_sink() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/v1/traces"


def config(feature: dict[str, Any]) -> dict[str, Any]:
    route: dict[str, Any] = {"path": "/api/", "upstream": "api", "filters": feature.get("filters", [])}
    cfg: dict[str, Any] = {
        "servers": {"web": {"listener": "127.0.0.1:0", "routes": [route]}},
        "upstreams": {"api": {"endpoints": [{"endpoint": "http://127.0.0.1:9001"}]}},
    }
    if "log" in feature:
        cfg["log"] = {"access_log": os.devnull, "format": feature["log"]}
    return cfg


def export_cpu() -> float:
    """CPU seconds of tracing's export threads so far (0 when none runs)."""
    from monolake.apps.edge import tracing

    total = 0.0
    for t in list(tracing._INSTANCES):
        e = t._exporter
        if e is not None and e.thread.ident is not None:
            total += time.clock_gettime(time.pthread_getcpuclockid(e.thread.ident))
    return total


async def run(feature: dict[str, Any], n: int) -> tuple[float, float, float]:
    """(µs per request of the loop's thread, of the whole process, of tracing's export thread)."""
    h = Harness(parse_config(config(feature)))
    app = h.app
    dt = h.transport

    async def one() -> None:
        await h.proxied(REQUEST)

    for _ in range(200):
        await one()
    assert dt.out and dt.out[-1][:12] == b"HTTP/1.1 200", dt.out[-1:]
    dt.out.clear()
    t0, p0, e0 = time.thread_time(), time.process_time(), export_cpu()
    for _ in range(n):
        await one()
    elapsed = time.thread_time() - t0
    if "/v1/traces" in repr(feature):  # tracing: the collector sink
        await asyncio.sleep(0.3)  # the export thread's last batches, in the process column (idle costs nothing)
    process = time.process_time() - p0
    export = export_cpu() - e0
    assert len(dt.out) == n
    if "min_length" not in repr(feature):  # the gzip row changes the body
        assert all(o.endswith(BODY) for o in dt.out), (feature, dt.out[-1][-300:])
    app.close()
    return elapsed * 1e6 / n, process * 1e6 / n, export * 1e6 / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="run only the rows whose names contain this (and plain)")
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        runner: Any = uvloop.run
    else:
        runner = asyncio.run
    best: dict[str, tuple[float, float, float]] = {}
    sink, url = start_sink()
    try:
        for _ in range(args.repeat):  # interleaved, so load changes hit every row alike
            for name, feature in FEATURES.items():
                if args.only and name != "plain" and args.only not in name:
                    continue
                feature = json.loads(json.dumps(feature).replace('"SINK"', json.dumps(url)))
                us = runner(run(feature, args.n))
                best[name] = min(best.get(name, us), us)
    finally:
        sink.terminate()
        sink.wait()
    base, pbase, _ = best["plain"]
    print(f"{args.loop}, best of {args.repeat} x {args.n} requests; load average {os.getloadavg()[0]:.2f}")
    print("request path: the loop thread's CPU; process: with other threads; export: tracing's export thread's")
    print(f"{'':40} {'µs/request':>11} {'added':>8} {'process':>9} {'added':>8} {'export':>7}")
    for name, (us, pus, eus) in best.items():
        print(f"{name:40} {us:11.2f} {us - base:+8.2f} {pus:9.2f} {pus - pbase:+8.2f} {eus:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
