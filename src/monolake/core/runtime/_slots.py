"""One worker process as the supervisor tracks it: its slot, its descriptors, its restarts.

A slot outlives its processes: a worker that dies is restarted in the same slot
(same index, same CPU), after a back-off while it keeps dying within ``FAST_DEATH``
seconds of its fork. Children are reaped by pid (``waitpid(pid, WNOHANG)``), never
``waitpid(-1)``, so an embedding program's other children are left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ._control import Channel
from ._worker import WorkerSpec, worker_main

FAST_DEATH = 1.0
"""A worker dying sooner than this after its fork counts as crash-looping."""
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0


@dataclass(slots=True)
class WorkerSlot:
    index: int
    cpu: int | None
    pid: int = 0
    ready_fd: int = -1
    ready: bool = False
    loop: str = ""
    """The loop kind the worker reported running (after any io_uring fallback)."""
    started: float = 0.0
    fails: int = 0
    restart_at: float | None = None
    channel: Channel | None = None

    def fds(self) -> list[int]:
        """The supervisor's descriptors for this worker (a sibling forked later closes them)."""
        out = [self.ready_fd] if self.ready_fd >= 0 else []
        if self.channel is not None and not self.channel.closed:
            out.append(self.channel.fileno())
        return out

    def running(self, pid: int, ready_fd: int, channel: Channel) -> None:
        """A worker was forked into this slot."""
        self.pid, self.ready_fd, self.channel = pid, ready_fd, channel
        self.ready = False
        self.started = time.monotonic()
        self.restart_at = None

    def read_ready(self) -> bool:
        """The ready pipe is readable: True once the worker said it serves (EOF: it died first)."""
        try:
            data = os.read(self.ready_fd, 16)
        except BlockingIOError:
            return False
        os.close(self.ready_fd)
        self.ready_fd = -1
        if b"R" not in data:
            return False  # EOF: the worker died before it was ready; the reap reports it
        self.ready = True
        self.loop = data.partition(b"R")[2].decode(errors="replace")
        return True

    def poll_exit(self) -> int | None:
        """The worker's wait status if it exited (reaped), else None."""
        if not self.pid:
            return None
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return 0  # reaped behind our back; treat as a plain exit
        return status if pid else None

    def release(self) -> int:
        """The worker is gone: close its descriptors; return its pid."""
        pid, self.pid, self.ready = self.pid, 0, False
        if self.ready_fd >= 0:
            os.close(self.ready_fd)
            self.ready_fd = -1
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        return pid

    def schedule_restart(self, *, fast: bool) -> float:
        """Restart after a back-off that doubles while the worker keeps dying fast; return the delay."""
        self.fails = self.fails + 1 if fast else 0
        delay = 0.0 if not self.fails else min(BACKOFF_FIRST * 2 ** (self.fails - 1), BACKOFF_MAX)
        self.restart_at = time.monotonic() + delay
        return delay

    def kill(self, sig: int) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def abandon(self) -> None:
        """SIGKILL and reap the worker, close its descriptors (the supervisor's loop failed)."""
        if self.pid:
            self.kill(signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        self.release()


def fork_worker(spec: WorkerSpec, block: Iterable[signal.Signals]) -> int:
    """Fork a worker running ``spec``; return its pid. Raises OSError.

    ``block`` (the supervisor's signals) are blocked around the fork, so a signal meant
    for the supervisor cannot run its handler in the child (the wakeup pipe is shared
    until the child drops it).
    """
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, block)
    try:
        pid = os.fork()
        if pid == 0:
            worker_main(spec)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return pid
