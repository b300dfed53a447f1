"""One worker process: a pinned core, its own event loop, its own listeners.

The supervisor forks, and the child calls ``worker_main``, which never returns:
the child is running on a copy of the supervisor's stack, so returning (or letting
an exception escape) would make it a second supervisor. It always ends in
``os._exit`` after flushing logs.

Start-up, in order: drop the supervisor's signal handlers and descriptors, pin to
a core, create the loop (``_loops``), install the SIGTERM handler (SIGTERM stays
blocked from before the fork until then, so a stop request is never lost or
fatal), ``build(cfg)`` this worker's apps, bind and serve, then write ``R`` and the
kind of loop it runs to the ready pipe. SIGINT is ignored: Ctrl-C reaches the whole process group and the
supervisor decides what it means.

Every listener is served through an ``_Entry`` whose protocol factory asks the
entry's *current* app, so a reload can hand a listening socket to a new app
without closing it (one extra call per accepted connection).

Control (``_control.Channel``, one socketpair per worker), handled in order by one
task on the worker's loop:

- ``prepare``: build the new config's apps (``AppBuilder.prepare`` if the builder
  has it, else a fresh ``build``), bind the new TCP listeners (SO_REUSEPORT, not
  listening yet) and adopt new Unix ones (descriptors sent by the supervisor).
  Nothing that serves traffic changes. Any exception is the reply's ``error``.
- ``commit``: in one synchronous step, ``Prepared.commit()`` (in-place updates),
  point every entry at its new app, close removed listeners; then start the new
  listeners. Apps no longer served are *retired*: drained like a stop
  (``start_draining``, ``wait_drained`` bounded by ``drain_timeout``, ``close``)
  while everything else serves on.
- ``abort``: ``Prepared.abort()``, close whatever prepare opened.
- ``app``: a message the supervisor broadcast, handed to the builder's ``on_message``
  (the proxy's: a cluster's discovered endpoints); the retained ones arrive in
  ``WorkerSpec.retained`` and are handed over before the first build.
- ``handover`` (binary upgrade): reply with this worker's TCP listening sockets;
  the new supervisor's worker with the same index serves on the same sockets, so
  no connection queued on them is lost when this worker closes its copies.

Accept failures for lack of descriptors or memory are logged as one rate-limited line
(``_limits``: the loop's exception handler, and on uvloop a once-a-second probe).
Freed heap memory is given back to the system after a surge (``_memory``).

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
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, TypeAlias, TypeVar

import msgspec

from ..errors import ConfigError
from ..tls_transport import server_factory
from ._control import Channel, ChannelClosed, Message, close_fds
from ._limits import AcceptErrors, FdProbe, is_uvloop
from ._listeners import Listener, bind_tcp
from ._logging import configure_logging, flush_logging, watch_level
from ._loops import LoopOptions, loop_kind, new_event_loop
from ._memory import HeapTrimmer
from ._settings import RuntimeConfig as Config

log = logging.getLogger("monolake.worker")


class ServerApp(Protocol):
    """What a worker serves on one server's listener.

    The runtime knows nothing of protocols: it accepts connections with
    ``protocol_factory`` and, on stop, calls ``start_draining``, awaits
    ``wait_drained`` (bounded by ``runtime.drain_timeout``), then ``close``.
    An app may also have an ``ssl_context`` attribute (an ``ssl.SSLContext``): its
    listener is then created with it and serves TLS.
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


C = TypeVar("C", bound=Config)
"""The caller's own config type (the proxy's ``apps.config.Config``, say)."""
C_contra = TypeVar("C_contra", bound=Config, contravariant=True)

AppBuilder: TypeAlias = Callable[[C], Mapping[str, ServerApp]]
"""Builds one app per server name in ``cfg.servers`` (``cfg`` is the config object given to
``run``, of the caller's own type: ``run`` checks that ``AppBuilder[C]`` takes the ``C`` it is
given); may raise ConfigError.

Called once in the supervisor (a dry run that validates before anything is bound;
the result is discarded) and once in every worker, on that worker's running loop.
A builder may also implement ``Reloadable`` to keep state across reloads. A plain one
is called afresh on reload, with nothing of the running apps: their services' state is
lost and the reload reports them "replaced". (``monolake.serve``'s builder is a
``Reloadable`` that rebuilds with ``Factory.make(old)``.)
"""


class Prepared(Protocol):
    """A reload's new apps, built but not yet serving (see ``Reloadable``)."""

    @property
    def apps(self) -> Mapping[str, ServerApp]:
        """One app per server of the new config, as served after ``commit``. An app that is
        the very object already serving that server stays; another one replaces it and
        the replaced one is drained."""
        ...

    def commit(self) -> None:
        """Apply in-place updates. Called once, synchronously, just before ``apps`` serve;
        must not fail (an exception is logged; the reload stays committed)."""
        ...

    def abort(self) -> None:
        """Release what was prepared; nothing of it ever served."""
        ...


class Reloadable(Protocol[C_contra]):
    """An ``AppBuilder`` that can rebuild from the apps it built before (hot reload)."""

    def __call__(self, cfg: C_contra, /) -> Mapping[str, ServerApp]: ...

    def prepare(self, cfg: C_contra, old: Mapping[str, ServerApp], /) -> Prepared:
        """Build ``cfg``'s apps from ``old`` (the apps now serving) without changing them.
        Raises ConfigError (or anything else: the reload aborts with its message)."""
        ...


@dataclass(slots=True)
class _Fresh:
    """What a plain AppBuilder gives on reload: all new apps, nothing kept."""

    apps: Mapping[str, ServerApp]
    changes: dict[str, str] = field(default_factory=dict)

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass


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
    build: AppBuilder[Any]
    listeners: Sequence[Listener]
    cpu: int | None
    """Core to pin to, or None to leave affinity alone."""
    ready_fd: int
    """Write end of this worker's ready pipe."""
    life_fd: int
    """Read end of the life pipe; EOF means the supervisor is gone."""
    ctl_fd: int
    """This worker's end of its control socketpair."""
    close_fds: Sequence[int]
    """The supervisor's descriptors this worker must not hold."""
    inherited: Mapping[str, socket.socket] = field(default_factory=dict)
    """Listening sockets by listener key, handed over by an old supervisor's worker."""
    retained: Sequence[Message] = ()
    """The supervisor's last broadcast of each topic, given to the builder before it builds."""


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
    for sig in (signal.SIGHUP, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)  # the supervisor's business; a stray one must not kill us
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR2})
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
    rt = spec.cfg.runtime
    loop = new_event_loop(rt.loop, LoopOptions(rt.uring_entries, rt.sqpoll_idle_ms))
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_Worker(spec, loop).serve())
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


def _ssl_of(app: ServerApp) -> ssl.SSLContext | None:
    """The app's optional ``ssl_context``: its listener then serves TLS with it (fixed while
    the listener lives; an app changes certificates through the context's SNI callback)."""
    ctx = getattr(app, "ssl_context", None)
    return ctx if isinstance(ctx, ssl.SSLContext) else None


def _serving(entry: _Entry) -> tuple[Callable[[], asyncio.BaseProtocol], ssl.SSLContext | None]:
    """The protocol factory and ``ssl`` argument of ``entry``'s server: TLS by monolake's own
    transport over a plain socket transport where its context asks for it, else the loop's."""
    ctx = _ssl_of(entry.app)
    tls_factory = server_factory(ctx, entry.protocol_factory)
    return (entry.protocol_factory, ctx) if tls_factory is None else (tls_factory, None)


class _Entry:
    """One listening socket of this worker and the app it currently serves."""

    __slots__ = ("app", "key", "name", "server", "sock")

    def __init__(self, key: str, name: str, app: ServerApp, sock: socket.socket) -> None:
        self.key = key
        self.name = name
        self.app = app
        self.sock = sock
        self.server: asyncio.AbstractServer | None = None

    def protocol_factory(self) -> asyncio.BaseProtocol:
        return self.app.protocol_factory()

    def stop_accepting(self) -> None:
        """Take no more connections, before ``close`` one loop iteration later.

        Only the stdlib loop needs it: its accept handler gives each accepted socket to a
        task that attaches it to the Server on the task's first step, and a Server closed
        before that step drops the socket unread, which the client sees as a reset. With
        the accept reader removed first, the tasks already scheduled attach in the next
        iteration and are drained like every other connection.
        """
        loop = asyncio.get_running_loop()
        server = self.server
        if isinstance(server, asyncio.Server) and type(loop) is asyncio.SelectorEventLoop:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        else:
            self.sock.close()


@dataclass(slots=True)
class _Pending:
    id: int
    cfg: Config
    prepared: Prepared
    listeners: list[tuple[str, str]]
    """(server name, listener key) in config order."""
    new: dict[str, _Entry]


_current: _Worker | None = None


class _Worker:
    def __init__(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.index = spec.index
        self.loop = loop
        self.cfg = spec.cfg
        self.apps: dict[str, ServerApp] = {}
        self.entries: dict[str, _Entry] = {}
        self.retiring: dict[ServerApp, asyncio.Task[None]] = {}
        self.pending: _Pending | None = None
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        self.channel = Channel(socket.socket(fileno=spec.ctl_fd))
        self.inbox: asyncio.Queue[tuple[Message, list[int]]] = asyncio.Queue()
        self.requests: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_request = 0

    # -- life ------------------------------------------------------------------------

    def request_stop(self) -> None:
        if self.stop.is_set():
            log.info("worker %d: asked again, closing now", self.index)
            self.hurry.set()
        self.stop.set()

    def _on_life(self) -> None:
        try:
            data = os.read(self.spec.life_fd, 64)
        except BlockingIOError:
            return
        if not data:
            self.loop.remove_reader(self.spec.life_fd)
            log.warning("worker %d: supervisor is gone, stopping", self.index)
            self.request_stop()

    async def serve(self) -> int:
        global _current
        spec, loop = self.spec, self.loop
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.set_blocking(spec.life_fd, False)
        loop.add_reader(spec.life_fd, self._on_life)
        accept_errors = AcceptErrors()
        loop.set_exception_handler(accept_errors.handler)
        probe = FdProbe(loop, accept_errors) if is_uvloop(loop) else None
        trimmer = HeapTrimmer(loop, spec.cfg.runtime.trim_interval, self.index)
        watch_level(loop)  # the admin endpoint's /log_level, shared by the supervisor

        for msg in spec.retained:
            self._deliver(msg)
        apps = spec.build(spec.cfg)
        check_apps(spec.cfg, apps)
        self.apps = dict(apps)
        for lst in spec.listeners:
            inherited = spec.inherited.get(lst.key)
            sock = inherited if inherited is not None else lst.worker_socket()
            entry = _Entry(lst.key, lst.name, self.apps[lst.name], sock)
            factory, ctx = _serving(entry)
            entry.server = await loop.create_server(factory, sock=sock, backlog=lst.backlog, ssl=ctx)
            self.entries[lst.key] = entry
        os.write(spec.ready_fd, b"R" + loop_kind(loop).encode())
        os.close(spec.ready_fd)
        log.debug("worker %d ready (cpu %s)", self.index, spec.cpu)

        _current = self
        loop.add_reader(self.channel.fileno(), self._on_control)
        control = loop.create_task(self._control())
        try:
            await self.stop.wait()
        finally:
            _current = None
            control.cancel()
            if probe is not None:
                probe.close()
            accept_errors.close()
            trimmer.close()
            with contextlib.suppress(Exception):
                loop.remove_reader(self.channel.fileno())
        return await self._shutdown()

    async def _shutdown(self) -> int:
        cfg = self.cfg
        if self.pending is not None:
            self._abort(self.pending.id, reply=False)
        for entry in self.entries.values():
            entry.stop_accepting()
        await asyncio.sleep(0)  # connections accepted just now attach to their servers (see stop_accepting)
        for entry in self.entries.values():
            entry.close()
        log.info("worker %d draining (listeners closed)", self.index)
        for task in self.retiring.values():
            task.cancel()
        apps: dict[str, ServerApp] = dict(self.apps)
        for i, app in enumerate(self.retiring):
            apps[f"{type(app).__name__} (retiring #{i})"] = app
        for name, app in self.apps.items():
            _guarded(name, "start_draining", app.start_draining)
        drained: asyncio.Future[object] = asyncio.ensure_future(
            asyncio.gather(*(_guarded_wait(name, app.wait_drained()) for name, app in apps.items()))
        )
        hurried: asyncio.Future[object] = asyncio.ensure_future(self.hurry.wait())
        done, _ = await asyncio.wait(
            {drained, hurried}, timeout=cfg.runtime.drain_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if drained not in done:
            why = "hurried" if hurried in done else f"drain timeout {cfg.runtime.drain_timeout}s"
            log.warning("worker %d: %s, closing requests still in flight", self.index, why)
        drained.cancel()
        hurried.cancel()
        for name, app in apps.items():
            _guarded(name, "close", app.close)
        # Let closed transports run their connection_lost callbacks before the loop goes.
        servers = [e.server for e in self.entries.values() if e.server is not None]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(srv.wait_closed() for srv in servers)), 1.0)
        self.channel.close()
        log.info("worker %d stopped", self.index)
        return 0

    # -- control channel ---------------------------------------------------------------

    def _on_control(self) -> None:
        try:
            for item in self.channel.receive():
                self.inbox.put_nowait(item)
        except ChannelClosed:
            self.loop.remove_reader(self.channel.fileno())
            if not self.stop.is_set():
                log.warning("worker %d: control channel closed by the supervisor, stopping", self.index)
                self.request_stop()

    def _send(self, msg: Message, fds: list[int] | None = None) -> None:
        try:
            self.channel.send(msg, fds)
            if self.channel.wants_write:
                self.loop.add_writer(self.channel.fileno(), self._flush)
        except ChannelClosed:
            log.warning("worker %d: cannot reply on the control channel", self.index)

    def _flush(self) -> None:
        with contextlib.suppress(ChannelClosed):
            self.channel.flush()
        if not self.channel.wants_write:
            self.loop.remove_writer(self.channel.fileno())

    async def _control(self) -> None:
        while True:
            msg, fds = await self.inbox.get()
            op = msg.get("op")
            try:
                if op == "prepare":
                    await self._prepare(msg, fds)
                elif op == "commit":
                    await self._commit(int(msg["id"]))
                elif op == "abort":
                    self._abort(int(msg["id"]))
                elif op == "handover":
                    self._handover(int(msg["id"]))
                elif op == "app":
                    close_fds(fds)
                    self._deliver(msg)
                elif op in ("reload_result", "status_result"):
                    close_fds(fds)
                    fut = self.requests.pop(int(msg["req"]), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg.get("result") or {})
                else:
                    close_fds(fds)
                    log.warning("worker %d: unknown control message %r", self.index, op)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker %d: control message %r failed", self.index, op)

    def _deliver(self, msg: Message) -> None:
        """A message the supervisor broadcast (``Supervisor.broadcast``): the builder's business."""
        on_message = getattr(self.spec.build, "on_message", None)
        if on_message is None:
            return
        try:
            on_message(msg)
        except Exception:
            log.exception("worker %d: a broadcast message failed", self.index)

    async def _prepare(self, msg: Message, fds: list[int]) -> None:
        txn = int(msg["id"])
        if self.pending is not None:
            self._abort(self.pending.id, reply=False)
        new: dict[str, _Entry] = {}
        prepared: Prepared | None = None
        socks: list[socket.socket] = []
        wrapped: set[int] = set()
        try:
            cfg = msgspec.json.decode(msg["config"], type=type(self.cfg))  # the caller's config type
            build = self.spec.build
            prepare = getattr(build, "prepare", None)
            if prepare is not None:
                prepared = prepare(cfg, dict(self.apps))
            else:  # every app new, no state kept: say so (it was reported "unchanged")
                fresh = build(cfg)
                prepared = _Fresh(fresh, dict.fromkeys(fresh, "replaced"))
            assert prepared is not None
            check_apps(cfg, prepared.apps)
            order: list[tuple[str, str]] = []
            for item in msg["listeners"]:
                name, key = str(item["name"]), str(item["key"])
                order.append((name, key))
                if key in self.entries:
                    continue
                if item["path"]:
                    fd = fds[int(item["fd"])]
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd)
                    wrapped.add(fd)
                else:
                    try:
                        sock = bind_tcp(str(item["host"]), int(item["port"]))
                    except OSError as exc:
                        reason = f"cannot bind {key}: {exc.strerror or exc}"
                        raise ConfigError(f"servers.{name}.listener", reason) from None
                socks.append(sock)
                entry = _Entry(key, name, prepared.apps[name], sock)
                factory, ctx = _serving(entry)
                entry.server = await self.loop.create_server(
                    factory, sock=sock, backlog=int(item["backlog"]), start_serving=False, ssl=ctx
                )
                new[key] = entry
        except Exception as exc:
            served = {id(e.sock) for e in new.values()}
            for e in new.values():
                e.close()
            for sock in socks:
                if id(sock) not in served:
                    sock.close()
            close_fds([fd for fd in fds if fd not in wrapped])
            if prepared is not None:
                _guarded("reload", "abort", prepared.abort)
            error = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            log.info("worker %d: reload %d cannot be prepared: %s", self.index, txn, error)
            self._send({"op": "prepared", "id": txn, "ok": False, "error": error})
            return
        close_fds([fd for fd in fds if fd not in wrapped])
        self.pending = _Pending(txn, cfg, prepared, order, new)
        changes = dict(getattr(prepared, "changes", {}) or {})
        self._send({"op": "prepared", "id": txn, "ok": True, "changes": changes})

    async def _commit(self, txn: int) -> None:
        p = self.pending
        if p is None or p.id != txn:
            self._send({"op": "committed", "id": txn, "ok": False, "error": "nothing prepared"})
            return
        self.pending = None
        # One synchronous step: no connection or request sees half of a reload.
        try:
            p.prepared.commit()
        except Exception:
            log.exception("worker %d: reload %d: commit of the new apps failed", self.index, txn)
        live = {id(app) for app in p.prepared.apps.values()}
        old_entries = self.entries
        entries: dict[str, _Entry] = {}
        replaced: list[ServerApp] = []
        for name, key in p.listeners:
            app = p.prepared.apps[name]
            entry = old_entries.pop(key, None)
            if entry is None:
                entry = p.new[key]
            elif entry.app is not app:
                if id(entry.app) not in live:
                    replaced.append(entry.app)
                entry.app = app
            entry.name = name
            entries[key] = entry
        for entry in old_entries.values():
            entry.close()
            if id(entry.app) not in live:
                replaced.append(entry.app)
        self.entries = entries
        self.apps = dict(p.prepared.apps)
        if p.cfg.log.level != self.cfg.log.level or p.cfg.log.format != self.cfg.log.format:
            configure_logging(p.cfg.log.level, p.cfg.log.format)
        self.cfg = p.cfg
        for app in dict.fromkeys(replaced):
            self.retiring[app] = self.loop.create_task(self._retire(app))
        errors = []
        for entry in p.new.values():
            assert entry.server is not None
            try:
                await entry.server.start_serving()
            except OSError as exc:  # listen() on a socket bound at prepare: not expected to fail
                log.error("worker %d: server %s cannot listen on %s: %s", self.index, entry.name, entry.key, exc)
                errors.append(f"servers.{entry.name}.listener: cannot listen on {entry.key}: {exc}")
        self._send({"op": "committed", "id": txn, "ok": not errors, "error": "; ".join(errors) or None})

    def _abort(self, txn: int, *, reply: bool = True) -> None:
        p = self.pending
        if p is not None and p.id == txn:
            self.pending = None
            for entry in p.new.values():
                entry.close()
            _guarded("reload", "abort", p.prepared.abort)
            log.info("worker %d: reload %d aborted, the running apps stay", self.index, txn)
        if reply:
            self._send({"op": "aborted", "id": txn})

    async def _retire(self, app: ServerApp) -> None:
        name = type(app).__name__
        try:
            _guarded(name, "start_draining", app.start_draining)
            try:
                async with asyncio.timeout(self.cfg.runtime.drain_timeout):
                    await _guarded_wait(name, app.wait_drained())
            except TimeoutError:
                log.warning("worker %d: a replaced %s did not drain in time; closing it", self.index, name)
            _guarded(name, "close", app.close)
            self.retiring.pop(app, None)
        except asyncio.CancelledError:
            raise  # the worker is stopping: _shutdown drains it with the rest

    def _handover(self, txn: int) -> None:
        keys: list[str] = []
        fds: list[int] = []
        for key, entry in self.entries.items():
            if entry.sock.family != socket.AF_UNIX and entry.sock.fileno() >= 0:
                keys.append(key)
                fds.append(entry.sock.fileno())
        self._send({"op": "sockets", "id": txn, "keys": keys}, fds)

    # -- asking the supervisor (the admin endpoint) ---------------------------------------

    async def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        self._next_request += 1
        req = self._next_request
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.requests[req] = fut
        self._send({"op": op, "req": req, **fields})
        try:
            return await fut
        finally:
            self.requests.pop(req, None)


async def request_reload(reason: str = "admin request") -> dict[str, Any]:
    """Ask the supervisor to reload its config file and wait for the outcome.

    For code running in a worker (the admin endpoint's ``POST /reload``). Returns the
    reload result as the supervisor records it: ``{"id", "ok", "trigger", "error",
    "changes", "needs_restart", "finished"}`` (``error`` names the key path of a bad
    config). A reload already running answers all requests made meanwhile with the
    next one's result. Raises RuntimeError outside a worker. Cancelling only stops
    waiting; the reload goes on.
    """
    worker = _current
    if worker is None:
        raise RuntimeError("request_reload() needs a running monolake worker")
    return await worker.ask("reload", reason=reason)


async def reload_status() -> dict[str, Any]:
    """The last reload's result (``{}`` if none ran yet), as ``request_reload`` returns it.

    Raises RuntimeError outside a worker.
    """
    worker = _current
    if worker is None:
        raise RuntimeError("reload_status() needs a running monolake worker")
    return await worker.ask("status")


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
