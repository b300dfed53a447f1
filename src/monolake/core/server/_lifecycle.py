"""What every server app does around its connections: a periodic sweep and a drain signal.

HTTP, L4 and Thrift apps each enforce timeouts with one timer per app (not one per
connection) and let the runtime await "everything finished" during a drain; these two
small pieces are that mechanism, shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Sweeper:
    """Calls ``tick`` every ``interval`` seconds once started, until stopped."""

    __slots__ = ("_handle", "_loop", "interval", "tick")

    def __init__(self, tick: Callable[[], None], interval: float) -> None:
        self.tick = tick
        self.interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle = loop.call_later(self.interval, self._run)

    def _run(self) -> None:
        self.tick()
        if self._loop is not None:
            self._handle = self._loop.call_later(self.interval, self._run)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None


class DrainSignal:
    """Lets ``wait_drained`` sleep until the app says it is done; no future until then."""

    __slots__ = ("_fut",)

    def __init__(self) -> None:
        self._fut: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        self._fut = asyncio.get_running_loop().create_future()
        await self._fut

    def set(self) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)
