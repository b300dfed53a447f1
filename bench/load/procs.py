"""Starting, pinning and stopping the processes of a run, and their CPU time from /proc.

Every process is started through ``Procs.start`` and stopped by PID in ``Procs.stop_all`` (reverse start
order): SIGTERM, a bounded wait, then SIGKILL for the process and any descendant recorded while it ran.
Children also get PR_SET_PDEATHSIG so they die with the harness if it is killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0, alive: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"process {alive.pid} exited with {alive.returncode} before port {port} opened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def _starttime(pid: int) -> int | None:
    """Start time of a live (not zombie) process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError):
            out.extend(int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, parent first."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def cpu_of(pids: Iterable[int]) -> tuple[float, float]:
    """Summed (user, sys) seconds of the processes (all their threads); vanished PIDs count 0."""
    user = sys_ = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / TCK
        sys_ += int(fields[12]) / TCK
    return user, sys_


def core_times() -> dict[int, tuple[int, int]]:
    """Per core (busy, total) jiffies from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in vals]
            total = sum(v[:8])
            out[int(name[3:])] = (total - v[3] - v[4], total)
    return out


def core_busy(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[str, float]:
    """Busy percentage of each core between two ``core_times`` snapshots."""
    out: dict[str, float] = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (0, 0))
        out[f"cpu{cpu}"] = round(100.0 * (b1 - b0) / max(1, t1 - t0), 1)
    return out


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    seen: dict[int, int | None] = field(default_factory=dict)
    """Every descendant PID seen while running, with its start time (to not kill a reused PID)."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """The process and its current descendants (remembered for the final clean-up)."""
        pids = tree(self.pid)
        for p in pids:
            self.seen.setdefault(p, _starttime(p))
        return pids

    def alive(self) -> bool:
        return self.popen.poll() is None


class Procs:
    """The processes of one run; ``stop_all`` in a ``finally`` stops them all by PID."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.items: list[Proc] = []

    def start(self, name: str, argv: list[str], cpu: int | None, env: dict[str, str] | None = None) -> Proc:
        log = self.logdir / f"{name}.log"
        cmd = (["taskset", "-c", str(cpu)] if cpu is not None else []) + argv
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the harness only; it stops everything in order
                preexec_fn=_die_with_parent,
            )
        proc = Proc(name, popen, log)
        self.items.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 15.0) -> None:
        if proc.alive():
            proc.pids()  # remember the descendants before the parent goes
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=5)
        deadline = time.monotonic() + 5
        for pid, start in proc.seen.items():
            while pid != proc.pid and start is not None and _starttime(pid) == start:
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.05)
        if proc in self.items:
            self.items.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.items)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                print(f"bench: stopping {proc.name} (pid {proc.pid}): {exc}")


def perf_counters(pid: int, seconds: float) -> dict[str, float] | None:
    """instructions and cycles of ``pid`` over ``seconds``, None when the counters are not supported."""
    if shutil.which("perf") is None:
        return None  # the caller waits out the window
    out = subprocess.run(
        ["perf", "stat", "-x", ",", "-e", "instructions,cycles", "-p", str(pid), "--", "sleep", f"{seconds:.2f}"],
        capture_output=True, text=True, timeout=seconds + 30, check=False,
    ).stderr  # fmt: skip
    got: dict[str, float] = {}
    for line in out.splitlines():
        f = line.split(",")
        if len(f) >= 3 and f[2] in ("instructions", "cycles") and f[0].replace(".", "").isdigit():
            got[f[2]] = float(f[0])
    return got or None


@functools.cache
def hw_counters() -> bool:
    """Whether ``perf stat`` can count instructions here (many VMs expose no hardware counters)."""
    if shutil.which("perf") is None:
        return False
    out = subprocess.run(
        ["perf", "stat", "-x", ",", "-e", "instructions", "--", "true"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stderr  # fmt: skip
    return any(line.split(",")[0].isdigit() for line in out.splitlines())
