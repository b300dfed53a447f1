"""Timeout, ConcurrencyLimit and CatchPanic against a scripted mock inner service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from monolake.errors import ConfigError, DeadlineExceeded, MonolakeError, ProtocolError, ReadError, Source
from monolake.errors import TimeoutError as MonolakeTimeout
from monolake.server import status_for
from monolake.service.layers import (
    CatchPanic,
    CatchPanicLayer,
    ConcurrencyLimit,
    ConcurrencyLimitLayer,
    Timeout,
    TimeoutLayer,
)


class Mock:
    """A scripted inner service: each call runs the next step (a coroutine function)."""

    def __init__(self, *steps: Callable[[Any], Awaitable[Any]]) -> None:
        self.steps = list(steps)
        self.calls: list[Any] = []

    async def __call__(self, req: Any) -> Any:
        self.calls.append(req)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        return await step(req)


def answer(value: Any) -> Callable[[Any], Awaitable[Any]]:
    async def step(req: Any) -> Any:
        return value

    return step


def raise_(exc: BaseException) -> Callable[[Any], Awaitable[Any]]:
    async def step(req: Any) -> Any:
        raise exc

    return step


def wait_for(event: asyncio.Event, value: Any = "late") -> Callable[[Any], Awaitable[Any]]:
    async def step(req: Any) -> Any:
        await event.wait()
        return value

    return step


# --- Timeout ------------------------------------------------------------------------


async def test_timeout_passes_fast_answers() -> None:
    svc = TimeoutLayer(5).layer(Mock(answer("ok")))
    assert isinstance(svc, Timeout)
    assert await svc("r") == "ok"


async def test_timeout_raises_monolake_timeout_on_a_slow_inner() -> None:
    never = asyncio.Event()
    inner = Mock(wait_for(never))
    svc = Timeout(inner, 0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(MonolakeTimeout) as info:
        await svc("r")
    assert 0.04 <= loop.time() - t0 < 2
    assert isinstance(info.value, MonolakeError)
    assert not isinstance(info.value, TimeoutError)  # not the builtin: callers catch monolake's tree
    assert "0.05s" in str(info.value)
    assert inner.calls == ["r"]


async def test_timeout_passes_inner_errors_through() -> None:
    svc = Timeout(Mock(raise_(ReadError("boom"))), 5)
    with pytest.raises(ReadError, match="boom"):
        await svc("r")


async def test_timeout_does_not_swallow_outer_cancellation() -> None:
    never = asyncio.Event()
    svc = Timeout(Mock(wait_for(never)), 10)
    task = asyncio.create_task(svc("r"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_timeout_deadline_is_per_call() -> None:
    gate = asyncio.Event()
    svc = Timeout(Mock(wait_for(gate), answer("fast")), 0.05)
    with pytest.raises(MonolakeTimeout):
        await svc(1)
    assert await svc(2) == "fast"


async def test_timeout_is_the_services_own_deadline_not_an_upstreams() -> None:
    svc = TimeoutLayer(0.05).layer(Mock(wait_for(asyncio.Event())))
    with pytest.raises(DeadlineExceeded) as info:
        await svc("r")
    assert info.value.source is Source.INTERNAL
    assert "timed out" in str(info.value) and "0.05s" in str(info.value)
    assert status_for(info.value) == 503


async def test_gateway_timeout_is_the_upstreams() -> None:
    svc = TimeoutLayer(0.05, gateway=True).layer(Mock(wait_for(asyncio.Event())))
    with pytest.raises(DeadlineExceeded) as info:
        await svc("r")
    assert info.value.source is Source.UPSTREAM
    assert status_for(info.value) == 504


async def test_a_builtin_timeout_inside_the_service_is_not_the_layers() -> None:
    async def own(req: Any) -> Any:
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()

    svc = TimeoutLayer(5).layer(Mock(own))
    with pytest.raises(TimeoutError) as info:  # the builtin, as the inner service raised it
        await svc("r")
    assert not isinstance(info.value, DeadlineExceeded)


@pytest.mark.parametrize("seconds", [0, -1])
def test_timeout_layer_rejects_nonpositive(seconds: float) -> None:
    with pytest.raises(ValueError, match="> 0"):
        TimeoutLayer(seconds)


# --- ConcurrencyLimit ---------------------------------------------------------------


async def test_limit_sheds_at_the_limit_and_recovers() -> None:
    release = [asyncio.Event(), asyncio.Event()]
    inner = Mock(wait_for(release[0], "a"), wait_for(release[1], "b"), answer("c"))
    shed: list[Any] = []

    def on_shed(req: Any) -> str:
        shed.append(req)
        return "503"

    svc = ConcurrencyLimitLayer(2, on_shed).layer(inner)
    assert isinstance(svc, ConcurrencyLimit)
    t1 = asyncio.create_task(svc(1))
    t2 = asyncio.create_task(svc(2))
    await asyncio.sleep(0)
    assert svc.in_flight == 2

    assert await svc(3) == "503"  # answered at once, inner never called
    assert await svc(4) == "503"
    assert shed == [3, 4] and svc.shed == 2
    assert inner.calls == [1, 2]

    release[0].set()
    assert await t1 == "a"
    assert svc.in_flight == 1
    assert await svc(5) == "c"  # room again
    assert svc.shed == 2

    release[1].set()
    assert await t2 == "b"
    assert svc.in_flight == 0


async def test_limit_frees_the_slot_when_inner_fails() -> None:
    svc = ConcurrencyLimit(Mock(raise_(RuntimeError("x")), answer("ok")), 1, lambda r: "503")
    with pytest.raises(RuntimeError):
        await svc(1)
    assert svc.in_flight == 0
    assert await svc(2) == "ok"


async def test_limit_frees_the_slot_on_cancellation() -> None:
    never = asyncio.Event()
    svc = ConcurrencyLimit(Mock(wait_for(never)), 1, lambda r: "503")
    task = asyncio.create_task(svc(1))
    await asyncio.sleep(0)
    assert svc.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert svc.in_flight == 0


async def test_limit_logs_sheds(caplog: pytest.LogCaptureFixture) -> None:
    never = asyncio.Event()
    svc = ConcurrencyLimit(Mock(wait_for(never)), 1, lambda r: "503")
    task = asyncio.create_task(svc(1))
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="monolake.limit"):
        await svc(2)
    assert any("load shed" in r.getMessage() for r in caplog.records)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_layer_rejects_nonpositive(limit: int) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        ConcurrencyLimitLayer(limit, lambda r: None)


# --- CatchPanic ---------------------------------------------------------------------


async def test_panic_becomes_the_on_panic_answer_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[Any, BaseException]] = []

    def on_panic(req: Any, exc: BaseException) -> str:
        seen.append((req, exc))
        return "500"

    boom = KeyError("filter bug")
    svc = CatchPanicLayer(on_panic).layer(Mock(raise_(boom)))
    assert isinstance(svc, CatchPanic)
    with caplog.at_level(logging.ERROR, logger="monolake.panic"):
        assert await svc("the-request") == "500"
    assert seen == [("the-request", boom)]
    [record] = [r for r in caplog.records if r.name == "monolake.panic"]
    assert record.levelno == logging.ERROR
    assert "KeyError" in record.getMessage() and "the-request" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is boom


async def test_panic_passes_answers_through() -> None:
    svc = CatchPanic(Mock(answer("fine")), lambda r, e: "500")
    assert await svc("r") == "fine"


@pytest.mark.parametrize(
    "exc",
    [ProtocolError("bad", status_hint=400), MonolakeTimeout("slow"), ReadError("gone"), ConfigError("a.b", "c")],
)
async def test_monolake_errors_pass_through(exc: MonolakeError, caplog: pytest.LogCaptureFixture) -> None:
    called: list[Any] = []
    svc = CatchPanic(Mock(raise_(exc)), lambda r, e: called.append(e))
    with caplog.at_level(logging.ERROR, logger="monolake.panic"), pytest.raises(type(exc)) as info:
        await svc("r")
    assert info.value is exc
    assert called == []
    assert not [r for r in caplog.records if r.name == "monolake.panic"]


async def test_cancelled_error_from_inner_is_never_swallowed() -> None:
    svc = CatchPanic(Mock(raise_(asyncio.CancelledError())), lambda r, e: "500")
    with pytest.raises(asyncio.CancelledError):
        await svc("r")


async def test_cancelling_the_caller_propagates() -> None:
    never = asyncio.Event()
    svc = CatchPanic(Mock(wait_for(never)), lambda r, e: "500")
    task = asyncio.create_task(svc("r"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3)])
async def test_base_exceptions_are_not_caught(exc: BaseException) -> None:
    svc = CatchPanic(Mock(raise_(exc)), lambda r, e: "500")
    with pytest.raises(type(exc)):
        await svc("r")


# --- composed -----------------------------------------------------------------------


async def test_catch_panic_over_timeout_over_limit() -> None:
    never = asyncio.Event()
    inner = Mock(wait_for(never), raise_(ValueError("bug")), answer("ok"))
    svc = CatchPanic(Timeout(ConcurrencyLimit(inner, 1, lambda r: "503"), 0.05), lambda r, e: "500")
    with pytest.raises(MonolakeTimeout):  # a MonolakeError: passes CatchPanic
        await svc(1)
    assert svc.inner.inner.in_flight == 0  # the timed-out call freed its slot
    assert await svc(2) == "500"
    assert await svc(3) == "ok"


async def test_limit_without_on_shed_raises_overloaded() -> None:
    from monolake.errors import Overloaded
    from monolake.server import Overloaded as ServerOverloaded
    from monolake.server import status_for

    never = asyncio.Event()
    inner = Mock(wait_for(never))
    svc = ConcurrencyLimitLayer(1).layer(inner)
    task = asyncio.create_task(svc(1))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as info:
        await svc(2)
    assert info.value.retry_safe and isinstance(info.value, MonolakeError)
    assert inner.calls == [1] and svc.shed == 1
    assert ServerOverloaded is Overloaded and status_for(info.value) == 503
    # CatchPanic lets it through to the driver, which answers 503.
    with pytest.raises(Overloaded):
        await CatchPanic(svc, lambda r, e: "500")(3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
