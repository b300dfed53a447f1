"""Run echo_app.py as a real supervisor process and talk to it.

Readiness is never guessed with sleeps: a thread reads the supervisor's stderr
line by line and tests wait for the log line they need (``monolake ready ...``,
``worker N restarted ...``) with a generous timeout. Every process is stopped by
pid in ``Supervisor.close``: the supervisor with SIGTERM then SIGKILL, then any
worker pid ever seen that is still an echo_app process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ECHO_APP = str(Path(__file__).with_name("echo_app.py"))
TIMEOUT = 20.0
ROUTES = [{"upstreams": [{"endpoint": "127.0.0.1:9"}]}]  # the schema wants one; echo_app ignores it
READY = re.compile(r"monolake ready servers=(?P<servers>\S+) workers=(?P<workers>\d+) loop=(?P<loop>\S+)$")


def config(loop: str, workers: int = 2, **listeners: str) -> dict[str, Any]:
    runtime: dict[str, Any] = {"workers": workers, "loop": loop}
    return {
        "runtime": runtime,
        "servers": {name: {"listener": spec, "routes": ROUTES} for name, spec in listeners.items()},
    }


class Supervisor:
    def __init__(self, cfg: dict[str, Any], crash_flag: Path | None = None) -> None:
        args = [sys.executable, ECHO_APP, json.dumps(cfg)]
        if crash_flag is not None:
            args.append(str(crash_flag))
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.eof = False
        self.seen_workers: set[int] = set()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_line(self, pattern: str | re.Pattern[str], *, after: int = 0, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first line at index >= after matching pattern; fails on timeout or EOF."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        i = after
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    why = "exited" if self.eof else f"no match after {timeout}s"
                    raise AssertionError(f"{why} waiting for {rx.pattern!r}; stderr:\n" + "\n".join(self.lines))
                self._cond.wait(left)

    def mark(self) -> int:
        """Index of the next line, for wait_line(after=...)."""
        with self._cond:
            return len(self.lines)

    def wait_ready(self) -> dict[str, str]:
        m = self.wait_line(READY)
        return dict(pair.split("=", 1) for pair in m["servers"].split(","))

    def workers(self) -> list[int]:
        """The supervisor's current children (its workers)."""
        path = f"/proc/{self.pid}/task/{self.pid}/children"
        if os.path.exists(path):
            pids = [int(p) for p in Path(path).read_text().split()]
        else:  # kernels without CONFIG_PROC_CHILDREN: scan for our ppid
            pids = []
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    with contextlib.suppress(OSError):
                        stat = Path(f"/proc/{entry}/stat").read_text()
                        if int(stat.rpartition(")")[2].split()[1]) == self.pid:
                            pids.append(int(entry))
        self.seen_workers.update(pids)
        return sorted(pids)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def wait_eof(self, timeout: float = TIMEOUT) -> None:
        """Wait until every process holding the stderr pipe (supervisor and workers) is gone."""
        self._reader.join(timeout)
        assert self.eof, "stderr still open: some process outlived the test\n" + self.log

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.workers()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.seen_workers:
            with contextlib.suppress(OSError):
                if ECHO_APP.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def cpus_allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def connect(address: str, timeout: float = 10.0) -> socket.socket:
    """Connect to a logged address: ``host:port`` or ``unix:/path``."""
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = address[5:]
    else:
        host, _, port = address.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def send_request(sock: socket.socket, path: str) -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())


def read_response(sock: socket.socket) -> tuple[int, dict[str, str]]:
    """Read one response (Content-Length framed). Returns (status, body fields); (0, {}) if the
    peer closed without answering."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head:
            return 0, {}
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])  # type: ignore[index]
        while len(body) < length and (chunk := sock.recv(65536)):
            body += chunk
    if not data:
        return 0, {}
    status = int(head.split(b" ", 2)[1])
    return status, dict(item.split("=", 1) for item in body.decode().split())


def get(address: str, path: str = "/") -> tuple[int, dict[str, str]]:
    with connect(address) as sock:
        send_request(sock, path)
        return read_response(sock)


def pids_serving(address: str, want: set[int], tries: int = 200) -> set[int]:
    """Open fresh connections until every pid in ``want`` answered (or ``tries`` ran out)."""
    seen: set[int] = set()
    for _ in range(tries):
        status, fields = get(address)
        assert status == 200
        seen.add(int(fields["pid"]))
        if want <= seen:
            break
    return seen
