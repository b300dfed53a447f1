"""Event loop backends, chosen in exactly one place.

``runtime.loop`` names a backend; ``loop_factory(kind)`` maps it to a callable that
makes a fresh loop, and ``new_event_loop(kind)`` calls it. Everything else in the
project receives a loop and never asks which kind it is, so a new backend is one
entry in ``_BACKENDS`` (an ``io_uring`` loop will plug in there) plus its name in
the config schema's ``LoopKind``.

Backends are imported lazily: the supervisor validates the kind (and that its
library imports) before binding anything, but only workers create loops, so a
loop never exists in a process that forks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..errors import ConfigError

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _uvloop() -> LoopFactory:
    import uvloop

    return uvloop.new_event_loop


def _asyncio() -> LoopFactory:
    # The default selector loop (epoll on Linux), not whatever policy is installed:
    # "asyncio" is the stdlib oracle the other backends are tested against.
    return asyncio.SelectorEventLoop


# kind -> loader returning the factory. Future: "io_uring": _io_uring, from .uring.
_BACKENDS: dict[str, Callable[[], LoopFactory]] = {
    "uvloop": _uvloop,
    "asyncio": _asyncio,
}


def loop_factory(kind: str) -> LoopFactory:
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
        return loader()
    except ImportError as exc:
        raise ConfigError("runtime.loop", f"event loop {kind!r} is not available: {exc}") from None


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """Create a new, not yet running, event loop of ``kind`` ("uvloop" or "asyncio").

    Raises ConfigError for an unknown or unavailable kind.
    """
    return loop_factory(kind)()
