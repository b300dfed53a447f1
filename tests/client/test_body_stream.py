"""Body: buffering with backpressure, read / read_all, pipe, errors, cancel.

``Body`` (src/monolake/core/_body.py) is fed by a connection's parser and consumed by a
filter (read) or another connection (pipe). A fake producer and sink record what
the body asks of them.
"""

from __future__ import annotations

import asyncio

import pytest

from monolake.core._body import HIGH_WATER, Body
from monolake.core.errors import ReadError, UpstreamError


class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_body(self) -> None:
        self.calls.append("pause")

    def resume_body(self) -> None:
        self.calls.append("resume")

    def cancel_body(self) -> None:
        self.calls.append("cancel")


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def write(self, data: bytes) -> None:
        self.events.append(("write", data))

    def end(self) -> None:
        self.events.append(("end", None))

    def abort(self, exc: BaseException) -> None:
        self.events.append(("abort", exc))

    @property
    def data(self) -> bytes:
        return b"".join(d for k, d in self.events if k == "write")  # type: ignore[misc]


def new(length: int | None = None) -> tuple[Body, Producer]:
    p = Producer()
    return Body(p, length), p


# --- buffering and backpressure -----------------------------------------------------


async def test_buffers_below_high_water_without_pausing() -> None:
    body, p = new(10)
    body.feed(b"a" * 100)
    body.feed(b"b" * 100)
    assert p.calls == []
    assert body.received == 200 and body.length == 10
    assert not body.done


async def test_pauses_once_at_high_water_and_resumes_after_draining() -> None:
    body, p = new()
    piece = b"x" * (HIGH_WATER // 4)
    for _ in range(3):
        body.feed(piece)
    assert p.calls == []
    body.feed(piece)  # reaches HIGH_WATER
    assert p.calls == ["pause"]
    body.feed(piece)  # beyond: still paused, no second pause
    assert p.calls == ["pause"]
    # Drain until below HIGH_WATER // 2: then exactly one resume.
    assert await body.read() == piece
    assert await body.read() == piece
    assert p.calls == ["pause"]  # 3/4 * HIGH_WATER left: still above half
    assert await body.read() == piece  # 2/4 left: not strictly below half
    assert p.calls == ["pause"]
    assert await body.read() == piece  # 1/4 left
    assert p.calls == ["pause", "resume"]
    assert await body.read() == piece
    assert p.calls == ["pause", "resume"]


async def test_one_huge_chunk_pauses() -> None:
    body, p = new()
    body.feed(b"z" * (HIGH_WATER + 1))
    assert p.calls == ["pause"]
    assert len(await body.read()) == HIGH_WATER + 1
    assert p.calls == ["pause", "resume"]


async def test_sink_flow_control_pauses_and_resumes_the_producer_once() -> None:
    body, p = new()
    body.pipe(Sink())
    body.pause()
    body.pause()
    assert p.calls == ["pause"]
    body.resume()
    body.resume()
    assert p.calls == ["pause", "resume"]


# --- read / read_all ----------------------------------------------------------------


async def test_read_returns_chunks_in_order_then_empty() -> None:
    body, _ = new()
    body.feed(b"one")
    body.feed(b"two")
    body.feed_eof()
    assert body.done
    assert [await body.read(), await body.read(), await body.read(), await body.read()] == [b"one", b"two", b"", b""]


async def test_read_waits_for_the_producer() -> None:
    body, _ = new()
    reader = asyncio.create_task(body.read())
    await asyncio.sleep(0)
    assert not reader.done()
    body.feed(b"late")
    assert await asyncio.wait_for(reader, 5) == b"late"
    reader = asyncio.create_task(body.read())
    await asyncio.sleep(0)
    body.feed_eof()
    assert await asyncio.wait_for(reader, 5) == b""


async def test_read_all() -> None:
    body, _ = new()
    for part in (b"a", b"bc", b"def"):
        body.feed(part)
    body.feed_eof()
    assert await body.read_all() == b"abcdef"


async def test_read_all_across_awaits() -> None:
    body, _ = new()

    async def produce() -> None:
        for i in range(5):
            body.feed(b"%d" % i)
            await asyncio.sleep(0)
        body.feed_eof()

    producer = asyncio.create_task(produce())
    assert await asyncio.wait_for(body.read_all(), 5) == b"01234"
    await producer


async def test_read_all_limit() -> None:
    body, _ = new()
    body.feed(b"12345")
    body.feed(b"6")
    body.feed_eof()
    with pytest.raises(ValueError, match="larger than 5"):
        await body.read_all(limit=5)


async def test_read_all_exactly_at_limit() -> None:
    body, _ = new()
    body.feed(b"12345")
    body.feed_eof()
    assert await body.read_all(limit=5) == b"12345"


# --- errors -------------------------------------------------------------------------


async def test_feed_error_reaches_a_waiting_reader() -> None:
    body, _ = new()
    reader = asyncio.create_task(body.read())
    await asyncio.sleep(0)
    err = UpstreamError("reset mid-body")
    body.feed_error(err)
    with pytest.raises(UpstreamError) as info:
        await asyncio.wait_for(reader, 5)
    assert info.value is err
    assert body.done


async def test_buffered_data_is_read_before_the_error() -> None:
    body, _ = new()
    body.feed(b"partial")
    body.feed_error(ReadError("gone"))
    assert await body.read() == b"partial"
    with pytest.raises(ReadError):
        await body.read()
    with pytest.raises(ReadError):  # and stays failed
        await body.read()


async def test_feed_error_is_idempotent_and_ignored_after_eof() -> None:
    body, _ = new()
    body.feed_eof()
    body.feed_error(ReadError("too late"))
    assert await body.read() == b""

    body, _ = new()
    first = ReadError("first")
    body.feed_error(first)
    body.feed_error(ReadError("second"))
    with pytest.raises(ReadError) as info:
        await body.read()
    assert info.value is first


async def test_feed_error_aborts_a_sink() -> None:
    body, _ = new()
    sink = Sink()
    body.pipe(sink)
    body.feed(b"a")
    err = UpstreamError("x")
    body.feed_error(err)
    assert sink.events == [("write", b"a"), ("abort", err)]


async def test_pipe_after_error_flushes_then_aborts() -> None:
    body, _ = new()
    body.feed(b"a")
    err = ReadError("x")
    body.feed_error(err)
    sink = Sink()
    body.pipe(sink)
    assert sink.events == [("write", b"a"), ("abort", err)]


# --- pipe ---------------------------------------------------------------------------


async def test_pipe_flushes_buffered_chunks_then_forwards_synchronously() -> None:
    body, _ = new()
    body.feed(b"1")
    body.feed(b"2")
    sink = Sink()
    body.pipe(sink)
    assert sink.events == [("write", b"1"), ("write", b"2")]
    body.feed(b"3")  # no await in between: forwarded in the producer's call
    assert sink.events[-1] == ("write", b"3")
    body.feed_eof()
    assert sink.events[-1] == ("end", None)
    assert sink.data == b"123"
    assert body.received == 3


async def test_pipe_after_eof_writes_everything_and_ends() -> None:
    body, _ = new()
    body.feed(b"ab")
    body.feed_eof()
    sink = Sink()
    body.pipe(sink)
    assert sink.events == [("write", b"ab"), ("end", None)]


async def test_pipe_resumes_a_producer_paused_by_buffering() -> None:
    body, p = new()
    body.feed(b"x" * HIGH_WATER)
    assert p.calls == ["pause"]
    sink = Sink()
    body.pipe(sink)
    assert p.calls == ["pause", "resume"]
    assert len(sink.data) == HIGH_WATER
    body.feed(b"y" * HIGH_WATER)  # piped chunks are never buffered, so never pause
    assert p.calls == ["pause", "resume"]


async def test_a_sink_that_pauses_during_the_hand_over_keeps_the_producer_paused() -> None:
    body, p = new()
    body.feed(b"x" * HIGH_WATER)

    class Full(Sink):
        def write(self, data: bytes) -> None:
            super().write(data)
            body.pause()  # its transport's buffer filled with what it was handed

    sink = Full()
    body.pipe(sink)
    assert p.calls == ["pause", "pause"]  # the sink's pause, and no resume after it
    assert len(sink.data) == HIGH_WATER
    body.resume()
    assert p.calls[-1] == "resume"


async def test_a_sink_pause_before_the_hand_over_of_a_done_body_is_resumed_by_the_sink() -> None:
    # An upstream request: the client takes the whole (done) body, writes it with the head, its
    # socket buffer fills (on io_uring the send is in flight) and it pauses the body, then it pipes.
    body, p = new()
    body.feed(b"x" * 100_000)
    body.feed_eof()
    assert body.take() == [b"x" * 100_000]
    body.pause()

    class Ending(Sink):
        def end(self) -> None:
            super().end()
            body.resume()  # the client's request_sent: the body is out, the producer's next request must be read

    body.pipe(Ending())
    assert p.calls == ["pause", "resume"]


async def test_a_sink_pause_before_the_hand_over_stays_while_the_body_goes_on() -> None:
    body, p = new()
    body.feed(b"x" * 1000)
    body.take()
    body.pause()  # the sink's buffer is full
    sink = Sink()
    body.pipe(sink)
    assert p.calls == ["pause"]  # nothing buffered was handed over: the pause is the sink's
    body.resume()
    assert p.calls == ["pause", "resume"]


async def test_pipe_of_a_done_body_paused_by_buffering_resumes_the_producer() -> None:
    body, p = new()
    body.feed(b"x" * HIGH_WATER)
    body.feed_eof()
    sink = Sink()
    body.pipe(sink)
    assert p.calls == ["pause", "resume"]
    assert sink.events[-1] == ("end", None)


# --- on_demand, cancel, detach ------------------------------------------------------


@pytest.mark.parametrize("first", ["read", "pipe", "read_all"])
async def test_on_demand_is_called_once_on_first_consumption(first: str) -> None:
    calls: list[int] = []
    body = Body(Producer(), None, on_demand=lambda: calls.append(1))
    body.feed(b"a")
    body.feed(b"b")
    body.feed_eof()
    assert calls == []
    if first == "read":
        await body.read()
        await body.read()
    elif first == "read_all":
        await body.read_all()
    else:
        body.pipe(Sink())
    assert calls == [1]


async def test_on_demand_before_any_data_lets_the_producer_start() -> None:
    # The driver uses on_demand to send "100 Continue" only when the body is wanted.
    body: Body

    def demand() -> None:
        body.feed(b"now")
        body.feed_eof()

    body = Body(Producer(), 3, on_demand=demand)
    assert await asyncio.wait_for(body.read_all(), 5) == b"now"


async def test_cancel_tells_the_producer_and_drops_further_chunks() -> None:
    body, p = new()
    body.feed(b"buffered")
    body.cancel()
    assert p.calls == ["cancel"]
    body.feed(b"dropped")
    body.feed_eof()
    assert body.received == len(b"buffered") + len(b"dropped")


async def test_cancel_after_eof_does_not_bother_the_producer() -> None:
    body, p = new()
    body.feed_eof()
    body.cancel()
    assert p.calls == []


async def test_cancel_resumes_a_paused_producer() -> None:
    body, p = new()
    body.feed(b"x" * HIGH_WATER)
    body.cancel()
    assert p.calls == ["pause", "resume", "cancel"]


async def test_cancel_of_a_piped_body_stops_writes_to_the_sink() -> None:
    body, p = new()
    sink = Sink()
    body.pipe(sink)
    body.feed(b"a")
    body.cancel()
    body.feed(b"b")
    body.feed_eof()
    assert sink.events == [("write", b"a")]
    assert p.calls == ["cancel"]


async def test_detach_drops_without_cancelling() -> None:
    body, p = new()
    body.feed(b"x" * HIGH_WATER)
    body.detach()
    assert p.calls == ["pause", "resume"]
    body.feed(b"more")
    body.feed_eof()
    assert body.done
