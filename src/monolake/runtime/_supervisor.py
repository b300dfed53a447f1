"""The supervisor: validate, bind, fork N workers, watch them, stop them.

``run`` does everything that can fail on a bad config before anything is bound:
a dry ``build(cfg)`` (its apps are discarded), the loop kind, the affinity
setting. Then it reserves the listeners (``_listeners``), forks the workers and
sits in a single-threaded poll loop that serves nothing: it wakes on signals
(delivered as bytes on a ``signal.set_wakeup_fd`` pipe; the Python handlers do
nothing, so no work runs inside a signal handler), on workers' ready pipes and on
timers for back-off and the kill deadline. Children are reaped by pid with
``waitpid(pid, WNOHANG)``, never ``waitpid(-1)``, so an embedding program's other
children are left alone.

Signals are blocked around ``fork`` so a signal meant for the supervisor cannot
run its handler in the child (the wakeup pipe is shared until the child drops it).

``monolake ready servers=... workers=N loop=KIND`` is logged once, when every
worker first reports ready. A worker that dies after that is logged at WARNING and
restarted, with exponential back-off while it keeps dying within a second of
starting. A worker that dies before the first ready line means the config cannot
serve (a port taken, a build error in the worker): the supervisor stops the others
and returns 1 instead of restarting forever.

SIGTERM/SIGINT: forward SIGTERM to every worker (they drain), wait for all of
them, SIGKILL any still alive ``drain_timeout + 5`` seconds later, unlink the Unix
socket files, return 0. Another SIGTERM/SIGINT is forwarded too: workers hurry.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from types import FrameType

from ..config import Config
from ..errors import ConfigError
from ._listeners import Listener, close_listeners, open_listeners
from ._logging import configure_logging, logger
from ._loops import loop_factory
from ._worker import AppBuilder, WorkerSpec, check_apps, worker_main

log = logger

FAST_DEATH = 1.0
"""A worker dying sooner than this after its fork counts as crash-looping."""
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
KILL_GRACE = 5.0
"""Seconds past drain_timeout before stuck workers get SIGKILL."""

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_LATER_SIGNALS = (signal.SIGHUP, signal.SIGUSR2)
"""Reload and binary upgrade (their own issue): logged and ignored, never fatal."""
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, *_LATER_SIGNALS)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, which a container or taskset narrows)."""
    if sys.platform == "linux":
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _plan_cpus(cfg: Config, n: int) -> list[int | None]:
    want = cfg.runtime.cpu_affinity
    if sys.platform != "linux":
        if want:
            raise ConfigError("runtime.cpu_affinity", "pinning workers needs Linux (sched_setaffinity)")
        return [None] * n
    usable = sorted(os.sched_getaffinity(0))
    if want is None:
        want = n <= len(usable)
    return [usable[i % len(usable)] for i in range(n)] if want else [None] * n


def run(cfg: Config, build: AppBuilder) -> int:
    """Serve ``cfg`` with apps from ``build`` in N worker processes; block until stopped.

    Returns the process exit code: 0 after a SIGTERM/SIGINT stop, 1 if a worker
    failed before all were ready. Raises ConfigError (from ``build``, the loop kind,
    affinity or a listener that cannot be bound) before any worker starts, and for
    everything but a bind error, before any socket is bound. Call it from the main
    thread (it installs signal handlers) of a process that runs no event loop (it forks).
    """
    configure_logging(cfg.log.level)
    check_apps(cfg, build(cfg))
    loop_factory(cfg.runtime.loop)
    n = cfg.runtime.workers or cpu_count()
    cpus = _plan_cpus(cfg, n)
    listeners = open_listeners(cfg)
    try:
        return _Supervisor(cfg, build, listeners, cpus).serve()
    finally:
        close_listeners(listeners)


@dataclass(slots=True)
class _Slot:
    index: int
    cpu: int | None
    pid: int = 0
    ready_fd: int = -1
    ready: bool = False
    started: float = 0.0
    fails: int = 0
    restart_at: float | None = None


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"was killed by signal {sig} ({name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _ignore(signum: int, frame: FrameType | None) -> None:
    # The C-level handler has already written signum to the wakeup pipe; the loop acts on it.
    pass


class _Supervisor:
    def __init__(self, cfg: Config, build: AppBuilder, listeners: list[Listener], cpus: list[int | None]):
        self._cfg = cfg
        self._build = build
        self._listeners = listeners
        self._slots = [_Slot(i, cpu) for i, cpu in enumerate(cpus)]
        self._stopping = False
        self._announced = False
        self._kill_at: float | None = None
        self._exit_code = 0
        self._wake_r, self._wake_w = os.pipe()
        self._life_r, self._life_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    def serve(self) -> int:
        old_handlers = {sig: signal.signal(sig, _ignore) for sig in _HANDLED}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            for slot in self._slots:
                self._spawn(slot)
            return self._loop()
        finally:
            self._abandon_workers()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
            for fd in (self._wake_r, self._wake_w, self._life_r, self._life_w):
                os.close(fd)

    # -- the loop -----------------------------------------------------------------

    def _loop(self) -> int:
        while not (self._stopping and not any(s.pid for s in self._slots)):
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            waiting = {s.ready_fd: s for s in self._slots if s.ready_fd >= 0}
            for fd in waiting:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(self._timeout() * 1000):
                if fd == self._wake_r:
                    self._on_signals()
                elif fd in waiting:
                    self._on_ready_pipe(waiting[fd])
            self._reap()
            self._restart_due()
            self._announce()
            self._kill_overdue()
        return self._exit_code

    def _timeout(self) -> float:
        # The 1 s cap is a safety net only: every event we wait for also wakes the poll.
        now = time.monotonic()
        deadlines = [s.restart_at for s in self._slots if s.restart_at is not None]
        if self._kill_at is not None:
            deadlines.append(self._kill_at)
        return max(0.0, min([1.0, *(d - now for d in deadlines)]))

    def _on_signals(self) -> None:
        try:
            data = os.read(self._wake_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in _STOP_SIGNALS:
                self._stop(signal.Signals(signum).name)
            elif signum in _LATER_SIGNALS:
                log.warning(
                    "%s received: reload and upgrade are not available in this version; "
                    "the running config stays in force",
                    signal.Signals(signum).name,
                )
        # SIGCHLD needs nothing here: _reap runs after every wake-up.

    def _on_ready_pipe(self, slot: _Slot) -> None:
        try:
            data = os.read(slot.ready_fd, 16)
        except BlockingIOError:
            return
        os.close(slot.ready_fd)
        slot.ready_fd = -1
        if b"R" not in data:
            return  # EOF: the worker died before it was ready; _reap reports it
        slot.ready = True
        if self._announced:
            log.info("worker %d restarted, pid %d", slot.index, slot.pid)

    def _announce(self) -> None:
        if self._announced or self._stopping or not all(s.ready for s in self._slots):
            return
        self._announced = True
        servers = ",".join(f"{lst.name}={lst.address}" for lst in self._listeners)
        log.info("monolake ready servers=%s workers=%d loop=%s", servers, len(self._slots), self._cfg.runtime.loop)

    # -- workers ------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        ready_r, ready_w = os.pipe()
        spec = WorkerSpec(
            index=slot.index,
            cfg=self._cfg,
            build=self._build,
            listeners=self._listeners,
            cpu=slot.cpu,
            ready_fd=ready_w,
            life_fd=self._life_r,
            close_fds=[
                self._wake_r,
                self._wake_w,
                self._life_w,
                ready_r,
                *(s.ready_fd for s in self._slots if s.ready_fd >= 0),
            ],
        )
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
            if pid == 0:
                worker_main(spec)
        except OSError as exc:
            os.close(ready_r)
            log.error("worker %d: fork failed: %s", slot.index, exc.strerror)
            self._schedule_restart(slot, fast=True)
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(ready_w)
        slot.pid = pid
        slot.ready_fd = ready_r
        slot.ready = False
        slot.started = time.monotonic()
        slot.restart_at = None
        log.debug("worker %d started, pid %d, cpu %s", slot.index, pid, slot.cpu)

    def _reap(self) -> None:
        for slot in self._slots:
            if not slot.pid:
                continue
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = slot.pid, 0  # reaped behind our back; treat as a plain exit
            if pid:
                self._on_exit(slot, status)

    def _on_exit(self, slot: _Slot, status: int) -> None:
        pid, slot.pid, slot.ready = slot.pid, 0, False
        if slot.ready_fd >= 0:
            os.close(slot.ready_fd)
            slot.ready_fd = -1
        how = _describe(status)
        if self._stopping:
            if os.waitstatus_to_exitcode(status) == 0:
                log.debug("worker %d (pid %d) stopped", slot.index, pid)
            else:
                log.warning("worker %d (pid %d) %s while stopping", slot.index, pid, how)
            return
        if not self._announced:
            log.error("worker %d (pid %d) %s before it was ready; stopping", slot.index, pid, how)
            self._exit_code = 1
            self._stop(None)
            return
        delay = self._schedule_restart(slot, fast=time.monotonic() - slot.started < FAST_DEATH)
        log.warning("worker %d (pid %d) %s; restarting in %.1fs", slot.index, pid, how, delay)

    def _schedule_restart(self, slot: _Slot, *, fast: bool) -> float:
        slot.fails = slot.fails + 1 if fast else 0
        delay = 0.0 if not slot.fails else min(BACKOFF_FIRST * 2 ** (slot.fails - 1), BACKOFF_MAX)
        slot.restart_at = time.monotonic() + delay
        return delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.restart_at is not None and slot.restart_at <= now and not self._stopping:
                self._spawn(slot)

    # -- stopping -----------------------------------------------------------------

    def _stop(self, signame: str | None) -> None:
        if not self._stopping:
            self._stopping = True
            self._kill_at = time.monotonic() + self._cfg.runtime.drain_timeout + KILL_GRACE
            for slot in self._slots:
                slot.restart_at = None
            if signame:
                log.info("%s: draining workers (timeout %gs)", signame, self._cfg.runtime.drain_timeout)
        elif signame:
            log.info("%s again: workers close now", signame)
        for slot in self._slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)

    def _kill_overdue(self) -> None:
        if self._kill_at is None or time.monotonic() < self._kill_at:
            return
        self._kill_at = None
        for slot in self._slots:
            if slot.pid:
                log.warning("worker %d (pid %d) did not stop in time, killing it", slot.index, slot.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)

    def _abandon_workers(self) -> None:
        # Only reached with live workers if the loop itself failed: leave no orphans behind.
        for slot in self._slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(slot.pid, 0)
                slot.pid = 0
            if slot.ready_fd >= 0:
                os.close(slot.ready_fd)
                slot.ready_fd = -1
