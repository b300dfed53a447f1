"""core._resume.Resume: a coroutine started inline goes on in the task that awaits it."""

from __future__ import annotations

import asyncio

import pytest

from monolake.core._resume import Resume


async def _handler(log: list[str], gate: asyncio.Event) -> str:
    log.append("started")
    await gate.wait()
    log.append("resumed")
    return "answer"


def test_the_rest_runs_in_the_task_and_returns_its_value() -> None:
    async def main() -> None:
        log: list[str] = []
        gate = asyncio.Event()
        coro = _handler(log, gate)
        first = coro.send(None)  # inline, up to its first wait: no task yet
        assert log == ["started"]
        task = asyncio.ensure_future(Resume(coro, first))
        await asyncio.sleep(0)
        gate.set()
        assert await task == "answer"
        assert log == ["started", "resumed"]

    asyncio.run(main())


def test_a_cancel_reaches_the_coroutine_where_it_waits() -> None:
    async def main() -> None:
        seen: list[str] = []

        async def handler() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        coro = handler()
        task = asyncio.ensure_future(Resume(coro, coro.send(None)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["cancelled"]

    asyncio.run(main())
