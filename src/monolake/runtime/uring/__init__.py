"""The io_uring event loop backend (``[runtime] loop = "io_uring"`` or ``"auto"``).

``unavailable()`` says why io_uring cannot be used here (the extension was not
built, the kernel is too old, or ``io_uring_setup`` is refused, as seccomp does in
many containers), or None. ``factory()`` returns a loop factory that falls back to
uvloop with a logged warning, never silently and never by crashing the worker.
Setting ``MONOLAKE_URING_FAIL=1`` makes the probe fail as an EPERM from
``io_uring_setup`` would (to exercise the fallback).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable

log = logging.getLogger("monolake.runtime")

FAIL_ENV = "MONOLAKE_URING_FAIL"
MIN_KERNEL = (6, 0)  # multishot recv with provided buffer rings


def _kernel() -> tuple[int, int]:
    parts = os.uname().release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def unavailable() -> str | None:
    """Why io_uring cannot back the loop in this process, or None if it can."""
    if os.environ.get(FAIL_ENV):
        return f"io_uring_setup: {os.strerror(errno.EPERM)} (forced by {FAIL_ENV})"
    try:
        from .._uring import Ring
    except ImportError as exc:
        return f"the _uring extension is not built ({exc}); install liburing-dev and reinstall"
    if _kernel() < MIN_KERNEL:
        return f"kernel {os.uname().release} lacks multishot recv (needs {MIN_KERNEL[0]}.{MIN_KERNEL[1]})"
    try:
        Ring(4, 0, 2, 512).close()
    except OSError as exc:
        return f"io_uring_setup: {exc.strerror or exc}"
    return None


_said: tuple[int, str] | None = None
"""(pid, reason) of the last fallback warning: a worker forked after its supervisor said the
same thing does not repeat it, so a start logs it once (a process asking again does)."""


def factory(
    entries: int = 256, sqpoll_idle_ms: int = 0, fallback: str = "uvloop"
) -> Callable[[], asyncio.AbstractEventLoop]:
    """A loop factory: an io_uring loop, or uvloop with a warning naming the reason."""
    global _said
    reason = unavailable()
    if reason is not None:
        if _said is None or _said[1] != reason or _said[0] == os.getpid():
            log.warning("io_uring unavailable, using %s instead: %s", fallback, reason)
            _said = (os.getpid(), reason)
        return _fallback(fallback)

    def make() -> asyncio.AbstractEventLoop:
        from ._loop import UringEventLoop

        try:
            return UringEventLoop(entries=entries, sqpoll_idle_ms=sqpoll_idle_ms)
        except OSError as exc:
            log.warning("io_uring ring setup failed, using %s instead: %s", fallback, exc)
            return _fallback(fallback)()

    return make


def _fallback(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.SelectorEventLoop
