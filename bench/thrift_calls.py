"""Thrift proxy: calls/s and the proxy's CPU per call, direct vs through monolake.

Run: python -m bench.thrift_calls [--seconds 5] [--clients 16] [--loop uvloop] [--transport framed|ttheader]

An upstream (thriftpy2's threaded server, framed binary, echo of a ~200 B string;
or, with --transport ttheader, the same processor behind TTHeader framing) and a
load process (``--clients`` threads, one connection each, calls back to back) run
as separate processes; the proxy is ``monolake run`` with one worker. The figures:
calls/s direct, calls/s through the proxy, and the proxy's user+sys CPU µs per
call (from /proc, supervisor and worker). On a 2-core machine the Python load
generator is usually the bottleneck, so calls/s are relative figures; CPU per call
is the one to compare. Timings never gate CI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

IDL = """
service Bench {
  string echo(1: string s)
}
"""


def _tick() -> int:
    return os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, sys) seconds of ``pid`` and its children (the monolake workers)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    user = system = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / _tick(), system / _tick()


def serve(port: int, idl: str, transport: str) -> None:
    import thriftpy2
    from thriftpy2.protocol import TBinaryProtocolFactory
    from thriftpy2.rpc import make_server
    from thriftpy2.thrift import TProcessor
    from thriftpy2.transport import TFramedTransportFactory, TMemoryBuffer

    mod = thriftpy2.load(idl, module_name="bench_calls_thrift")

    class Handler:
        def echo(self, s: str) -> str:
            return s

    if transport == "framed":
        make_server(
            mod.Bench, Handler(), "127.0.0.1", port, trans_factory=TFramedTransportFactory(), client_timeout=None
        ).serve()
        return
    from monolake.core.proto.thrift import FrameReader, encode_ttheader

    processor = TProcessor(mod.Bench, Handler())
    factory = TBinaryProtocolFactory()
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(256)

    def conn_loop(conn: socket.socket) -> None:
        reader = FrameReader()
        while data := conn.recv(65536):
            for f in reader.feed(data):
                out = TMemoryBuffer()
                processor.process(factory.get_protocol(TMemoryBuffer(f.data[f.payload :])), factory.get_protocol(out))
                conn.sendall(encode_ttheader(out.getvalue(), seq_id=f.seq_id))

    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=conn_loop, args=(conn,), daemon=True).start()


def load(address: str, idl: str, clients: int, seconds: float, transport: str) -> None:
    import thriftpy2
    from thriftpy2.rpc import make_client
    from thriftpy2.transport import TFramedTransportFactory

    mod = thriftpy2.load(idl, module_name="bench_calls_thrift")
    host, _, port = address.rpartition(":")
    counts = [0] * clients
    text = "x" * 200
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        if transport == "framed":
            c = make_client(mod.Bench, host, int(port), trans_factory=TFramedTransportFactory(), timeout=20000)
            while time.monotonic() < stop:
                c.echo(text)
                counts[i] += 1
            c.close()
            return
        from thriftpy2.protocol import TBinaryProtocolFactory
        from thriftpy2.thrift import TMessageType
        from thriftpy2.transport import TMemoryBuffer

        from monolake.core.proto.thrift import FrameReader, encode_ttheader

        factory = TBinaryProtocolFactory()
        s = socket.create_connection((host, int(port)))
        reader = FrameReader()
        seq = 0
        while time.monotonic() < stop:
            seq += 1
            buf = TMemoryBuffer()
            p = factory.get_protocol(buf)
            p.write_message_begin("echo", TMessageType.CALL, seq)
            mod.Bench.echo_args(s=text).write(p)
            p.write_message_end()
            s.sendall(encode_ttheader(buf.getvalue(), seq_id=seq, headers={"RPC_PERSIST_TRACE": "t"}))
            frames: list[object] = []
            while not frames:
                frames = reader.feed(s.recv(65536))
            counts[i] += 1
        s.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(sum(counts))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_load(address: str, idl: str, args: argparse.Namespace) -> int:
    cmd = [sys.executable, "-m", "bench.thrift_calls", "--load", address, "--idl", idl]
    cmd += ["--clients", str(args.clients), "--seconds", str(args.seconds), "--transport", args.transport]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=args.seconds + 60)
    return int(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("--transport", default="framed", choices=["framed", "ttheader"])
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--load", help=argparse.SUPPRESS)
    ap.add_argument("--idl", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.idl, args.transport)
        return
    if args.load:
        load(args.load, args.idl, args.clients, args.seconds, args.transport)
        return
    with tempfile.TemporaryDirectory() as tmp:
        idl = str(Path(tmp) / "bench.thrift")
        Path(idl).write_text(IDL)
        port = free_port()
        upstream = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.thrift_calls",
                "--serve",
                str(port),
                "--idl",
                idl,
                "--transport",
                args.transport,
            ]
        )
        proxy = None
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    time.sleep(0.05)  # polling a port: the upstream prints nothing when ready
            direct = run_load(f"127.0.0.1:{port}", idl, args)
            conf = Path(tmp) / "proxy.toml"
            conf.write_text(
                f'[servers.rpc]\nlistener = "127.0.0.1:0"\nproxy_type = "thrift"\n'
                f'[[servers.rpc.routes]]\nthrift_method = "echo"\nupstreams = [{{ endpoint = "127.0.0.1:{port}" }}]\n'
            )
            proxy = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "monolake.product.cli",
                    "run",
                    "-c",
                    str(conf),
                    "--workers",
                    "1",
                    "--loop",
                    args.loop,
                ],
                stderr=subprocess.PIPE,
                text=True,
            )
            assert proxy.stderr is not None
            address = ""
            for line in proxy.stderr:
                m = re.search(r"monolake ready servers=rpc=(\S+)", line)
                if m:
                    address = m[1]
                    break
            threading.Thread(target=lambda: [None for _ in proxy.stderr], daemon=True).start()  # type: ignore[union-attr]
            run_load(address, idl, argparse.Namespace(**{**vars(args), "seconds": 1.0}))  # warm-up
            before = cpu_seconds(proxy.pid)
            via = run_load(address, idl, args)
            after = cpu_seconds(proxy.pid)
            user, system = after[0] - before[0], after[1] - before[1]
        finally:
            if proxy is not None:
                proxy.terminate()
                proxy.wait(20)
            upstream.kill()
            upstream.wait(10)
    load_avg = os.getloadavg()[0]
    print(f"transport={args.transport} loop={args.loop} clients={args.clients} seconds={args.seconds:g}")
    print(f"direct:        {direct / args.seconds:9.0f} calls/s")
    print(f"through proxy: {via / args.seconds:9.0f} calls/s")
    per = 1e6 / max(via, 1)
    print(f"proxy CPU:     {(user + system) * per:9.1f} µs/call: user {user * per:.1f} + sys {system * per:.1f}")
    print(f"load average {load_avg:.1f}")


if __name__ == "__main__":
    main()
