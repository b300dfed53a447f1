"""HTTPS keep-alive (TLS termination) through monolake, per TLS backend, vs nginx: CPU µs per request.

Run: python -m bench.https [--seconds 6] [--rounds 3] [--rate 4000] [--conns 50] [--profile 8]

Measured the way bench/load measures HTTP/1.1 (DESIGN.md, "Measuring"): an nginx origin and the load
generator on core 0, the proxy under test (one worker) on core 1, the proxy's user and sys CPU from
/proc over a window inside the main phase divided by the requests completed in it, proxies interleaved
round by round, medians quoted, ratios to nginx's median in the same run.

- Load: ``h2load --h1`` over TLS (ALPN http/1.1) at a fixed rate over ``--conns`` keep-alive connections;
  the TLS handshakes happen before the measured window, so this is the cost of TLS records plus HTTP.
- Proxies, one route to a pooled keep-alive plain-HTTP upstream, X-Forwarded-For/-Proto/-Host set, the
  same certificate (ECDSA P-256 from trustme) and TLS 1.2-1.3 defaults:
  ``monolake-openssl`` and ``monolake-rustls`` (``[servers.x.tls] backend``, uvloop), ``nginx``
  (``listen ... ssl``, ``ssl_session_cache`` off, upstream ``keepalive 64``). The same three without TLS
  (``*-http``) show what TLS adds to each. ``monolake-*-loop``: the same backends with
  ``[servers.x.tls] transport = "loop"`` (the event loop's SSL layer instead of monolake's TLS transport),
  the A/B of core/tls_transport.py in one run.
- ``--syscalls N``: afterwards, ``strace -c`` of each proxy's worker over N keep-alive requests: system
  calls per request, where TLS's extra sys time comes from.
- ``--profile N``: afterwards, N seconds of ``py-spy record`` (collapsed stacks, 500 Hz, ``--native``) of
  each monolake backend's worker under the same load; the summary (self time by function, grouped)
  goes into the report and the raw stacks next to it.

Results: bench/results/https-<UTC time>.json and .md, and https-latest.md. Timings never gate CI.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .load import configs, drive, machine
from .load.procs import Proc, Procs, free_port, hw_counters, perf_counters, wait_port

RESULTS = machine.REPO / "bench" / "results"
ORIGIN_CPU, PROXY_CPU, LOAD_CPU = 0, 1, 0
PROXIES = [
    "monolake-openssl",
    "monolake-rustls",
    "nginx",
    "monolake-http",
    "nginx-http",
    "monolake-openssl-loop",
    "monolake-rustls-loop",
]
PAIRS = [
    ("monolake-openssl", "monolake-http"),
    ("monolake-rustls", "monolake-http"),
    ("nginx", "nginx-http"),
    ("monolake-openssl-loop", "monolake-http"),
    ("monolake-rustls-loop", "monolake-http"),
]
"""Each HTTPS proxy and the same proxy without TLS."""


def certificate(tmp: Path) -> tuple[Path, Path]:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp / "cert.pem", tmp / "key.pem"
    chain.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    for p in (chain, key):
        p.chmod(0o644)  # nginx's master reads them as root anyway; keep it simple for either
    return chain, key


def nginx_conf(tmp: Path, name: str, port: int, origin_port: int, tls: tuple[Path, Path] | None) -> Path:
    listen = f"listen 127.0.0.1:{port}"
    if tls is not None:
        listen += (
            f" ssl;\n    ssl_certificate {tls[0]};\n    ssl_certificate_key {tls[1]};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache off"
        )
    return configs._nginx(
        tmp,
        name,
        f"""  proxy_max_temp_file_size 0;
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    {listen};
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $http_host;
    }}
  }}""",
    )


def monolake_conf(
    tmp: Path,
    name: str,
    port: int,
    origin_port: int,
    backend: str | None,
    tls: tuple[Path, Path],
    loop: str = "uvloop",
    transport: str = "monolake",
) -> Path:
    conf = tmp / f"{name}.toml"
    section = ""
    if backend is not None:
        section = f"""
[servers.bench.tls]
backend = "{backend}"
transport = "{transport}"
certificates = [{{ chain = "{tls[0]}", key = "{tls[1]}" }}]
"""
    conf.write_text(f"""[runtime]
workers = 1
cpu_affinity = false
loop = "{loop}"
drain_timeout = 2.0

[upstreams.origin]
endpoints = [{{ endpoint = "http://127.0.0.1:{origin_port}" }}]

[servers.bench]
listener = "127.0.0.1:{port}"
{section}
[[servers.bench.routes]]
path = "/"
upstream = "origin"
""")
    return conf


def start(procs: Procs, tmp: Path, name: str, port: int, origin_port: int, tls: tuple[Path, Path]) -> Proc:
    if name.startswith("nginx"):
        conf = nginx_conf(tmp, name, port, origin_port, None if name.endswith("-http") else tls)
        proc = procs.start(name, ["nginx", "-c", str(conf)], PROXY_CPU)
        wait_port(port, alive=proc.popen)
        return proc
    backend = None if name.endswith("-http") else name.removeprefix("monolake-").removesuffix("-loop")
    transport = "loop" if name.endswith("-loop") else "monolake"
    conf = monolake_conf(tmp, name, port, origin_port, backend, tls, transport=transport)
    return start_conf(procs, name, conf, port)


def start_conf(procs: Procs, name: str, conf: Path, port: int) -> Proc:
    """A monolake proxy from ``conf`` on the proxy's core, once it says it is ready."""
    proc = procs.start(name, [sys.executable, "-m", "monolake.product.cli", "run", "-c", str(conf)], PROXY_CPU)
    wait_port(port, alive=proc.popen)
    deadline = time.monotonic() + 20
    while b"monolake ready" not in proc.log.read_bytes():
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name}: not ready: {proc.log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return proc


def negotiated(port: int) -> dict[str, str]:
    """The TLS protocol and cipher h2load negotiates with the proxy (as in the measured runs)."""
    out = subprocess.run(
        ["h2load", "--h1", "-n", "1", "-c", "1", f"https://127.0.0.1:{port}/body/128"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout  # fmt: skip
    found = dict(re.findall(r"^(TLS Protocol|Cipher|Server Temp Key|Application protocol): (.+)$", out, re.M))
    return {"version": found.get("TLS Protocol", "?"), "cipher": found.get("Cipher", "?"), **found}


def probe(port: int, tls: bool) -> dict[str, Any]:
    """One keep-alive request, checked: 200 with the 128-byte body; for TLS what h2load negotiates."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    out: dict[str, Any] = {}
    sock: socket.socket = raw
    if tls:
        ctx = ssl._create_unverified_context()
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
        out.update(negotiated(port))
    with sock:
        sock.sendall(b"GET /body/128 HTTP/1.1\r\nHost: bench\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 128:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data.startswith(b"HTTP/1.1 200") or len(data.partition(b"\r\n\r\n")[2]) != 128:
        raise RuntimeError(f"probe of port {port}: {data[:200]!r}")
    return out


REQUEST = b"GET /body/128 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: h2load nghttp2/1.52.0\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nServer: monolake\r\nContent-Length: 128\r\n\r\n" + b"x" * 128


def record_layer_us(backend: str, tls: tuple[Path, Path], n: int = 20000) -> dict[str, Any]:
    """The server side of the TLS record layer alone, in process: CPU µs to decrypt one request and
    encrypt one response through the backend's SSLObject and memory BIOs (an OpenSSL client on the
    other end), without sockets or an event loop. Median of 3 batches of ``n``."""
    import rtls

    mod: Any = rtls if backend == "rustls" else ssl
    server_ctx = mod.SSLContext(mod.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(tls[0]), str(tls[1]))
    client_ctx = ssl._create_unverified_context()
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    for _ in range(10):
        for obj in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    batches = []
    for _ in range(3):
        spent = 0.0
        for _ in range(n):
            client.write(REQUEST)
            data = c_out.read()
            t0 = time.process_time()
            s_in.write(data)
            server.read(65536)
            server.write(RESPONSE)
            out = s_out.read()
            spent += time.process_time() - t0
            c_in.write(out)
            client.read(65536)
        batches.append(spent / n * 1e6)
    return {"us": round(statistics.median(batches), 2), "version": server.version(), "cipher": server.cipher()[0]}


def compiled_build() -> str:
    """Whether the proxies run the mypyc-compiled hot path or pure Python (and why), asked of a
    fresh interpreter with the proxies' environment: the two differ by ~30% CPU per request, so
    no result is readable without it."""
    out = subprocess.run(
        [sys.executable, "-c", "from monolake.core import _compiled as c; print(c.COMPILED, '|', c.WHY_PURE)"],
        capture_output=True, text=True, timeout=60, check=False,
    ).stdout.strip()  # fmt: skip
    compiled, _, why = (x.strip() for x in out.partition("|"))
    return "compiled (mypyc)" if compiled == "True" else f"pure Python ({why or out or '?'})"


def worker_pid(proc: Proc) -> int:
    """The process doing the work: monolake's worker (the supervisor's child), nginx's worker."""
    pids = proc.pids()
    return pids[-1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine.info(), "args": vars(args), "runs": [], "tls": {}, "profiles": {}}
    results["loadavg"] = [[round(x, 2) for x in os.getloadavg()]]
    results["build"] = compiled_build()
    with tempfile.TemporaryDirectory(prefix="bench-https-") as d:
        tmp = Path(d)
        tmp.chmod(0o755)
        tls = certificate(tmp)
        procs = Procs(tmp)
        try:
            origin_port = free_port()
            origin = procs.start("origin", ["nginx", "-c", str(configs.origin(tmp, origin_port, ["128"]))], ORIGIN_CPU)
            wait_port(origin_port, alive=origin.popen)
            names = [p for p in PROXIES if p in args.proxies.split(",")]
            for rnd in range(args.rounds):
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                for name in order:
                    results["runs"].append(_one(args, procs, tmp, name, origin, origin_port, tls, rnd, results))
            results["record_layer"] = {b: record_layer_us(b, tls) for b in ("openssl", "rustls")}
            if args.syscalls:
                for name in names:
                    results.setdefault("syscalls", {})[name] = _syscalls(args, procs, tmp, name, origin_port, tls)
            if args.profile:
                for name in names:
                    if name.startswith("monolake-") and not name.endswith("-http"):
                        results["profiles"][name] = _profile(args, procs, tmp, name, origin, origin_port, tls)
        finally:
            procs.stop_all()
    results["loadavg"].append([round(x, 2) for x in os.getloadavg()])
    return results


def _one(
    args: argparse.Namespace,
    procs: Procs,
    tmp: Path,
    name: str,
    origin: Proc,
    origin_port: int,
    tls: tuple[Path, Path],
    rnd: int,
    results: dict[str, Any],
) -> dict[str, Any]:
    port = free_port()
    proc = start(procs, tmp, name, port, origin_port, tls)
    https = not name.endswith("-http")
    counted: dict[str, Any] = {}
    counter = None
    if hw_counters():  # instructions per request over the main phase, where the CPU can count them

        def count() -> None:
            time.sleep(1.7)
            t0 = time.time()
            counted.update(perf_counters(worker_pid(proc), args.seconds - 1.2) or {})
            counted["span"] = time.time() - t0

        counter = threading.Thread(target=count)
    try:
        results["tls"][name] = probe(port, https)
        scheme = "https" if https else "http"
        if counter is not None:
            counter.start()
        r: dict[str, Any] = drive.h2load_fixed(
            f"{scheme}://127.0.0.1:{port}/body/128",
            args.seconds,
            args.rate,
            args.conns,
            proc.pids(),
            origin.pids(),
            cpu=LOAD_CPU,
        )
        if counter is not None:
            counter.join()
    finally:
        procs.stop(proc)
    r.update(proxy=name, round=rnd)
    if counted.get("instructions"):
        r["instructions_per_req"] = counted["instructions"] / max(1.0, r["achieved_rps"] * counted["span"])
    others = r["others_busy_pct"]
    print(
        f"{name:17} round {rnd}: {r['user_us']:.1f} user + {r['sys_us']:.1f} sys µs/req, "
        f"p99 {r['p99_us'] / 1000:.2f} ms, {r['achieved_rps']:.0f}/{r['offered_rps']} req/s, "
        f"failed {r['failed']} errored {r['errored']} non-2xx {r['non_2xx']}, "
        f"others' cpu0/1 {others['cpu0']:.0f}/{others['cpu1']:.0f}%"
        + (f", {r['instructions_per_req']:.0f} instructions/req" if "instructions_per_req" in r else ""),
        flush=True,
    )
    return r


def _syscalls(
    args: argparse.Namespace, procs: Procs, tmp: Path, name: str, origin_port: int, tls: tuple[Path, Path]
) -> dict[str, Any]:
    """System calls of the worker per request (``strace -c``) while h2load sends ``--syscalls`` keep-alive
    requests as fast as it can: where TLS adds sys time (more writes, smaller ones). strace slows the
    worker; the counts, not the times, are the point."""
    if shutil.which("strace") is None:
        return {"error": "strace not installed"}
    port = free_port()
    proc = start(procs, tmp, name, port, origin_port, tls)
    scheme = "http" if name.endswith("-http") else "https"
    out = tmp / f"{name}.strace"
    try:
        probe(port, scheme == "https")
        h2load = ["taskset", "-c", str(LOAD_CPU), "h2load", "--h1", "-t", "1", "-c", str(args.conns)]
        url = f"{scheme}://127.0.0.1:{port}/body/128"
        subprocess.run([*h2load, "-n", str(args.conns * 20), url], capture_output=True, timeout=120)  # connected
        tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(worker_pid(proc))])
        time.sleep(0.5)  # attached
        done = subprocess.run([*h2load, "-n", str(args.syscalls), url], capture_output=True, text=True, timeout=600)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    finally:
        procs.stop(proc)
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done", done.stdout)
    n = int(m.group(1)) if m else args.syscalls
    calls: dict[str, float] = {}
    for line in out.read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[3].isdigit() and f[-1] != "total":
            calls[f[-1]] = round(int(f[3]) / max(1, n), 3)
    top = dict(sorted(calls.items(), key=lambda kv: -kv[1])[:8])
    return {"requests": n, "per_request": round(sum(calls.values()), 2), "top": top}


def _profile(
    args: argparse.Namespace, procs: Procs, tmp: Path, name: str, origin: Proc, origin_port: int, tls: tuple[Path, Path]
) -> dict[str, Any]:
    """py-spy on the worker while h2load offers the same load; self time grouped by function."""
    if shutil.which("py-spy") is None:
        return {"error": "py-spy not installed"}
    port = free_port()
    proc = start(procs, tmp, name, port, origin_port, tls)
    stacks = tmp / f"{name}.stacks"
    try:
        probe(port, True)
        load = subprocess.Popen(
            ["taskset", "-c", str(LOAD_CPU), "h2load", "--h1", "-t", "1", "-c", str(args.conns),
             f"--rps={max(1, args.rate // args.conns)}", "-D", str(args.profile + 3),
             f"https://127.0.0.1:{port}/body/128"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(1.5)
            subprocess.run(
                ["py-spy", "record", "--native", "-r", "500", "-d", str(args.profile), "-f", "raw",
                 "-o", str(stacks), "-p", str(worker_pid(proc))],
                capture_output=True, timeout=args.profile + 60, check=False,
            )  # fmt: skip
        finally:
            load.wait(timeout=args.profile + 60)
    finally:
        procs.stop(proc)
    if not stacks.exists():
        return {"error": "py-spy wrote nothing"}
    if args.keep_stacks:
        Path(args.keep_stacks).mkdir(parents=True, exist_ok=True)
        shutil.copy(stacks, Path(args.keep_stacks) / f"https-{name}.stacks")
    return summarize_stacks(stacks.read_text())


TLS_LAYER = "TLS layer: the SSL protocol and the ssl/rtls object, no application frame below, no syscall"
GROUPS = {
    "HTTP/1 codec (httptools, proto/http1)": ("httptools", "proto/http1", "llhttp", "parser.pyx"),
    "proxy service (monolake/apps/proxy, monolake/core/service)": ("monolake/apps/proxy", "monolake/core/service"),
    "upstream client and pool (monolake/core/client)": ("monolake/core/client",),
    "server connection driver (monolake/core/server)": ("monolake/core/server",),
}
COMPILED_GROUPS = {
    "HTTP/1 codec (httptools, proto/http1)": ("_parse___", "_serialize___", "_message___"),
    "proxy service (monolake/apps/proxy, monolake/core/service)": (
        "_proxy___",
        "_upstream___",
        "_router___",
        "_balancer___",
    ),
    "upstream client and pool (monolake/core/client)": ("client____", "_pool___"),
    "server connection driver (monolake/core/server)": ("server____", "_http_app___"),
}
"""The same groups' frames when compiled: mypyc names them ``CPyDef_<module suffix>___<function>``
(or ``<module suffix>___<class>_gen...`` for a coroutine's generator) in ``__native__hotpath.c``,
with no path to match."""
COMPILED = "__native__hotpath"
SSL_FRAMES = ("SSLProtocol", "sslproto", "tls_transport")
"""Frames of a TLS layer: the loops' SSL protocol, or monolake's own transport (core/tls_transport.py)."""
TLS_CODE = ("tls_transport", "core/tls.py", "rtls_impl")
"""monolake's TLS code: part of the TLS layer, not an application frame below it."""
SYSCALL_LEAVES = ("read (libc", "write (libc", "writev (libc", "sendmsg", "recvmsg", "send (libc", "recv (libc")


def summarize_stacks(raw: str) -> dict[str, Any]:
    """Collapsed stacks -> busy samples (idle ones, waiting in epoll, are counted apart); the share of
    the TLS layer itself (samples under uvloop's SSLProtocol or monolake's TLS transport with no
    application frame below and no system call at the leaf: record encryption/decryption, BIO copies,
    the protocol's bookkeeping);
    the inclusive share of each code group (a sample counts for every group with a frame anywhere in
    its stack, so those overlap); the share whose leaf is a socket system call; the top self frames."""
    self_time: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    syscalls = total = idle = tls_layer = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[-1].startswith("epoll_"):  # waiting for events: idle, not work
            idle += n
            continue
        total += n
        self_time[frames[-1]] += n
        syscall = any(k in frames[-1] for k in SYSCALL_LEAVES)
        if syscall:
            syscalls += n
        ssl_at = next((i for i, f in enumerate(frames) if any(k in f for k in SSL_FRAMES)), None)
        app = (
            [f for f in frames[ssl_at:] if ("monolake/" in f or COMPILED in f) and not any(k in f for k in TLS_CODE)]
            if ssl_at is not None
            else []
        )
        if ssl_at is not None and not syscall and not app:
            tls_layer += n
        for group, keys in GROUPS.items():
            native = COMPILED_GROUPS[group]
            if any(
                any(k in frame for k in keys) or (COMPILED in frame and any(k in frame for k in native))
                for frame in frames
            ):
                groups[group] += n
    shares = {TLS_LAYER: round(100.0 * tls_layer / max(1, total), 1)}
    shares.update({g: round(100.0 * groups[g] / max(1, total), 1) for g in GROUPS})
    shares["leaf is a system call (read/write/send/recv)"] = round(100.0 * syscalls / max(1, total), 1)
    return {
        "samples": total,
        "idle_samples": idle,
        "groups_pct": shares,
        "top_self": [(f, round(100.0 * n / max(1, total), 1)) for f, n in self_time.most_common(25)],
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    med: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["proxy"] for r in runs):
        rs = [r for r in runs if r["proxy"] == name]
        med[name] = {
            k: statistics.median(float(r[k]) for r in rs) for k in ("user_us", "sys_us", "total_us", "p50_us", "p99_us")
        }
        if all("instructions_per_req" in r for r in rs):
            med[name]["instructions_per_req"] = statistics.median(float(r["instructions_per_req"]) for r in rs)
        med[name]["kept_up"] = float(all(r["kept_up"] for r in rs))
        med[name]["failed"] = float(sum(int(r["failed"]) + int(r["errored"]) + int(r["non_2xx"]) for r in rs))
        med[name]["achieved_rps"] = statistics.median(float(r["achieved_rps"]) for r in rs)
        for core in ("cpu0", "cpu1"):
            med[name][f"others_{core}"] = statistics.median(float(r["others_busy_pct"][core]) for r in rs)
    rows = []
    for name, m in med.items():
        base = med.get("nginx-http" if name.endswith("-http") else "nginx", {}).get("total_us") or 0.0
        rows.append({"proxy": name, **m, "vs_nginx": m["total_us"] / base if base else 0.0})
    return rows


def markdown(results: dict[str, Any], rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    info = results["machine"]
    tls = results["tls"]
    lines = [
        "# HTTPS keep-alive through monolake (OpenSSL and rustls backends) vs nginx",
        "",
        f"`python -m bench.https --seconds {args.seconds} --rounds {args.rounds} --rate {args.rate} "
        f"--conns {args.conns}{f' --profile {args.profile}' if args.profile else ''}`; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; commit {info.get('monolake_commit', '?')}; "
        f"medians of {args.rounds} interleaved rounds; monolake ran {results.get('build', '?')}.",
        "",
        f"Origin nginx and `h2load --h1` on core 0, the proxy (1 worker, uvloop) on core 1; {args.rate} req/s "
        f"offered over {args.conns} keep-alive connections, GET of a 128-byte body; CPU = the proxy's user+sys "
        "over a window inside the main phase / requests completed in it. vs nginx: HTTPS rows against nginx "
        "HTTPS, *-http rows against nginx without TLS. Kept up: every round reached 97% of the offered rate. "
        "Others' %: median busy share of each core not spent by the proxy (core 1) or the origin and h2load "
        "(core 0), i.e. other work sharing the machine; load average at start and end "
        f"{results.get('loadavg', '?')}.",
        "",
        "| proxy | TLS | user µs/req | sys µs/req | total µs/req | vs nginx | p50 ms | p99 ms | req/s | kept up "
        "| failed | others' % core 0/1 |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|",
    ]
    for r in rows:
        t = tls.get(r["proxy"], {})
        what = f"{t['version']} {t['cipher']}" if t.get("version") else "none"
        lines.append(
            f"| {r['proxy']} | {what} | {r['user_us']:.1f} | {r['sys_us']:.1f} | {r['total_us']:.1f} "
            f"| {r['vs_nginx']:.2f}x | {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | {r['achieved_rps']:.0f} "
            f"| {'yes' if r['kept_up'] else 'no'} | {int(r['failed'])} "
            f"| {r.get('others_cpu0', 0):.0f}/{r.get('others_cpu1', 0):.0f} |"
        )
    counted = [r for r in rows if "instructions_per_req" in r]
    if counted:
        lines += [
            "",
            "Instructions per request of the worker (perf stat over the main phase): "
            + ", ".join(f"{r['proxy']} {r['instructions_per_req']:.0f}" for r in counted)
            + ".",
        ]
    by = {r["proxy"]: r for r in rows}
    if all(k in by for k in ("monolake-openssl", "monolake-http", "nginx", "nginx-http")):
        lines += [
            "",
            "What TLS adds, µs/request (HTTPS minus the same proxy without TLS): "
            + ", ".join(
                f"{n} {by[n]['total_us'] - by[base]['total_us']:+.1f}" for n, base in PAIRS if n in by and base in by
            )
            + ".",
        ]
    for backend, rec in results.get("record_layer", {}).items():
        lines.append(
            f"\nTLS record layer alone, {backend} ({rec['version']} {rec['cipher']}): {rec['us']} µs CPU to decrypt a "
            "request and encrypt a response in process (SSLObject and memory BIOs, no socket, no event loop)."
        )
    sc = results.get("syscalls", {})
    if sc:
        lines += [
            "",
            f"## System calls of the worker per request (strace -c, {args.syscalls} keep-alive requests)",
            "",
            "| proxy | syscalls/request | most frequent (per request) |",
            "|---|--:|---|",
        ]
        for name, r in sc.items():
            top = ", ".join(f"{k} {v:g}" for k, v in r.get("top", {}).items())
            lines.append(f"| {name} | {r.get('per_request', r.get('error', '-'))} | {top} |")
    for name, prof in results.get("profiles", {}).items():
        if "error" in prof:
            lines += ["", f"## Profile of {name}: {prof['error']}"]
            continue
        lines += [
            "",
            f"## Profile of {name} under the same load (py-spy --native at 500 Hz: {prof['samples']} busy "
            f"samples; {prof['idle_samples']} idle in epoll_wait left out)",
            "",
            "Share of busy samples (the TLS layer exclusive; the code groups inclusive, so they overlap):",
            "",
            *[f"- {g}: {p}%" for g, p in prof["groups_pct"].items()],
            "",
            "Top self-time frames:",
            "",
            *[f"- {p}% `{f}`" for f, p in prof["top_self"][:15]],
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.https", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=4000, help="offered req/s in total")
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--proxies", default=",".join(PROXIES), help=f"comma-separated subset of {','.join(PROXIES)}")
    ap.add_argument("--profile", type=int, default=0, metavar="SECONDS", help="py-spy each monolake backend after")
    ap.add_argument(
        "--syscalls", type=int, default=0, metavar="N", help="strace -c each proxy's worker over N requests after"
    )
    ap.add_argument("--keep-stacks", metavar="DIR", help="also copy py-spy's collapsed stacks there")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    missing = machine.missing_tools(["nginx", "h2load"])
    if missing:
        print(f"bench.https: missing tools {missing}; run python -m bench.load --setup", file=sys.stderr)
        return 2
    results = run(args)
    rows = summarize(results["runs"])
    results["summary"] = rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"https-{stamp}.json").write_text(json.dumps(results, indent=1, default=str))
    md = markdown(results, rows, args)
    (out / f"https-{stamp}.md").write_text(md)
    (out / "https-latest.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
