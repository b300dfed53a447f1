"""User filters: Pingora-style phases as methods, plain or ``async def``.

An HTTP filter is a class with any of these methods:

- ``request_filter(req, ctx) -> Response | None``: before routing; return a
  Response to answer directly (auth, redirects, rate limits).
- ``upstream_request_filter(req, ctx) -> None``: after routing and rewrites, before
  the request goes upstream; ``ctx.route`` is set.
- ``response_filter(resp, ctx) -> None``: on the upstream's response head.
- ``logging(req, resp, ctx) -> None``: once the response was written.

A ``tcp`` server's filters (``TcpFilter``) have ``on_connect(peer, ctx)`` and
``on_close(ctx, stats)``; a ``thrift`` server's (``ThriftFilter``) ``call_filter(call,
ctx)`` and ``call_done(call, outcome, ctx)``.

Any phase may be ``async def`` (to call an auth service, a rate-limit store...).
Whether it is, is read once at build time (``inspect.iscoroutinefunction``): a phase
whose filters are all plain keeps the plain loop, one call per filter and no await;
only a phase with an async filter takes the awaiting variant (sync filters in it are
still plain calls, in config order).

A phase that usually has its answer at hand and only sometimes waits (keys cached,
fetched now and then) is a plain ``def`` marked ``@may_await``: it returns its result
directly, or an awaitable when it has to wait, and the caller awaits only what it is
given. A ``request_filter`` marked so stays in the plain loop (its result was tested for
None already: a plain phase costs what it did); in the other phases it runs with the
awaiting variant, awaited only when it returns an awaitable. Phases that run after the fact (``logging``,
``on_close``, ``call_done``) never delay anything: their async filters run as tasks,
at most ``BACKGROUND_LIMIT`` at once per server (more are dropped and counted, and a
failure is logged).

Only the methods a filter overrides are called. Filters are named in config as
``"module:Class"`` (or a table with ``use`` and ``args``, passed to the constructor
as keyword arguments), or by a built-in's name (``"cors"``: ``apps/edge``); the module
is looked up in the config file's directory first, then on ``sys.path`` (the working
directory last). Each phase's shape is checked when
the filter is loaded: how many positional arguments it takes, that it is callable
and not a generator; a wrong one is a ConfigError naming ``servers.NAME.filters[i]``,
the class and the phase (so ``monolake check`` and a reload refuse it).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from types import ModuleType
from typing import Any, TypeVar

from ...core.errors import ConfigError, MonolakeError
from ...core.proto.http1 import Request, Response
from ...core.service import Context, Layer
from ..config import FilterSpec
from ..edge import is_builtin, make_builtin

log = logging.getLogger("monolake.filters")


class HttpFilter:
    """Base class for HTTP filters; override the phases you need (``def`` or ``async def``)."""

    def request_filter(self, req: Request, ctx: Context) -> Response | Awaitable[Response | None] | None:
        return None

    def upstream_request_filter(self, req: Request, ctx: Context) -> Awaitable[None] | None:
        return None

    def response_filter(self, resp: Response, ctx: Context) -> Awaitable[None] | None:
        return None

    def logging(self, req: Request, resp: Response, ctx: Context) -> Awaitable[None] | None:
        return None


class TcpFilter:
    """Base class for a ``proxy_type = "tcp"`` server's connection filters.

    ``on_connect(peer, ctx)``: a client connected (``peer`` is its IP, from the PROXY
    header when there is one; ``ctx`` a ``Context`` kept for the connection). Return
    False to close it before anything is connected upstream. Raising closes it too.
    ``on_close(ctx, stats)``: the connection ended; ``stats`` is a ``ConnectionStats``
    (bytes each way, duration, endpoint, outcome).
    """

    def on_connect(self, peer: str, ctx: Context) -> bool | Awaitable[bool | None] | None:
        return None

    def on_close(self, ctx: Context, stats: Any) -> Awaitable[None] | None:
        return None


class ThriftFilter:
    """Base class for a ``proxy_type = "thrift"`` server's call filters.

    ``call_filter(call, ctx)``: before a call is routed; ``call`` is a ``ThriftCall``
    (service, method, seq_id, headers, oneway). Raise ``RefuseCall`` (or anything) to
    answer it with a TApplicationException instead of forwarding it.
    ``call_done(call, outcome, ctx)``: the call ended; outcome is "ok", "exception"
    (the upstream's), "error" (ours: connect, timeout...), "no_route", "refused" or
    "oneway".
    """

    def call_filter(self, call: Any, ctx: Context) -> Awaitable[None] | None:
        return None

    def call_done(self, call: Any, outcome: str, ctx: Context) -> Awaitable[None] | None:
        return None


PHASES = ("request_filter", "upstream_request_filter", "response_filter", "logging")
"""The HTTP phases, in the order a request meets them."""

SHAPES: dict[str, tuple[type, dict[str, tuple[str, ...]]]] = {
    "http": (
        HttpFilter,
        {
            "request_filter": ("req", "ctx"),
            "upstream_request_filter": ("req", "ctx"),
            "response_filter": ("resp", "ctx"),
            "logging": ("req", "resp", "ctx"),
        },
    ),
    "tcp": (TcpFilter, {"on_connect": ("peer", "ctx"), "on_close": ("ctx", "stats")}),
    "thrift": (ThriftFilter, {"call_filter": ("call", "ctx"), "call_done": ("call", "outcome", "ctx")}),
}
"""Per server kind: the base class, and each phase's positional parameters."""

BACKGROUND_LIMIT = 1024
"""Async after-the-fact phase calls (logging, on_close, call_done) running at once per server."""


class FilterError(MonolakeError):
    """A filter failed, or the request's deadline passed while an async filter ran.

    Not an upstream error: it is answered 500 (a filter is the proxy's own code) and
    logged naming the filter."""


def filter_name(obj: object, phase: str) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}.{phase}"


def _overrides(obj: object, base: type, phase: str) -> bool:
    method = getattr(type(obj), phase, None)
    if method is None:
        return phase in getattr(obj, "__dict__", {})  # set on the instance
    return method is not getattr(base, phase, None)


PLAIN, ASYNC, MAYBE = 0, 1, 2
"""What calling a phase gives: its result; an awaitable (``async def``); either (``@may_await``)."""

_MAY_AWAIT = "_monolake_may_await"

F = TypeVar("F", bound=Callable[..., Any])


def may_await(method: F) -> F:
    """Mark a plain ``def`` phase that returns its result directly, or an awaitable when it has to
    wait (a fetch, a store): the proxy awaits only when it gets an awaitable, so the common case
    costs a call, with no coroutine. A ``request_filter``'s direct result is a ``Response`` or None,
    any other phase's None; the awaitable's result is what the direct one would be. An awaited one
    runs under the server's ``request_timeout`` like an ``async def`` phase."""
    setattr(method, _MAY_AWAIT, True)
    return method


def call_kind(call: Callable[..., Any]) -> int:
    """PLAIN, ASYNC or MAYBE (a ``@may_await`` method), read once at build time."""
    if _is_async(call):
        return ASYNC
    return MAYBE if getattr(call, _MAY_AWAIT, False) is True else PLAIN


def pending(result: object) -> bool:
    """Whether a MAYBE call's result is an awaitable to wait for (not its direct result)."""
    return result is not None and result is not True and result is not False and inspect.isawaitable(result)


def _is_async(call: Callable[..., Any]) -> bool:
    """Whether calling ``call`` gives an awaitable: an ``async def`` (a method, a callable object's
    ``__call__``, or one under a ``functools.wraps`` decorator, which ``iscoroutinefunction`` of
    Python 3.11 does not look through)."""
    if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__):
        return True
    func = getattr(call, "__func__", call)
    return func is not inspect.unwrap(func) and inspect.iscoroutinefunction(inspect.unwrap(func))


Call = tuple[Callable[..., Any], int, str]
"""A phase's filter: (bound method, PLAIN/ASYNC/MAYBE, "module:Class.phase")."""


def phase_calls(filters: Sequence[object], kind: str, phase: str) -> tuple[Call, ...]:
    base = SHAPES[kind][0]
    return tuple(
        (getattr(f, phase), call_kind(getattr(f, phase)), filter_name(f, phase))
        for f in filters
        if _overrides(f, base, phase)
    )


class Phases:
    """The bound methods to call in each HTTP phase, in config order.

    ``awaits[phase]`` is None when the caller keeps its plain loop: every filter of the
    phase is plain, or (``request_filter``) plain or ``@may_await``, whose awaitable the
    plain loop awaits when it gets one. Else it says what each filter's call gives (PLAIN,
    ASYNC, MAYBE). ``names[phase]`` are the filters' "module:Class.phase" names, for
    errors and logs.
    """

    __slots__ = (*PHASES, "awaits", "names")

    def __init__(self, filters: Sequence[object]) -> None:
        self.awaits: dict[str, tuple[int, ...] | None] = {}
        self.names: dict[str, tuple[str, ...]] = {}
        for phase in PHASES:
            calls = phase_calls(filters, "http", phase)
            setattr(self, phase, tuple(c for c, _, _ in calls))
            kinds = tuple(k for _, k, _ in calls)
            plain_loop = ASYNC not in kinds and (phase == "request_filter" or MAYBE not in kinds)
            self.awaits[phase] = None if plain_loop else kinds
            self.names[phase] = tuple(n for _, _, n in calls)

    request_filter: tuple[Callable[[Request, Context], Any], ...]
    upstream_request_filter: tuple[Callable[[Request, Context], Any], ...]
    response_filter: tuple[Callable[[Response, Context], Any], ...]
    logging: tuple[Callable[[Request, Response, Context], Any], ...]

    def mixed(self, phase: str) -> tuple[Call, ...]:
        """The phase as (call, kind, name) triples when it needs the awaiting variant, else ()."""
        flags = self.awaits[phase]
        if flags is None:
            return ()
        return tuple(zip(getattr(self, phase), flags, self.names[phase], strict=True))


class Background:
    """Runs after-the-fact async phases as tasks, bounded; a failure is one log line.

    ``start`` never waits: at ``limit`` tasks already running, the call is dropped
    (its coroutine closed unrun) and counted in ``dropped``.
    """

    __slots__ = ("dropped", "limit", "server", "tasks")

    def __init__(self, server: str, limit: int = BACKGROUND_LIMIT) -> None:
        self.server = server
        self.limit = limit
        self.tasks: dict[asyncio.Task[Any], str] = {}
        self.dropped = 0

    def start(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        if len(self.tasks) >= self.limit:
            coro.close()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "servers.%s: %d async filter calls running, %s dropped (%d so far)",
                    self.server,
                    self.limit,
                    name,
                    self.dropped,
                )
            return
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks[task] = name
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        name = self.tasks.pop(task, "?")
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("servers.%s: %s failed: %s: %s", self.server, name, type(exc).__name__, exc, exc_info=exc)

    def run(self, calls: tuple[Call, ...], *args: Any) -> None:
        """Call every filter of an after-the-fact phase: plain ones now (a failure is logged and
        the next one still runs), the awaitables async (and ``@may_await``) ones give as tasks."""
        for f, kind, name in calls:
            try:
                r = f(*args)
            except Exception as exc:
                log.error("servers.%s: %s failed: %s: %s", self.server, name, type(exc).__name__, exc, exc_info=exc)
                continue
            if kind and r is not None:
                self.start(r, name)


class TcpPhases:
    """A tcp server's filters as the L4 driver's ``ConnectionHooks``."""

    __slots__ = ("background", "on_close", "on_connect", "server")

    def __init__(self, server: str, filters: Sequence[object]) -> None:
        self.server = server
        self.on_connect = phase_calls(filters, "tcp", "on_connect")
        self.on_close = phase_calls(filters, "tcp", "on_close")
        self.background = Background(server)

    async def allow(self, peer: str, ctx: Context) -> bool:
        """False when a filter said False or raised (logged: a broken filter fails closed)."""
        for f, kind, name in self.on_connect:
            try:
                verdict = f(peer, ctx)
                if kind == ASYNC or (kind and pending(verdict)):
                    verdict = await verdict
            except Exception as exc:
                log.error(
                    "servers.%s: %s failed, closing client %s: %s: %s",
                    self.server,
                    name,
                    peer,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
                return False
            if verdict is False:
                log.info("servers.%s: %s refused client %s", self.server, name, peer)
                return False
        return True

    def closed(self, ctx: Context, stats: Any) -> None:
        if self.on_close:
            self.background.run(self.on_close, ctx, stats)


class RefuseCall(Exception):
    """Raised by a ``call_filter``: answer the call with a TApplicationException carrying
    ``message`` and ``kind`` (a ``TApplicationException`` type code; default 0, UNKNOWN)."""

    def __init__(self, message: str, kind: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


class ThriftPhases:
    """A thrift server's filters, as the thrift proxy calls them."""

    __slots__ = ("awaits", "background", "call_done", "call_filter", "server", "timeout")

    def __init__(self, server: str, filters: Sequence[object], timeout: float | None = None) -> None:
        self.server = server
        self.call_filter = phase_calls(filters, "thrift", "call_filter")
        self.call_done = phase_calls(filters, "thrift", "call_done")
        self.awaits = any(k for _, k, _ in self.call_filter)
        """Some call_filter is async (or ``@may_await``): calls wait for it in a task."""
        self.timeout = timeout
        """Seconds async call filters may take (the server's request_timeout); None: unbounded."""
        self.background = Background(server)

    def check(self, call: Any, ctx: Context) -> None:
        """Run plain call filters; raises what a filter raises."""
        for f, _, _ in self.call_filter:
            f(call, ctx)

    async def check_async(self, call: Any, ctx: Context) -> None:
        """Run the call filters, awaiting the async ones; raises what a filter raises (TimeoutError
        past ``timeout``)."""
        if self.timeout is None:
            for f, kind, _ in self.call_filter:
                r = f(call, ctx)
                if kind and r is not None:
                    await r
            return
        async with asyncio.timeout(self.timeout):
            for f, kind, _ in self.call_filter:
                r = f(call, ctx)
                if kind and r is not None:
                    await r

    def done(self, call: Any, outcome: str, ctx: Context) -> None:
        if self.call_done:
            self.background.run(self.call_done, call, outcome, ctx)


# -- loading --------------------------------------------------------------------------


def make_importable(base_dir: str | None) -> None:
    """Put ``base_dir`` (the config file's directory) first on ``sys.path``, and the working
    directory last (where filter modules were looked up before, kept as the fallback)."""
    changed = False
    if base_dir is not None:
        d = os.path.abspath(base_dir)
        if sys.path[:1] != [d]:
            if d in sys.path:
                sys.path.remove(d)
            sys.path.insert(0, d)
            changed = True
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
        changed = True
    if changed:
        importlib.invalidate_caches()


def load_object(spec: str, where: str, modules: Mapping[str, ModuleType] | None = None) -> Any:
    """The object ``module:attr`` names (``attr`` may be dotted); ``modules`` overrides the import of
    the modules it names (a reload's new versions). Raises ConfigError naming ``where``."""
    module_name, _, attr = spec.partition(":")
    try:
        fresh = modules.get(module_name) if modules else None
        module = fresh if fresh is not None else importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(where, f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(where, f"module {module_name!r} has no attribute {attr!r}")
    return obj


def _instantiate(
    spec: str | FilterSpec, where: str, modules: Mapping[str, ModuleType] | None, kind: str = "http"
) -> tuple[str, object]:
    use, args = (spec, {}) if isinstance(spec, str) else (spec.use, dict(spec.args))
    if is_builtin(use):  # a built-in edge filter ("cors", ...): its args are checked against its settings
        return use, make_builtin(use, args, where, kind)
    cls = load_object(use, where, modules)
    try:
        obj = cls(**args)
    except Exception as exc:
        raise ConfigError(where, f"{use}({args}) failed: {type(exc).__name__}: {exc}") from None
    return use, obj


def _plural(n: int) -> str:
    return f"{n} positional argument" + ("" if n == 1 else "s")


def check_shape(obj: object, kind: str, use: str, where: str) -> None:
    """Raise ConfigError unless every phase ``obj`` defines for a ``kind`` server has the right shape."""
    base, shapes = SHAPES[kind]
    found = False
    for phase, params in shapes.items():
        if not _overrides(obj, base, phase):
            continue
        found = True
        method = getattr(obj, phase)
        what = f"`{use}.{phase}`"
        wants = f"a {phase} takes ({', '.join(params)})"
        if not callable(method):
            raise ConfigError(where, f"{what} is a {type(method).__name__}, not a method; {wants}")
        if inspect.isasyncgenfunction(method) or inspect.isgeneratorfunction(method):
            kind_of = "an async generator" if inspect.isasyncgenfunction(method) else "a generator"
            raise ConfigError(where, f"{what} is {kind_of} (it yields); a phase is a def or an async def")
        try:
            sig = inspect.signature(method)
        except (TypeError, ValueError):
            continue  # a builtin without a signature: its calls will tell
        try:
            sig.bind(*params)
        except TypeError:
            ps = sig.parameters.values()
            n = sum(1 for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
            raise ConfigError(where, f"{what} takes {_plural(n)}, {wants}") from None
    if not found and not isinstance(obj, base):  # a bare HttpFilter is a no-op, not a mistake
        names = ", ".join(shapes)
        others = [k for k, (b, s) in SHAPES.items() if k != kind and any(_overrides(obj, b, p) for p in s)]
        hint = f" (it has {others[0]} phases: it is for a proxy_type = {others[0]!r} server)" if others else ""
        raise ConfigError(where, f"{use} defines none of the {kind} filter phases {names}{hint}")


def load_filters(
    specs: Sequence[str | FilterSpec],
    path: str,
    *,
    modules: Mapping[str, ModuleType] | None = None,
    kind: str = "http",
    base_dir: str | None = None,
) -> list[object]:
    """Import, instantiate and shape-check a ``kind`` server's filters. Raises ConfigError naming ``path[i]``.

    Modules resolve in ``base_dir`` (the config file's directory) first, then on
    ``sys.path``, then in the working directory. ``modules`` overrides the import for
    the modules it names (a reload's freshly loaded versions, see ``_builder.py``).
    """
    if specs:
        make_importable(base_dir)
    out: list[object] = []
    for i, spec in enumerate(specs):
        where = f"{path}[{i}]"
        use, obj = _instantiate(spec, where, modules, kind)
        check_shape(obj, kind, use, where)
        out.append(obj)
    return out


def load_layers(
    specs: Sequence[str | FilterSpec],
    path: str,
    *,
    modules: Mapping[str, ModuleType] | None = None,
    base_dir: str | None = None,
) -> list[Layer[Request, Response]]:
    """Import and instantiate ``layers`` entries (``"module:Factory"``: a Layer subclass, or a
    callable returning a Layer). Raises ConfigError naming ``path[i]``."""
    if specs:
        make_importable(base_dir)
    out: list[Layer[Request, Response]] = []
    for i, spec in enumerate(specs):
        where = f"{path}[{i}]"
        use, obj = _instantiate(spec, where, modules)
        if not isinstance(obj, Layer):
            raise ConfigError(
                where,
                f"{use} made a {type(obj).__name__}, not a monolake.core.service.Layer "
                "(a class with layer(inner) -> service)",
            )
        out.append(obj)
    return out
