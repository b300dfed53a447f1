"""Helpers for the reload and upgrade tests: drive a running proxy through its
signals and wait on its log lines, follow it across upgrades, clean up after it.

After an upgrade the supervisor serving is no longer the process the test
started (it is a child of the old one, re-parented when that exits), so
``Fleet`` tracks the current supervisor pid from the log and stops every
successor by pid at teardown.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from conftest import TIMEOUT, Proxy

TAG_MODULE = '''\
"""Test filter: tags every proxied response with the worker pid and a value."""

import os

from monolake.apps.proxy import HttpFilter


class Tag(HttpFilter):
    def __init__(self, value: str = "v1") -> None:
        self.value = value.encode()
        self.pid = str(os.getpid()).encode()

    def response_filter(self, resp, ctx):
        resp.headers.add(b"X-Worker", self.pid)
        resp.headers.add(b"X-Tag", self.value)
'''

RELOAD_END = r"reload (\d+) \((?:[^)]*)\) (done|failed|aborted|refused)"
UPGRADE_TIMEOUT = 60.0
"""An upgrade starts a whole new supervisor and its workers: generous on a loaded machine."""


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` as config tools do: write a temporary file, rename it over."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def children(pid: int) -> list[int]:
    try:
        return sorted(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float = TIMEOUT) -> bool:
    """Wait for a process that is not our child to exit (there is nothing to wait on but /proc)."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Fleet:
    """A proxy, followed across upgrades."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.log = proxy.log
        self.pid = proxy.pid
        self.successors: list[int] = []

    def workers(self) -> list[int]:
        return children(self.pid)

    def write(self, text: str) -> None:
        self.proxy.config_path.write_text(text)

    def reload(self, text: str | None = None) -> re.Match[str]:
        """Optionally rewrite the config, SIGHUP the supervisor, wait for the reload's outcome line."""
        if text is not None:
            self.write(text)
        mark = self.log.mark()
        os.kill(self.pid, signal.SIGHUP)
        return self.log.wait_line(rf"monolake\[{self.pid}\]: " + RELOAD_END, after=mark)

    def upgrade(self, while_draining: Callable[[], None] | None = None) -> int:
        """SIGUSR2 the supervisor; wait until the new one serves and the old one exited 0.
        ``while_draining`` runs once every old worker has said it is draining."""
        old = self.pid
        old_workers = self.workers()
        mark = self.log.mark()
        os.kill(old, signal.SIGUSR2)
        started = rf"monolake\[{old}\]: upgrade \([^)]*\): started the new supervisor, pid (\d+)"
        new = int(self.log.wait_line(started, after=mark, timeout=UPGRADE_TIMEOUT)[1])
        self.successors.append(new)  # known before anything else can fail: close() stops it
        serving = rf"monolake\[{old}\]: upgrade \([^)]*\): new supervisor pid {new} is serving"
        self.log.wait_line(serving, after=mark, timeout=UPGRADE_TIMEOUT)
        if while_draining is not None:
            for w in old_workers:
                self.log.wait_line(rf"\[{w}\]: worker \d+ draining", after=mark, timeout=UPGRADE_TIMEOUT)
            while_draining()
        self.wait_exit(old)
        self.pid = new
        return new

    def wait_exit(self, pid: int) -> None:
        if pid == self.proxy.pid:
            assert self.proxy.proc.wait(UPGRADE_TIMEOUT) == 0, self.log.text
        else:
            assert wait_gone(pid, UPGRADE_TIMEOUT), f"supervisor {pid} did not exit\n{self.log.text}"
        self.log.wait_line(rf"monolake\[{pid}\]: upgrade: draining workers")

    def close(self) -> None:
        for pid in reversed(self.successors):
            _stop(pid)
        # Whatever else runs this test's config (an upgrade's supervisor the test did not get
        # to see, or its workers), except the first supervisor and its workers: conftest's.
        config = str(self.proxy.config_path).encode()
        ours = {self.proxy.pid, *children(self.proxy.pid)}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in ours:
                with contextlib.suppress(OSError):
                    if config in Path(f"/proc/{entry}/cmdline").read_bytes():
                        _stop(int(entry))


def _stop(pid: int) -> None:
    workers = children(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, 15):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for w in workers:
        if not wait_gone(w, 5):
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)


def tags_by_worker(url: str, want: int, path: str = "/echo", tries: int = 200) -> dict[str, str]:
    """Fresh connections until ``want`` workers answered: {worker pid: X-Tag}. Every answer must be 200."""
    seen: dict[str, str] = {}
    for _ in range(tries):
        r = httpx.get(url + path, trust_env=False, timeout=TIMEOUT)
        assert r.status_code == 200, (r.status_code, r.text)
        seen[r.headers["x-worker"]] = r.headers.get("x-tag", "")
        if len(seen) >= want:
            break
    return seen


def statuses(url: str, path: str, n: int = 20) -> set[int]:
    return {httpx.get(url + path, trust_env=False, timeout=TIMEOUT).status_code for _ in range(n)}
