"""Thrift RPC servers, unary echo: monolake vs thriftpy2's asyncio server vs Apache Thrift's
TNonblockingServer and TThreadedServer, one server core each, the same load client.

Run: python -m bench.rpc.thrift [--seconds 5] [--conns 8] [--depth 16] [--rate 4000] [--rounds 1]
     [--servers monolake,thriftpy2-aio,apache-nonblocking,apache-threaded,monolake-io_uring] [--out bench/results]

Every server answers ``string echo(1: string s)`` on framed binary (the one transport all
of them speak) and runs alone on core 1 (``taskset``); the load client runs on core 0. It
is a uvloop program that writes pre-encoded calls and only counts reply frames, so it costs
less per call than any server (its CPU per call is reported). Per server, two runs of it:
saturation, ``--depth`` calls in flight on each of ``--conns`` connections (replies in call
order: one write of as many calls as replies came in one read), giving calls/s and the
server's CPU per call (calls per core = 1 / it); then a fixed ``--rate`` (calls/s over all
connections, each timed from when it was due, so a slow reply does not hide later latency)
giving the server's CPU per call at that rate and p50/p99. CPU is user+sys from /proc. Then
each client (``--clients``) against a monolake server. On a busy or 2-core machine the
numbers are rough: the JSON records the load average. Results: bench/results/rpc-thrift-<UTC>
.json, .md and .png. Timings never gate CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

IDL = "namespace py benchecho\nservice Echo {\n  string echo(1: string s)\n}\n"
SERVERS = ["monolake", "thriftpy2-aio", "apache-nonblocking", "apache-threaded"]  # also: monolake-io_uring
REPO = Path(__file__).resolve().parents[2]


# -- servers (each runs as ``python -m bench.rpc.thrift serve KIND PORT DIR``) -------------


def serve(kind: str, port: int, directory: str) -> None:
    idl = os.path.join(directory, "echo.thrift")
    if kind in ("monolake", "monolake-io_uring"):
        import uvloop

        from monolake.apps.config import Server
        from monolake.rpc import ThriftService, build_server

        class Handler:
            async def echo(self, s: str) -> str:
                return s

        async def main() -> None:
            app = build_server("bench", Server(listener=f"127.0.0.1:{port}"), ThriftService(idl, Handler()))
            srv = await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", port, backlog=1024)
            print("ready", flush=True)
            await srv.serve_forever()

        if kind == "monolake":
            uvloop.run(main())
        else:  # the runtime's io_uring loop (uvloop, with a warning, where io_uring is unavailable)
            from monolake.core.runtime._loops import new_event_loop

            new_event_loop("io_uring").run_until_complete(main())
    elif kind == "thriftpy2-aio":
        import thriftpy2
        from thriftpy2.contrib.aio.transport.framed import TAsyncFramedTransportFactory
        from thriftpy2.rpc import make_aio_server

        mod = thriftpy2.load(idl, module_name="benchecho_thrift")

        class AioHandler:
            async def echo(self, s: str) -> str:
                return s

        server = make_aio_server(
            mod.Echo, AioHandler(), "127.0.0.1", port, trans_factory=TAsyncFramedTransportFactory(), client_timeout=None
        )
        print("ready", flush=True)
        server.serve()
    else:
        sys.path.insert(0, os.path.join(directory, "gen"))
        from benchecho import Echo  # type: ignore[import-not-found]
        from thrift.protocol import TBinaryProtocol
        from thrift.server import TNonblockingServer, TServer
        from thrift.transport import TSocket, TTransport

        class SyncHandler:
            def echo(self, s: str) -> str:
                return s

        processor = Echo.Processor(SyncHandler())
        sock = TSocket.TServerSocket(host="127.0.0.1", port=port)
        pf = TBinaryProtocol.TBinaryProtocolAcceleratedFactory()
        if kind == "apache-nonblocking":
            server: Any = TNonblockingServer.TNonblockingServer(processor, sock, pf, pf, threads=4)
        else:
            server = TServer.TThreadedServer(processor, sock, TTransport.TFramedTransportFactory(), pf, daemon=True)
        sock.listen()
        sock.listen = lambda: None
        print("ready", flush=True)
        server.serve()


# -- the load client -----------------------------------------------------------------


def _call_frame(seq: int, text: bytes) -> bytes:
    name = b"echo"
    body = struct.pack("!Ii", 0x80010001, len(name)) + name + struct.pack("!i", seq)
    body += b"\x0b\x00\x01" + struct.pack("!i", len(text)) + text + b"\x00"
    return struct.pack("!I", len(body)) + body


class _Conn(asyncio.Protocol):
    """One load connection. Replies on framed transports come back in call order, so a FIFO
    of send times matches them; frames are only counted (their length read), never decoded."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: Any = None
        self.sent: deque[float] = deque()  # fixed rate: when each call in flight was due
        self.lat: list[float] = []
        self.frame = b""  # saturation: this call is written again for every reply...
        self.stop = 0.0  # ...until then
        self.count = 0
        self.window = 0  # calls in flight (saturation)
        self.done: asyncio.Future[None] | None = None
        self.saturate = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        i, end, n = 0, len(buf), 0
        while end - i >= 4:
            size = _LEN.unpack_from(buf, i)[0]
            if end - i < 4 + size:
                break
            i += 4 + size
            n += 1
        self.buf = buf[i:] if i < end else b""
        if not n:
            return
        if self.saturate:
            self.count += n
            self.window -= n
            if time.perf_counter() < self.stop:
                self.transport.write(self.frame * n)  # one write for every reply of this read
                self.window += n
            elif self.window == 0 and self.done is not None:
                self.done.set_result(None)
            return
        now = time.perf_counter()
        sent, lat = self.sent, self.lat
        for _ in range(n):
            lat.append(now - sent.popleft())
        if not sent and self.done is not None:
            self.done.set_result(None)


_LEN = struct.Struct("!I")


async def _connect(port: int, conns: int) -> list[_Conn]:
    loop = asyncio.get_running_loop()
    cs: list[_Conn] = []
    for _ in range(conns):
        _, c = await loop.create_connection(_Conn, "127.0.0.1", port)
        c.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cs.append(c)
    return cs


async def _saturate(cs: list[_Conn], frame: bytes, seconds: float, depth: int) -> float:
    """Every connection keeps ``depth`` calls in flight for ``seconds``: calls/s."""
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    for c in cs:
        c.saturate, c.frame, c.stop, c.count, c.window = True, frame, t0 + seconds, 0, depth
        c.done = loop.create_future()
        c.transport.write(frame * depth)
    await asyncio.gather(*(c.done for c in cs if c.done is not None))
    took = time.perf_counter() - t0
    for c in cs:
        c.saturate, c.done = False, None
    return sum(c.count for c in cs) / took


async def _fixed_rate(cs: list[_Conn], frame: bytes, seconds: float, rate: float) -> list[float]:
    """Calls at ``rate`` calls/s over all connections (round robin), each timed from when it
    was due, not from when the client got to send it (no coordinated omission)."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter() + 0.01
    total = int(rate * seconds)
    sent = 0
    while sent < total:
        due_n = min(total, int((time.perf_counter() - start) * rate) + 1)
        while sent < due_n:
            c = cs[sent % len(cs)]
            c.sent.append(start + sent / rate)
            c.transport.write(frame)
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    waits = []
    for c in cs:
        if c.sent:
            c.done = loop.create_future()
            waits.append(c.done)
    await asyncio.wait_for(asyncio.gather(*waits), 60)
    lat = sorted(x for c in cs for x in c.lat)
    for c in cs:
        c.lat, c.done = [], None
    return lat


async def _load(port: int, conns: int, seconds: float, mode: str, arg: float, text: bytes) -> dict[str, Any]:
    cs = await _connect(port, conns)
    frame = _call_frame(1, text)
    await _fixed_rate(cs, frame, 0.2, 200)  # warm-up: every connection served once
    if mode == "saturate":
        res: dict[str, Any] = {"calls_per_s": await _saturate(cs, frame, seconds, int(arg)), "depth": int(arg)}
    else:
        lat = await _fixed_rate(cs, frame, seconds, arg)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

        res = {"rate": arg, "calls": len(lat), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": lat[-1] * 1000}
    for c in cs:
        c.transport.close()
    return res


def load_main(port: int, conns: int, seconds: float, mode: str, arg: float) -> None:
    import uvloop

    t = time.process_time()
    res = uvloop.run(_load(port, conns, seconds, mode, arg, b"x" * 100))
    res["client_cpu_s"] = time.process_time() - t
    print(json.dumps(res), flush=True)


# -- clients against one server (``--clients``) --------------------------------------------

CLIENTS = ["monolake", "thriftpy2-aio", "apache"]


def client_main(kind: str, port: int, conns: int, seconds: float, directory: str) -> None:
    """``conns`` callers making echo calls back to back for ``seconds``; prints calls/s and CPU/call."""
    idl = os.path.join(directory, "echo.thrift")
    text = "x" * 100
    count = 0
    # Timed from when every client is set up and has made one call: imports, IDL parsing and
    # connecting are not per call (without bytecode caches, imports alone cost ~0.3 s of CPU).
    t_cpu0 = t0 = stop = 0.0

    def start() -> None:
        nonlocal t_cpu0, t0, stop
        t_cpu0 = time.process_time()
        t0 = time.perf_counter()
        stop = t0 + seconds

    if kind == "apache":
        import threading

        sys.path.insert(0, os.path.join(directory, "gen"))
        from benchecho import Echo
        from thrift.protocol import TBinaryProtocol
        from thrift.transport import TSocket, TTransport

        counts = [0] * conns
        ready = threading.Barrier(conns + 1)

        def run(i: int) -> None:
            tr = TTransport.TFramedTransport(TSocket.TSocket("127.0.0.1", port))
            tr.open()
            c = Echo.Client(TBinaryProtocol.TBinaryProtocolAccelerated(tr))
            c.echo(text)
            ready.wait()
            ready.wait()  # the clock has started
            while time.perf_counter() < stop:
                c.echo(text)
                counts[i] += 1
            tr.close()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
        for t in threads:
            t.start()
        ready.wait()
        start()
        ready.wait()
        for t in threads:
            t.join()
        count = sum(counts)
    else:
        import uvloop

        async def main() -> int:
            n = 0
            if kind == "monolake":
                from monolake.rpc import ThriftClient

                client = ThriftClient(idl, [f"127.0.0.1:{port}"], transport="ttheader", max_connections=conns)
                await asyncio.gather(*(client.echo(text) for _ in range(conns)))
                start()

                async def caller() -> None:
                    nonlocal n
                    while time.perf_counter() < stop:
                        await client.echo(text)
                        n += 1

                await asyncio.gather(*(caller() for _ in range(conns)))
                client.close()
                return n
            import thriftpy2
            from thriftpy2.contrib.aio.transport.framed import TAsyncFramedTransportFactory
            from thriftpy2.rpc import make_aio_client

            mod = thriftpy2.load(idl, module_name="benchecho_thrift")

            clients = [
                await make_aio_client(
                    mod.Echo, "127.0.0.1", port, trans_factory=TAsyncFramedTransportFactory(), timeout=None
                )
                for _ in range(conns)
            ]
            await asyncio.gather(*(c.echo(text) for c in clients))
            start()

            async def one(c: Any) -> None:
                nonlocal n
                while time.perf_counter() < stop:
                    await c.echo(text)
                    n += 1
                c.close()

            await asyncio.gather(*(one(c) for c in clients))
            return n

        count = uvloop.run(main())
    took = time.perf_counter() - t0
    cpu = time.process_time() - t_cpu0
    print(json.dumps({"client": kind, "calls_per_s": count / took, "client_cpu_us_per_call": cpu / count * 1e6}))


def run_clients(directory: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each client in turn against one monolake server (core ``--server-cpu``)."""
    port = _free_port()
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    taskset = ["taskset", "-c", args.server_cpu] if shutil.which("taskset") else []
    srv = subprocess.Popen(
        [*taskset, sys.executable, "-m", "bench.rpc.thrift", "serve", "monolake", str(port), directory],
        stdout=subprocess.PIPE, env=env, cwd=REPO,
    )  # fmt: skip
    out = []
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == b"ready"
        ltaskset = ["taskset", "-c", args.client_cpu] if taskset else []
        for kind in args.clients.split(","):
            res = subprocess.run(
                [*ltaskset, sys.executable, "-m", "bench.rpc.thrift", "client", kind, str(port), str(args.client_conns),
                 str(args.seconds), directory],
                capture_output=True, env=env, cwd=REPO, check=True, timeout=args.seconds * 4 + 60,
            )  # fmt: skip
            out.append(json.loads(res.stdout.decode().strip().splitlines()[-1]))
    finally:
        srv.kill()
        srv.wait()
    return out


# -- driver ----------------------------------------------------------------------------


def _cpu(pid: int) -> float:
    return sum(_cpu_split(pid))


def _cpu_split(pid: int) -> tuple[float, float]:
    """(user, sys) CPU seconds of ``pid``, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_one(kind: str, directory: str, args: argparse.Namespace) -> dict[str, Any]:
    """One server: saturation (calls/s), then the fixed rate (CPU per call, p50/p99)."""
    port = _free_port()
    path = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    taskset = ["taskset", "-c", args.server_cpu] if shutil.which("taskset") else []
    srv = subprocess.Popen(
        [*taskset, sys.executable, "-m", "bench.rpc.thrift", "serve", kind, str(port), directory],
        stdout=subprocess.PIPE, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        assert srv.stdout is not None
        assert srv.stdout.readline().strip() == b"ready", f"{kind} did not start"
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, f"{kind} does not accept"
        ltaskset = ["taskset", "-c", args.client_cpu] if taskset else []

        def load(mode: str, arg: float) -> dict[str, Any]:
            (u0, s0), t0 = _cpu_split(srv.pid), time.perf_counter()
            out = subprocess.run(
                [*ltaskset, sys.executable, "-m", "bench.rpc.thrift", "load", str(port), str(args.conns),
                 str(args.seconds), mode, str(arg)],
                capture_output=True, env=env, cwd=REPO, check=True, timeout=args.seconds * 4 + 60,
            )  # fmt: skip
            res: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
            u1, s1 = _cpu_split(srv.pid)
            res["server_user_s"], res["server_sys_s"] = u1 - u0, s1 - s0
            res["server_cpu_s"], res["wall_s"] = u1 - u0 + s1 - s0, time.perf_counter() - t0
            return res

        sat = load("saturate", args.depth)
        fixed = load("rate", args.rate)
        warm = 40  # the warm-up calls of each load run (200/s for 0.2 s)
        sat_calls = sat["calls_per_s"] * args.seconds + warm
        return {
            "server": kind,
            "calls_per_s": sat["calls_per_s"],
            "server_cpu_us_per_call_saturated": sat["server_cpu_s"] / sat_calls * 1e6,
            "client_cpu_us_per_call_saturated": sat["client_cpu_s"] / sat_calls * 1e6,
            "server_cpu_us_per_call": fixed["server_cpu_s"] / (fixed["calls"] + warm) * 1e6,
            "server_sys_us_per_call": fixed["server_sys_s"] / (fixed["calls"] + warm) * 1e6,
            "server_sys_us_per_call_saturated": sat["server_sys_s"] / sat_calls * 1e6,
            "rate": args.rate,
            "p50_ms": fixed["p50_ms"],
            "p99_ms": fixed["p99_ms"],
            "max_ms": fixed["max_ms"],
        }
    finally:
        srv.kill()
        srv.wait()


def _best(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per server, the best of the rounds on each measure (the least disturbed by the machine)."""
    best: dict[str, dict[str, Any]] = {}
    for r in runs:
        b = best.get(r["server"])
        if b is None:
            best[r["server"]] = dict(r)
            continue
        b["calls_per_s"] = max(b["calls_per_s"], r["calls_per_s"])
        for key in ("server_cpu_us_per_call", "server_cpu_us_per_call_saturated", "p50_ms", "p99_ms"):
            if r[key] < b[key]:
                b[key] = r[key]
                if key.startswith("server_cpu"):  # its sys share from the same run
                    sys_key = key.replace("cpu", "sys")
                    b[sys_key] = r[sys_key]
    return best


def plot(report: dict[str, Any], path: Path) -> bool:
    """Calls/s at saturation, server CPU µs per call and p99 at the fixed rate, per server."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing, no plot")
        return False
    best = _best(report["runs"])
    names = list(best)
    colors = ["#1f77b4" if n.startswith("monolake") else "#aaaaaa" for n in names]
    rate = report["args"]["rate"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    panels = [
        ("calls_per_s", "calls/s at saturation (higher is better)"),
        ("server_cpu_us_per_call_saturated", "server CPU µs per call, saturated (lower is better)"),
        ("server_cpu_us_per_call", f"server CPU µs per call at {rate:g}/s (lower is better)"),
        ("p99_ms", f"p99 ms at {rate:g}/s (lower is better)"),
    ]
    for ax, (key, title) in zip(axes, panels, strict=True):
        vals = [best[n][key] for n in names]
        ax.bar(range(len(names)), vals, color=colors, edgecolor="black", linewidth=0.4)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(
        f"Thrift unary echo, one server core each, {report['args']['conns']} framed binary connections "
        f"(load average {report['loadavg_start'][0]:.2f} on {report['cpus']} CPUs: rough)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        load_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], float(sys.argv[6]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--depth", type=int, default=16, help="calls in flight per connection at saturation")
    ap.add_argument("--rate", type=float, default=4000.0, help="calls/s of the fixed-rate phase")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--server-cpu", default="1")
    ap.add_argument("--client-cpu", default="0")
    ap.add_argument("--clients", default=",".join(CLIENTS), help="client side: these against a monolake server")
    ap.add_argument("--client-conns", type=int, default=16, help="callers of the client-side comparison")
    ap.add_argument("--no-clients", action="store_true", help="skip the client-side comparison")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        Path(d, "echo.thrift").write_text(IDL)
        os.mkdir(os.path.join(d, "gen"))
        gen = ["thrift", "--gen", "py", "-out", os.path.join(d, "gen"), os.path.join(d, "echo.thrift")]
        subprocess.run(gen, check=True)
        load_before = os.getloadavg()
        runs = []
        for _ in range(args.rounds):
            for kind in args.servers.split(","):
                runs.append(run_one(kind, d, args))
                r = runs[-1]
                print(
                    f"{kind:19} {r['calls_per_s']:8.0f} calls/s  {r['server_cpu_us_per_call']:5.1f} µs/call at "
                    f"{args.rate:g}/s  p99 {r['p99_ms']:.2f} ms  (load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
        clients = [] if args.no_clients else [c for _ in range(args.rounds) for c in run_clients(d, args)]
        load_after = os.getloadavg()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report = {
        "when": stamp, "args": vars(args), "loadavg_start": load_before, "loadavg_end": load_after,
        "cpus": os.cpu_count(), "runs": runs, "clients": clients,
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rpc-thrift-{stamp}.json").write_text(json.dumps(report, indent=2))
    best = _best(runs)
    others = [b for n, b in best.items() if not n.startswith("monolake")]
    lines = [
        f"# Thrift RPC servers, unary echo ({stamp})",
        "",
        f"Framed binary, 100 B string, {args.conns} connections; server on core {args.server_cpu}, load client on "
        f"core {args.client_cpu}. Saturation: {args.depth} calls in flight per connection; then a fixed "
        f"{args.rate:g} calls/s for the server's CPU per call (user+sys from /proc) and p50/p99. Best of "
        f"{args.rounds} round(s). Load average {load_before[0]:.2f} at start, {load_after[0]:.2f} at end "
        f"({os.cpu_count()} CPUs): a busy machine gives rough figures.",
        "",
        "| server | calls/s (saturation) | CPU µs/call saturated (sys) | CPU µs/call at fixed rate (sys) | p50 ms "
        "| p99 ms |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for n, r in best.items():
        lines.append(
            f"| {n} | {r['calls_per_s']:.0f} | {r['server_cpu_us_per_call_saturated']:.1f} "
            f"({r['server_sys_us_per_call_saturated']:.1f}) | {r['server_cpu_us_per_call']:.1f} "
            f"({r['server_sys_us_per_call']:.1f}) | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
        )
    ml = best.get("monolake")
    if ml and others:
        top = max(others, key=lambda b: b["calls_per_s"])
        cheap = min(others, key=lambda b: b["server_cpu_us_per_call"])
        cheap_sat = min(b["server_cpu_us_per_call_saturated"] for b in others)
        lines += [
            "",
            f"- calls/s: monolake {ml['calls_per_s'] / top['calls_per_s']:.2f}x the best other ({top['server']})",
            f"- CPU per call at {args.rate:g}/s: the cheapest other ({cheap['server']}) costs "
            f"{cheap['server_cpu_us_per_call'] / ml['server_cpu_us_per_call']:.2f}x monolake's",
            f"- CPU per call saturated (calls per core = 1 / it): the cheapest other costs "
            f"{cheap_sat / ml['server_cpu_us_per_call_saturated']:.2f}x monolake's",
            f"- load client CPU per call at saturation (monolake run): "
            f"{ml['client_cpu_us_per_call_saturated']:.1f} µs (it must cost less than the server's)",
        ]
    if clients:
        lines += [
            "",
            f"Clients against the monolake server ({args.client_conns} callers each, one call in flight per caller; "
            "monolake's client on TTHeader, the others framed):",
            "",
            "| client | calls/s | client CPU µs/call |",
            "|---|--:|--:|",
        ]
        for c in clients:
            lines.append(f"| {c['client']} | {c['calls_per_s']:.0f} | {c['client_cpu_us_per_call']:.1f} |")
    (out / f"rpc-thrift-{stamp}.md").write_text("\n".join(lines) + "\n")
    if plot(report, out / f"rpc-thrift-{stamp}.png"):
        lines.append(f"\nPlot: rpc-thrift-{stamp}.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
