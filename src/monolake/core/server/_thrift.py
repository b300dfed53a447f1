"""The Thrift server driver: one ``ThriftConnection`` protocol per client connection.

Theory of operation. Bytes arrive in ``data_received`` and go through a
``FrameReader``, which detects the transport of every frame (framed, TTHeader,
THeader; binary or compact); each frame is handed to the app's ``Dispatcher``
(the proxy, in proxy/_thrift_app.py) with a plain call. There is no task per
call: the dispatcher forwards the frame and the reply comes back through a
callback that calls ``answer``. A dispatcher with ``dispatch_bytes`` (the RPC
server's: ``InPlaceDispatcher``) is first offered each whole frame at the front of
a read as bytes, without a ``Frame``, and returns the reply to write; from the
first frame it declines, the rest of the read goes the ``Frame`` way. Replies are
written in the order they arrive, which need not be the order of the calls; each
carries its call's sequence id.
The replies answered while the frames of one read are dispatched (a pipelining
client, a server that answers at once) go out in one write.

A call that expects a reply counts as in flight from ``begin`` until ``answer``
(one answered inside its ``dispatch`` goes out with ``answer_now`` and never counts).
With ``limits.max_pipelined`` calls in flight the connection stops reading until
one is answered; when the client reads too slowly (``pause_writing``) it stops
reading too. Errors the client can be told about become ``TApplicationException``
replies for that call's sequence id; a frame that breaks the framing (bad length,
unknown transport, over ``max_frame_size``) is answered if the bytes so far name
the call, and the connection is then closed, since the stream cannot be resynced.

Drain: idle connections close at once, busy ones as soon as their last call is
answered; calls that arrive meanwhile are still served. Idle timeout: one sweep
per server closes connections that moved no byte for ``idle_timeout`` seconds
and have nothing in flight.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import RemoteProtocolError
from ..proto.proxy_protocol import Family, ProxyHeader
from ..proto.thrift import (
    AppError,
    Frame,
    FrameReader,
    FrameTooLarge,
    ThriftProtocol,
    application_exception,
    classify,
    encode_frame,
    peek_message,
)
from ._l4 import PickKey, ProxyHeaderReader
from ._lifecycle import IdleConnectionServer
from ._settings import ThriftSettings as ServerConfig

if TYPE_CHECKING:
    from ..tls import ServerTlsContexts

log = logging.getLogger("monolake.thrift")

_U32 = struct.Struct("!I")


class Dispatcher(Protocol):
    """What a Thrift server runs per frame: the proxy."""

    def dispatch(self, conn: ThriftConnection, frame: Frame) -> None:
        """Handle one frame from ``conn``. Must not raise; answers through ``conn``."""
        ...

    def close(self) -> None: ...

    def statistics(self) -> dict[str, int]: ...


class InPlaceDispatcher(Dispatcher, Protocol):
    """A dispatcher that can also serve a call from its frame's bytes, without a ``Frame``."""

    def dispatch_bytes(self, conn: ThriftConnection, data: bytes) -> bytes | None:
        """Serve ``data``, one whole frame (any transport) of at least 16 bytes, as ``dispatch``
        would, returning the reply to write now (b"": none, it answers through ``conn`` as
        ``dispatch`` does); or return None having done nothing (it then goes to ``dispatch``)."""
        ...


def error_frame(frame: Frame, name: str, seq_id: int, kind: int, message: str) -> bytes:
    """A TApplicationException reply in ``frame``'s transport and protocol."""
    protocol = frame.protocol if frame.protocol is not None else ThriftProtocol.BINARY
    payload = application_exception(name, seq_id, protocol, kind, message)
    return encode_frame(frame.transport, payload, seq_id=seq_id, protocol=protocol)


class ThriftServerApp(IdleConnectionServer["ThriftConnection"]):
    """One Thrift server (listener) in one worker: the runtime's ``ServerApp``.

    Its drain waits for the calls in flight, not for the connections to close.
    """

    def __init__(
        self, name: str, cfg: ServerConfig, dispatcher: Dispatcher, *, tls: ServerTlsContexts | None = None
    ) -> None:
        super().__init__(name, tls, cfg.idle_timeout)
        self.cfg = cfg
        self.dispatcher = dispatcher
        self.max_frame_size = cfg.max_frame_size
        self.max_pipelined = cfg.limits.max_pipelined
        self.in_flight = 0

    def protocol_factory(self) -> asyncio.Protocol:
        self._serving()
        if self.cfg.proxy_protocol != "off":
            return ProxyHeaderReader(
                self.cfg.proxy_protocol, self.cfg.header_timeout, self.name, self._handoff, self.pending
            )
        return ThriftConnection(self)

    def _handoff(self, transport: asyncio.BaseTransport, hdr: ProxyHeader | None, rest: bytes) -> None:
        conn = ThriftConnection(self)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if hdr is not None and hdr.client is not None:
            conn.set_peer("unix" if hdr.family is Family.UNIX else hdr.src_addr)
        if rest:
            conn.data_received(rest)

    def call_done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._drained.set()

    def start_draining(self) -> None:
        super().start_draining()
        for conn in list(self.conns):
            conn.drain()

    async def wait_drained(self) -> None:
        if self.in_flight:
            await self._drained.wait()

    def close(self) -> None:
        super().close()
        self.dispatcher.close()

    def statistics(self) -> dict[str, int]:
        return {"connections": len(self.conns), "in_flight": self.in_flight, **self.dispatcher.statistics()}


class ThriftConnection(asyncio.Protocol):
    """One client connection. See the module docstring."""

    def __init__(self, app: ThriftServerApp) -> None:
        self.app = app
        self.dispatch = app.dispatcher.dispatch
        self.dispatch_bytes: Callable[[ThriftConnection, bytes], bytes | None] | None = getattr(
            app.dispatcher, "dispatch_bytes", None
        )
        self.reader = FrameReader(app.max_frame_size)
        self.transport: Any = None
        self.peer = ""
        self.pick_key = PickKey("")
        self.in_flight = 0
        self.closed = False
        self.active = True
        self.idle_since = 0.0
        self.eof = False
        self._paused = 0  # bit 1: too many calls in flight; bit 2: the client reads too slowly
        self._batch: list[bytes | bytearray] | None = None
        """Replies answered while the frames of one read are dispatched: written together."""

    def set_peer(self, peer: str) -> None:
        self.peer = peer
        self.pick_key = PickKey(peer)

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.set_peer(peer[0] if isinstance(peer, tuple) else "unix")
        self.app.conns.add(self)

    def data_received(self, data: bytes) -> None:
        self.active = True
        fast = self.dispatch_bytes
        if fast is not None and data.__class__ is bytes and not self.reader.buffered:
            # Whole frames at the front of the read go to ``dispatch_bytes`` one by one, read in
            # place; from the first one it declines, the rest goes through the FrameReader.
            total = len(data)
            if total < 16:
                self._feed(data)
                return
            n = _U32.unpack_from(data)[0]
            if n + 4 == total:
                out = fast(self, data) if n <= self.reader.max_frame_size else None
                if out is None:
                    self._feed(data)
                    return
                if out and not self.closed:
                    self.transport.write(out)
                    if self.in_flight == 0 and (self.app.draining or self.eof):
                        self._close()
                return
            batch: list[bytes | bytearray] = []
            self._batch = batch
            try:
                i = 0
                limit = self.reader.max_frame_size
                while total - i >= 16 and not self.closed:
                    n = _U32.unpack_from(data, i)[0]
                    end = i + 4 + n
                    if n < 12 or n > limit or end > total:
                        break
                    out = fast(self, data[i:end])
                    if out is None:
                        break
                    if out:
                        batch.append(out)
                    i = end
                if i < total and not self.closed:
                    self._feed(data[i:] if i else data)
            finally:
                self._flush()
                self._batch = None
            if self.in_flight == 0 and (self.app.draining or self.eof):
                self._close()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except FrameTooLarge as exc:
            self._too_large(exc)
            return
        except RemoteProtocolError as exc:
            log.warning("thrift: bad frame: server=%s client=%s: %s", self.app.name, self.peer, exc)
            self._close()
            return
        dispatch = self.dispatch
        if len(frames) == 1:
            dispatch(self, frames[0])
            return
        if self._batch is not None:  # after frames served in place (data_received): one write for all
            for frame in frames:
                if self.closed:
                    return
                dispatch(self, frame)
            return
        # Many calls in one read (a pipelining client): the replies answered while they are
        # dispatched go out in one write, not a send() each.
        self._batch = []
        try:
            for frame in frames:
                if self.closed:
                    return
                dispatch(self, frame)
        finally:
            self._flush()
            self._batch = None

    def _flush(self) -> None:
        batch = self._batch
        if batch:
            if not self.closed:
                self.transport.write(batch[0] if len(batch) == 1 else b"".join(batch))
            batch.clear()

    def eof_received(self) -> bool | None:
        # Calls in flight are still answered; we close once they are (see answer).
        self.eof = True
        # A TLS transport closes itself after the peer's close_notify (and warns about a True).
        return None if self.in_flight == 0 or not self.transport.can_write_eof() else True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.app.conns.discard(self)
        # Calls still in flight will find the connection closed and only count down.

    def pause_writing(self) -> None:
        self._pause(2)

    def resume_writing(self) -> None:
        self._resume(2)

    # -- what the dispatcher calls ---------------------------------------------------

    def begin(self) -> None:
        """A call that expects a reply has started."""
        self.in_flight += 1
        self.app.in_flight += 1
        if self.in_flight >= self.app.max_pipelined:
            self._pause(1)

    def answer(self, data: bytes | bytearray) -> None:
        """Write a reply frame and end one call started with ``begin``."""
        if not self.closed:
            if self._batch is not None:
                self._batch.append(data)
            else:
                self.transport.write(data)
        self.in_flight -= 1
        self.app.call_done()
        if self._paused & 1 and self.in_flight < self.app.max_pipelined:
            self._resume(1)
        if self.in_flight == 0 and (self.app.draining or self.eof):
            self._close()

    def answer_now(self, data: bytes | bytearray) -> None:
        """Write the reply of a call answered inside its ``dispatch``, without ``begin``: it was
        never in flight (two counters and a drain check fewer per call)."""
        if not self.closed:
            if self._batch is not None:
                self._batch.append(data)
            else:
                self.transport.write(data)
        if self.in_flight == 0 and (self.app.draining or self.eof):
            self._close()

    def answer_error(self, frame: Frame, name: str, seq_id: int, kind: int, message: str) -> None:
        self.answer(error_frame(frame, name, seq_id, kind, message))

    def reject(self, frame: Frame, name: str, seq_id: int, kind: int, message: str) -> None:
        """Answer a frame that never began as a call, then close (its stream is not trustworthy)."""
        if not self.closed:
            self._flush()
            self.transport.write(error_frame(frame, name, seq_id, kind, message))
        self._close()

    # -- the rest ----------------------------------------------------------------------

    def _too_large(self, exc: FrameTooLarge) -> None:
        log.warning("thrift: %s: server=%s client=%s", exc, self.app.name, self.peer)
        try:
            frame = classify(exc.prefix)
            seq = frame.seq_id
            name = ""
            if frame.protocol is not None:
                head = peek_message(frame.data, frame.payload, frame.protocol)
                seq, name = head.seq_id, head.name
            self.reject(frame, name, seq, AppError.PROTOCOL_ERROR, f"monolake: {exc}")
        except RemoteProtocolError:
            self._close()  # too little of it arrived to say whose call it was

    def _pause(self, reason: int) -> None:
        if not self._paused and not self.closed:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        was = self._paused
        self._paused &= ~reason
        if was and not self._paused and not self.closed:
            self.transport.resume_reading()

    def drain(self) -> None:
        if self.in_flight == 0:
            self._close()

    def check_idle(self, now: float, idle: float) -> None:
        if self.active:
            self.active = False
            self.idle_since = now
        elif self.in_flight == 0 and now - self.idle_since >= idle:
            log.info("thrift: idle timeout: server=%s client=%s after %.1fs", self.app.name, self.peer, idle)
            self._close()

    def _close(self) -> None:
        if not self.closed:
            self._flush()
            self.closed = True
            self.app.conns.discard(self)
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.app.conns.discard(self)
            self.transport.abort()
