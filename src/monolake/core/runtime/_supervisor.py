"""The supervisor: validate, bind, fork N workers, watch them, reload, upgrade, stop them.

``run`` does everything that can fail on a bad config before anything is bound:
a dry ``build(cfg)`` (its apps are discarded), the loop kind, the affinity
setting. Then it reserves the listeners (``_listeners``; taken over from an old
supervisor after an upgrade, ``_upgrade``), forks the workers and sits in a
single-threaded poll loop that serves nothing: it wakes on signals (delivered as
bytes on a ``signal.set_wakeup_fd`` pipe; the Python handlers do nothing, so no
work runs inside a signal handler), on workers' ready pipes and control channels
(``_control``), on the config watcher (``_watch``), on the upgrade channel and on
timers. Children are reaped by pid with ``waitpid(pid, WNOHANG)``, never
``waitpid(-1)``, so an embedding program's other children are left alone.

Signals are blocked around ``fork`` so a signal meant for the supervisor cannot
run its handler in the child (the wakeup pipe is shared until the child drops it).

``monolake ready servers=... workers=N loop=KIND`` is logged once, when every
worker first reports ready (KIND: the loop the workers report running, after any
io_uring fallback); the pid file (``runtime.pid_file``) is written just before. A
worker that dies after that is logged at WARNING and restarted (with the config
in force, after any reload), with exponential back-off while it keeps dying
within a second of starting; restarts wait while a reload is between PREPARE and
its end. A worker that dies before the first ready line means the config cannot
serve: the supervisor stops the others and returns 1.

SIGHUP, a changed config file and ``request_reload`` reload (``_reload``).
SIGUSR2 upgrades (``_upgrade``); when the new supervisor serves, this one stops
its workers as for SIGTERM and returns 0.

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
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ..errors import ConfigError
from ._control import Channel, ChannelClosed, Message, channel_pair, close_fds
from ._limits import apply_open_files, low_limit_warning, open_files_limit
from ._listeners import Listener, close_listeners, open_listeners
from ._logging import configure_logging, logger
from ._loops import loop_factory
from ._reload import (
    COMMIT_TIMEOUT,
    PREPARE_TIMEOUT,
    ConfigSource,
    ReloadResult,
    ReloadTxn,
    config_error_result,
    describe_changes,
)
from ._settings import RuntimeConfig as Config
from ._upgrade import COLLECT_TIMEOUT, Handover, Upgrade, take_handover
from ._watch import DEBOUNCE, DEBOUNCE_MAX, ConfigWatcher, file_digest
from ._worker import AppBuilder, WorkerSpec, check_apps, worker_main

log = logger

FAST_DEATH = 1.0
"""A worker dying sooner than this after its fork counts as crash-looping."""
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
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
    cfg: Config,
    build: AppBuilder,
    *,
    source: ConfigSource | None = None,
    operations: Callable[[Any, Supervisor], AbstractContextManager[object]] | None = None,
) -> int:
    """Serve ``cfg`` with apps from ``build`` in N worker processes; block until stopped.

    ``cfg`` is any msgspec Struct with what ``RuntimeConfig`` names; ``build`` gets it as it
    is. ``source`` is where a reload reads the config again (SIGHUP, file changes,
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


@dataclass(slots=True)
class _Slot:
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


class Supervisor:
    """The supervisor's state and poll loop. Built by ``run``; one per process."""

    def __init__(
        self,
        cfg: Config,
        build: AppBuilder,
        listeners: list[Listener],
        cpus: list[int | None],
        *,
        source: ConfigSource | None = None,
        handover: Handover | None = None,
    ):
        self._cfg = cfg
        self._build = build
        self.listeners = listeners
        self._slots = [_Slot(i, cpu) for i, cpu in enumerate(cpus)]
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
        # reload
        self._reload: ReloadTxn | None = None
        self._reload_queue: list[tuple[str, tuple[int, int] | None]] = []
        self._reload_count = 0
        self.last_reload: ReloadResult | None = None
        self.on_reload: Callable[[ReloadResult], None] | None = None
        """Called (in the supervisor's thread) with every reload's outcome; the admin endpoint sets it."""
        self._watcher: ConfigWatcher | None = None
        self._watch_first: float | None = None
        self._watch_due: float | None = None
        self._digest = file_digest(source.path) if source is not None else None
        # upgrade
        self._upgrade: Upgrade | None = None
        self._upgrade_wanted: str | None = None
        self._upgraded = False
        self._pid_file: str | None = None

    @property
    def config(self) -> Config:
        """The config in force (the new one from a reload's commit on)."""
        return self._cfg

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

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, bytes([_REQUEST]))

    # -- running ------------------------------------------------------------------------

    def serve(self) -> int:
        old_handlers = {sig: signal.signal(sig, _ignore) for sig in _HANDLED}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            self._set_watch(self._cfg.runtime.watch_config)
            for slot in self._slots:
                self._spawn(slot)
            if self._handover is not None:
                self._handover.release_unclaimed()
            return self._loop()
        finally:
            self._abandon_workers()
            self._end_reload_on_exit()
            self._end_upgrade_on_exit()
            if self._handover is not None:
                self._handover.close()
            self._set_watch(False)
            self._remove_pid_file()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
            for fd in (self._wake_r, self._wake_w, self._life_r, self._life_w):
                os.close(fd)

    def _loop(self) -> int:
        while not (self._stopping and not any(s.pid for s in self._slots) and not self._successor_running()):
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
            if self._watcher is not None:
                poller.register(self._watcher.fileno(), select.POLLIN)
                handlers[self._watcher.fileno()] = (self._on_watch, None)
            up = self._upgrade
            if up is not None and up.channel is not None and not up.channel.closed:
                flags = select.POLLIN | (select.POLLOUT if up.channel.wants_write else 0)
                poller.register(up.channel.fileno(), flags)
                handlers[up.channel.fileno()] = (self._on_upgrade_channel, None)
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
        for d in (
            self._kill_at,
            self._watch_due,
            self._reload.deadline if self._reload else None,
            self._upgrade.deadline if self._upgrade else None,
        ):
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
                self._queue_reload("SIGHUP", None)
            elif signum == signal.SIGUSR2:
                self._queue_upgrade("SIGUSR2")
            elif signum == _REQUEST:
                while self._requests:
                    what, reason, requester = self._requests.popleft()
                    if what == "reload":
                        self._queue_reload(reason, requester)
                    else:
                        self._queue_upgrade(reason)
        # SIGCHLD needs nothing here: _reap runs after every wake-up.

    def _on_ready_pipe(self, slot: _Slot, events: int) -> None:
        try:
            data = os.read(slot.ready_fd, 16)
        except BlockingIOError:
            return
        os.close(slot.ready_fd)
        slot.ready_fd = -1
        if b"R" not in data:
            return  # EOF: the worker died before it was ready; _reap reports it
        slot.ready = True
        slot.loop = data.partition(b"R")[2].decode(errors="replace")
        if self._announced:
            log.info("worker %d restarted, pid %d", slot.index, slot.pid)

    def _announce(self) -> None:
        if self._announced or self._stopping or not all(s.ready for s in self._slots):
            return
        self._announced = True
        servers = ",".join(f"{lst.name}={lst.address}" for lst in self.listeners)
        # The pid file first: whoever waits for the ready line may read it at once.
        self._write_pid_file(self._cfg.runtime.pid_file)
        loops = ",".join(sorted({s.loop for s in self._slots if s.loop})) or self._cfg.runtime.loop
        log.info("monolake ready servers=%s workers=%d loop=%s", servers, len(self._slots), loops)
        if self._handover is not None:
            self._handover.ready(self.listeners)
            self._handover = None

    def _timers(self) -> None:
        now = time.monotonic()
        if self._watch_due is not None and now >= self._watch_due:
            self._watch_due = self._watch_first = None
            self._config_file_settled()
        txn = self._reload
        if txn is not None and now >= txn.deadline:
            if txn.phase == "prepare":
                late = ", ".join(f"worker {i}" for i in sorted(txn.waiting))
                self._abort_reload(f"{late} did not prepare within {PREPARE_TIMEOUT:g}s")
            else:
                log.warning("reload %d: %s did not confirm the commit in time", txn.id, sorted(txn.waiting))
                self._finish_reload()
        up = self._upgrade
        if up is not None and now >= up.deadline:
            if up.phase == "collect":
                self._fail_upgrade("workers did not hand over their sockets in time")
            elif up.phase == "spawned":
                self._fail_upgrade(f"the new supervisor (pid {up.pid}) was not ready in time")
            elif up.pid:
                log.warning("upgrade: the new supervisor (pid %d) ignored SIGTERM; killing it", up.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(up.pid, signal.SIGKILL)
                up.deadline = now + 3600.0

    def _start_pending(self) -> None:
        if self._stopping or not self._announced or self._reload or self._upgrade:
            return
        if any(s.pid and not s.ready for s in self._slots):
            return  # a starting worker builds the running config; start when it is up
        if self._reload_queue:
            self._start_reload()
        elif self._upgrade_wanted is not None:
            self._start_upgrade()

    # -- control channels ---------------------------------------------------------------

    def _on_worker_channel(self, slot: _Slot, events: int) -> None:
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

    def _send(self, slot: _Slot, msg: Message, fds: list[int] | None = None) -> bool:
        if slot.channel is None or slot.channel.closed:
            return False
        try:
            slot.channel.send(msg, fds)
        except ChannelClosed:
            return False
        return True

    def _on_worker_message(self, slot: _Slot, msg: Message, fds: list[int]) -> None:
        op = msg.get("op")
        txn, up = self._reload, self._upgrade
        if op == "sockets" and up is not None and up.phase == "collect" and slot.index in up.waiting:
            up.sockets[slot.index] = dict(zip(msg.get("keys", []), fds, strict=False))
            up.waiting.discard(slot.index)
            if not up.waiting:
                self._spawn_successor()
            return
        close_fds(fds)
        if op in ("prepared", "committed") and txn is not None and int(msg["id"]) == txn.id:
            self._on_reload_reply(slot, op, msg)
        elif op == "reload":
            self._queue_reload(str(msg.get("reason") or "worker request"), (slot.index, int(msg["req"])))
        elif op == "status":
            result = self.last_reload.as_dict() if self.last_reload else {}
            self._send(slot, {"op": "status_result", "req": int(msg["req"]), "result": result})

    # -- reload ---------------------------------------------------------------------------

    def _queue_reload(self, trigger: str, requester: tuple[int, int] | None) -> None:
        if self._stopping:
            log.info("%s: stopping, not reloading", trigger)
            if requester is not None:
                refused = ReloadResult(0, trigger, False, "the supervisor is stopping", finished=time.time())
                self._send(
                    self._slots[requester[0]], {"op": "reload_result", "req": requester[1], "result": refused.as_dict()}
                )
            return
        if self._reload is not None:
            log.info("%s: a reload is running; another one follows it", trigger)
        self._reload_queue.append((trigger, requester))

    def _start_reload(self) -> None:
        queue, self._reload_queue = self._reload_queue, []
        trigger = ", ".join(dict.fromkeys(t for t, _ in queue))
        requesters = [r for _, r in queue if r is not None]
        self._reload_count += 1
        txn_id = self._reload_count
        if self._source is None:
            error = "reload needs a config file (this supervisor was started without one)"
            log.error("reload %d (%s) refused: %s", txn_id, trigger, error)
            self._record(ReloadResult(txn_id, trigger, False, error, finished=time.time()), requesters)
            return
        try:
            digest = file_digest(self._source.path)
            cfg = self._source.load()
            txn = ReloadTxn.start(txn_id, trigger, cfg, self._cfg, self.listeners, requesters)
        except ConfigError as exc:
            log.error("reload %d (%s) failed: config error: %s; still serving the running config", txn_id, trigger, exc)
            self._record(config_error_result(txn_id, trigger, exc), requesters)
            return
        self._digest = digest
        for note in txn.needs_restart:
            log.warning("reload %d: %s", txn_id, note)
        warning = low_limit_warning(txn.cfg, open_files_limit())  # servers or backlogs may have grown
        if warning is not None:
            log.warning("reload %d: %s", txn_id, warning)
        txn.changes = txn.listener_changes(self.listeners)
        live = [s for s in self._slots if s.pid and s.ready and s.channel is not None]
        msg, fds = txn.prepare_message()
        log.info("reload %d (%s): preparing in %d worker(s)", txn_id, trigger, len(live))
        self._reload = txn
        txn.deadline = time.monotonic() + PREPARE_TIMEOUT
        for slot in live:
            if self._send(slot, msg, fds):
                txn.waiting.add(slot.index)
        if not txn.waiting:
            self._commit_reload()

    def _on_reload_reply(self, slot: _Slot, op: str, msg: Message) -> None:
        txn = self._reload
        assert txn is not None
        if slot.index not in txn.waiting:
            return
        txn.waiting.discard(slot.index)
        if op == "prepared" and txn.phase == "prepare":
            if not msg.get("ok"):
                self._abort_reload(f"worker {slot.index}: {msg.get('error')}")
                return
            for name, kind in (msg.get("changes") or {}).items():
                txn.changes.setdefault(str(name), str(kind))
            if not txn.waiting:
                self._commit_reload()
        elif op == "committed" and txn.phase == "commit":
            if not msg.get("ok"):
                log.error("reload %d: worker %d could not commit: %s", txn.id, slot.index, msg.get("error"))
            if not txn.waiting:
                self._finish_reload()

    def _commit_reload(self) -> None:
        txn = self._reload
        assert txn is not None
        txn.phase = "commit"
        txn.deadline = time.monotonic() + COMMIT_TIMEOUT
        old_cfg = self._cfg
        # From here on the new config is in force: a worker restarted now builds it.
        self._cfg = txn.cfg
        self.listeners = txn.listeners
        for slot in self._slots:
            if slot.pid and self._send(slot, {"op": "commit", "id": txn.id}):
                txn.waiting.add(slot.index)
        if txn.cfg.log.level != old_cfg.log.level or txn.cfg.log.format != old_cfg.log.format:
            configure_logging(txn.cfg.log.level, txn.cfg.log.format)
        if txn.cfg.runtime.watch_config != old_cfg.runtime.watch_config:
            self._set_watch(txn.cfg.runtime.watch_config)
        if txn.cfg.runtime.pid_file != old_cfg.runtime.pid_file:
            self._remove_pid_file()
            self._write_pid_file(txn.cfg.runtime.pid_file)
        if not txn.waiting:
            self._finish_reload()

    def _finish_reload(self) -> None:
        txn = self._reload
        assert txn is not None
        self._reload = None
        close_listeners(txn.unused)
        for name in self._cfg.servers:
            txn.changes.setdefault(name, "unchanged")
        log.info("reload %d (%s) done: %s", txn.id, txn.trigger, describe_changes(txn.changes))
        if any(kind in ("added", "removed", "moved") for kind in txn.changes.values()):
            servers = ",".join(f"{lst.name}={lst.address}" for lst in self.listeners)
            log.info("listening servers=%s", servers)
        self._record(txn.result(True), txn.requesters)

    def _abort_reload(self, error: str) -> None:
        txn = self._reload
        assert txn is not None
        self._reload = None
        txn.error = error
        for slot in self._slots:
            if slot.pid:
                self._send(slot, {"op": "abort", "id": txn.id})
        txn.abort()
        log.error("reload %d (%s) aborted: %s; still serving the running config", txn.id, txn.trigger, error)
        self._record(txn.result(False), txn.requesters)

    def _record(self, result: ReloadResult, requesters: list[tuple[int, int]]) -> None:
        self.last_reload = result
        if self.on_reload is not None:
            try:
                self.on_reload(result)
            except Exception:
                log.exception("reload %d: on_reload hook failed", result.id)
        payload = result.as_dict()
        for index, req in requesters:
            self._send(self._slots[index], {"op": "reload_result", "req": req, "result": payload})

    def _end_reload_on_exit(self) -> None:
        txn = self._reload
        if txn is not None:
            self._reload = None
            if txn.phase == "prepare":
                txn.abort()
            else:
                close_listeners(txn.unused)

    # -- config file watching -------------------------------------------------------------

    def _set_watch(self, on: bool) -> None:
        if on and self._watcher is None and self._source is not None:
            try:
                self._watcher = ConfigWatcher(self._source.path)
            except OSError as exc:
                log.warning("cannot watch %s for changes: %s", self._source.path, exc)
                return
            log.info("watching %s for changes", self._source.path)
        elif not on and self._watcher is not None:
            self._watcher.close()
            self._watcher = None
            self._watch_due = self._watch_first = None

    def _on_watch(self, events: int) -> None:
        if self._watcher is None or not self._watcher.read():
            return
        now = time.monotonic()
        if self._watch_first is None:
            self._watch_first = now
        self._watch_due = min(now + DEBOUNCE, self._watch_first + DEBOUNCE_MAX)

    def _config_file_settled(self) -> None:
        if self._source is None:
            return
        digest = file_digest(self._source.path)
        if digest is None or digest == self._digest:
            return  # unreadable (mid-replace: another event follows) or the same bytes
        self._digest = digest
        self._queue_reload("config file changed", None)

    # -- upgrade --------------------------------------------------------------------------

    def _queue_upgrade(self, trigger: str) -> None:
        if self._stopping:
            log.info("%s: stopping, not upgrading", trigger)
        elif self._upgrade is not None or self._upgrade_wanted is not None:
            log.info("%s: an upgrade is already under way", trigger)
        else:
            self._upgrade_wanted = trigger

    def _start_upgrade(self) -> None:
        trigger, self._upgrade_wanted = self._upgrade_wanted or "upgrade", None
        live = [s for s in self._slots if s.pid and s.ready]
        log.info("upgrade (%s): collecting listening sockets from %d worker(s)", trigger, len(live))
        up = self._upgrade = Upgrade(trigger, set(), time.monotonic() + COLLECT_TIMEOUT)
        for slot in live:
            if self._send(slot, {"op": "handover", "id": 0}):
                up.waiting.add(slot.index)
        if not up.waiting:
            self._spawn_successor()

    def _spawn_successor(self) -> None:
        up = self._upgrade
        assert up is not None
        try:
            up.spawn(self.listeners)
        except (OSError, ChannelClosed) as exc:
            self._fail_upgrade(f"cannot start the new supervisor: {exc}")
            return
        log.info("upgrade (%s): started the new supervisor, pid %d", up.trigger, up.pid)

    def _on_upgrade_channel(self, events: int) -> None:
        up = self._upgrade
        if up is None or up.channel is None:
            return
        try:
            if events & select.POLLOUT:
                up.channel.flush()
            messages = up.channel.receive() if events & (select.POLLIN | select.POLLHUP | select.POLLERR) else []
        except ChannelClosed:
            if up.channel is not None:
                up.channel.close()
            if up.pid:
                self._fail_upgrade(f"the new supervisor (pid {up.pid}) closed the handover before it was ready")
            return
        for msg, fds in messages:
            close_fds(fds)
            if msg.get("op") == "ready":
                self._upgrade_done(up, int(msg.get("pid", up.pid)), set(msg.get("unused_paths") or ()))
                return

    def _upgrade_done(self, up: Upgrade, pid: int, unused_paths: set[str]) -> None:
        for lst in self.listeners:
            # Ours to unlink on exit only if the new supervisor does not serve it.
            lst.owned = lst.address.is_unix and lst.address.path in unused_paths
        self._upgraded = True
        up.close()
        self._upgrade = None
        log.info("upgrade (%s): new supervisor pid %d is serving; stopping the old workers", up.trigger, pid)
        self._stop("upgrade")

    def _fail_upgrade(self, why: str) -> None:
        up = self._upgrade
        if up is None:
            return
        log.error("upgrade (%s) failed: %s; the running supervisor keeps serving", up.trigger, why)
        up.close()
        if up.pid and self._successor_alive(up.pid):
            up.stop_successor()
            up.deadline = time.monotonic() + KILL_GRACE  # now only waiting to reap it
            up.phase = "failed"
        else:
            self._upgrade = None

    def _successor_alive(self, pid: int) -> bool:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return False
        if got:
            log.warning("upgrade: the new supervisor (pid %d) %s", pid, _describe(status))
            return False
        return True

    def _successor_running(self) -> bool:
        up = self._upgrade
        return up is not None and up.pid != 0 and up.phase == "failed"

    def _reap_successor(self) -> None:
        up = self._upgrade
        if up is None or not up.pid:
            return
        if not self._successor_alive(up.pid):
            if up.phase == "failed":
                self._upgrade = None
            else:
                up.pid = 0
                self._fail_upgrade("the new supervisor exited before it was ready")

    def _end_upgrade_on_exit(self) -> None:
        up = self._upgrade
        if up is not None:
            self._upgrade = None
            up.close()
            if up.pid and self._successor_alive(up.pid):
                up.stop_successor()

    # -- pid file -------------------------------------------------------------------------

    def _write_pid_file(self, path: str | None) -> None:
        if path is None:
            return
        if self._source is not None:
            # Relative to the config file, as ``monolake reload -c FILE`` reads it.
            path = os.path.join(os.path.dirname(os.path.abspath(self._source.path)), path)
        try:
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            os.replace(tmp, path)  # readers never see a half-written file
        except OSError as exc:
            log.error("cannot write the pid file %s: %s", path, exc.strerror or exc)
            return
        self._pid_file = path

    def _remove_pid_file(self) -> None:
        path, self._pid_file = self._pid_file, None
        if path is None:
            return
        with contextlib.suppress(OSError, ValueError):
            with open(path) as fh:
                if int(fh.read().strip()) != os.getpid():
                    return  # a new supervisor wrote its own
            os.unlink(path)

    # -- workers --------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        ready_r, ready_w = os.pipe()
        channel, child_sock = channel_pair()
        inherited = self._handover.for_worker(slot.index) if self._handover is not None else {}
        close = [
            self._wake_r,
            self._wake_w,
            self._life_w,
            ready_r,
            channel.fileno(),
            *(s.ready_fd for s in self._slots if s.ready_fd >= 0),
            *(s.channel.fileno() for s in self._slots if s.channel is not None and not s.channel.closed),
        ]
        if self._watcher is not None:
            close.append(self._watcher.fileno())
        if self._upgrade is not None:
            close += self._upgrade.fds()
            if self._upgrade.channel is not None and not self._upgrade.channel.closed:
                close.append(self._upgrade.channel.fileno())
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
        )
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
            if pid == 0:
                worker_main(spec)
        except OSError as exc:
            os.close(ready_r)
            channel.close()
            log.error("worker %d: fork failed: %s", slot.index, exc.strerror)
            self._schedule_restart(slot, fast=True)
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(ready_w)
            child_sock.close()
        if self._handover is not None:
            self._handover.release_worker(slot.index)
        slot.pid = pid
        slot.ready_fd = ready_r
        slot.channel = channel
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
        self._reap_successor()

    def _on_exit(self, slot: _Slot, status: int) -> None:
        pid, slot.pid, slot.ready = slot.pid, 0, False
        if slot.ready_fd >= 0:
            os.close(slot.ready_fd)
            slot.ready_fd = -1
        if slot.channel is not None:
            slot.channel.close()
            slot.channel = None
        how = _describe(status)
        txn, up = self._reload, self._upgrade
        if txn is not None and slot.index in txn.waiting:
            txn.waiting.discard(slot.index)
            if txn.phase == "prepare":
                self._abort_reload(f"worker {slot.index} (pid {pid}) {how} during the reload")
            elif not txn.waiting:
                self._finish_reload()
        if up is not None and up.phase == "collect" and slot.index in up.waiting:
            self._fail_upgrade(f"worker {slot.index} (pid {pid}) {how} during the upgrade")
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
        if self._reload is not None:
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
            if self._reload is not None and self._reload.phase == "prepare":
                self._abort_reload("the supervisor is stopping")
            if self._upgrade is not None:
                self._fail_upgrade("the supervisor is stopping")
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
        up = self._upgrade
        if up is not None and up.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(up.pid, signal.SIGKILL)

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
            if slot.channel is not None:
                slot.channel.close()
                slot.channel = None
