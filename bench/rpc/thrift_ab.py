"""A/B of two checkouts on the Thrift paths, alternated A/B/A/B: ``python -m bench.rpc.thrift_ab BASE``.

``BASE`` is another checkout's root (``git worktree add /tmp/base <commit>``, or ``git archive <commit>
src bench | tar -x -C /tmp/base``); the other side is this checkout. Per round, each side in turn:

- ``thrift_micro``: the server's Python CPU per call without sockets (framed binary, 16 calls per read),
  and the same on TTHeader;
- ``thrift_client_micro``: our client's Python CPU per call without sockets (TTHeader, 16 callers);
- ``client``: our ``ThriftClient`` (TTHeader, 16 callers) against one monolake server of this checkout
  alone on core 1, the client on core 0: the client's CPU per call (user+sys of its process).

CPU time, not wall time, so that a shared machine blurs it less; the load average is printed with each
line. Nothing here gates CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
IDL = "namespace py benchecho\nservice Echo {\n  string echo(1: string s)\n}\n"


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the other checkout's root directory")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0, help="of each client run")
    ap.add_argument("--micro-rounds", type=int, default=3000)
    a = ap.parse_args()
    sides = {"base": Path(a.base).resolve(), "this": HERE}
    taskset = shutil.which("taskset") is not None
    with tempfile.TemporaryDirectory() as d:
        Path(d, "echo.thrift").write_text(IDL)
        port = _port()
        srv = subprocess.Popen(
            [*(["taskset", "-c", "1"] if taskset else []), sys.executable, "-m", "bench.rpc.thrift", "serve",
             "monolake", str(port), d],
            stdout=subprocess.PIPE, env=_env(HERE), cwd=HERE,
        )  # fmt: skip
        try:
            assert srv.stdout is not None and srv.stdout.readline().strip() == b"ready"
            for _ in range(a.rounds):
                for name, root in sides.items():
                    micro = subprocess.run(
                        [sys.executable, str(HERE / "bench" / "rpc" / "thrift_micro.py"), "--rounds",
                         str(a.micro_rounds), "--repeat", "3"],
                        capture_output=True, env=_env(root), cwd=root, check=True,
                    )  # fmt: skip
                    micro_tt = subprocess.run(
                        [sys.executable, str(HERE / "bench" / "rpc" / "thrift_micro.py"), "--rounds",
                         str(a.micro_rounds), "--repeat", "3", "--transport", "ttheader"],
                        capture_output=True, env=_env(root), cwd=root, check=True,
                    )  # fmt: skip
                    client_micro = subprocess.run(
                        [sys.executable, str(HERE / "bench" / "rpc" / "thrift_client_micro.py")],
                        capture_output=True, env=_env(root), cwd=root, check=True,
                    )  # fmt: skip
                    client = subprocess.run(
                        [*(["taskset", "-c", "0"] if taskset else []), sys.executable, "-m", "bench.rpc.thrift",
                         "client", "monolake", str(port), "16", str(a.seconds), d],
                        capture_output=True, env=_env(root), cwd=root, check=True,
                    )  # fmt: skip
                    res = json.loads(client.stdout.decode().strip().splitlines()[-1])
                    print(
                        f"{name:5} server micro: {micro.stdout.decode().strip().split(': ')[-1]}, ttheader "
                        f"{micro_tt.stdout.decode().strip().split(': ')[-1].split(' (')[0]}; client micro "
                        f"{client_micro.stdout.decode().strip().split(': ')[-1].split(' (')[0]}; client "
                        f"{res['client_cpu_us_per_call']:.1f} CPU µs/call ({res['calls_per_s']:.0f} calls/s)  "
                        f"load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
        finally:
            srv.kill()
            srv.wait()


if __name__ == "__main__":
    main()
