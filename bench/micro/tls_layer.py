"""CPU per keep-alive HTTPS request of the TLS layer alone: monolake's transport vs the loop's SSL layer.

    python -m bench.micro.tls_layer [--seconds 6] [--rounds 3] [--rate 4000] [--conns 50] [--loop uvloop]
    python -m bench.micro.tls_layer --calls 2000 [--loop uvloop]

A server process (pinned to core 1) answers every request with a fixed 128-byte HTTP/1.1 response from a
protocol that does nothing else, over TLS on each backend (openssl, rustls) and each transport
(``monolake``: core/tls_transport.py; ``loop``: the event loop's SSL protocol layer). ``h2load --h1``
(core 0) offers a fixed rate over keep-alive connections. CPU = the server's user+sys over a window
inside the load / responses written in it (both read inside the server, so start-up and handshakes
stay out). Variants are interleaved round by round; medians are printed. Without the proxy, the
upstream and the HTTP parser, what differs between the rows is the TLS layer. Timings never gate CI.

``--calls N``: instead, Python-level and C calls per request made by the server's thread, counted
with ``sys.setprofile`` over N keep-alive requests from one client (exact: a busy machine cannot
disturb it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 128\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 128
VARIANTS = ["openssl-monolake", "openssl-loop", "rustls-monolake", "rustls-loop"]


class Answer(asyncio.Protocol):
    """One response per request head (h2load sends one GET at a time per connection)."""

    count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        n = data.count(b"\r\n\r\n")
        Answer.count += n
        self.transport.write(RESPONSE * n)  # type: ignore[attr-defined]


def serve(variant: str, loop_kind: str, chain: str, key: str) -> None:
    from monolake.core.runtime._loops import new_event_loop
    from monolake.core.tls import ServerTlsContexts
    from monolake.core.tls_settings import Certificate, ServerTls
    from monolake.core.tls_transport import server_factory

    backend, transport = variant.split("-")
    cfg = ServerTls(backend=backend, transport=transport, certificates=[Certificate(chain=chain, key=key)])  # type: ignore[arg-type]
    tls = ServerTlsContexts("bench.tls", cfg)
    loop = new_event_loop(loop_kind)

    def report(*_: object) -> None:
        t = os.times()
        print(f"{Answer.count} {t.user + t.system}", flush=True)

    async def main() -> None:
        factory = server_factory(tls.ssl_context, Answer)
        if factory is None:
            server = await loop.create_server(Answer, "127.0.0.1", 0, ssl=tls.ssl_context)
        else:
            server = await loop.create_server(factory, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        loop.add_signal_handler(signal.SIGUSR1, report)
        await asyncio.Event().wait()

    loop.run_until_complete(main())


def count_calls(variant: str, loop_kind: str, chain: str, key: str, n: int) -> tuple[float, float]:
    """(Python-level calls, C calls) the server's thread makes per keep-alive request (``sys.setprofile``;
    exact, so unaffected by a busy machine; uvloop's Cython code is C here, rtls' Python objects are not)."""
    import collections
    import socket
    import ssl
    import threading

    from monolake.core.runtime._loops import new_event_loop
    from monolake.core.tls import ServerTlsContexts
    from monolake.core.tls_settings import Certificate, ServerTls
    from monolake.core.tls_transport import server_factory

    backend, transport = variant.split("-")
    cfg = ServerTls(backend=backend, transport=transport, certificates=[Certificate(chain=chain, key=key)])  # type: ignore[arg-type]
    tls = ServerTlsContexts("bench.tls", cfg)
    loop = new_event_loop(loop_kind)
    counts: collections.Counter[str] = collections.Counter()
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

    def client(port: int, rounds: int, ready: threading.Event, go: threading.Event) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) as c:
            for phase in (rounds // 10, rounds):  # warm-up, then the counted requests
                for _ in range(phase):
                    c.sendall(request)
                    got = 0
                    while got < len(RESPONSE):
                        got += len(c.recv(65536))
                if not ready.is_set():
                    ready.set()
                    go.wait()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            counts[event] += 1

    async def main() -> None:
        factory = server_factory(tls.ssl_context, Answer)
        if factory is None:
            server = await loop.create_server(Answer, "127.0.0.1", 0, ssl=tls.ssl_context)
        else:
            server = await loop.create_server(factory, "127.0.0.1", 0)
        ready, go = threading.Event(), threading.Event()
        t = threading.Thread(target=client, args=(server.sockets[0].getsockname()[1], n, ready, go))
        t.start()
        while not ready.is_set():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # the warm-up's last bytes settle
        sys.setprofile(profile)
        go.set()
        while t.is_alive():
            await asyncio.sleep(0.005)
        sys.setprofile(None)
        server.close()

    loop.run_until_complete(main())
    loop.close()
    return counts["call"] / n, counts["c_call"] / n


def measure(args: argparse.Namespace, variant: str, chain: Path, key: Path) -> float:
    cmd = [sys.executable, "-m", "bench.micro.tls_layer", "--serve", variant, "--loop", args.loop]
    cmd += ["--chain", str(chain), "--key", str(key)]
    server = subprocess.Popen(["taskset", "-c", "1", *cmd], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        load = subprocess.Popen(
            ["taskset", "-c", "0", "h2load", "--h1", "-t", "1", "-c", str(args.conns),
             f"--rps={max(1, args.rate // args.conns)}", "-D", str(args.seconds + 3),
             f"https://127.0.0.1:{port}/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(1.5)
            server.send_signal(signal.SIGUSR1)
            n0, c0 = server.stdout.readline().split()
            time.sleep(args.seconds)
            server.send_signal(signal.SIGUSR1)
            n1, c1 = server.stdout.readline().split()
        finally:
            load.wait(timeout=args.seconds + 60)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 1e6 * (float(c1) - float(c0)) / max(1, int(n1) - int(n0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=int, default=4000)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--loop", default="uvloop")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--calls", type=int, default=0, metavar="N", help="count calls per request over N requests")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--chain", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.loop, args.chain, args.key)
        return 0
    if args.calls:
        import trustme

        with tempfile.TemporaryDirectory() as d:
            cert = trustme.CA().issue_cert("127.0.0.1", key_type=trustme.KeyType.ECDSA)
            chain, key = Path(d) / "chain.pem", Path(d) / "key.pem"
            chain.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
            key.write_bytes(cert.private_key_pem.bytes())
            for v in args.variants.split(","):
                py, c = count_calls(v, args.loop, str(chain), str(key), args.calls)
                print(f"{v:18} {py:6.1f} Python calls + {c:6.1f} C calls per request (server thread)")
        return 0
    if shutil.which("h2load") is None:
        print("needs h2load (nghttp2-client)", file=sys.stderr)
        return 2
    import trustme

    with tempfile.TemporaryDirectory() as d:
        cert = trustme.CA().issue_cert("127.0.0.1", key_type=trustme.KeyType.ECDSA)
        chain, key = Path(d) / "chain.pem", Path(d) / "key.pem"
        chain.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
        key.write_bytes(cert.private_key_pem.bytes())
        results: dict[str, list[float]] = {v: [] for v in args.variants.split(",")}
        print(f"load average {os.getloadavg()}")
        for rnd in range(args.rounds):
            for v in results:
                us = measure(args, v, chain, key)
                results[v].append(us)
                print(f"round {rnd} {v:18} {us:6.2f} µs/request", flush=True)
        print(f"load average {os.getloadavg()}")
        for v, xs in results.items():
            print(f"{v:18} median {statistics.median(xs):6.2f} µs/request  ({', '.join(f'{x:.2f}' for x in xs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
