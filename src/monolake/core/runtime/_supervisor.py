"""The supervisor: validate, bind, fork N workers, watch them, reload, upgrade, stop them.

``run`` does everything that can fail on a bad config before anything is bound:
a dry ``build(cfg)`` (its apps are discarded), the loop kind, the affinity
setting. Then it reserves the listeners (``_listeners``; taken over from an old
supervisor after an upgrade, ``_upgrade``), forks the workers and sits in a
single-threaded poll loop that serves nothing: it wakes on signals (delivered as
bytes on a ``signal.set_wakeup_fd`` pipe; the Python handlers do nothing, so no
work runs inside a signal handler), on workers' ready pipes and control channels
(``_control``), on the config watcher (``_watch``), on the upgrade channel and on
timers. Each worker lives in a slot (``_slots``: fork, reap by pid, restart back-off).
The reload and the upgrade are state machines of their own (``Reloader``,
``Upgrader``): the loop feeds them events and polls their deadlines.

``monolake ready servers=... workers=N loop=KIND`` is logged once, when every
worker first reports ready (KIND: the loop the workers report running, after any
io_uring fallback); the pid file (``runtime.pid_file``) is written just before. A
worker that dies after that is logged at WARNING and restarted (with the config
in force, after any reload), with exponential back-off while it keeps dying
within a second of starting; restarts wait while a reload is between PREPARE and
its end. A worker that dies before the first ready line means the config cannot
serve: the supervisor stops the others and returns 1.

SIGHUP, a changed config file and ``request_reload`` reload.
SIGUSR2 upgrades (``_upgrade``); when the new supervisor serves, this one stops
its workers as for SIGTERM and returns 0.

``broadcast(topic, msg)`` (thread-safe) sends an application message to every worker
and keeps the last one of each topic for workers started later (they get them before they
build); the discovery hub fans endpoint sets out this way. With ``NOTIFY_SOCKET`` set,
systemd hears READY=1, RELOADING=1, STOPPING=1 and a STATUS= line (``_notify``).

SIGTERM/SIGINT: forward SIGTERM to every worker (they drain), wait for all of
them, SIGKILL any still alive ``drain_timeout + 5`` seconds later, unlink the Unix
socket files it owns, return 0. Another SIGTERM/SIGINT is forwarded too: workers
hurry.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import FrameType
from typing import Any

from ..errors import ConfigError
from ._control import ChannelClosed, Message, channel_pair, close_fds
from ._limits import apply_open_files, low_limit_warning
from ._listeners import Listener, close_listeners, open_listeners
from ._logging import configure_logging, describe_status, logger
from ._loops import loop_factory
from ._notify import notify
from ._notify import reloading as notify_reloading
from ._pidfile import PidFile
from ._reload import ConfigSource, Reloader, ReloadResult
from ._settings import RuntimeConfig as Config
from ._slots import FAST_DEATH, WorkerSlot, fork_worker
from ._upgrade import Handover, Upgrader, take_handover
from ._worker import AppBuilder, C, WorkerSpec, check_apps

log = logger

KILL_GRACE = 5.0
"""Seconds past drain_timeout before stuck workers get SIGKILL."""

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR2)
_REQUEST = 0
"""Written to the wakeup pipe by ``request_reload``/``request_upgrade`` (no signal is 0)."""


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


def run(
    cfg: C,
    build: AppBuilder[C],
    *,
    source: ConfigSource[C] | None = None,
    operations: Callable[[C, Supervisor], AbstractContextManager[object]] | None = None,
) -> int:
    """Serve ``cfg`` with apps from ``build`` in N worker processes; block until stopped.

    ``cfg`` is any msgspec Struct with what ``RuntimeConfig`` names; ``build`` gets it as it
    is (its type ``C`` is the caller's: a builder of another config type is a type error).
    ``source`` is where a reload reads the config again (SIGHUP, file changes,
    ``request_reload``); without it a reload request is refused with a log line.
    ``operations(cfg, supervisor)`` is a context manager held while the supervisor serves
    (the proxy's admin endpoint and metrics directory live there).
    Returns the process exit code: 0 after a SIGTERM/SIGINT stop or a completed
    upgrade, 1 if a worker failed before all were ready. Raises ConfigError (from
    ``build``, the loop kind, affinity or a listener that cannot be bound) before
    any worker starts, and for everything but a bind error, before any socket is
    bound. Call it from the main thread (it installs signal handlers) of a process
    that runs no event loop (it forks).
    """
    configure_logging(cfg.log.level, cfg.log.format)
    handover = take_handover()
    try:
        check_apps(cfg, build(cfg))
        loop_factory(cfg.runtime.loop)
        n = cfg.runtime.workers or cpu_count()
        cpus = _plan_cpus(cfg, n)
        warning = low_limit_warning(cfg, apply_open_files(cfg))  # before the fork: workers inherit it
        if warning is not None:
            log.warning("%s", warning)
        listeners = open_listeners(cfg, handover.listeners if handover else ())
    except BaseException:
        if handover is not None:
            close_listeners(handover.listeners)
            handover.close()
        raise
    if handover is not None:
        log.info("upgrade: took over %d listener(s) from the old supervisor", len(handover.listeners))
    sup = Supervisor(cfg, build, listeners, cpus, source=source, handover=handover)
    try:
        with operations(cfg, sup) if operations is not None else contextlib.nullcontext():
            return sup.serve()
    finally:
        close_listeners(sup.listeners)


def _ignore(signum: int, frame: FrameType | None) -> None:
    # The C-level handler has already written signum to the wakeup pipe; the loop acts on it.
    pass


class Supervisor:
    """The supervisor's state and poll loop. Built by ``run``; one per process."""

    def __init__(
        self,
        cfg: Config,
        build: AppBuilder[Any],
        listeners: list[Listener],
        cpus: list[int | None],
        *,
        source: ConfigSource[Any] | None = None,
        handover: Handover | None = None,
    ):
        self._cfg = cfg
        self._build = build
        self.listeners = listeners
        self._slots = [WorkerSlot(i, cpu) for i, cpu in enumerate(cpus)]
        self._source = source
        self._handover = handover
        self._stopping = False
        self._announced = False
        self._kill_at: float | None = None
        self._exit_code = 0
        self._wake_r, self._wake_w = os.pipe()
        self._life_r, self._life_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._requests: deque[tuple[str, str, tuple[int, int] | None]] = deque()
        self._reload = Reloader(self, source)
        self._upgrade = Upgrader(self)
        # Relative to the config file, as ``monolake reload -c FILE`` reads it.
        self._pid_file = PidFile(os.path.dirname(os.path.abspath(source.path)) if source is not None else None)
        self._broadcasts: deque[tuple[str, Message]] = deque()
        self._retained: dict[str, Message] = {}
        """The last message of each broadcast topic, for workers started later."""
        self._notified_reload = False

    @property
    def config(self) -> Config:
        """The config in force (the new one from a reload's commit on)."""
        return self._cfg

    @property
    def last_reload(self) -> ReloadResult | None:
        """The last reload's outcome."""
        return self._reload.last

    @property
    def on_reload(self) -> Callable[[ReloadResult], None] | None:
        """Called (in the supervisor's thread) with every reload's outcome; the admin endpoint sets it."""
        return self._reload.on_result

    @on_reload.setter
    def on_reload(self, hook: Callable[[ReloadResult], None] | None) -> None:
        self._reload.on_result = hook

    # -- public, thread-safe requests -------------------------------------------------

    def request_reload(self, reason: str = "request") -> None:
        """Reload the config file as soon as possible (thread-safe, returns at once).

        The outcome is logged and kept in ``last_reload``.
        """
        self._requests.append(("reload", reason, None))
        self._poke()

    def request_upgrade(self, reason: str = "request") -> None:
        """Start a binary upgrade as for SIGUSR2 (thread-safe, returns at once)."""
        self._requests.append(("upgrade", reason, None))
        self._poke()

    def broadcast(self, topic: str, msg: Message) -> None:
        """Send ``msg`` (``{"op": "app", ...}``) to every worker, and to every worker started
        later (the last message of each ``topic`` is kept; an empty ``msg`` forgets the topic).
        Thread-safe, returns at once. Workers hand it to their builder's ``on_message``."""
        self._broadcasts.append((topic, msg))
        self._poke()

    @property
    def state(self) -> str:
        """ "starting" (until every worker first serves), "ready", "reloading" or "stopping"."""
        if self._stopping:
            return "stopping"
        if not self._announced:
            return "starting"
        return "reloading" if self._reload.running else "ready"

    def _deliver(self) -> None:
        while self._broadcasts:
            topic, msg = self._broadcasts.popleft()
            if not msg:
                self._retained.pop(topic, None)
                continue
            self._retained[topic] = msg
            for slot in self._slots:
                if slot.pid:
                    self.send(slot.index, msg)

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, bytes([_REQUEST]))

    # -- running ------------------------------------------------------------------------

    def serve(self) -> int:
        old_handlers = {sig: signal.signal(sig, _ignore) for sig in _HANDLED}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            self._reload.watch(self._cfg.runtime.watch_config)
            for slot in self._slots:
                self._spawn(slot)
            if self._handover is not None:
                self._handover.release_unclaimed()
            return self._loop()
        finally:
            self._abandon_workers()
            self._reload.close()
            self._upgrade.close()
            if self._handover is not None:
                self._handover.close()
            self._pid_file.remove()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
            for fd in (self._wake_r, self._wake_w, self._life_r, self._life_w):
                os.close(fd)

    def _loop(self) -> int:
        while not (self._stopping and not any(s.pid for s in self._slots) and not self._upgrade.successor_running):
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            handlers: dict[int, Any] = {}
            for slot in self._slots:
                if slot.ready_fd >= 0:
                    poller.register(slot.ready_fd, select.POLLIN)
                    handlers[slot.ready_fd] = (self._on_ready_pipe, slot)
                if slot.channel is not None and not slot.channel.closed:
                    flags = select.POLLIN | (select.POLLOUT if slot.channel.wants_write else 0)
                    poller.register(slot.channel.fileno(), flags)
                    handlers[slot.channel.fileno()] = (self._on_worker_channel, slot)
            watch_fd = self._reload.watch_fd()
            if watch_fd is not None:
                poller.register(watch_fd, select.POLLIN)
                handlers[watch_fd] = (self._reload.on_watch_event, None)
            up = self._upgrade.channel
            if up is not None and not up.closed:
                poller.register(up.fileno(), select.POLLIN | (select.POLLOUT if up.wants_write else 0))
                handlers[up.fileno()] = (self._upgrade.on_channel, None)
            for fd, events in poller.poll(self._timeout() * 1000):
                if fd == self._wake_r:
                    self._on_signals()
                elif fd in handlers:
                    fn, arg = handlers[fd]
                    if arg is None:
                        fn(events)
                    else:
                        fn(arg, events)
            self._reap()
            self._restart_due()
            self._announce()
            self._kill_overdue()
            self._timers()
            self._start_pending()
        return self._exit_code

    def _timeout(self) -> float:
        # The 1 s cap is a safety net only: every event we wait for also wakes the poll.
        now = time.monotonic()
        deadlines = [s.restart_at for s in self._slots if s.restart_at is not None]
        for d in (self._kill_at, self._reload.deadline, self._upgrade.deadline):
            if d is not None:
                deadlines.append(d)
        return max(0.0, min([1.0, *(d - now for d in deadlines)]))

    def _on_signals(self) -> None:
        try:
            data = os.read(self._wake_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in _STOP_SIGNALS:
                self._stop(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self._reload.request("SIGHUP")
            elif signum == signal.SIGUSR2:
                self._upgrade.request("SIGUSR2")
            elif signum == _REQUEST:
                self._deliver()
                while self._requests:
                    what, reason, requester = self._requests.popleft()
                    if what == "reload":
                        self._reload.request(reason, requester)
                    else:
                        self._upgrade.request(reason)
        # SIGCHLD needs nothing here: _reap runs after every wake-up.

    def _on_ready_pipe(self, slot: WorkerSlot, events: int) -> None:
        if slot.read_ready() and self._announced:
            log.info("worker %d restarted, pid %d", slot.index, slot.pid)

    def _announce(self) -> None:
        if self._announced or self._stopping or not all(s.ready for s in self._slots):
            return
        self._announced = True
        servers = ",".join(f"{lst.name}={lst.address}" for lst in self.listeners)
        # The pid file first: whoever waits for the ready line may read it at once.
        self._pid_file.write(self._cfg.runtime.pid_file)
        loops = ",".join(sorted({s.loop for s in self._slots if s.loop})) or self._cfg.runtime.loop
        log.info("monolake ready servers=%s workers=%d loop=%s", servers, len(self._slots), loops)
        notify("READY=1", f"MAINPID={os.getpid()}", f"STATUS=serving {servers} with {len(self._slots)} workers")
        if self._handover is not None:
            self._handover.ready(self.listeners)
            self._handover = None

    def _timers(self) -> None:
        now = time.monotonic()
        self._reload.on_timer(now)
        self._upgrade.on_timer(now)

    def _start_pending(self) -> None:
        if self._notified_reload and not self._reload.running and not self._stopping:
            self._notified_reload = False
            last = self._reload.last
            notify("READY=1", f"STATUS=reload {'done' if last is not None and last.ok else 'failed'}; serving")
        if self._stopping or not self._announced or self._reload.running or self._upgrade.busy:
            return
        if any(s.pid and not s.ready for s in self._slots):
            return  # a starting worker builds the running config; start when it is up
        if self._reload.pending:
            self._notified_reload = notify_reloading("reloading the config")
            self._reload.start()
        elif self._upgrade.wanted:
            self._upgrade.start()

    # -- control channels ---------------------------------------------------------------

    def _on_worker_channel(self, slot: WorkerSlot, events: int) -> None:
        channel = slot.channel
        if channel is None:
            return
        if events & select.POLLOUT:
            with contextlib.suppress(ChannelClosed):
                channel.flush()
        if not events & (select.POLLIN | select.POLLHUP | select.POLLERR):
            return
        try:
            messages = channel.receive()
        except ChannelClosed:
            return  # the worker is exiting; _reap reports it
        for msg, fds in messages:
            self._on_worker_message(slot, msg, fds)

    # The machines' host interface (ReloadHost, UpgradeHost).

    def send(self, index: int, msg: Message, fds: list[int] | None = None) -> bool:
        channel = self._slots[index].channel
        if channel is None or channel.closed:
            return False
        try:
            channel.send(msg, fds)
        except ChannelClosed:
            return False
        return True

    def live_workers(self) -> list[int]:
        return [s.index for s in self._slots if s.pid and s.ready and s.channel is not None]

    def running_workers(self) -> list[int]:
        return [s.index for s in self._slots if s.pid]

    def adopt(self, cfg: Config, listeners: list[Listener]) -> None:
        old, self._cfg, self.listeners = self._cfg, cfg, listeners
        if cfg.log.level != old.log.level or cfg.log.format != old.log.format:
            configure_logging(cfg.log.level, cfg.log.format)
        if cfg.runtime.pid_file != old.runtime.pid_file:
            self._pid_file.remove()
            self._pid_file.write(cfg.runtime.pid_file)

    def upgraded(self, pid: int, unused_paths: set[str]) -> None:
        for lst in self.listeners:
            # Ours to unlink on exit only if the new supervisor does not serve it.
            lst.owned = lst.address.is_unix and lst.address.path in unused_paths
        self._stop("upgrade")

    def _on_worker_message(self, slot: WorkerSlot, msg: Message, fds: list[int]) -> None:
        if self._upgrade.on_sockets(slot.index, msg, fds):
            return
        close_fds(fds)
        if self._reload.on_reply(slot.index, msg):
            return
        op = msg.get("op")
        if op == "reload":
            self._reload.request(str(msg.get("reason") or "worker request"), (slot.index, int(msg["req"])))
        elif op == "status":
            last = self._reload.last
            self.send(
                slot.index, {"op": "status_result", "req": int(msg["req"]), "result": last.as_dict() if last else {}}
            )

    # -- workers --------------------------------------------------------------------------

    def _spawn(self, slot: WorkerSlot) -> None:
        ready_r, ready_w = os.pipe()
        channel, child_sock = channel_pair()
        inherited = self._handover.for_worker(slot.index) if self._handover is not None else {}
        close = [
            self._wake_r,
            self._wake_w,
            self._life_w,
            ready_r,
            channel.fileno(),
            *(fd for s in self._slots for fd in s.fds()),
        ]
        watch_fd = self._reload.watch_fd()
        if watch_fd is not None:
            close.append(watch_fd)
        close += self._upgrade.fds()
        if self._handover is not None:
            close += [*self._handover.worker_fds(but=slot.index), self._handover.channel.fileno()]
        spec = WorkerSpec(
            index=slot.index,
            cfg=self._cfg,
            build=self._build,
            listeners=self.listeners,
            cpu=slot.cpu,
            ready_fd=ready_w,
            life_fd=self._life_r,
            ctl_fd=child_sock.fileno(),
            close_fds=close,
            inherited=inherited,
            retained=list(self._retained.values()),
        )
        try:
            pid = fork_worker(spec, _HANDLED)
        except OSError as exc:
            os.close(ready_r)
            channel.close()
            log.error("worker %d: fork failed: %s", slot.index, exc.strerror)
            slot.schedule_restart(fast=True)
            return
        finally:
            os.close(ready_w)
            child_sock.close()
        if self._handover is not None:
            self._handover.release_worker(slot.index)
        slot.running(pid, ready_r, channel)
        log.debug("worker %d started, pid %d, cpu %s", slot.index, pid, slot.cpu)

    def _reap(self) -> None:
        for slot in self._slots:
            status = slot.poll_exit()
            if status is not None:
                self._on_exit(slot, status)
        self._upgrade.reap()

    def _on_exit(self, slot: WorkerSlot, status: int) -> None:
        pid = slot.release()
        how = describe_status(status)
        self._reload.on_worker_exit(slot.index, pid, how)
        self._upgrade.on_worker_exit(slot.index, pid, how)
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
        delay = slot.schedule_restart(fast=time.monotonic() - slot.started < FAST_DEATH)
        log.warning("worker %d (pid %d) %s; restarting in %.1fs", slot.index, pid, how, delay)

    def _restart_due(self) -> None:
        if self._reload.running:
            return  # the worker would build one config and be asked to prepare another
        now = time.monotonic()
        for slot in self._slots:
            if slot.restart_at is not None and slot.restart_at <= now and not self._stopping:
                self._spawn(slot)

    # -- stopping -------------------------------------------------------------------------

    def _stop(self, signame: str | None) -> None:
        if not self._stopping:
            self._stopping = True
            self._kill_at = time.monotonic() + self._cfg.runtime.drain_timeout + KILL_GRACE
            for slot in self._slots:
                slot.restart_at = None
            self._reload.stop()
            self._upgrade.stop()
            notify("STOPPING=1", f"STATUS=draining ({signame or 'stop'})")
            if signame:
                log.info("%s: draining workers (timeout %gs)", signame, self._cfg.runtime.drain_timeout)
        elif signame:
            log.info("%s again: workers close now", signame)
        for slot in self._slots:
            slot.kill(signal.SIGTERM)

    def _kill_overdue(self) -> None:
        if self._kill_at is None or time.monotonic() < self._kill_at:
            return
        self._kill_at = None
        for slot in self._slots:
            if slot.pid:
                log.warning("worker %d (pid %d) did not stop in time, killing it", slot.index, slot.pid)
                slot.kill(signal.SIGKILL)
        self._upgrade.kill()

    def _abandon_workers(self) -> None:
        # Only reached with live workers if the loop itself failed: leave no orphans behind.
        for slot in self._slots:
            slot.abandon()
