"""Thrift RPC servers, unary echo: monolake vs thriftpy2's asyncio server vs Apache Thrift's
TNonblockingServer and TThreadedServer, one server core each, the same load client.

Run: python -m bench.rpc.thrift [--seconds 5] [--conns 32] [--rate 4000] [--rounds 1]
     [--servers monolake,thriftpy2-aio,apache-nonblocking,apache-threaded] [--out bench/results]

Every server answers ``string echo(1: string s)`` on framed binary (the one transport all
of them speak) and runs alone on core 1 (``taskset``); the load client runs on core 0. It
is a uvloop program with pre-encoded calls (so it costs little per call): ``--conns``
connections, one call in flight each for the saturation phase (calls/s), then a fixed
``--rate`` (calls/s over all connections, scheduled ahead of time so a slow reply does not
hide later latency) for the p50/p99 phase. The server's user+sys CPU per call is read from
/proc. On a busy or 2-core machine the numbers are rough: the JSON records the load average.
Results: bench/results/rpc-thrift-<UTC>.json and .md. Timings never gate CI.
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
from pathlib import Path
from typing import Any

IDL = "namespace py benchecho\nservice Echo {\n  string echo(1: string s)\n}\n"
SERVERS = ["monolake", "thriftpy2-aio", "apache-nonblocking", "apache-threaded"]
REPO = Path(__file__).resolve().parents[2]


# -- servers (each runs as ``python -m bench.rpc.thrift serve KIND PORT DIR``) -------------


def serve(kind: str, port: int, directory: str) -> None:
    idl = os.path.join(directory, "echo.thrift")
    if kind == "monolake":
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

        uvloop.run(main())
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
    def __init__(self) -> None:
        self.buf = b""
        self.waiters: list[asyncio.Future[float]] = []
        self.transport: Any = None
        # saturation: the next call is written from data_received (no future, no task per call)
        self.frame = b""
        self.stop = 0.0
        self.count = 0
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        now = time.perf_counter()
        while len(buf) >= 4:
            n = struct.unpack_from("!I", buf)[0]
            if len(buf) < 4 + n:
                break
            buf = buf[4 + n :]
            if self.done is not None:
                self.count += 1
                if now < self.stop:
                    self.transport.write(self.frame)
                else:
                    self.done.set_result(None)
                    self.done = None
                continue
            fut = self.waiters.pop(0)
            if not fut.done():
                fut.set_result(now)
        self.buf = buf

    def call(self, frame: bytes) -> asyncio.Future[float]:
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self.transport.write(frame)
        return fut


async def _load(port: int, conns: int, seconds: float, rate: float, text: bytes) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    cs: list[_Conn] = []
    for _ in range(conns):
        _, c = await loop.create_connection(_Conn, "127.0.0.1", port)
        c.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cs.append(c)
    frame = _call_frame(1, text)
    # warm-up
    await asyncio.gather(*(c.call(frame) for c in cs))
    t0 = time.perf_counter()
    dones = []
    for c in cs:
        c.frame, c.stop, c.done = frame, t0 + seconds, loop.create_future()
        dones.append(c.done)
        c.transport.write(frame)
    await asyncio.gather(*dones)
    sat = sum(c.count for c in cs) / (time.perf_counter() - t0)
    # fixed rate: calls scheduled every conns/rate seconds per connection
    lat: list[float] = []
    interval = conns / rate
    start = time.perf_counter() + 0.05

    async def opened(i: int, c: _Conn) -> None:
        n = 0
        pending: list[tuple[float, asyncio.Future[float]]] = []
        t_first = start + i * interval / conns
        while True:
            due = t_first + n * interval
            if due > start + seconds:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append((due, c.call(frame)))
            n += 1
        for due, fut in pending:
            lat.append(await fut - due)

    await asyncio.gather(*(opened(i, c) for i, c in enumerate(cs)))
    for c in cs:
        c.transport.close()
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {"calls_per_s": sat, "rate": rate, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "fixed_calls": len(lat)}


def load_main(port: int, conns: int, seconds: float, rate: float) -> None:
    import uvloop

    print(json.dumps(uvloop.run(_load(port, conns, seconds, rate, b"x" * 100))), flush=True)


# -- clients against one server (``--clients``) --------------------------------------------

CLIENTS = ["monolake", "thriftpy2-aio", "apache"]


def client_main(kind: str, port: int, conns: int, seconds: float, directory: str) -> None:
    """``conns`` callers making echo calls back to back for ``seconds``; prints calls/s and CPU/call."""
    idl = os.path.join(directory, "echo.thrift")
    text = "x" * 100
    count = 0
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

        def run(i: int) -> None:
            tr = TTransport.TFramedTransport(TSocket.TSocket("127.0.0.1", port))
            tr.open()
            c = Echo.Client(TBinaryProtocol.TBinaryProtocolAccelerated(tr))
            while time.perf_counter() < stop:
                c.echo(text)
                counts[i] += 1
            tr.close()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
        for t in threads:
            t.start()
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

            async def one() -> None:
                nonlocal n
                c = await make_aio_client(
                    mod.Echo, "127.0.0.1", port, trans_factory=TAsyncFramedTransportFactory(), timeout=None
                )
                while time.perf_counter() < stop:
                    await c.echo(text)
                    n += 1
                c.close()

            await asyncio.gather(*(one() for _ in range(conns)))
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
                [*ltaskset, sys.executable, "-m", "bench.rpc.thrift", "client", kind, str(port), str(args.conns),
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
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_one(kind: str, directory: str, args: argparse.Namespace) -> dict[str, Any]:
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
        cpu0 = _cpu(srv.pid)
        out = subprocess.run(
            [*ltaskset, sys.executable, "-m", "bench.rpc.thrift", "load", str(port), str(args.conns),
             str(args.seconds), str(args.rate)],
            capture_output=True, env=env, cwd=REPO, check=True, timeout=args.seconds * 4 + 60,
        )  # fmt: skip
        cpu = _cpu(srv.pid) - cpu0
        res: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
        calls = res["calls_per_s"] * args.seconds + res["fixed_calls"]
        res["server_cpu_us_per_call"] = cpu / calls * 1e6 if calls else None
        res["server"] = kind
        return res
    finally:
        srv.kill()
        srv.wait()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        load_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--rate", type=float, default=4000.0, help="calls/s of the fixed-rate phase")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--server-cpu", default="1")
    ap.add_argument("--client-cpu", default="0")
    ap.add_argument("--clients", default=",".join(CLIENTS), help="client side: these against a monolake server")
    ap.add_argument("--no-clients", action="store_true", help="skip the client-side comparison")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        Path(d, "echo.thrift").write_text(IDL)
        os.mkdir(os.path.join(d, "gen"))
        gen = ["thrift", "--gen", "py", "-out", os.path.join(d, "gen"), os.path.join(d, "echo.thrift")]
        subprocess.run(gen, check=True)
        load_before = os.getloadavg()
        runs = [run_one(kind, d, args) for _ in range(args.rounds) for kind in args.servers.split(",")]
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
    lines = [
        f"# Thrift RPC servers, unary echo ({stamp})",
        "",
        f"{args.conns} connections, framed binary, 100 B string; server on core {args.server_cpu}, client on core "
        f"{args.client_cpu}; fixed rate {args.rate:g} calls/s for p50/p99. Load average {load_before[0]:.2f} at "
        f"start, {load_after[0]:.2f} at end ({os.cpu_count()} CPUs): a busy machine gives rough figures.",
        "",
        "| server | calls/s (saturation) | server CPU µs/call | p50 ms | p99 ms |",
        "|---|--:|--:|--:|--:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['server']} | {r['calls_per_s']:.0f} | {r['server_cpu_us_per_call']:.1f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} |"
        )
    if clients:
        lines += [
            "",
            f"Clients against the monolake server ({args.conns} callers each; monolake's client on TTHeader,"
            " the others framed):",
            "",
            "| client | calls/s | client CPU µs/call |",
            "|---|--:|--:|",
        ]
        for c in clients:
            lines.append(f"| {c['client']} | {c['calls_per_s']:.0f} | {c['client_cpu_us_per_call']:.1f} |")
    (out / f"rpc-thrift-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
