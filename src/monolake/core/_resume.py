"""``Resume``: go on with a coroutine that was started inline, inside the task that awaits it.

A server that starts a handler's coroutine in the read itself (``coro.send(None)``) pays no task
and no loop step for a handler that answers at once; only when the coroutine waits does it need a
task, and ``await Resume(coro, first)`` in that task carries it on from where it stopped, as if the
task had started it (what ``eager_start`` tasks do on Python 3.12). ``first`` is what the
coroutine yielded at its first wait (a future, for asyncio): it is handed to the task's driver
first, and cancellation thrown into the task reaches the coroutine where it waits.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any


class Resume:
    """Awaits ``coro``, which already ran up to its first wait (``first``, what it yielded)."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, out = self.coro, self.first
        while True:
            try:
                got = yield out
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancel (or anything thrown in) goes to where it waits
                try:
                    out = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    out = coro.send(got)
                except StopIteration as done:
                    return done.value
