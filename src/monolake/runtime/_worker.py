"""One worker process: a pinned core, its own event loop, its own listeners.

The supervisor forks, and the child calls ``worker_main``, which never returns:
the child is running on a copy of the supervisor's stack, so returning (or letting
an exception escape) would make it a second supervisor. It always ends in
``os._exit`` after flushing logs.

Start-up, in order: drop the supervisor's signal handlers and descriptors, pin to
a core, create the loop (``_loops``), install the SIGTERM handler (SIGTERM stays
blocked from before the fork until then, so a stop request is never lost or
fatal), ``build(cfg)`` this worker's apps, bind and serve, then write ``R`` to the
ready pipe. SIGINT is ignored: Ctrl-C reaches the whole process group and the
supervisor decides what it means.

Stop: the first SIGTERM (or EOF on the life pipe, i.e. the supervisor died) closes
the listeners, asks every app to drain and waits up to ``runtime.drain_timeout``;
a second SIGTERM hurries. Then ``app.close()`` force-closes what is left and the
process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol, TypeAlias

from ..config import Config
from ..errors import ConfigError
from ._listeners import Listener
from ._logging import flush_logging
from ._loops import new_event_loop

log = logging.getLogger("monolake.worker")


class ServerApp(Protocol):
    """What a worker serves on one server's listener.

    The runtime knows nothing of protocols: it accepts connections with
    ``protocol_factory`` and, on stop, calls ``start_draining``, awaits
    ``wait_drained`` (bounded by ``runtime.drain_timeout``), then ``close``.
    """

    def protocol_factory(self) -> asyncio.BaseProtocol:
        """A protocol for one new connection (passed to ``loop.create_server``)."""
        ...

    def start_draining(self) -> None:
        """Stop keep-alive and close idle connections; requests in flight continue."""
        ...

    async def wait_drained(self) -> None:
        """Return once no request is in flight. Cancelled when the drain times out."""
        ...

    def close(self) -> None:
        """Force-close whatever is left. Called once, also after a drain timeout."""
        ...


AppBuilder: TypeAlias = Callable[[Config], Mapping[str, ServerApp]]
"""Builds one app per server name in ``cfg.servers``; may raise ConfigError.

Called once in the supervisor (a dry run that validates before anything is bound;
the result is discarded) and once in every worker, on that worker's running loop.
"""


def check_apps(cfg: Config, apps: Mapping[str, ServerApp]) -> None:
    """Raise ConfigError unless ``apps`` has exactly one app per configured server."""
    for name in cfg.servers:
        if name not in apps:
            raise ConfigError(f"servers.{name}", "the application built nothing to serve it")
    for name in apps:
        if name not in cfg.servers:
            raise ConfigError("servers", f"the application built {name!r}, which is not configured")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    index: int
    cfg: Config
    build: AppBuilder
    listeners: Sequence[Listener]
    cpu: int | None
    """Core to pin to, or None to leave affinity alone."""
    ready_fd: int
    """Write end of this worker's ready pipe."""
    life_fd: int
    """Read end of the life pipe; EOF means the supervisor is gone."""
    close_fds: Sequence[int]
    """The supervisor's descriptors this worker must not hold."""


def worker_main(spec: WorkerSpec) -> NoReturn:
    """Run a worker in a freshly forked child. Never returns; exits 0 after a clean stop, else 1."""
    code = 1
    try:
        _detach_from_supervisor(spec)
        code = _run(spec)
    except BaseException:
        log.exception("worker %d failed", spec.index)
    finally:
        flush_logging()
        os._exit(code)


def _detach_from_supervisor(spec: WorkerSpec) -> None:
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGCHLD})
    for fd in spec.close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    for lst in spec.listeners:
        if not lst.address.is_unix:
            lst.sock.close()  # the reservation stays with the supervisor
    if spec.cpu is not None and sys.platform == "linux":
        try:
            os.sched_setaffinity(0, {spec.cpu})
        except OSError as exc:
            log.warning("worker %d: cannot pin to cpu %d: %s", spec.index, spec.cpu, exc.strerror)


def _run(spec: WorkerSpec) -> int:
    loop = new_event_loop(spec.cfg.runtime.loop)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(spec, loop))
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:
            log.exception("worker %d: error while closing the loop", spec.index)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _serve(spec: WorkerSpec, loop: asyncio.AbstractEventLoop) -> int:
    stop = asyncio.Event()
    hurry = asyncio.Event()

    def request_stop() -> None:
        if stop.is_set():
            log.info("worker %d: asked again, closing now", spec.index)
            hurry.set()
        stop.set()

    def on_life() -> None:
        try:
            data = os.read(spec.life_fd, 64)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(spec.life_fd)
            log.warning("worker %d: supervisor is gone, stopping", spec.index)
            request_stop()

    loop.add_signal_handler(signal.SIGTERM, request_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.set_blocking(spec.life_fd, False)
    loop.add_reader(spec.life_fd, on_life)

    apps = spec.build(spec.cfg)
    check_apps(spec.cfg, apps)
    servers: list[asyncio.AbstractServer] = []
    for lst in spec.listeners:
        sock = lst.worker_socket()
        servers.append(await loop.create_server(apps[lst.name].protocol_factory, sock=sock, backlog=lst.backlog))
    os.write(spec.ready_fd, b"R")
    os.close(spec.ready_fd)
    log.debug("worker %d ready (cpu %s)", spec.index, spec.cpu)

    await stop.wait()
    for srv in servers:
        srv.close()
    log.info("worker %d draining (listeners closed)", spec.index)
    for name, app in apps.items():
        _guarded(name, "start_draining", app.start_draining)
    drained: asyncio.Future[object] = asyncio.ensure_future(
        asyncio.gather(*(_guarded_wait(name, app.wait_drained()) for name, app in apps.items()))
    )
    hurried: asyncio.Future[object] = asyncio.ensure_future(hurry.wait())
    done, _ = await asyncio.wait(
        {drained, hurried}, timeout=spec.cfg.runtime.drain_timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if drained not in done:
        why = "hurried" if hurried in done else f"drain timeout {spec.cfg.runtime.drain_timeout}s"
        log.warning("worker %d: %s, closing requests still in flight", spec.index, why)
    drained.cancel()
    hurried.cancel()
    for name, app in apps.items():
        _guarded(name, "close", app.close)
    # Let closed transports run their connection_lost callbacks before the loop goes.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(srv.wait_closed() for srv in servers)), 1.0)
    log.info("worker %d stopped", spec.index)
    return 0


def _guarded(name: str, what: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("server %s: %s failed", name, what)


async def _guarded_wait(name: str, aw: Awaitable[None]) -> None:
    # One app failing to report drained must not cut the others' drain short.
    try:
        await aw
    except Exception:
        log.exception("server %s: wait_drained failed", name)
