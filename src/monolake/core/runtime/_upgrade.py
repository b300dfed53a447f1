"""Zero-downtime binary upgrade: hand every listening socket to a new supervisor.

Why pass descriptors instead of letting the new processes bind again with
SO_REUSEPORT: a Unix socket path cannot be bound twice, a ``:0`` port must stay
the same port, and — the decisive reason — closing a listening socket resets the
connections waiting in *its* accept queue, so old workers that close their own
SO_REUSEPORT sockets lose every connection the kernel had just hashed to them.
Here no listening socket is closed while connections can still be queued on it
only: each old worker's TCP socket goes to the new worker with the same index,
which accepts from it too; the old worker's close then only drops its own
reference. (Sockets of old workers beyond the new worker count are closed with
them; ``net.ipv4.tcp_migrate_req = 1`` makes the kernel move their queues.)

The old supervisor (SIGUSR2, or ``monolake upgrade``):

1. asks every worker for its TCP listening sockets (``handover`` on the control
   channel; SCM_RIGHTS);
2. starts ``sys.executable`` with its own original command line (``sys.orig_argv``,
   so the code installed *now* runs) and a socketpair end named by
   ``MONOLAKE_UPGRADE_FD``, and sends one message per listener: its address and
   server name, the reservation (TCP) or listening (Unix) socket, and the worker
   sockets with their worker indexes;
3. waits for ``ready`` (every new worker serving) — then stops its own workers
   with the usual drain and exits 0 — or for the new process to fail or to miss
   ``READY_TIMEOUT``: then it keeps serving, logs why, and stops the new process.

The new supervisor (``take_handover`` in ``run``) reads the messages before it
opens any listener, takes over what its config still names (``open_listeners``),
gives worker *i* the sockets of old worker *i*, and sends ``ready`` once its
``monolake ready`` line is logged. Unix socket files pass to the new supervisor's
ownership only then, so a failed upgrade never unlinks a live socket.

The old side is the ``Upgrader`` state machine (``UpgradePhase``); the supervisor
feeds it events (requests, worker replies and exits, the new supervisor's channel,
timers, SIGCHLD) and reaches it for its deadline, as for ``_reload.Reloader``.
"""

from __future__ import annotations

import contextlib
import enum
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ..address import ListenAddress
from ._control import Channel, ChannelClosed, Message, close_fds
from ._listeners import Listener
from ._logging import describe_status
from ._logging import logger as log

UPGRADE_FD_ENV = "MONOLAKE_UPGRADE_FD"
COLLECT_TIMEOUT = 10.0
"""Seconds the workers get to send their sockets."""
READY_TIMEOUT = 60.0
"""Seconds the new supervisor gets to have all its workers serving."""
HANDOVER_TIMEOUT = 10.0
"""Seconds a new supervisor waits for the old one's listener messages."""
KILL_GRACE = 5.0
"""Seconds a failed upgrade's new supervisor gets after SIGTERM before SIGKILL."""


class UpgradePhase(enum.Enum):
    IDLE = "idle"
    WANTED = "wanted"
    """Requested; starts once no reload runs and no worker is starting."""
    COLLECT = "collect"
    """Waiting for every ready worker's listening sockets."""
    SPAWNED = "spawned"
    """The new supervisor runs and has the sockets; waiting for its ``ready``."""
    FAILED = "failed"
    """Given up; the new supervisor was told to stop and is waiting to be reaped."""


class UpgradeHost(Protocol):
    """What the upgrade machine needs of the supervisor."""

    @property
    def listeners(self) -> list[Listener]: ...

    def live_workers(self) -> list[int]:
        """Indexes of workers that are ready and reachable (asked for their sockets)."""
        ...

    def send(self, index: int, msg: Message, fds: list[int] | None = None) -> bool: ...

    def upgraded(self, pid: int, unused_paths: set[str]) -> None:
        """The new supervisor (``pid``) serves: stop this one's workers."""
        ...


class Upgrader:
    """The old supervisor's side of an upgrade, as a state machine.

    IDLE → WANTED (``request``) → COLLECT (``start``) → SPAWNED (every socket in) →
    IDLE (``ready``: ``host.upgraded``). Any failure from COLLECT or SPAWNED goes to
    FAILED while a new supervisor is still alive (IDLE once it is reaped), else to IDLE.
    """

    def __init__(self, host: UpgradeHost) -> None:
        self._host = host
        self.phase = UpgradePhase.IDLE
        self.trigger = ""
        self.waiting: set[int] = set()
        self.deadline: float | None = None
        self.sockets: dict[int, dict[str, int]] = {}
        """worker index -> listener key -> descriptor received from that worker (ours to close)."""
        self.pid = 0
        self.channel: Channel | None = None
        self._stopping = False

    @property
    def busy(self) -> bool:
        """Between ``start`` and its end (a successor being reaped included)."""
        return self.phase not in (UpgradePhase.IDLE, UpgradePhase.WANTED)

    @property
    def wanted(self) -> bool:
        return self.phase is UpgradePhase.WANTED

    @property
    def successor_running(self) -> bool:
        """A failed upgrade's new supervisor is still to be reaped (the old one waits for it)."""
        return self.phase is UpgradePhase.FAILED and self.pid != 0

    def fds(self) -> list[int]:
        """Descriptors a forked worker must close."""
        out = [fd for keys in self.sockets.values() for fd in keys.values()]
        if self.channel is not None and not self.channel.closed:
            out.append(self.channel.fileno())
        return out

    # -- events -------------------------------------------------------------------------

    def request(self, trigger: str) -> None:
        if self._stopping:
            log.info("%s: stopping, not upgrading", trigger)
        elif self.phase is not UpgradePhase.IDLE:
            log.info("%s: an upgrade is already under way", trigger)
        else:
            self.phase, self.trigger = UpgradePhase.WANTED, trigger

    def start(self) -> None:
        """WANTED -> COLLECT: ask every ready worker for its listening sockets."""
        assert self.phase is UpgradePhase.WANTED
        live = self._host.live_workers()
        log.info("upgrade (%s): collecting listening sockets from %d worker(s)", self.trigger, len(live))
        self.phase = UpgradePhase.COLLECT
        self.deadline = time.monotonic() + COLLECT_TIMEOUT
        for index in live:
            if self._host.send(index, {"op": "handover", "id": 0}):
                self.waiting.add(index)
        if not self.waiting:
            self._spawn()

    def on_sockets(self, index: int, msg: Message, fds: list[int]) -> bool:
        """A worker's ``sockets`` reply; False (``fds`` not taken) if not for this machine."""
        if msg.get("op") != "sockets" or self.phase is not UpgradePhase.COLLECT or index not in self.waiting:
            return False
        self.sockets[index] = dict(zip(msg.get("keys", []), fds, strict=False))
        self.waiting.discard(index)
        if not self.waiting:
            self._spawn()
        return True

    def on_channel(self, events: int) -> None:
        """The new supervisor's channel is readable/writable."""
        channel = self.channel
        if channel is None:
            return
        try:
            if events & select.POLLOUT:
                channel.flush()
            messages = channel.receive() if events & (select.POLLIN | select.POLLHUP | select.POLLERR) else []
        except ChannelClosed:
            channel.close()
            if self.pid:
                self.fail(f"the new supervisor (pid {self.pid}) closed the handover before it was ready")
            return
        for msg, fds in messages:
            close_fds(fds)
            if msg.get("op") == "ready":
                self._done(int(msg.get("pid", self.pid)), set(msg.get("unused_paths") or ()))
                return

    def on_worker_exit(self, index: int, pid: int, how: str) -> None:
        if self.phase is UpgradePhase.COLLECT and index in self.waiting:
            self.fail(f"worker {index} (pid {pid}) {how} during the upgrade")

    def on_timer(self, now: float) -> None:
        if self.deadline is None or now < self.deadline:
            return
        if self.phase is UpgradePhase.COLLECT:
            self.fail("workers did not hand over their sockets in time")
        elif self.phase is UpgradePhase.SPAWNED:
            self.fail(f"the new supervisor (pid {self.pid}) was not ready in time")
        elif self.phase is UpgradePhase.FAILED and self.pid:
            log.warning("upgrade: the new supervisor (pid %d) ignored SIGTERM; killing it", self.pid)
            self.kill()
            self.deadline = now + 3600.0

    def reap(self) -> None:
        """Check on the new supervisor (after every wake-up: SIGCHLD)."""
        if not self.busy or not self.pid:
            return
        if not self._successor_alive():
            if self.phase is UpgradePhase.FAILED:
                self._reset()
            else:
                self.pid = 0
                self.fail("the new supervisor exited before it was ready")

    def fail(self, why: str) -> None:
        """COLLECT/SPAWNED -> FAILED (a new supervisor to reap) or IDLE; this supervisor keeps serving."""
        if not self.busy:
            return
        log.error("upgrade (%s) failed: %s; the running supervisor keeps serving", self.trigger, why)
        self._release()
        if self.pid and self._successor_alive():
            self._stop_successor()
            self.deadline = time.monotonic() + KILL_GRACE  # now only waiting to reap it
            self.phase = UpgradePhase.FAILED
        else:
            self._reset()

    def stop(self) -> None:
        """The supervisor stops: refuse new requests, give up one under way."""
        self._stopping = True
        self.fail("the supervisor is stopping")

    def kill(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        """The supervisor exits: release everything, stop a new supervisor still running."""
        if not self.busy:
            return
        self._release()
        if self.pid and self._successor_alive():
            self._stop_successor()
        self._reset()

    # -- transitions ----------------------------------------------------------------------

    def _spawn(self) -> None:
        """COLLECT -> SPAWNED: start the new supervisor and send it the listeners."""
        try:
            self._start_successor(self._host.listeners)
        except (OSError, ChannelClosed) as exc:
            self.fail(f"cannot start the new supervisor: {exc}")
            return
        log.info("upgrade (%s): started the new supervisor, pid %d", self.trigger, self.pid)

    def _done(self, pid: int, unused_paths: set[str]) -> None:
        """SPAWNED -> IDLE: the new supervisor serves."""
        trigger = self.trigger
        self._release()
        self._reset()
        log.info("upgrade (%s): new supervisor pid %d is serving; stopping the old workers", trigger, pid)
        self._host.upgraded(pid, unused_paths)

    def _reset(self) -> None:
        self.phase, self.trigger, self.deadline, self.pid = UpgradePhase.IDLE, "", None, 0
        self.waiting.clear()

    def _release(self) -> None:
        close_fds([fd for keys in self.sockets.values() for fd in keys.values()])
        self.sockets.clear()
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def _successor_alive(self) -> bool:
        try:
            got, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        if got:
            log.warning("upgrade: the new supervisor (pid %d) %s", self.pid, describe_status(status))
            return False
        return True

    def _stop_successor(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def _start_successor(self, listeners: list[Listener]) -> None:
        """Start the new supervisor and send it the listeners. Raises OSError or ChannelClosed."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.set_inheritable(child.fileno(), True)
            env = dict(os.environ)
            env[UPGRADE_FD_ENV] = str(child.fileno())
            argv = list(sys.orig_argv) or [sys.executable, *sys.argv]
            self.pid = os.posix_spawn(
                sys.executable,
                argv,
                env,
                setsigmask=(),
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.channel = Channel(parent)
        self.phase = UpgradePhase.SPAWNED
        self.deadline = time.monotonic() + READY_TIMEOUT
        for lst in listeners:
            slots = sorted(i for i, keys in self.sockets.items() if lst.key in keys)
            fds = [lst.sock.fileno(), *(self.sockets[i][lst.key] for i in slots)]
            msg: dict[str, Any] = {
                "op": "listener",
                "name": lst.name,
                "spec": lst.spec,
                "host": lst.address.host,
                "port": lst.address.port,
                "path": lst.address.path,
                "backlog": lst.backlog,
                "inode": list(lst.inode),
                "workers": slots,
            }
            self.channel.send(msg, fds)
        self.channel.send({"op": "end"})


@dataclass(slots=True)
class Handover:
    """The new supervisor's side: what the old one sent."""

    channel: Channel
    listeners: list[Listener]
    workers: dict[int, dict[str, socket.socket]]
    """worker index -> listener key -> an old worker's listening socket."""

    def for_worker(self, index: int) -> dict[str, socket.socket]:
        return self.workers.get(index, {})

    def release_worker(self, index: int) -> None:
        """Close our copies of worker ``index``'s sockets (after its fork)."""
        for sock in self.workers.pop(index, {}).values():
            sock.close()

    def release_unclaimed(self) -> None:
        """Close the sockets of old workers beyond our worker count (their queues go with them)."""
        for index in list(self.workers):
            self.release_worker(index)

    def worker_fds(self, but: int) -> list[int]:
        return [s.fileno() for i, keys in self.workers.items() if i != but for s in keys.values()]

    def ready(self, used: list[Listener]) -> None:
        """Tell the old supervisor that we serve; we own the Unix socket files from now on."""
        in_use = {id(lst.sock) for lst in used}
        unused = [lst.address.path for lst in self.listeners if lst.address.is_unix and id(lst.sock) not in in_use]
        for lst in used:
            lst.owned = True
        with contextlib.suppress(ChannelClosed):
            self.channel.send({"op": "ready", "pid": os.getpid(), "unused_paths": unused})
        self.close()

    def close(self) -> None:
        for index in list(self.workers):
            self.release_worker(index)
        self.channel.close()


def take_handover() -> Handover | None:
    """In a new supervisor started by an upgrade: receive the old one's sockets.

    Returns None when this process was not started by an upgrade. Raises OSError,
    TimeoutError or ChannelClosed if the handover breaks off (the old supervisor
    then keeps serving).
    """
    value = os.environ.pop(UPGRADE_FD_ENV, None)
    if not value:
        return None
    fd = int(value)
    os.set_inheritable(fd, False)
    channel = Channel(socket.socket(fileno=fd))
    listeners: list[Listener] = []
    workers: dict[int, dict[str, socket.socket]] = {}
    try:
        while True:
            msg, fds = channel.receive_blocking(HANDOVER_TIMEOUT)
            if msg.get("op") == "end":
                close_fds(fds)
                break
            socks = [socket.socket(fileno=f) for f in fds]
            address = ListenAddress(host=msg["host"], port=int(msg["port"]), path=msg["path"])
            dev, ino = msg["inode"]
            lst = Listener(
                name=msg["name"],
                address=address,
                backlog=int(msg["backlog"]),
                sock=socks[0],
                inode=(int(dev), int(ino)),
                spec=msg["spec"],
                owned=False,
            )
            listeners.append(lst)
            for index, sock in zip(msg["workers"], socks[1:], strict=True):
                workers.setdefault(int(index), {})[lst.key] = sock
    except BaseException:
        for lst in listeners:
            lst.sock.close()
        for keys in workers.values():
            for sock in keys.values():
                sock.close()
        channel.close()
        raise
    return Handover(channel, listeners, workers)
