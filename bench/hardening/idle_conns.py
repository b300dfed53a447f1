"""Memory held by idle keep-alive connections, monolake (per loop) vs nginx, and whether it is given back.

Run: python -m bench.hardening.idle_conns [--conns 2000] [--loops uvloop,asyncio,io_uring] [--settle 12] [--tls]

For each proxy (one worker, proxying ``/`` to an nginx origin; nginx as proxy has upstream keepalive):
warm up with a few requests, read the worker's RSS (baseline), open ``--conns`` connections that each
make one request and then stay open and idle (keep-alive), read RSS again (held; per connection =
difference / conns), close them all, and read RSS right after and again ``--settle`` seconds later
(given back or not); ``--tls``: the same over TLS (an ECDSA certificate from trustme, TLS 1.3 by
default on both). RSS is VmRSS of /proc/PID/status of the worker process (for monolake the
supervisor's child, for nginx the master's child); anonymous memory (RssAnon) is reported beside it.

Results: bench/results/hardening-idle-<UTC time>.json and .md. Run on a busy machine, the figures are
rough (the report records the load average); memory figures are far less sensitive to load than timings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import ssl
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..load import configs, machine
from ..load.procs import Proc, Procs, children, free_port, wait_port

RESULTS = machine.REPO / "bench" / "results"
REQUEST = b"GET /body/128 HTTP/1.1\r\nHost: bench\r\n\r\n"


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def worker_of(proc: Proc) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        kids = children(proc.pid)
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name}: no worker process")


def read_response(sock: socket.socket) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("connection closed before the response head")
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("connection closed in the body")
        body += data


_CLIENT_TLS: ssl.SSLContext | None = None


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if _CLIENT_TLS is not None:
        return _CLIENT_TLS.wrap_socket(s, server_hostname="127.0.0.1")
    return s


def one_request(port: int) -> None:
    with connect(port) as s:
        s.sendall(REQUEST)
        read_response(s)


def certificate(tmp: Path) -> tuple[Path, Path]:
    global _CLIENT_TLS
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", key_type=trustme.KeyType.ECDSA)
    chain, key = tmp / "cert.pem", tmp / "key.pem"
    chain.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    for p in (chain, key):
        p.chmod(0o644)
    _CLIENT_TLS = ssl.create_default_context()
    ca.configure_trust(_CLIENT_TLS)
    return chain, key


def monolake_conf(tmp: Path, name: str, port: int, origin_port: int, loop: str, tls: tuple[Path, Path] | None) -> Path:
    conf = tmp / f"{name}.toml"
    section = f'\n[servers.bench.tls]\ncertificates = [{{ chain = "{tls[0]}", key = "{tls[1]}" }}]\n' if tls else ""
    conf.write_text(f"""[runtime]
workers = 1
cpu_affinity = false
loop = "{loop}"
drain_timeout = 2.0

[servers.bench]
listener = "127.0.0.1:{port}"
keepalive_timeout = 600.0
{section}
[[servers.bench.routes]]
path = "/"
upstreams = [{{ endpoint = "http://127.0.0.1:{origin_port}" }}]
""")
    return conf


def nginx_conf(tmp: Path, port: int, origin_port: int, tls: tuple[Path, Path] | None) -> Path:
    listen = f"listen 127.0.0.1:{port}"
    if tls is not None:
        listen += f" ssl;\n    ssl_certificate {tls[0]};\n    ssl_certificate_key {tls[1]}"
    return configs._nginx(
        tmp,
        "nginx_proxy",
        f"""  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}
  server {{
    {listen};
    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}""",
    )


def measure(name: str, proc: Proc, port: int, conns: int, settle: float) -> dict[str, Any]:
    worker = worker_of(proc)
    for _ in range(20):
        one_request(port)
    time.sleep(0.5)
    base = status_kb(worker)
    held: list[socket.socket] = []
    try:
        for _ in range(conns):
            s = connect(port)
            held.append(s)
            s.sendall(REQUEST)
            read_response(s)
        time.sleep(1.0)
        idle = status_kb(worker)
    finally:
        for s in held:
            s.close()
    time.sleep(1.0)
    after = status_kb(worker)
    time.sleep(max(0.0, settle - 1.0))
    settled = status_kb(worker)
    one_request(port)  # still serving
    per_conn = (idle["VmRSS"] - base["VmRSS"]) * 1024 / conns
    return {
        "proxy": name,
        "worker_pid": worker,
        "conns": conns,
        "rss_kb": {"baseline": base, "idle": idle, "after_close": after, f"after_{settle:g}s": settled},
        "bytes_per_idle_conn": round(per_conn),
        "anon_bytes_per_idle_conn": round((idle["RssAnon"] - base["RssAnon"]) * 1024 / conns),
        "kept_after_close_kb": settled["VmRSS"] - base["VmRSS"],
        "given_back_pct": round(100 * (idle["VmRSS"] - settled["VmRSS"]) / max(1, idle["VmRSS"] - base["VmRSS"])),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results: dict[str, Any] = {
        "machine": machine.info(),
        "load_before": os.getloadavg(),
        "conns": args.conns,
        "settle": args.settle,
        "tls": args.tls,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as td:
        tmp = Path(td)
        procs = Procs(tmp)
        try:
            tls = certificate(tmp) if args.tls else None
            origin_port = free_port()
            origin = procs.start("origin", ["nginx", "-c", str(configs.origin(tmp, origin_port, ["128"]))], None)
            wait_port(origin_port, alive=origin.popen)
            names = [f"monolake-{loop}" for loop in args.loops.split(",") if loop] + ["nginx"]
            for name in names:
                port = free_port()
                if name == "nginx":
                    proc = procs.start(name, ["nginx", "-c", str(nginx_conf(tmp, port, origin_port, tls))], None)
                else:
                    loop = name.removeprefix("monolake-")
                    conf = monolake_conf(tmp, name, port, origin_port, loop, tls)
                    env = dict(os.environ, PYTHONPATH=str(machine.REPO / "src"))
                    proc = procs.start(name, [sys.executable, "-m", "monolake.cli", "run", "-c", str(conf)], None, env)
                wait_port(port, alive=proc.popen)
                try:
                    results["runs"].append(measure(name, proc, port, args.conns, args.settle))
                finally:
                    procs.stop(proc)
                print(json.dumps(results["runs"][-1]), flush=True)
        finally:
            procs.stop_all()
    results["load_after"] = os.getloadavg()
    return results


def markdown(results: dict[str, Any]) -> str:
    settle = results["settle"]
    lines = [
        f"# Idle keep-alive {'TLS ' if results.get('tls') else ''}connections: memory held and given back"
        f" ({results['conns']} connections)",
        "",
        f"Load average before/after: {results['load_before']} / {results['load_after']} (2 cores; rough figures).",
        f"monolake commit {results['machine'].get('monolake_commit')}, {results['machine'].get('nginx')}.",
        "",
        "| proxy | RSS baseline KiB | RSS idle KiB | bytes/idle conn (RSS) | anon bytes/conn |"
        f" RSS after close KiB | RSS after {settle:g}s KiB | given back |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["runs"]:
        kb = r["rss_kb"]
        lines.append(
            f"| {r['proxy']} | {kb['baseline']['VmRSS']} | {kb['idle']['VmRSS']} | {r['bytes_per_idle_conn']} |"
            f" {r['anon_bytes_per_idle_conn']} | {kb['after_close']['VmRSS']} | {kb[f'after_{settle:g}s']['VmRSS']} |"
            f" {r['given_back_pct']}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--loops", default="uvloop,asyncio,io_uring")
    ap.add_argument("--settle", type=float, default=12.0, help="seconds after closing before the last RSS reading")
    ap.add_argument("--tls", action="store_true", help="connections over TLS")
    ap.add_argument("--label", default="", help="added to the result file names")
    args = ap.parse_args(argv)
    results = run(args)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    base = RESULTS / f"hardening-idle-{stamp}{'-' + args.label if args.label else ''}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    base.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {base}.json and .md")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
