"""Bodies in flight between two connections, with backpressure.

A ``Body`` has one producer (the connection whose parser emits the chunks) and one
consumer. The consumer either reads (``read``/``read_all``, for filters that need
the bytes) or pipes (``pipe(sink)``): from then on every chunk goes straight from
the producer's ``data_received`` into ``sink.write`` with no task, no queue and no
copy. While nobody consumes, chunks are buffered up to ``HIGH_WATER`` bytes and the
producer is paused beyond that, so a body is never held whole.

Backpressure on a pipe runs the other way: when the sink's transport buffer fills,
the sink calls ``pause()``, which pauses the producer's reading; ``resume()`` undoes
it. The kernel's socket buffers do the rest.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

# Final module constants: mypyc inlines them or keeps them in C statics, where a plain
# module global (an imported name too) is a dict lookup at every use.
HIGH_WATER: Final = 256 * 1024
_deque: Final = deque


class Producer(Protocol):
    def pause_body(self) -> None: ...
    def resume_body(self) -> None: ...
    def cancel_body(self) -> None: ...


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...
    def end(self) -> None: ...
    def abort(self, exc: BaseException) -> None: ...


class Body:
    """A one-shot body stream. ``length`` is the declared size, None when chunked."""

    __slots__ = (
        "_buf",
        "_done",
        "_exc",
        "_on_demand",
        "_paused",
        "_producer",
        "_sink",
        "_size",
        "_waiter",
        "length",
        "received",
        "trailers",
    )

    def __init__(
        self,
        producer: Producer,
        length: int | None = None,
        on_demand: Callable[[], None] | None = None,
    ) -> None:
        self._producer = producer
        self.length = length
        self._on_demand = on_demand
        self._buf: deque[bytes] = _deque()
        self._size = 0
        self._done = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Sink | None = None
        self._paused = False
        self.received = 0
        # Trailer fields (HTTP/2 or chunked), set by the producer before feed_eof;
        # a sink that can send trailers (an HTTP/2 stream) reads them in end().
        self.trailers: list[tuple[bytes, bytes]] | None = None

    # -- producer side -----------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        sink = self._sink
        if sink is not None:
            sink.write(data)
            return
        self._buf.append(data)
        self._size += len(data)
        if self._size >= HIGH_WATER and not self._paused:
            self._paused = True
            self._producer.pause_body()
        self._wake()

    def feed_eof(self) -> None:
        self._done = True
        sink = self._sink
        if sink is not None:
            sink.end()
        else:
            self._wake()

    def feed_error(self, exc: BaseException) -> None:
        """The producer failed mid-body. Idempotent; ignored once the body ended."""
        if self._done:
            return
        self._done = True
        self._exc = exc
        sink = self._sink
        if sink is not None:
            sink.abort(exc)
        else:
            self._wake()

    @property
    def done(self) -> bool:
        """True once the producer delivered the last byte (or failed)."""
        return self._done

    # -- flow control, called by a sink -------------------------------------

    def pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._producer.pause_body()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._producer.resume_body()

    # -- consumer side -----------------------------------------------------------

    def _demand(self) -> None:
        cb = self._on_demand
        if cb is not None:
            self._on_demand = None
            cb()

    def take(self) -> list[bytes]:
        """Remove and return what is buffered (for a writer that sends it together with
        a head, in one syscall). Counts as demand. The caller pipes afterwards."""
        self._demand()
        chunks = list(self._buf)
        self._buf.clear()
        self._size = 0
        self.resume()
        return chunks

    @property
    def piped(self) -> bool:
        """True while the body goes to a consumer's sink (not dropped, not read)."""
        return self._sink is not None and self._sink is not _DROP

    @property
    def complete(self) -> bool:
        """True when the producer finished without error."""
        return self._done and self._exc is None

    def pipe(self, sink: Sink) -> None:
        """Send everything buffered and everything to come to ``sink``, synchronously."""
        self._demand()
        # A pause taken for the buffer ends with its hand-over. It is cleared first, so that a sink
        # whose own buffer fills on what it is handed pauses the producer again, and that pause stays.
        # With nothing buffered the pause is the sink's (take() and read() resume as they drain:
        # a client's writelines of head and taken body filled its socket buffer before it piped):
        # it stays for the sink to end, or its end (request_sent) finds nothing to resume and the
        # producer's connection is never read again.
        buf = self._buf
        was_paused = self._paused and bool(buf)
        if was_paused:
            self._paused = False
        while buf:
            sink.write(buf.popleft())
        self._size = 0
        self._sink = sink
        if was_paused and not self._paused:
            self._producer.resume_body()
        if self._done:
            if self._exc is not None:
                sink.abort(self._exc)
            else:
                sink.end()

    def detach(self) -> None:
        """Drop further chunks: the consumer lost interest but the producer may finish."""
        self._sink = _DROP
        self._buf.clear()
        self.resume()

    def cancel(self) -> None:
        """The consumer is gone for good: drop further chunks and tell the producer,
        which will not reuse its connection."""
        self.detach()
        if not self._done:
            self._producer.cancel_body()

    async def read(self) -> bytes:
        """Next chunk, or b"" at the end. Raises the producer's error if it failed."""
        self._demand()
        while not self._buf:
            if self._done:
                if self._exc is not None:
                    raise self._exc
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._buf.popleft()
        self._size -= len(data)
        if self._paused and self._size < HIGH_WATER // 2:
            self.resume()
        return data

    async def read_all(self, limit: int = 0) -> bytes:
        """The whole body. With ``limit``, raises ValueError past that many bytes."""
        parts = []
        total = 0
        while chunk := await self.read():
            total += len(chunk)
            if limit and total > limit:
                raise ValueError(f"body larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)


class _DropSink:
    """Where a detached body's remaining chunks go: nowhere."""

    def write(self, data: bytes) -> None:
        return None

    def end(self) -> None:
        return None

    def abort(self, exc: BaseException) -> None:
        return None


_DROP: Final = _DropSink()
