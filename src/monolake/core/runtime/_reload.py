"""Hot reload, the supervisor's half: load, plan, and run one two-phase transaction.

A reload is requested by SIGHUP, by a change of the config file (``_watch``), by
``Supervisor.request_reload`` (thread-safe) or by a worker on behalf of the admin
endpoint (``runtime.request_reload()``). Requests that arrive while one runs are
merged into the next one, which starts as soon as no worker is starting.

1. ``ReloadTxn.start``: read and validate the file (a ``ConfigError`` ends the reload
   here, naming its key path); settings that need new processes (``runtime.workers``,
   ``loop``, ``cpu_affinity``) keep their running values and are reported as
   needing a restart or an upgrade; listeners are matched to the open ones and the
   new ones opened (TCP reserved, Unix bound) by the supervisor, so an unbindable
   listener also ends the reload before any worker is asked.
2. PREPARE goes to every live worker with the new config (msgspec JSON) and the new
   Unix sockets; each builds its apps and binds its TCP sockets, changing nothing.
3. Any failure, a worker dying, or ``PREPARE_TIMEOUT`` → ABORT to all; the
   supervisor closes what it opened; the running config stays. Otherwise COMMIT
   to all; the supervisor adopts the new config (restarted workers build it) and
   closes the listeners no longer used once every worker confirmed.

The result (``ReloadResult.as_dict``) is logged, kept as ``last_reload`` and
returned to whoever asked.

``Reloader`` is that transaction as a state machine (``ReloadPhase``: IDLE →
PREPARE → COMMIT → IDLE, or PREPARE → IDLE on abort). The supervisor feeds it
events (requests, worker replies and exits, timers, its own stop) and asks it for
its next deadline; the machine reaches the workers and the running config only
through ``ReloadHost``, so its transitions are testable without processes. It also
owns the config file watcher (``runtime.watch_config``): a change that settles for
``DEBOUNCE`` seconds (at most ``DEBOUNCE_MAX`` after the first event) and changed the
file's bytes queues a reload.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from ..errors import ConfigError
from ._control import Message
from ._limits import low_limit_warning, open_files_limit
from ._listeners import Listener, close_listeners, open_listener, plan_listeners
from ._logging import logger as log
from ._settings import RuntimeConfig as Config
from ._watch import DEBOUNCE, DEBOUNCE_MAX, ConfigWatcher, file_digest

PREPARE_TIMEOUT = 30.0
"""Seconds every worker gets to build and bind before the reload is aborted."""
COMMIT_TIMEOUT = 10.0

_RESTART_ONLY = ("workers", "loop", "cpu_affinity", "max_open_files")
"""Runtime settings a running supervisor cannot change: they shape its processes."""


_C = TypeVar("_C")


@dataclass(frozen=True, slots=True)
class ConfigSource(Generic[_C]):
    """Where a running supervisor reads its config again: a file read by ``loader`` (the
    proxy's TOML loader, say), plus the adjustments its command line made (``--workers``,
    ``--loop``). The runtime only calls ``load`` and digests ``path`` (empty: nothing to digest)."""

    path: str
    loader: Callable[[str], _C] | None = None
    adjust: Callable[[_C], _C] | None = None

    def load(self) -> _C:
        """Read and validate the file. Raises ConfigError."""
        if self.loader is None:
            raise ConfigError("", "this config source cannot be read again")
        cfg = self.loader(self.path)
        return self.adjust(cfg) if self.adjust is not None else cfg


@dataclass(slots=True)
class ReloadResult:
    id: int
    trigger: str
    ok: bool
    error: str | None = None
    changes: dict[str, str] = field(default_factory=dict)
    needs_restart: list[str] = field(default_factory=list)
    finished: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "trigger": self.trigger,
            "ok": self.ok,
            "error": self.error,
            "changes": dict(self.changes),
            "needs_restart": list(self.needs_restart),
            "finished": self.finished,
        }


def keep_runtime(old: Any, new: Any) -> tuple[Any, list[str]]:
    """``new`` with the restart-only runtime settings of ``old``, and what differed."""
    notes = []
    for key in _RESTART_ONLY:
        was, now = getattr(old.runtime, key), getattr(new.runtime, key)
        if was != now:
            notes.append(f"runtime.{key} changed ({was!r} -> {now!r}): needs a restart or an upgrade; keeping {was!r}")
    if not notes:
        return new, []
    runtime = msgspec.structs.replace(new.runtime, **{k: getattr(old.runtime, k) for k in _RESTART_ONLY})
    return msgspec.structs.replace(new, runtime=runtime), notes


@dataclass(slots=True)
class ReloadTxn:
    """One reload between PREPARE and its end."""

    id: int
    trigger: str
    cfg: Config
    listeners: list[Listener]
    """The new full list, in config order."""
    opened: list[Listener]
    """Opened for this reload: closed on abort."""
    unused: list[Listener]
    """No longer used: closed once the commit is done."""
    needs_restart: list[str]
    requesters: list[tuple[int, int]]
    """(worker index, request id) to answer when done."""
    waiting: set[int] = field(default_factory=set)
    changes: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    deadline: float = 0.0

    @classmethod
    def start(
        cls,
        txn_id: int,
        trigger: str,
        new: Config,
        running: Config,
        listeners: Sequence[Listener],
        requesters: list[tuple[int, int]],
    ) -> ReloadTxn:
        """Plan the reload of ``running`` into ``new`` and open the new listeners.

        Raises ConfigError (a listener that cannot be bound), with nothing left open.
        """
        cfg, notes = keep_runtime(running, new)
        kept, to_open, unused = plan_listeners(cfg, listeners)
        opened: list[Listener] = []
        try:
            for name in to_open:
                opened.append(open_listener(name, cfg.servers[name]))
        except BaseException:
            close_listeners(opened)
            raise
        by_name = {lst.name: lst for lst in [*kept, *opened]}
        ordered = [by_name[name] for name in cfg.servers]
        return cls(txn_id, trigger, cfg, ordered, opened, unused, notes, requesters)

    def prepare_message(self) -> tuple[dict[str, Any], list[int]]:
        fds: list[int] = []
        items = []
        new = {id(lst) for lst in self.opened}
        for lst in self.listeners:
            fd = -1
            if lst.address.is_unix and id(lst) in new:
                fd = len(fds)
                fds.append(lst.sock.fileno())
            items.append(
                {
                    "name": lst.name,
                    "key": lst.key,
                    "host": lst.address.host,
                    "port": lst.address.port,
                    "path": lst.address.path,
                    "backlog": lst.backlog,
                    "fd": fd,
                }
            )
        msg = {"op": "prepare", "id": self.id, "config": msgspec.json.encode(self.cfg).decode(), "listeners": items}
        return msg, fds

    def listener_changes(self, before: Sequence[Listener]) -> dict[str, str]:
        """server name -> "added"/"removed"/"moved" for listeners; apps' changes come from workers."""
        out: dict[str, str] = {}
        old = {lst.name: lst.key for lst in before}
        new = {lst.name: lst.key for lst in self.listeners}
        for name, key in new.items():
            if name not in old:
                out[name] = "added"
            elif old[name] != key:
                out[name] = "moved"
        for name in old:
            if name not in new:
                out[name] = "removed"
        return out

    def abort(self) -> None:
        close_listeners(self.opened)

    def result(self, ok: bool) -> ReloadResult:
        return ReloadResult(
            self.id, self.trigger, ok, self.error, self.changes, self.needs_restart, finished=time.time()
        )


def config_error_result(txn_id: int, trigger: str, exc: ConfigError) -> ReloadResult:
    return ReloadResult(txn_id, trigger, False, f"config error: {exc}", finished=time.time())


def describe_changes(changes: dict[str, str]) -> str:
    """``added=a,b changed=c unchanged=d`` (kinds in a fixed order)."""
    kinds: dict[str, list[str]] = {}
    for name, kind in changes.items():
        kinds.setdefault(kind, []).append(name)
    order = ["added", "removed", "moved", "changed", "replaced", "unchanged"]
    parts = [f"{kind}={','.join(kinds[kind])}" for kind in order if kind in kinds]
    parts += [f"{kind}={','.join(names)}" for kind, names in kinds.items() if kind not in order]
    return " ".join(parts) or "no servers"


class ReloadPhase(enum.Enum):
    IDLE = "idle"
    PREPARE = "prepare"
    """PREPARE sent; waiting for every worker's ``prepared``."""
    COMMIT = "commit"
    """The new config is in force; waiting for every worker's ``committed``."""


class ReloadHost(Protocol):
    """What the reload machine needs of the supervisor."""

    @property
    def config(self) -> Config: ...

    @property
    def listeners(self) -> list[Listener]: ...

    def live_workers(self) -> list[int]:
        """Indexes of workers that are ready and reachable (asked to PREPARE)."""
        ...

    def running_workers(self) -> list[int]:
        """Indexes of workers with a process (told to COMMIT or ABORT)."""
        ...

    def send(self, index: int, msg: Message, fds: list[int] | None = None) -> bool:
        """Queue ``msg`` to worker ``index``; False if it cannot be reached."""
        ...

    def adopt(self, cfg: Config, listeners: list[Listener]) -> None:
        """Put ``cfg`` in force (the commit point): restarted workers build it from now on."""
        ...


class Reloader:
    """The reload state machine: one transaction at a time, later requests merged into the next."""

    def __init__(self, host: ReloadHost, source: ConfigSource[Any] | None) -> None:
        self._host = host
        self.source = source
        self.phase = ReloadPhase.IDLE
        self.txn: ReloadTxn | None = None
        self._queue: list[tuple[str, tuple[int, int] | None]] = []
        self._count = 0
        self._stopping = False
        self.digest = file_digest(source.path) if source is not None else None
        """The config file's digest as last loaded (the watcher compares against it)."""
        self.last: ReloadResult | None = None
        self.on_result: Callable[[ReloadResult], None] | None = None
        self._watcher: ConfigWatcher | None = None
        self._watch_first: float | None = None
        self._watch_due: float | None = None

    @property
    def deadline(self) -> float | None:
        due = self._watch_due
        if self.txn is None:
            return due
        return self.txn.deadline if due is None else min(due, self.txn.deadline)

    def watch_fd(self) -> int | None:
        """The config watcher's descriptor to poll (None: not watching)."""
        return self._watcher.fileno() if self._watcher is not None else None

    def watch(self, on: bool) -> None:
        """Start or stop watching the config file (``runtime.watch_config``)."""
        if on and self._watcher is None and self.source is not None:
            try:
                self._watcher = ConfigWatcher(self.source.path)
            except OSError as exc:
                log.warning("cannot watch %s for changes: %s", self.source.path, exc)
                return
            log.info("watching %s for changes", self.source.path)
        elif not on and self._watcher is not None:
            self._watcher.close()
            self._watcher = None
            self._watch_due = self._watch_first = None

    @property
    def running(self) -> bool:
        return self.phase is not ReloadPhase.IDLE

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    # -- events -------------------------------------------------------------------------

    def request(self, trigger: str, requester: tuple[int, int] | None = None) -> None:
        """Ask for a reload; ``requester`` (worker index, request id) gets the result."""
        if self._stopping:
            log.info("%s: stopping, not reloading", trigger)
            if requester is not None:
                refused = ReloadResult(0, trigger, False, "the supervisor is stopping", finished=time.time())
                self._answer(refused, [requester])
            return
        if self.running:
            log.info("%s: a reload is running; another one follows it", trigger)
        self._queue.append((trigger, requester))

    def on_watch_event(self, events: int = 0) -> None:
        """The watcher's descriptor is readable: (re)start the debounce."""
        if self._watcher is None or not self._watcher.read():
            return
        now = time.monotonic()
        if self._watch_first is None:
            self._watch_first = now
        self._watch_due = min(now + DEBOUNCE, self._watch_first + DEBOUNCE_MAX)

    def file_changed(self) -> None:
        """The watched file settled: reload if its bytes differ from the ones loaded."""
        if self.source is None:
            return
        digest = file_digest(self.source.path)
        if digest is None or digest == self.digest:
            return  # unreadable (mid-replace: another event follows) or the same bytes
        self.digest = digest
        self.request("config file changed")

    def start(self) -> None:
        """IDLE -> PREPARE with every queued request (or back to IDLE with a result at once)."""
        assert self.phase is ReloadPhase.IDLE
        queue, self._queue = self._queue, []
        trigger = ", ".join(dict.fromkeys(t for t, _ in queue))
        requesters = [r for _, r in queue if r is not None]
        self._count += 1
        txn_id = self._count
        if self.source is None:
            error = "reload needs a config file (this supervisor was started without one)"
            log.error("reload %d (%s) refused: %s", txn_id, trigger, error)
            self._record(ReloadResult(txn_id, trigger, False, error, finished=time.time()), requesters)
            return
        host = self._host
        try:
            digest = file_digest(self.source.path)
            cfg = self.source.load()
            txn = ReloadTxn.start(txn_id, trigger, cfg, host.config, host.listeners, requesters)
        except ConfigError as exc:
            log.error("reload %d (%s) failed: config error: %s; still serving the running config", txn_id, trigger, exc)
            self._record(config_error_result(txn_id, trigger, exc), requesters)
            return
        self.digest = digest
        for note in txn.needs_restart:
            log.warning("reload %d: %s", txn_id, note)
        warning = low_limit_warning(txn.cfg, open_files_limit())  # servers or backlogs may have grown
        if warning is not None:
            log.warning("reload %d: %s", txn_id, warning)
        txn.changes = txn.listener_changes(host.listeners)
        live = host.live_workers()
        msg, fds = txn.prepare_message()
        log.info("reload %d (%s): preparing in %d worker(s)", txn_id, trigger, len(live))
        self.txn, self.phase = txn, ReloadPhase.PREPARE
        txn.deadline = time.monotonic() + PREPARE_TIMEOUT
        for index in live:
            if host.send(index, msg, fds):
                txn.waiting.add(index)
        if not txn.waiting:
            self._commit()

    def on_reply(self, index: int, msg: Message) -> bool:
        """A worker's ``prepared``/``committed``; False if the message is not for this machine."""
        op, txn = msg.get("op"), self.txn
        if op not in ("prepared", "committed") or txn is None or int(msg["id"]) != txn.id:
            return False
        if index not in txn.waiting:
            return True
        txn.waiting.discard(index)
        if op == "prepared" and self.phase is ReloadPhase.PREPARE:
            if not msg.get("ok"):
                self._abort(f"worker {index}: {msg.get('error')}")
                return True
            for name, kind in (msg.get("changes") or {}).items():
                txn.changes.setdefault(str(name), str(kind))
            if not txn.waiting:
                self._commit()
        elif op == "committed" and self.phase is ReloadPhase.COMMIT:
            if not msg.get("ok"):
                log.error("reload %d: worker %d could not commit: %s", txn.id, index, msg.get("error"))
            if not txn.waiting:
                self._finish()
        return True

    def on_worker_exit(self, index: int, pid: int, how: str) -> None:
        txn = self.txn
        if txn is None or index not in txn.waiting:
            return
        txn.waiting.discard(index)
        if self.phase is ReloadPhase.PREPARE:
            self._abort(f"worker {index} (pid {pid}) {how} during the reload")
        elif not txn.waiting:
            self._finish()

    def on_timer(self, now: float) -> None:
        if self._watch_due is not None and now >= self._watch_due:
            self._watch_due = self._watch_first = None
            self.file_changed()
        txn = self.txn
        if txn is None or now < txn.deadline:
            return
        if self.phase is ReloadPhase.PREPARE:
            late = ", ".join(f"worker {i}" for i in sorted(txn.waiting))
            self._abort(f"{late} did not prepare within {PREPARE_TIMEOUT:g}s")
        else:
            log.warning("reload %d: %s did not confirm the commit in time", txn.id, sorted(txn.waiting))
            self._finish()

    def stop(self) -> None:
        """The supervisor stops: refuse new requests, abort a reload not yet committed."""
        self._stopping = True
        if self.phase is ReloadPhase.PREPARE:
            self._abort("the supervisor is stopping")

    def close(self) -> None:
        """The supervisor exits: release what a reload still holds, stop watching."""
        self.watch(False)
        txn, phase = self.txn, self.phase
        self.txn, self.phase = None, ReloadPhase.IDLE
        if txn is None:
            return
        if phase is ReloadPhase.PREPARE:
            txn.abort()
        else:
            close_listeners(txn.unused)

    # -- transitions ----------------------------------------------------------------------

    def _commit(self) -> None:
        """PREPARE -> COMMIT: every worker prepared."""
        txn = self.txn
        assert txn is not None
        self.phase = ReloadPhase.COMMIT
        txn.deadline = time.monotonic() + COMMIT_TIMEOUT
        # From here on the new config is in force: a worker restarted now builds it.
        watched = self._host.config.runtime.watch_config
        self._host.adopt(txn.cfg, txn.listeners)
        if txn.cfg.runtime.watch_config != watched:
            self.watch(txn.cfg.runtime.watch_config)
        for index in self._host.running_workers():
            if self._host.send(index, {"op": "commit", "id": txn.id}):
                txn.waiting.add(index)
        if not txn.waiting:
            self._finish()

    def _finish(self) -> None:
        """COMMIT -> IDLE."""
        txn = self.txn
        assert txn is not None
        self.txn, self.phase = None, ReloadPhase.IDLE
        close_listeners(txn.unused)
        for name in self._host.config.servers:
            txn.changes.setdefault(name, "unchanged")
        log.info("reload %d (%s) done: %s", txn.id, txn.trigger, describe_changes(txn.changes))
        if any(kind in ("added", "removed", "moved") for kind in txn.changes.values()):
            servers = ",".join(f"{lst.name}={lst.address}" for lst in self._host.listeners)
            log.info("listening servers=%s", servers)
        self._record(txn.result(True), txn.requesters)

    def _abort(self, error: str) -> None:
        """PREPARE -> IDLE: the running config stays."""
        txn = self.txn
        assert txn is not None
        self.txn, self.phase = None, ReloadPhase.IDLE
        txn.error = error
        for index in self._host.running_workers():
            self._host.send(index, {"op": "abort", "id": txn.id})
        txn.abort()
        log.error("reload %d (%s) aborted: %s; still serving the running config", txn.id, txn.trigger, error)
        self._record(txn.result(False), txn.requesters)

    def _record(self, result: ReloadResult, requesters: list[tuple[int, int]]) -> None:
        self.last = result
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:
                log.exception("reload %d: on_reload hook failed", result.id)
        self._answer(result, requesters)

    def _answer(self, result: ReloadResult, requesters: list[tuple[int, int]]) -> None:
        payload = result.as_dict()
        for index, req in requesters:
            self._host.send(index, {"op": "reload_result", "req": req, "result": payload})
