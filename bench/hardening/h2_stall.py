"""Stalled HTTP/2 streams: memory and upstream connections they hold, monolake vs nginx.

Run: python -m bench.hardening.h2_stall [--streams 1000] [--body 1024k] [--proxies nginx,monolake-native]

A client opens ``--streams`` streams (100 per connection) with SETTINGS_INITIAL_WINDOW_SIZE 0, so
no response byte can be sent, each GETting a ``--body`` file from an nginx origin, and reads only the
response heads. Then, per proxy (one worker each, the same origin, in the same run):

- RSS growth of the proxy's processes per stalled stream (after the heads, and a short settle);
- upstream connections established to the origin while the streams stall;
- after the client closes: how long until no upstream connection is left (capped at 10 s).

nginx: ``listen ... http2`` and ``proxy_pass`` with ``keepalive 64`` and its default buffering (it may
spool a response to a temp file and free the upstream). monolake: default ``[servers.NAME.http2]``
settings, once per codec. Results: bench/results/hardening-h2-stall-<UTC time>.md and .json. A run
beside other work is a rough figure: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hpack
from hyperframe.frame import Frame, HeadersFrame, RstStreamFrame, SettingsFrame

from ..h2 import monolake_conf
from ..load import configs, machine
from ..load.procs import Proc, Procs, free_port, wait_port

RESULTS = machine.REPO / "bench" / "results"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PER_CONNECTION = 100


def nginx_conf(tmp: Path, port: int, origin_port: int) -> Path:
    return configs._nginx(
        tmp,
        "nginx-h2-stall",
        f"""  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} http2;
    http2_max_concurrent_streams 128;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}""",
    )


class StalledClient:
    """One connection whose streams have a zero window; reads frames only to see response heads."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""
        self.enc = hpack.Encoder()
        self.sock.sendall(PREFACE + SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}).serialize())

    def get(self, sid: int, path: str) -> None:
        block = self.enc.encode([(":method", "GET"), (":scheme", "http"), (":authority", "bench"), (":path", path)])
        f = HeadersFrame(sid, bytes(block), flags=["END_HEADERS", "END_STREAM"])
        self.sock.sendall(f.serialize())

    def frame(self) -> Frame | None:
        while True:
            if len(self.buf) >= 9:
                f, n = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) >= 9 + n:
                    f.parse_body(memoryview(self.buf[9 : 9 + n]))
                    self.buf = self.buf[9 + n :]
                    if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                        self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
                    return f
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data

    def heads(self, n: int) -> tuple[int, int]:
        """Wait until each of ``n`` streams is answered (HEADERS) or reset; returns how many streams
        got a response head and how many were reset meanwhile (a stream may count in both)."""
        heads: set[int] = set()
        resets: set[int] = set()
        while len(heads | resets) < n:
            f = self.frame()
            if f is None:
                break
            if isinstance(f, HeadersFrame):
                heads.add(f.stream_id)
            elif isinstance(f, RstStreamFrame):
                resets.add(f.stream_id)
        return len(heads), len(resets)

    def close(self) -> None:
        self.sock.close()


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def origin_connections(port: int) -> int:
    """Established connections to 127.0.0.1:port, counted on the connecting (proxy) side."""
    peer = f"0100007F:{port:04X}"
    return sum(
        1
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if (fields := line.split())[2] == peer and fields[3] == "01"
    )


def measure(name: str, proc: Proc, port: int, origin_port: int, streams: int, body: str) -> dict[str, Any]:
    wait_port(port, alive=proc.popen)
    time.sleep(0.5)  # workers up
    pids = proc.pids()
    conns0 = origin_connections(origin_port)
    before = rss_kb(pids)
    clients: list[StalledClient] = []
    t0 = time.monotonic()
    heads = resets = 0
    try:
        left = streams
        while left:
            n = min(PER_CONNECTION, left)
            c = StalledClient(port)
            clients.append(c)
            for i in range(n):
                c.get(1 + 2 * i, f"/body/{body}")
            h, r = c.heads(n)
            heads += h
            resets += r
            left -= n
        opened_s = time.monotonic() - t0
        time.sleep(2.0)  # let the proxies read what they will read
        pids = proc.pids()
        grown = rss_kb(pids) - before
        held = origin_connections(origin_port) - conns0
    finally:
        t1 = time.monotonic()
        for c in clients:
            c.close()
    while origin_connections(origin_port) - conns0 > 0 and time.monotonic() - t1 < 10:
        time.sleep(0.05)
    freed_s = time.monotonic() - t1
    after_close = origin_connections(origin_port) - conns0
    row = {
        "proxy": name,
        "streams": streams,
        "heads": heads,
        "resets": resets,
        "open_seconds": round(opened_s, 2),
        "rss_growth_kib": grown,
        "rss_kib_per_stream": round(grown / max(1, heads), 1),
        "upstream_connections_held": held,
        "upstream_connections_10s_after_close": after_close,
        "seconds_to_free_upstreams": round(freed_s, 2) if after_close == 0 else None,
    }
    print(json.dumps(row), flush=True)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    codecs = ["native", "h2"]
    from monolake.proto.http2 import native_available

    if not native_available():
        codecs.remove("native")
    results: dict[str, Any] = {"machine": machine.info(), "args": vars(args), "load_before": os.getloadavg()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-h2-stall-") as d:
        tmp = Path(d)
        tmp.chmod(0o755)
        procs = Procs(tmp)
        try:
            origin_port = free_port()
            origin = procs.start("origin", ["nginx", "-c", str(configs.origin(tmp, origin_port, [args.body]))], None)
            wait_port(origin_port, alive=origin.popen)
            starters: dict[str, Any] = {
                "nginx": lambda port: procs.start(
                    "nginx", ["nginx", "-c", str(nginx_conf(tmp, port, origin_port))], None
                )
            }
            for codec in codecs:
                starters[f"monolake-{codec}"] = lambda port, codec=codec: procs.start(
                    f"monolake-{codec}",
                    [
                        sys.executable,
                        "-m",
                        "monolake.cli",
                        "run",
                        "-c",
                        str(monolake_conf(tmp, f"stall-{codec}", port, origin_port, "http1")),
                    ],
                    None,
                    env=dict(os.environ, MONOLAKE_H2_CODEC=codec),
                )
            wanted = args.proxies.split(",") if args.proxies else list(starters)
            for name in wanted:
                quiet = time.monotonic() + 10  # the previous proxy's upstream connections closing
                while origin_connections(origin_port) and time.monotonic() < quiet:
                    time.sleep(0.05)
                port = free_port()
                proc = starters[name](port)
                try:
                    rows.append(measure(name, proc, port, origin_port, args.streams, args.body))
                finally:
                    procs.stop(proc)
        finally:
            procs.stop_all()
    results["rows"] = rows
    results["load_after"] = os.getloadavg()
    return results


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    la, lb = results["load_before"], results["load_after"]
    out = [
        "# Stalled HTTP/2 streams: monolake vs nginx",
        "",
        f"{results['args']['streams']} streams with a zero window, GET of a {results['args']['body']} body from an "
        f"nginx origin; one proxy worker. monolake {m['monolake_commit']}, {m['nginx']}, {m['cpu_model']}, "
        f"{m['cores']} cores. Load average {la[0]:.2f} before, {lb[0]:.2f} after: "
        + ("a busy machine, rough figures." if max(la[0], lb[0]) > 0.5 else "a quiet machine."),
        "",
        "| proxy | heads / resets (while opening) | RSS growth MiB | KiB per stream | upstream conns held | "
        "upstream conns 10 s after close | s to free upstreams |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = [
        "",
        "Upstream connections are those established to the origin while the streams stall (and 10 s after",
        "the client closed): nginx's count includes the idle keepalive connections of its pool (`keepalive 64`),",
        "which it keeps after spooling responses; monolake holds one per stalled stream until the stream is",
        "reset (`send_timeout`, 60 s by default) or the client goes away.",
    ]
    for r in results["rows"]:
        freed = r["seconds_to_free_upstreams"]
        out.append(
            f"| {r['proxy']} | {r['heads']} / {r['resets']} | {r['rss_growth_kib'] / 1024:.1f} | "
            f"{r['rss_kib_per_stream']:.0f} | {r['upstream_connections_held']} | "
            f"{r['upstream_connections_10s_after_close']} | {'-' if freed is None else freed} |"
        )
    return "\n".join(out + notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hardening.h2_stall", description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--body", default="1024k", help="response size, e.g. 1024k")
    ap.add_argument("--proxies", help="comma-separated subset of nginx,monolake-native,monolake-h2")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"hardening-h2-stall-{stamp}.json").write_text(json.dumps(results, indent=1, default=str))
    md = markdown(results)
    (out / f"hardening-h2-stall-{stamp}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
