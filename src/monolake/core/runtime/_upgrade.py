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
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ..address import ListenAddress
from ._control import Channel, ChannelClosed, close_fds
from ._listeners import Listener

UPGRADE_FD_ENV = "MONOLAKE_UPGRADE_FD"
COLLECT_TIMEOUT = 10.0
"""Seconds the workers get to send their sockets."""
READY_TIMEOUT = 60.0
"""Seconds the new supervisor gets to have all its workers serving."""
HANDOVER_TIMEOUT = 10.0
"""Seconds a new supervisor waits for the old one's listener messages."""


@dataclass(slots=True)
class Upgrade:
    """The old supervisor's side of one upgrade."""

    trigger: str
    waiting: set[int]
    deadline: float
    phase: str = "collect"
    sockets: dict[int, dict[str, int]] = field(default_factory=dict)
    """worker index -> listener key -> descriptor received from that worker (ours to close)."""
    pid: int = 0
    channel: Channel | None = None

    def fds(self) -> list[int]:
        return [fd for keys in self.sockets.values() for fd in keys.values()]

    def close_sockets(self) -> None:
        close_fds(self.fds())
        self.sockets.clear()

    def spawn(self, listeners: list[Listener]) -> None:
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
        self.phase = "spawned"
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

    def stop_successor(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def close(self) -> None:
        self.close_sockets()
        if self.channel is not None:
            self.channel.close()
            self.channel = None


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
