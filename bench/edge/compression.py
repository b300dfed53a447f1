"""CPU per MB of response compressed: monolake's ``compress`` filter per codec vs nginx's gzip.

    python bench/edge/compression.py [--mb 32] [--levels 1,6]

The corpus is real text (this repository's Python sources and docs, up to ``--mb`` MB)
cut into 256 KiB responses, each compressed on its own (a fresh encoder, as per
request) and fed in 64 KiB chunks, as an upstream body arrives. For monolake, the
filter's streaming pipe (``compress._Pipe``: one ``Body`` in, one out) is fed the chunks
and the process CPU time is measured: what the filter adds to a worker per MB. For
nginx, a worker serves the same responses as files with ``gzip on`` at each level and
its CPU time (utime + stime from /proc) is read before and after fetching them all;
nginx's cost of serving them uncompressed (the same fetches with gzip off) is
subtracted, so both numbers are compression CPU per MB of input. Output ratio too.
Rough on a busy machine: rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from monolake.apps.edge.compress import Compress, CompressArgs, _Pipe  # noqa: E402
from monolake.core._body import Body  # noqa: E402

CHUNK = 64 * 1024
RESPONSE = 256 * 1024


def corpus(mb: int) -> list[bytes]:
    """Responses of RESPONSE bytes cut from real text (not repeated: a repeated corpus would let
    brotli's and zstd's long windows find whole copies)."""
    text = b"".join(p.read_bytes() for p in sorted((REPO / "src").rglob("*.py")))
    text += b"".join(p.read_bytes() for p in sorted((REPO / "docs").rglob("*.md")))
    text += b"".join(p.read_bytes() for p in sorted((REPO / "tests").rglob("*.py")))
    text = text[: mb * 1024 * 1024]
    return [text[i : i + RESPONSE] for i in range(0, len(text) - RESPONSE + 1, RESPONSE)]


class _Producer:
    def pause_body(self) -> None: ...
    def resume_body(self) -> None: ...
    def cancel_body(self) -> None: ...


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> None:
        self.n += len(data)

    def end(self) -> None: ...
    def abort(self, exc: BaseException) -> None: ...


def monolake_cpu(responses: list[bytes], encoding: str, level: int, repeat: int) -> tuple[float, float]:
    """(CPU seconds per MB, output/input ratio) of the filter's pipe."""
    key = {"gzip": "gzip_level", "br": "brotli_quality", "zstd": "zstd_level"}[encoding]
    f = Compress(CompressArgs(encodings=[encoding], **{key: level}))  # type: ignore[arg-type]
    make = f.makers[encoding.encode()]
    sink = _Count()
    total = sum(map(len, responses)) * repeat
    t0 = time.process_time()
    for data in responses * repeat:
        up = Body(_Producer())
        _Pipe(up, make()).out.pipe(sink)
        for i in range(0, len(data), CHUNK):
            up.feed(data[i : i + CHUNK])
        up.feed_eof()
    cpu = time.process_time() - t0
    return cpu / (total / 1e6), sink.n / total


NGINX_CONF = """\
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    default_type text/plain;
    sendfile off;
    client_body_temp_path {dir}/cb; proxy_temp_path {dir}/p; fastcgi_temp_path {dir}/f;
    uwsgi_temp_path {dir}/u; scgi_temp_path {dir}/s;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
        location /gz/ {{ alias {dir}/www/; gzip on; gzip_comp_level {level}; gzip_min_length 0;
                        gzip_types text/plain; gzip_buffers 32 64k; }}
        location /plain/ {{ alias {dir}/www/; gzip off; }}
    }}
}}
"""


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fetch(port: int, path: str, gzip: bool) -> int:
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += "Accept-Encoding: gzip\r\n" if gzip else ""
    n = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head.encode() + b"\r\n")
        while chunk := s.recv(1 << 20):
            n += len(chunk)
    return n


def nginx_cpu(responses: list[bytes], level: int, repeat: int) -> tuple[float, float] | None:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        return None
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "www").mkdir()
        for i, data in enumerate(responses):
            (Path(d) / "www" / f"r{i}.txt").write_bytes(data)
        total = sum(map(len, responses))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        user = "user root;" if os.geteuid() == 0 else ""
        conf = Path(d) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, dir=d, port=port, level=level))
        master = subprocess.Popen([binary, "-p", d, "-e", f"{d}/error.log", "-c", str(conf), "-g", "daemon off;"])
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "nginx did not start"
                    time.sleep(0.05)
            children = Path(f"/proc/{master.pid}/task/{master.pid}/children")
            while not children.read_text().split():  # the master listens before it forks the worker
                assert time.monotonic() < deadline, "nginx started no worker"
                time.sleep(0.05)
            worker = int(children.read_text().split()[0])

            def run(prefix: str, gz: bool) -> tuple[float, int]:
                c0 = _cpu_of(worker)
                size = 0
                for _ in range(repeat):
                    size = sum(_fetch(port, f"{prefix}r{i}.txt", gz) for i in range(len(responses)))
                return _cpu_of(worker) - c0, size

            plain, _ = run("/plain/", False)
            gz, size = run("/gz/", True)
        finally:
            master.send_signal(signal.SIGQUIT)
            master.wait(10)
    # size includes each response's head (~200 bytes): negligible against 256 KiB
    return max(gz - plain, 0.0) / repeat / (total / 1e6), size / total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=8, help="text cut into responses (at most what the repo has)")
    ap.add_argument("--levels", default="1,6", help="gzip levels compared with nginx")
    ap.add_argument("--repeat", type=int, default=5, help="times each response is compressed / fetched")
    args = ap.parse_args()
    data = corpus(args.mb)
    mb = sum(map(len, data)) / 1e6
    print(
        f"corpus: {len(data)} responses of {RESPONSE // 1024} KiB, {mb:.1f} MB of text; load {os.getloadavg()[0]:.2f}"
    )
    rows: list[tuple[str, Any, Any]] = []
    for level in (int(x) for x in args.levels.split(",")):
        cpu, ratio = monolake_cpu(data, "gzip", level, args.repeat)
        rows.append((f"monolake gzip level {level}", cpu, ratio))
        ng = nginx_cpu(data, level, args.repeat)
        rows.append((f"nginx    gzip level {level}", *(ng if ng else ("n/a", "n/a"))))
    for enc, level in (("br", 4), ("br", 6), ("zstd", 3), ("zstd", 9)):
        cpu, ratio = monolake_cpu(data, enc, level, args.repeat)
        rows.append((f"monolake {enc} level {level}", cpu, ratio))
    print(f"{'':28} {'CPU ms/MB':>10} {'ratio':>7}")
    for name, cpu, ratio in rows:
        c = f"{cpu * 1000:10.2f}" if isinstance(cpu, float) else f"{cpu:>10}"
        r = f"{ratio:7.3f}" if isinstance(ratio, float) else f"{ratio:>7}"
        print(f"{name:28} {c} {r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
