"""Event loop backends, chosen in exactly one place.

``runtime.loop`` names a backend; ``loop_factory(kind)`` maps it to a callable that
makes a fresh loop, and ``new_event_loop(kind)`` calls it. Everything else in the
project receives a loop and never asks which kind it is, so a new backend is one
entry in ``_BACKENDS`` (an ``io_uring`` loop will plug in there) plus its name in
the config schema's ``LoopKind``.

``io_uring`` is the completion-based loop in ``uring/``; ``auto`` is io_uring where
the kernel allows it. Either falls back to uvloop with a logged warning naming the
reason when io_uring is unavailable (an operator asking for io_uring in a container
that forbids it gets a working proxy and a loud log line, not a dead one).

Backends are imported lazily: the supervisor validates the kind (and that its
library imports) before binding anything, but only workers create loops, so a
loop never exists in a process that forks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..errors import ConfigError

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class LoopOptions:
    """Backend settings from ``[runtime]`` (only io_uring has any)."""

    __slots__ = ("sqpoll_idle_ms", "uring_entries")

    def __init__(self, uring_entries: int = 256, sqpoll_idle_ms: int = 0) -> None:
        self.uring_entries = uring_entries
        self.sqpoll_idle_ms = sqpoll_idle_ms


def _uvloop(_: LoopOptions) -> LoopFactory:
    import uvloop

    return uvloop.new_event_loop


def _asyncio(_: LoopOptions) -> LoopFactory:
    # The default selector loop (epoll on Linux), not whatever policy is installed:
    # "asyncio" is the stdlib oracle the other backends are tested against.
    return asyncio.SelectorEventLoop


def _io_uring(opts: LoopOptions) -> LoopFactory:
    from . import uring

    return uring.factory(opts.uring_entries, opts.sqpoll_idle_ms)


# kind -> loader returning the factory ("auto" is io_uring with its fallback).
_BACKENDS: dict[str, Callable[[LoopOptions], LoopFactory]] = {
    "uvloop": _uvloop,
    "asyncio": _asyncio,
    "io_uring": _io_uring,
    "auto": _io_uring,
}


def loop_factory(kind: str, options: LoopOptions | None = None) -> LoopFactory:
    """Return the callable that creates a loop of ``kind``.

    Raises ConfigError (key ``runtime.loop``) for an unknown kind or a backend whose
    library cannot be imported.
    """
    try:
        loader = _BACKENDS[kind]
    except KeyError:
        known = ", ".join(sorted(_BACKENDS))
        raise ConfigError("runtime.loop", f"unknown event loop {kind!r} (known: {known})") from None
    try:
        return loader(options or LoopOptions())
    except ImportError as exc:
        raise ConfigError("runtime.loop", f"event loop {kind!r} is not available: {exc}") from None


def new_event_loop(kind: str, options: LoopOptions | None = None) -> asyncio.AbstractEventLoop:
    """Create a new, not yet running, event loop of ``kind`` (see ``LoopKind``).

    Raises ConfigError for an unknown or unavailable kind; io_uring and auto fall
    back to uvloop with a warning instead.
    """
    return loop_factory(kind, options)()


def loop_kind(loop: asyncio.AbstractEventLoop) -> str:
    """The kind of a running loop ("io_uring", "uvloop", "asyncio"; else its class name):
    what serves, which after a fallback is not the kind asked for."""
    module = type(loop).__module__
    if module.startswith(__package__ + ".uring"):
        return "io_uring"
    if module.split(".")[0] == "uvloop":
        return "uvloop"
    if isinstance(loop, asyncio.SelectorEventLoop):
        return "asyncio"
    return type(loop).__name__
