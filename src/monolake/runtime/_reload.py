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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..config import Config, load_config
from ..errors import ConfigError
from ._listeners import Listener, close_listeners, open_listener, plan_listeners

PREPARE_TIMEOUT = 30.0
"""Seconds every worker gets to build and bind before the reload is aborted."""
COMMIT_TIMEOUT = 10.0

_RESTART_ONLY = ("workers", "loop", "cpu_affinity", "max_open_files")
"""Runtime settings a running supervisor cannot change: they shape its processes."""


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where a running supervisor reads its config again: a TOML file, plus the
    adjustments its command line made (``--workers``, ``--loop``)."""

    path: str
    adjust: Callable[[Config], Config] | None = None

    def load(self) -> Config:
        """Read and validate the file. Raises ConfigError."""
        cfg = load_config(self.path)
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


def keep_runtime(old: Config, new: Config) -> tuple[Config, list[str]]:
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
    phase: str = "prepare"
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
