"""Framed message connections: the receive buffer, batched writes and backpressure.

``Framed`` is an ``asyncio.BufferedProtocol`` (every loop backend feeds one: uvloop,
asyncio and io_uring, plain or TLS): the transport reads straight into the free tail
of one ``bytearray`` (``get_buffer``), and ``buffer_updated`` hands the codec a
``memoryview`` of the unread bytes, which takes every whole message out in one call.
A partial frame stays where it is; only it is moved to the front when the tail runs
short (or into a larger buffer when one message needs more), so bytes are copied at
most once, and a read of many small messages costs one decode call. While reads fill
all the space offered, the buffer grows to ``BULK_BUFFER`` (fewer, larger reads), and
goes back once a read is small.

Sending encodes at once and appends the frame to one ``bytearray`` (a frame of
``COPY_UNDER`` bytes or more is queued as it is, not copied); the queue goes out
with one write per loop iteration (a ``call_soon`` armed by the first send of the
iteration, or at the end of the read that produced the sends), so a burst of
replies is one buffer and one syscall; past ``FLUSH_AT`` queued bytes it goes out
at once, so a producer that never yields still meets the transport's backpressure.

Backpressure both ways. Out: when the transport's buffer passes its high-water mark
(``pause_writing``), ``writable`` turns False and ``wait_writable()`` blocks until it
drains: producers that await it stop instead of growing the buffer. In: a subclass
says when its consumer is full (``_set_full``) and reading from the socket pauses
until it is not; the kernel's buffers then fill and the peer's writes stall.

Idle timeout: a timer checks every ``idle_timeout`` seconds whether anything was
received or is in flight since the last check; if not, the connection closes (so an
idle one closes after one to two periods). Bad input closes the connection with one
log line naming the peer and the reason (``FrameError``), as does a peer closing
in the middle of a frame.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar, cast

from ...core.errors import RemoteProtocolError
from ._codec import _PREFIX, _U32, SMALL_MESSAGE, BytesCodec, Codec, FrameError

log = logging.getLogger("monolake.streams")

T = TypeVar("T")

INITIAL_BUFFER: Final = 64 * 1024
MIN_READ: Final = 16 * 1024
"""Free bytes offered to a read at least; the buffer is compacted or grown below it."""
BULK_BUFFER: Final = 256 * 1024
"""The buffer a connection grows to while reads fill all the space offered (bulk traffic: fewer,
larger reads and writes); it goes back to INITIAL_BUFFER once a read finds the peer slower."""
FLUSH_AT: Final = 64 * 1024
"""Queued bytes that go out at once instead of at the end of the loop iteration: a producer that
never yields meets the transport's backpressure in steps of this much."""
FLUSH_IN_READ: Final = 256 * 1024
"""The same for replies made while a read is handled (they go out at its end): one write for the
replies of a whole bulk read (BULK_BUFFER)."""
COPY_UNDER: Final = 16 * 1024
"""An encoded frame under this many bytes is copied into the write buffer shared by the frames of
a loop iteration; a larger one is written as it is."""
MAX_QUEUED = 1024
"""Messages a ``MessageConnection`` holds for ``recv`` before reading pauses."""


class ConnectionClosed(RemoteProtocolError):
    """The connection closed (cleanly, or for the reason given) while a message was awaited."""


def peer_of(transport: asyncio.BaseTransport) -> str:
    name = transport.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        host = str(name[0])
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
    return "unix"


class Framed(asyncio.BufferedProtocol, Generic[T]):
    """The framing half of a message connection (see the module docstring). Subclasses
    implement ``_deliver(messages)`` and may override ``_idle()`` and the close hooks."""

    def __init__(self, codec: Codec[T], *, idle_timeout: float | None = None, label: str = "") -> None:
        self.codec = codec
        self._encode = codec.encode
        self._encode_into: Callable[[Any, bytearray], int] | None = getattr(codec, "encode_into", None)
        self._raw: BytesCodec | None = codec if type(cast(Any, codec)) is BytesCodec else None  # type: ignore[assignment]
        """A BytesCodec: its frames are made here, inline (no call per message)."""
        self._decode = codec.decode
        self._buf = bytearray(INITIAL_BUFFER)
        self._start = 0
        self._end = 0
        self._offered = 0
        self._grow = False
        self._out: list[Any] = []
        """Buffers queued before ``_acc`` (large frames, and the small ones before them)."""
        self._acc = bytearray()
        """Small frames queued: a new bytearray after each write (the transport may keep it)."""
        self._out_bytes = 0
        self._out_msgs = 0
        self._flush_armed = False
        self._in_read = False
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._w_paused = False
        self._writers: list[asyncio.Future[None]] = []
        self._closers: list[asyncio.Future[None]] = []
        self._full = False
        self._r_paused = False
        self._idle_timeout = idle_timeout
        self._idle_timer: asyncio.TimerHandle | None = None
        self._active = False
        self.closed = False
        self.error: Exception | None = None
        """Why the connection closed, when not cleanly."""
        self.label = label
        self.peer = ""
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    # -- the user's side ------------------------------------------------------------

    @property
    def tls(self) -> Any:
        """The TLS object (``ssl.SSLObject``-like) of a TLS connection, else None."""
        return self._transport.get_extra_info("ssl_object") if self._transport is not None else None

    @property
    def writable(self) -> bool:
        """False while the transport's buffer is over its high-water mark (the peer reads slowly)."""
        return not self._w_paused

    def send(self, message: Any) -> None:
        """Encode ``message`` and queue it; queued frames go out together this loop iteration.
        A send after close is dropped. Does not wait: producers that may outrun the peer
        await ``wait_writable()`` between sends."""
        if self.closed:
            return
        # Small frames are appended to one bytearray (no object per frame, one buffer per
        # write); a large one goes on the list as it is (its body is not copied).
        acc = self._acc
        raw = self._raw
        if raw is not None:
            size = len(message)
            if size < SMALL_MESSAGE:
                acc += _PREFIX[size]
                acc += message
            elif type(message) is bytes:
                acc += _U32.pack(size)
                self._out.append(acc)
                self._out.append(message)
                self._acc = bytearray()
            else:  # a mutable buffer the caller may reuse once send returns: copied now
                acc += _U32.pack(size)
                acc += message
            size += 4
        else:
            into = self._encode_into
            if into is not None:
                size = into(message, acc)
            else:
                data = self._encode(message)
                size = len(data)
                if size < COPY_UNDER:
                    acc += data
                else:
                    self._out.append(acc)
                    self._out.append(data)
                    self._acc = bytearray()
        n = self._out_bytes + size  # messages_out and bytes_out are counted at the flush
        self._out_bytes = n
        self._out_msgs += 1
        if n >= FLUSH_AT and (n >= FLUSH_IN_READ or not self._in_read):
            self._flush()  # the transport sees it now, and can say pause_writing
        elif not self._in_read and not self._flush_armed:  # in a read: it flushes at its end
            self._flush_armed = True
            loop = self._loop
            if loop is not None:
                loop.call_soon(self._flush)

    async def wait_writable(self) -> None:
        """Return once the transport has room (at once if it has). Raises ConnectionClosed
        once the connection is gone."""
        if self.closed:
            raise ConnectionClosed(f"connection to {self.peer} closed")
        if not self._w_paused:
            return
        assert self._loop is not None
        fut = self._loop.create_future()
        self._writers.append(fut)
        await fut

    def close(self) -> None:
        """Close once the queued frames are sent."""
        self._flush()
        t = self._transport
        if t is not None and not t.is_closing():
            t.close()

    def abort(self) -> None:
        """Close now; queued frames are lost."""
        t = self._transport
        if t is not None:
            t.abort()

    async def wait_closed(self) -> None:
        """Return once the connection is closed (its socket too)."""
        if self.closed:
            return
        assert self._loop is not None
        fut = self._loop.create_future()
        self._closers.append(fut)
        await fut

    def statistics(self) -> dict[str, int]:
        return {
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }

    # -- asyncio.BufferedProtocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's and io_uring's transports implement asyncio.Transport without subclassing it.
        self._transport = t = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self.peer = peer_of(t)
        if self._idle_timeout:
            self._idle_timer = self._loop.call_later(self._idle_timeout, self._check_idle)

    def get_buffer(self, sizehint: int) -> memoryview:
        buf = self._buf
        end = self._end
        if self._grow:  # the last read took all it was offered: more is waiting
            self._grow = False
            start = self._start
            n = end - start
            nb = bytearray(BULK_BUFFER)
            nb[0:n] = buf[start:end]
            self._buf = buf = nb
            self._start, self._end = 0, n
            end = n
        elif len(buf) - end < MIN_READ:
            start = self._start
            n = end - start
            if n + MIN_READ <= len(buf) // 2 or (start and n + MIN_READ <= len(buf)):
                buf[0:n] = buf[start:end]  # only the partial frame moves
            else:  # a large message: a new buffer (the old one may still be exported)
                nb = bytearray(max(2 * len(buf), n + MIN_READ))
                nb[0:n] = buf[start:end]
                self._buf = buf = nb
            self._start, self._end = 0, n
            end = n
        self._offered = len(buf) - end
        return memoryview(buf)[end:]

    def buffer_updated(self, nbytes: int) -> None:
        if nbytes == self._offered and len(self._buf) < BULK_BUFFER:
            self._grow = True
        self._end += nbytes
        self.bytes_in += nbytes
        self._active = True
        out: list[T] = []
        view = memoryview(self._buf)[self._start : self._end]
        try:
            used = self._decode(view, out)
        except FrameError as exc:
            self.fail(exc)
            return
        finally:
            view.release()
        start = self._start + used
        if start == self._end:
            self._start = self._end = 0
            size = len(self._buf)
            if size > BULK_BUFFER or (size > INITIAL_BUFFER and nbytes < MIN_READ):
                self._buf = bytearray(INITIAL_BUFFER)  # a large message passed, or a burst: give it back
        else:
            self._start = start
        if out:
            self.messages_in += len(out)
            self._in_read = True
            try:
                self._deliver(out)
            finally:
                self._in_read = False
            if self._out_msgs and not self._flush_armed:
                self._flush()

    def eof_received(self) -> bool | None:
        if self._end != self._start:
            self.fail(FrameError(f"peer closed in the middle of a message ({self._end - self._start} bytes of it)"))
            return None
        return self._on_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if exc is not None and self.error is None:
            self.error = exc
        if self._end != self._start and self.error is None:
            self.error = FrameError(f"connection lost in the middle of a message ({self._end - self._start} bytes)")
            log.info("%s peer=%s: %s", self.label or "streams", self.peer, self.error)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._out.clear()
        self._acc = bytearray()
        self._out_bytes = self._out_msgs = 0
        for fut in self._writers:
            if not fut.done():
                fut.set_exception(ConnectionClosed(f"connection to {self.peer} closed"))
                fut.exception()  # retrieved: a writer that never waits must not warn
        self._writers.clear()
        self._on_lost()
        for fut in self._closers:
            if not fut.done():
                fut.set_result(None)
        self._closers.clear()

    def pause_writing(self) -> None:
        self._w_paused = True
        self._on_write_paused()

    def resume_writing(self) -> None:
        self._w_paused = False
        for fut in self._writers:
            if not fut.done():
                fut.set_result(None)
        self._writers.clear()
        self._on_write_resumed()

    # -- for subclasses ------------------------------------------------------------------

    def _deliver(self, messages: list[T]) -> None:
        raise NotImplementedError

    def _on_eof(self) -> bool | None:
        return None

    def _on_lost(self) -> None:
        pass

    def _on_write_paused(self) -> None:
        pass

    def _on_write_resumed(self) -> None:
        pass

    def _busy(self) -> bool:
        """True while something is in flight (the idle timer leaves the connection open)."""
        return False

    def fail(self, exc: Exception) -> None:
        """Close the connection now for ``exc`` (logged once with the peer)."""
        if self.error is None:
            self.error = exc
            log.warning("%s peer=%s: closing: %s", self.label or "streams", self.peer, exc)
        self._start = self._end = 0
        self.abort()

    def _set_full(self, full: bool) -> None:
        """The consumer is full (or has room again): pause (resume) reading from the socket."""
        self._full = full
        t = self._transport
        if t is None or self.closed:
            return
        if full and not self._r_paused:
            self._r_paused = True
            t.pause_reading()
        elif not full and self._r_paused:
            self._r_paused = False
            t.resume_reading()

    def _flush(self) -> None:
        self._flush_armed = False
        if not self._out_msgs:
            return
        acc = self._acc
        out = self._out
        self._acc = bytearray()
        t = self._transport
        if t is None or t.is_closing():
            out.clear()
            self._out_bytes = self._out_msgs = 0
            return
        self.messages_out += self._out_msgs
        self.bytes_out += self._out_bytes
        self._out_bytes = self._out_msgs = 0
        if not out:
            t.write(acc)
            return
        self._out = []
        if acc:
            out.append(acc)
        t.writelines(out)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self.closed:
            return
        if not self._active and not self._busy():
            log.info("%s peer=%s: closing: idle for %gs", self.label or "streams", self.peer, self._idle_timeout)
            self.close()
            return
        self._active = False
        assert self._loop is not None and self._idle_timeout
        self._idle_timer = self._loop.call_later(self._idle_timeout, self._check_idle)


class MessageConnection(Framed[T]):
    """A message connection as a user's code holds it: ``send(message)`` and
    ``async for message in conn`` (or ``await conn.recv()``).

    Received messages wait in a queue of at most ``max_queued``; past it, reading from
    the socket pauses until the consumer takes some (backpressure to the peer). The
    iteration ends when the peer closes its side; ``recv()`` then raises ConnectionClosed
    (with the reason when the connection failed).
    """

    def __init__(
        self,
        codec: Codec[T],
        *,
        idle_timeout: float | None = None,
        max_queued: int = MAX_QUEUED,
        label: str = "",
        on_made: Callable[[MessageConnection[T]], None] | None = None,
        on_lost: Callable[[MessageConnection[T]], None] | None = None,
    ) -> None:
        super().__init__(codec, idle_timeout=idle_timeout, label=label)
        self._queue: deque[T] = deque()
        self._max_queued = max_queued
        self._eof = False
        self._draining = False
        self._waiter: asyncio.Future[None] | None = None
        self._made = on_made
        self._lost_cb = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._made is not None:
            self._made(self)

    async def recv(self) -> T:
        """The next message. Raises ConnectionClosed once the peer closed (or the connection
        failed: ``error`` says why) and every message received was taken."""
        q = self._queue
        while not q:
            if self._eof or self.closed or self._draining:
                if self.error is not None:
                    raise ConnectionClosed(f"connection to {self.peer} closed: {self.error}")
                raise ConnectionClosed(f"connection to {self.peer} closed")
            assert self._loop is not None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        msg = q.popleft()
        if self._full and len(q) <= self._max_queued // 2 and not self._draining:
            self._set_full(False)
        return msg

    def start_draining(self) -> None:
        """Stop reading: the messages already received are still delivered, then the iteration
        ends (as at the peer's EOF), so a service looping ``async for`` returns and its
        connection closes once its replies are sent (a reload's or stop's drain)."""
        self._draining = True
        self._set_full(True)
        self._wake()

    def recv_nowait(self) -> list[T]:
        """Every message received and not yet taken (maybe none), without waiting."""
        q = self._queue
        out = list(q)
        q.clear()
        if self._full and not self._draining:
            self._set_full(False)
        return out

    def __aiter__(self) -> MessageConnection[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.recv()
        except ConnectionClosed:
            if self.error is not None and not isinstance(self.error, ConnectionResetError):
                raise
            raise StopAsyncIteration from None

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _deliver(self, messages: list[T]) -> None:
        q = self._queue
        q.extend(messages)
        if len(q) >= self._max_queued and not self._full:
            self._set_full(True)
        self._wake()

    def _on_eof(self) -> bool | None:
        self._eof = True
        self._wake()
        t = self._transport
        return True if t is not None and t.can_write_eof() else None  # we may still send

    def _on_lost(self) -> None:
        self._wake()
        if self._lost_cb is not None:
            self._lost_cb(self)

    def _busy(self) -> bool:
        return bool(self._queue)
