"""Pooled Thrift upstream connections that multiplex many calls by sequence id.

Theory of operation. A ``ThriftPool`` keeps, per key (endpoint, transport,
protocol), up to ``max_connections`` connections. ``send`` hands a call's frame
to the least busy one; a connection is opened in the background when every open
one carries ``max_in_flight`` calls or more (one opening at a time per key), and
calls that arrive while a key has no open connection wait in that key's queue
until the connection is up (or fail with its connect error). The decision is a
pure step over the key's state; the I/O (connect, write) comes after it.

On a connection every call gets a fresh sequence id (1..2**31-1, wrapping, never
one still in flight): the frame is rewritten with it (``rewrite_seq_id``; a binary
frame made for that call alone, the RPC client's, is patched in place: ``call_owned``)
and the caller's ``Waiter`` is remembered under it. The frames sent on a connection during one
loop iteration go out in one write at its end. A reply's sequence id finds the
waiter, which restores the caller's own id. Replies may come in any order, so
upstreams that answer out of order (Kitex) and those that answer in order (a
thriftpy2 or Apache threaded server, which simply reads the next call once it
answered the last) both work. Oneway calls are written and forgotten.

Failures reach waiters as monolake errors: ``ConnectError``/``ConnectTimeout``
(nothing was sent; a failed TLS handshake is one), ``ReadTimeout`` (no reply within the call's timeout; a late
reply is dropped), ``ReadError`` (the upstream closed with the call in flight)
and ``UpstreamError`` (it sent something we cannot read; the connection is
closed, as its framing can no longer be trusted). Idle connections close after
``idle_timeout``; one sweep per pool checks them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import Iterable
from typing import Any, Protocol

from ..address import Endpoint
from ..errors import (
    ConnectError,
    ConnectTimeout,
    MonolakeError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    UpstreamError,
)
from ..proto.thrift import (
    Frame,
    FrameReader,
    MessageHead,
    ThriftProtocol,
    Transport,
    classify,
    peek_message,
    rewrite_seq_id,
)

log = logging.getLogger("monolake.thrift.client")

MAX_SEQ_ID = 0x7FFFFFFF
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_BINARY = ThriftProtocol.BINARY
_FRAMED = Transport.FRAMED
MAX_ABANDONED = 1024
"""Timed-out calls still owed a reply before a connection is given up as stuck."""


class Waiter(Protocol):
    """Who waits for a call's reply. Exactly one of the two is called, once."""

    def reply(self, frame: Frame, head: MessageHead) -> None:
        """The reply frame; ``head.seq_id`` is the pool's id, not the caller's."""
        ...

    def fail(self, exc: MonolakeError) -> None: ...


PoolKey = tuple[tuple[str, str, int, str], Transport, ThriftProtocol]


class _Pending:
    __slots__ = ("deadline", "waiter")

    def __init__(self, waiter: Waiter, deadline: float) -> None:
        self.waiter = waiter
        self.deadline = deadline
        """Loop time the call times out at; 0: never."""


class _Queued:
    __slots__ = ("frame", "head", "oneway", "timeout", "waiter")

    def __init__(self, frame: Frame, head: MessageHead, waiter: Waiter | None, timeout: float, oneway: bool) -> None:
        self.frame = frame
        self.head = head
        self.waiter = waiter
        self.timeout = timeout
        self.oneway = oneway


class _Slot:
    """The connections of one pool key."""

    __slots__ = ("conns", "endpoint", "key", "opening", "queued")

    def __init__(self, key: PoolKey, endpoint: Endpoint) -> None:
        self.key = key
        self.endpoint = endpoint
        self.conns: list[ThriftUpstream] = []
        self.opening = 0
        self.queued: list[_Queued] = []

    def assign(self, max_in_flight: int, max_connections: int) -> tuple[ThriftUpstream | None, bool]:
        """(connection to use now or None to queue, whether to open one more). No I/O.

        A connection with a call that timed out and whose reply has not come yet is
        likely stuck behind it (thriftpy2 and Apache servers answer one call at a
        time per connection), so it is used only when no other can be had.
        """
        best: ThriftUpstream | None = None
        best_load = 0
        for c in self.conns:
            load = len(c.pending) + (max_in_flight if c.abandoned else 0)
            if best is None or load < best_load:
                best, best_load = c, load
        can_open = len(self.conns) + self.opening < max_connections
        if best is None or best.abandoned:
            if best is None or can_open or self.opening:
                return None, can_open and self.opening == 0
            return best, False
        if best_load < max_in_flight or not can_open:
            return best, False
        return best, self.opening == 0


class ThriftUpstream(asyncio.Protocol):
    """One multiplexed upstream connection."""

    def __init__(self, pool: ThriftPool, slot: _Slot) -> None:
        self.pool = pool
        self.slot = slot
        self.loop = pool.loop
        self.reader = FrameReader(pool.max_frame_size)
        self.pending: dict[int, _Pending] = {}
        self.abandoned: set[int] = set()
        """Sequence ids of calls that timed out; their replies are still due."""
        self.seq = 0
        self.transport: Any = None
        self.closed = False
        self.draining = False
        """Its endpoint left the set: close once its calls in flight are answered."""
        self.idle_since = 0.0
        self._out: list[bytes | bytearray] = []
        """Calls sent during this loop iteration: written together by ``_flush`` at its end."""
        self._timer: asyncio.TimerHandle | None = None
        """One timer per connection, at the earliest deadline of its calls (a timer per call,
        armed and cancelled, cost ~1-2 µs of a call's CPU)."""
        self._timer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.idle_since = self.loop.time()

    def send(self, frame: Frame, head: MessageHead, waiter: Waiter | None, timeout: float, oneway: bool) -> None:
        seq = self.seq + 1
        if seq > MAX_SEQ_ID:
            seq = 1
        pending = self.pending
        while seq in pending or seq in self.abandoned:
            seq = seq + 1 if seq < MAX_SEQ_ID else 1
        self.seq = seq
        data = rewrite_seq_id(frame, head, seq)
        if not oneway and waiter is not None:
            if timeout > 0:
                deadline = self.loop.time() + timeout
                pending[seq] = _Pending(waiter, deadline)
                if self._timer is None or deadline < self._timer_at:
                    self._arm(deadline)
            else:
                pending[seq] = _Pending(waiter, 0.0)
        # Calls issued together (callers woken by one read of replies, a proxy forwarding one
        # read's frames) go out in one write at the end of this loop iteration, not a send() each.
        out = self._out
        out.append(data)
        if len(out) == 1:
            self.loop.call_soon(self._flush)

    def send_owned(self, buf: bytearray, seq_at: int, header: bool, waiter: Waiter, timeout: float) -> None:
        """``send`` of a binary call (not oneway) whose frame the caller made for this call alone:
        its sequence id is set in place at ``seq_at`` (and at byte 8, a header transport's), with
        no ``Frame``, ``MessageHead`` or copy."""
        seq = self.seq + 1
        if seq > MAX_SEQ_ID:
            seq = 1
        pending = self.pending
        while seq in pending or seq in self.abandoned:
            seq = seq + 1 if seq < MAX_SEQ_ID else 1
        self.seq = seq
        _I32.pack_into(buf, seq_at, seq)
        if header:
            _U32.pack_into(buf, 8, seq)
        if timeout > 0:
            deadline = self.loop.time() + timeout
            pending[seq] = _Pending(waiter, deadline)
            if self._timer is None or deadline < self._timer_at:
                self._arm(deadline)
        else:
            pending[seq] = _Pending(waiter, 0.0)
        out = self._out
        out.append(buf)
        if len(out) == 1:
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            if not self.closed and not self.transport.is_closing():
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))
                self.pool.writes += 1

    def _close(self) -> None:
        """Close once what was sent is written (``transport.close`` flushes its own buffer, not ours)."""
        self._flush()
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except RemoteProtocolError as exc:
            self._broken(f"bad frame from upstream: {exc}")
            return
        pending = self.pending
        for f in frames:
            proto = f.protocol
            if proto is None or f.transforms:
                self._broken(f"upstream reply with an unsupported protocol id or transforms {f.transforms}")
                return
            try:
                head = peek_message(f.data, f.payload, proto, decode_name=False)
            except RemoteProtocolError as exc:
                self._broken(f"bad message from upstream: {exc}")
                return
            p = pending.pop(head.seq_id, None)
            if p is None:
                self.abandoned.discard(head.seq_id)
                log.debug("thrift: reply %r from %s matches no call in flight (timed out?)", head, self.slot.endpoint)
                continue
            try:
                p.waiter.reply(f, head)
            except Exception:
                log.exception("thrift: reply handler failed")
        if not pending:
            self.idle_since = self.loop.time()
            if self.draining:
                self._close()

    def _expire(self, seq: int) -> None:
        p = self.pending.pop(seq, None)
        if p is not None:
            self.abandoned.add(seq)
            if len(self.abandoned) > MAX_ABANDONED:
                self._broken(f"{len(self.abandoned)} calls timed out without a reply")
            if not self.pending:
                self.idle_since = self.loop.time()
                if self.draining:
                    self._close()
            p.waiter.fail(ReadTimeout(f"no reply from {self.slot.endpoint} within the call's timeout"))

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(at, self._timeouts)
        self._timer_at = at

    def _timeouts(self) -> None:
        """The timer: expire the calls past their deadline, then wait for the next one."""
        self._timer = None
        # A timer may fire a little before its time (millisecond resolution): that counts as due.
        now = self.loop.time() + 0.001
        for seq in [seq for seq, p in self.pending.items() if 0 < p.deadline <= now]:
            self._expire(seq)
        nxt = min((p.deadline for p in self.pending.values() if p.deadline), default=0.0)
        if nxt and not self.closed:
            self._arm(nxt)

    def _broken(self, why: str) -> None:
        log.warning("thrift: closing upstream connection to %s: %s", self.slot.endpoint, why)
        self._fail_all(UpstreamError(why))
        self.transport.abort()

    def _fail_all(self, exc: MonolakeError) -> None:
        pending, self.pending = self.pending, {}
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for p in pending.values():
            try:
                p.waiter.fail(exc)
            except Exception:
                log.exception("thrift: failure handler failed")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        slot = self.slot
        if self in slot.conns:
            slot.conns.remove(self)
        if self.pending:
            n = len(self.pending)
            self._fail_all(ReadError(f"upstream {slot.endpoint} closed the connection with {n} call(s) in flight"))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._flush()  # calls sent just before (a oneway call, then close) still go out, as before batching
            self.transport.abort()


class ThriftPool:
    """Multiplexed upstream connections of one worker. See the module docstring."""

    def __init__(
        self,
        *,
        max_connections: int = 8,
        max_in_flight: int = 2,
        max_frame_size: int,
        idle_timeout: float = 60.0,
    ) -> None:
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self.max_frame_size = max_frame_size
        self.idle_timeout = idle_timeout
        self.slots: dict[PoolKey, _Slot] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connects = 0
        """Connections opened so far (statistics)."""
        self.writes = 0
        """Writes of call frames so far (statistics: calls sent together share one)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._sweeper = self._loop.call_later(1.0, self._sweep)
        return self._loop

    def send(
        self,
        endpoint: Endpoint,
        frame: Frame,
        head: MessageHead,
        waiter: Waiter | None,
        *,
        connect_timeout: float,
        timeout: float,
        oneway: bool = False,
    ) -> None:
        """Send ``frame`` (a call; ``head`` from ``peek_message``) to ``endpoint``.

        The reply, or the failure, goes to ``waiter``; a oneway call has none and
        its failures are only logged. Never raises for I/O reasons and never blocks.
        """
        assert frame.protocol is not None
        key: PoolKey = (endpoint.key, frame.transport, frame.protocol)
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = _Slot(key, endpoint)
        conn, open_one = slot.assign(self.max_in_flight, self.max_connections)
        if open_one:
            slot.opening += 1
            task = self.loop.create_task(self._open(slot, connect_timeout))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if conn is None:
            slot.queued.append(_Queued(frame, head, waiter, timeout, oneway))
        else:
            conn.send(frame, head, waiter, timeout, oneway)

    def call(
        self,
        endpoint: Endpoint,
        frame: Frame,
        head: MessageHead,
        *,
        connect_timeout: float,
        timeout: float,
    ) -> asyncio.Future[tuple[Frame, MessageHead]]:
        """``send``; await the result for the reply. Raises the waiter's error. On cancellation
        the call stays in flight upstream and its reply is dropped. (The future itself, not a
        coroutine around it: one frame fewer per call.)"""
        fut: asyncio.Future[tuple[Frame, MessageHead]] = self.loop.create_future()
        self.send(endpoint, frame, head, _FutureWaiter(fut), connect_timeout=connect_timeout, timeout=timeout)
        return fut

    def call_owned(
        self,
        endpoint: Endpoint,
        buf: bytearray,
        transport: Transport,
        seq_at: int,
        *,
        connect_timeout: float,
        timeout: float,
    ) -> asyncio.Future[tuple[Frame, MessageHead]]:
        """``call`` of a binary call frame ``buf`` made for this call alone (any sequence id at
        ``seq_at``, the message's): the connection sets its id in place (``send_owned``). A call
        that must wait for a connection is queued as ``send`` queues it."""
        key: PoolKey = (endpoint.key, transport, _BINARY)
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = _Slot(key, endpoint)
        conn, open_one = slot.assign(self.max_in_flight, self.max_connections)
        if open_one:
            slot.opening += 1
            task = self.loop.create_task(self._open(slot, connect_timeout))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        fut: asyncio.Future[tuple[Frame, MessageHead]] = self.loop.create_future()
        if conn is None:
            frame = classify(bytes(buf))
            slot.queued.append(
                _Queued(frame, peek_message(frame.data, frame.payload, _BINARY), _FutureWaiter(fut), timeout, False)
            )
        else:
            conn.send_owned(buf, seq_at, transport is not _FRAMED, _FutureWaiter(fut), timeout)
        return fut

    async def _open(self, slot: _Slot, connect_timeout: float) -> None:
        ep = slot.endpoint
        loop = self.loop
        conn: ThriftUpstream | None = None
        error: MonolakeError | None = None
        try:
            async with asyncio.timeout(connect_timeout):
                if ep.path:
                    _, proto = await loop.create_unix_connection(lambda: ThriftUpstream(self, slot), ep.path)
                elif ep.tls is not None:
                    tls = ep.tls
                    _, proto = await loop.create_connection(
                        lambda: ThriftUpstream(self, slot),
                        ep.host,
                        ep.port,
                        ssl=tls.context,
                        server_hostname=tls.sni or ep.host,
                    )
                else:
                    _, proto = await loop.create_connection(lambda: ThriftUpstream(self, slot), ep.host, ep.port)
            conn = proto
            self.connects += 1
        except TimeoutError:
            error = ConnectTimeout(f"connecting to {ep} timed out after {connect_timeout:g}s")
        except ssl.SSLCertVerificationError as exc:
            error = ConnectError(
                f"TLS handshake with {ep} failed: certificate verify failed: {exc.verify_message or exc.reason}"
            )
        except ssl.SSLError as exc:
            error = ConnectError(f"TLS handshake with {ep} failed: {exc.reason or exc}")
        except OSError as exc:
            error = ConnectError(f"cannot connect to {ep}: {exc.strerror or exc}")
        finally:
            slot.opening -= 1
        queued, slot.queued = slot.queued, []
        if conn is None or conn.closed:
            assert error is not None or conn is not None
            err = error or ConnectError(f"{ep} closed the connection at once")
            log.warning("thrift: upstream connect failed: endpoint=%s: %s", ep, err)
            for q in queued:
                if q.waiter is not None:
                    q.waiter.fail(err)
            return
        slot.conns.append(conn)
        for q in queued:
            conn.send(q.frame, q.head, q.waiter, q.timeout, q.oneway)

    def _sweep(self) -> None:
        loop = self.loop
        now = loop.time()
        for slot in self.slots.values():
            for c in list(slot.conns):
                if not c.pending and now - c.idle_since >= self.idle_timeout:
                    slot.conns.remove(c)
                    c._close()
        self._sweeper = loop.call_later(1.0, self._sweep)

    def drain(self, keys: Iterable[tuple[str, str, int, str]]) -> None:
        """Discovery dropped these endpoints: their idle connections close now, busy ones when
        their calls in flight are answered (or time out); calls still queued for a connect go on."""
        gone = set(keys)
        for key in [k for k in self.slots if k[0] in gone]:
            slot = self.slots[key]
            if slot.opening or slot.queued:
                continue  # a connect in progress: left to the idle sweep
            del self.slots[key]
            for c in slot.conns:
                if c.pending or c.abandoned:
                    c.draining = True
                elif not c.closed:
                    c._close()

    def in_flight(self) -> int:
        return sum(len(c.pending) for s in self.slots.values() for c in s.conns)

    def statistics(self) -> dict[str, int]:
        return {
            "upstream_connections": sum(len(s.conns) for s in self.slots.values()),
            "upstream_connects": self.connects,
            "upstream_in_flight": self.in_flight(),
            "upstream_writes": self.writes,
        }

    def close(self) -> None:
        """Abort every connection; calls in flight fail with ReadError."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in list(self._tasks):
            task.cancel()
        for slot in self.slots.values():
            for c in list(slot.conns):
                c.close()
            queued, slot.queued = slot.queued, []
            for q in queued:
                if q.waiter is not None:
                    q.waiter.fail(ConnectError("the pool was closed"))


class _FutureWaiter:
    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[tuple[Frame, MessageHead]]) -> None:
        self.fut = fut

    def reply(self, frame: Frame, head: MessageHead) -> None:
        if not self.fut.done():
            self.fut.set_result((frame, head))

    def fail(self, exc: MonolakeError) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)
