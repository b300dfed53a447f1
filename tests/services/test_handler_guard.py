"""HandlerGuard and streamed bodies against scripted inner services (no sockets)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from monolake import Body, Headers, Request, Response, sse_event, stream_body
from monolake.errors import MonolakeError, Overloaded, ReadTimeout, Source
from monolake.server._service_app import HandlerGuard
from monolake.service.layers import TimeoutLayer


def request(path: bytes = b"/") -> Request:
    return Request(b"GET", path, Headers())


class Scripted:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    async def __call__(self, req: Request) -> Response:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        if self.outcome == "sleep":
            await asyncio.sleep(3600)
        return self.outcome  # type: ignore[no-any-return]


async def test_an_exception_is_a_500_naming_server_and_handler(caplog: pytest.LogCaptureFixture) -> None:
    guard = HandlerGuard(Scripted(KeyError("boom")), "web", "app:Factory")
    with caplog.at_level(logging.ERROR, "monolake.handler"):
        resp = await guard(request(b"/x"))
    assert resp.status == 500
    (rec,) = caplog.records
    assert "server=web handler=app:Factory failed: KeyError" in rec.getMessage()
    assert "upstream" not in rec.getMessage()


async def test_own_deadline_is_a_503_handler_timed_out(caplog: pytest.LogCaptureFixture) -> None:
    guard = HandlerGuard(Scripted("sleep"), "web", "app:Factory", timeout=0.05)
    with caplog.at_level(logging.WARNING, "monolake.handler"):
        resp = await guard(request())
    assert resp.status == 503
    assert "handler timed out" in caplog.records[0].getMessage()


async def test_a_timeout_layer_in_the_handlers_chain_is_a_503_not_a_504(caplog: pytest.LogCaptureFixture) -> None:
    chain = TimeoutLayer(0.05).layer(Scripted("sleep"))
    with caplog.at_level(logging.WARNING, "monolake.handler"):
        resp = await HandlerGuard(chain, "web", "h")(request())
    assert resp.status == 503
    assert "handler timed out (request timeout of 0.05s exceeded)" in caplog.records[0].getMessage()


async def test_a_timeout_error_of_the_handler_itself_is_a_500() -> None:
    guard = HandlerGuard(Scripted(TimeoutError("its own")), "web", "h", timeout=30)
    assert (await guard(request())).status == 500


@pytest.mark.parametrize("exc", [Overloaded("shed"), ReadTimeout("upstream read")])
async def test_monolake_errors_go_to_the_driver(exc: Exception) -> None:
    # The driver answers them as the proxy's: 503 for Overloaded, 504 for an upstream the
    # handler called timing out (that one is an upstream's failure).
    with pytest.raises(type(exc)):
        await HandlerGuard(Scripted(exc), "web", "h")(request())


@pytest.mark.parametrize("body", [object(), 42, ["a"]])
async def test_a_body_of_the_wrong_type_is_a_500(body: object) -> None:
    resp = await HandlerGuard(Scripted(Response(200, body=body)), "web", "h")(request())
    assert resp.status == 500


async def test_not_a_response_is_a_500() -> None:
    assert (await HandlerGuard(Scripted("text"), "web", "h")(request())).status == 500


async def test_str_body_is_encoded() -> None:
    resp = await HandlerGuard(Scripted(Response(200, body="héllo")), "web", "h")(request())
    assert resp.body == "héllo".encode() and resp.content_length == len(resp.body)


async def test_async_iterator_body_becomes_a_streamed_body() -> None:
    async def gen() -> AsyncIterator[bytes]:
        yield b"a"
        yield "b"  # type: ignore[misc]
        yield b""
        yield b"c"

    resp = await HandlerGuard(Scripted(Response(200, body=gen())), "web", "h")(request())
    assert isinstance(resp.body, Body) and resp.content_length is None
    assert await resp.body.read_all() == b"abc"


class Recording:
    def __init__(self) -> None:
        self.produced = 0
        self.closed = False

    async def gen(self) -> AsyncIterator[bytes]:
        try:
            while True:
                self.produced += 1
                yield b"x" * 1000
        finally:
            self.closed = True


class PausingSink:
    """Pauses its body after every ``every`` chunks, as a full transport does."""

    def __init__(self, body: Body, every: int) -> None:
        self.body = body
        self.every = every
        self.got = 0
        self.ended = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.got += 1
        if self.got % self.every == 0:
            self.body.pause()

    def end(self) -> None:
        self.ended.set()

    def abort(self, exc: BaseException) -> None:
        self.ended.set()


async def test_the_iterator_is_not_advanced_while_paused_and_cancel_closes_it() -> None:
    rec = Recording()
    body = stream_body(rec.gen())
    sink = PausingSink(body, 5)
    body.pipe(sink)
    for _ in range(20):  # the producer runs until the sink pauses it, then waits
        await asyncio.sleep(0)
    assert rec.produced == 5 and sink.got == 5
    body.resume()
    for _ in range(20):
        await asyncio.sleep(0)
    assert rec.produced == 10
    body.cancel()  # the client went away
    for _ in range(5):
        await asyncio.sleep(0)
    assert rec.closed


async def test_a_failing_iterator_fails_the_body(caplog: pytest.LogCaptureFixture) -> None:
    async def gen() -> AsyncIterator[bytes]:
        yield b"a"
        raise ValueError("mid-stream")

    body = stream_body(gen(), "server=web handler=h")
    with caplog.at_level(logging.ERROR, "monolake.handler"), pytest.raises(MonolakeError) as info:
        await body.read_all()
    assert "server=web handler=h: response body failed mid-stream: ValueError" in caplog.text
    assert info.value.source is Source.INTERNAL and isinstance(info.value.__cause__, ValueError)


def test_sse_event_framing() -> None:
    assert sse_event("a\nb", event="tick", id="7") == b"event: tick\nid: 7\ndata: a\ndata: b\n\n"
