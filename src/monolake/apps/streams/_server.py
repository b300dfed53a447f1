"""Serving message streams: a handler called per message, ordered or concurrent, plain or RPC.

A ``CallConnection`` decodes messages (``Framed``) and hands each to the server's
handler, a ``Service[Req, Reply]``: the framework's layers (timeout, concurrency
limit, catch-panic) wrap it like any other. What the handler returns is sent back:
a message (one reply), an async iterable (a server stream: every item, in order),
or None (no reply). A handler may also be a plain ``def`` (a function, or a class with a
``def __call__``) that returns its reply: what it returns is used as it is, and only an
awaitable is awaited, so a handler that needs no I/O costs no coroutine per message.

Calls run on a few worker tasks per connection, not a task per message: "ordered"
semantics is one worker (replies leave in the order the messages came), "concurrent"
starts workers as messages wait, up to ``max_in_flight``, so a slow call does not
hold up the others and replies leave as they finish. While a worker is idle, the calls
of a read start right in the read, as that worker (it is the current task meanwhile):
a handler that answers at once costs no task step, and the replies of the whole read
leave in one write at its end; a call that waits is handed to that worker to finish. Messages received but not yet
started wait in a queue; calls in flight (queued or running) are bounded by
``max_in_flight``, and reading from the socket pauses at the bound (backpressure to
the client). Replies are produced only when the connection has room: a worker waits
for ``writable`` before it sends a stream's next item or a finished call's reply, and
a connection whose peer stops reading also stops reading new calls.

RPC (``rpc=RpcMessages`` for requests and responses): protosocket-rpc's semantics. A
request's id is stamped on its replies; a server stream ends with an ``ended(id)``
message; a cancel (control code 1) aborts the call's handler (its task is cancelled,
or a queued call is dropped) and is answered with ``cancelled(id)``; a handler that
raises is logged and answered with ``cancelled(id)`` (protosocket has no error
reply); a cancel for an id not in flight is normal (the reply crossed it) and only
logged at debug level; an end from the client is ignored. Without RPC there are no
ids: a handler that raises closes the connection (its reply would be missing).

Drain (reload, stop): reading stops, calls in flight finish and their replies go
out, then the connection closes. Every call ends in one ``CallRecord`` handed to
the app's ``on_call`` hook (metrics, access log).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import types
from asyncio.tasks import _enter_task, _leave_task
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from ...core._compiled import WeakReferable
from ...core._resume import Resume
from ...core.errors import DeadlineExceeded, Overloaded
from ...core.server._lifecycle import DrainSignal
from ...core.service import Service
from ._codec import Codec
from ._conn import Framed, MessageConnection
from ._messages import CANCEL, RpcMessages

log = logging.getLogger("monolake.streams")

Semantics = Literal["ordered", "concurrent"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSettings:
    """How a message server treats its connections."""

    semantics: Semantics = "concurrent"
    """"ordered": one call at a time per connection, replies in order; "concurrent": up to
    ``max_in_flight`` calls at once, replies as they finish."""
    max_in_flight: int = 1024
    """Calls received and not finished per connection; reading pauses at this many."""
    idle_timeout: float | None = 600.0
    """Seconds without a message received or a call in flight before the connection closes."""


@dataclass(slots=True)
class CallRecord:
    """One call, as metrics and the access log see it."""

    server: str
    peer: str
    message_id: int
    outcome: str
    """"ok", "error", "rejected" (``RejectCall``), "cancelled" (by the client) or "aborted" (the
    connection went first)."""
    replies: int
    seconds: float


class RejectCall(Exception):
    """Raised by a handler to refuse a call: answered with ``cancelled(id)`` (RPC), no error logged
    (protosocket-rpc's ``RpcKind::Cancelled``). Without RPC it closes the connection."""


_COROUTINE: Final = types.CoroutineType


def handler_call(service: Any) -> Callable[[Any], Any]:
    """How a connection calls ``service`` per message: an instance of a Python class through its
    ``__call__`` as a bound method (calling the instance goes through the type's call slot,
    which looks the method up and packs the arguments in a tuple, every time)."""
    fn = getattr(type(service), "__call__", None)  # noqa: B004 (the method itself, not callability)
    if isinstance(fn, types.FunctionType):
        return cast(Callable[[Any], Any], types.MethodType(fn, service))
    return cast(Callable[[Any], Any], service)


_DONE = object()
"""``_inline``'s mark for a batch that ran to its end."""


class _Batch:
    """Messages ``messages[next:end]``, run by one ``_batch`` coroutine."""

    __slots__ = ("end", "messages", "next")

    def __init__(self, messages: list[Any], start: int, end: int) -> None:
        self.messages = messages
        self.next = start
        self.end = end


_Handoff = Resume | None
"""What an idle worker is woken with: a call to finish, or None (messages are queued)."""


class CallConnection(Framed[Any]):
    """One connection of a message server (see the module docstring)."""

    def __init__(self, app: MessageServerApp) -> None:
        super().__init__(app.codec, idle_timeout=app.settings.idle_timeout, label=f"servers.{app.name}")
        self._app = app
        self._service = app.service
        self._call_fn = handler_call(app.service)
        self._rpc = app.requests
        self._replies = app.responses
        self._max_workers = 1 if app.settings.semantics == "ordered" else app.settings.max_in_flight
        self._max_in_flight = app.settings.max_in_flight
        self._resume_at = app.settings.max_in_flight // 2
        self._queue: deque[Any] = deque()
        self._in_flight = 0
        self._workers = 0
        self._ready = 0
        """Workers not in a call (idle, or started and not yet running)."""
        self._idle: list[tuple[asyncio.Task[None], asyncio.Future[_Handoff]]] = []
        """Workers waiting for messages: each task and the future it awaits."""
        self._ctx = contextvars.copy_context()
        """Where calls started inline run: this connection's own, as a worker task's would be."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._cancelled: set[int] = set()
        self._draining = False
        self._on_call = app.on_call
        self._reply_type: type | None = None
        """A handler's result of this type was sent as one reply (so it is not a stream)."""

    # -- Framed -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._app.conns.add(self)
        if self._app.draining:
            self.start_draining()

    def _deliver(self, messages: list[Any]) -> None:
        q = self._queue
        if not q and self._idle:
            # A worker is free and none has anything queued: start the calls right here
            # (most finish at once), not in a task's next step.
            messages = self._ctx.run(self._inline, messages)
            if not messages:
                if self._draining:
                    self._maybe_done()
                self._settle_inline()
                return
        rpc = self._rpc
        if rpc is None:
            q.extend(messages)
            self._in_flight += len(messages)
        else:
            for m in messages:
                code = rpc.control_code(m)
                if code == 0:
                    q.append(m)
                    self._in_flight += 1
                elif code == CANCEL:
                    self._cancel(rpc.message_id(m))
                # END from a client means nothing to a server (protosocket ignores it too)
        if self._draining:
            self._maybe_done()
        idle = self._idle
        woken = 0
        while idle and woken < len(q):
            _, fut = idle.pop()
            if not fut.done():
                fut.set_result(None)
                woken += 1
        if q and self._ready == 0 and self._workers < self._max_workers:
            self._spawn()
        if self._in_flight >= self._max_in_flight or self._w_paused:
            self._set_full(True)

    def _busy(self) -> bool:
        return self._in_flight > 0

    def _on_eof(self) -> bool | None:
        # The client sends no more calls; answer those in flight, then close.
        t = self._transport
        self._draining = True
        if self._in_flight == 0:
            return None
        return True if t is not None and t.can_write_eof() else None

    def _on_write_paused(self) -> None:
        self._set_full(True)  # no new calls while the client does not take our replies

    def _on_write_resumed(self) -> None:
        if self._in_flight <= self._resume_at and not self._draining:
            self._set_full(False)

    def _on_lost(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for _, fut in self._idle:
            if not fut.done():
                fut.cancel()
        self._idle.clear()
        self._app.conn_done(self)

    # -- drain ----------------------------------------------------------------------------

    def start_draining(self) -> None:
        """Take no more calls; close once those in flight are answered."""
        self._draining = True
        self._set_full(True)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._draining and self._in_flight == 0 and not self.closed:
            self.close()

    # -- calls ------------------------------------------------------------------------------

    def _spawn(self) -> None:
        # One more worker only when none is free to take the next message: a handler that
        # answers at once lets one worker serve a whole read without new tasks.
        assert self._loop is not None
        self._workers += 1
        self._ready += 1
        task = self._loop.create_task(self._work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel(self, message_id: int) -> None:
        task = self._running.get(message_id)
        if task is not None:
            self._cancelled.add(message_id)
            task.cancel()
            return
        rpc = self._rpc
        assert rpc is not None
        for m in self._queue:
            if rpc.message_id(m) == message_id:
                self._queue.remove(m)
                self._in_flight -= 1
                self._finish(message_id, "cancelled", 0, time.monotonic())
                return
        log.debug(
            "servers.%s peer=%s: cancel for call %d, which is not in flight", self._app.name, self.peer, message_id
        )

    async def _work(self) -> None:
        q = self._queue
        loop = self._loop
        assert loop is not None
        # No ids and no call hook: nothing to record per call, so the call is inlined here.
        plain = self._rpc is None and self._on_call is None
        me = asyncio.current_task()
        assert me is not None
        try:
            while not self.closed:
                while q:
                    message = q.popleft()
                    self._ready -= 1
                    if q and self._ready == 0 and self._workers < self._max_workers:
                        self._spawn()  # this call may block: someone takes the next one
                    try:
                        if not plain:
                            await self._call(message, me)
                        else:
                            await self._plain_call(message)
                    finally:
                        self._ready += 1
                if self._draining or self.closed:
                    return
                fut: asyncio.Future[_Handoff] = loop.create_future()
                self._idle.append((me, fut))
                handed = await fut
                if handed is not None:  # a call started inline now waits: it finishes here
                    try:
                        await handed
                    finally:
                        self._ready += 1
                    self._settle()
        finally:
            self._workers -= 1
            self._ready -= 1

    def _inline(self, messages: list[Any]) -> list[Any]:
        """Run the calls of ``messages`` now, as an idle worker (the current task while they
        run, so ``asyncio.timeout``, ``current_task`` and a cancel reach a call as in a
        worker). One coroutine (``_batch``) runs them in turn: a handler that finishes at once
        costs no task step and no StopIteration of its own. When a call waits, that coroutine
        is handed to the worker, which finishes that call only; the calls after it take the
        next idle worker (concurrent) or wait in the queue (ordered, or no idle worker left).
        Returns the messages not started."""
        loop = self._loop
        assert loop is not None
        idle = self._idle
        n = len(messages)
        box = _Batch(messages, 0, n)
        while box.next < n and idle and not self.closed:
            task, fut = idle[-1]
            if fut.done():  # woken already (its connection is closing)
                idle.pop()
                continue
            try:
                _enter_task(loop, task)
            except RuntimeError:  # called from inside a task: leave the calls to the workers
                break
            coro = self._batch(box, task)
            waits: Any = _DONE
            try:
                waits = coro.send(None)
            except StopIteration:
                pass  # the batch finished inline: nothing is left to hand to a worker
            except asyncio.CancelledError:  # raised by a handler itself: no task to end
                self.fail(RuntimeError("a handler raised CancelledError without being cancelled"))
                return []
            finally:
                _leave_task(loop, task)
            if waits is _DONE:
                continue
            idle.pop()
            self._ready -= 1  # busy from now: a queued message must not wait for it
            rest = box.next
            if self._rpc is None and self._on_call is None:
                self._in_flight -= box.end - rest  # counted again where they start (or queue)
            box.end = rest  # that coroutine stops after its call: the rest is started here
            fut.set_result(Resume(coro, waits))
            box = _Batch(messages, rest, n)
            if self._max_workers == 1:
                break  # ordered: the rest wait in the queue for the call in flight
        return messages[box.next :] if box.next else messages

    async def _batch(self, box: _Batch, task: asyncio.Task[Any]) -> None:
        """The calls of ``box`` in turn (see ``_inline``)."""
        rpc = self._rpc
        if rpc is not None or self._on_call is not None:
            messages = box.messages
            while box.next < box.end:
                m = messages[box.next]
                box.next += 1
                if rpc is not None:
                    code = rpc.control_code(m)
                    if code != 0:
                        if code == CANCEL:
                            self._cancel(rpc.message_id(m))
                        continue  # END from a client means nothing to a server
                self._in_flight += 1
                await self._call(m, task)
            return
        await self._batch_plain(box)

    async def _batch_plain(self, box: _Batch) -> None:
        """``_batch`` for a plain handler (no ids, no call hook): the reply is sent as soon as
        the handler returns. The batch counts its messages in flight at once; ``_inline`` takes
        back those it moves on when a call waits (``box.end`` then stops this loop)."""
        call = self._call_fn
        messages = box.messages
        i = start = box.next
        self._in_flight += box.end - i
        reply_type: type | None = None  # a result of this type was sent as it is: so may the next
        try:
            while i < box.end:
                m = messages[i]
                i += 1
                box.next = i
                try:
                    # A handler's coroutine is awaited (another awaitable too: a compiled service's);
                    # a plain ``def``'s reply is taken as it is, with no coroutine at all.
                    result = call(m)
                    if type(result) is _COROUTINE or (
                        result is not None and type(result) is not reply_type and hasattr(result, "__await__")
                    ):
                        result = await result
                    if type(result) is reply_type and not self._w_paused:
                        self.send(result)  # no hasattr per message: it costs an AttributeError when False
                    elif result is None or self._w_paused or hasattr(result, "__aiter__"):
                        await self._reply(0, result)
                    else:
                        self.send(result)
                        reply_type = type(result)
                except asyncio.CancelledError:
                    if not self.closed:
                        raise
                except Exception as exc:
                    self._failed(0, exc)
                    if self.closed:
                        return
        finally:
            self._in_flight -= i - start

    async def _plain_call(self, message: Any) -> None:
        """One call of a plain handler, by a worker from the queue."""
        try:
            result = self._call_fn(message)
            if type(result) is _COROUTINE or (
                result is not None and type(result) is not self._reply_type and hasattr(result, "__await__")
            ):
                result = await result
            if type(result) is self._reply_type and not self._w_paused:
                self.send(result)
            else:
                await self._reply(0, result)
        except asyncio.CancelledError:
            if not self.closed:
                raise
        except Exception as exc:
            self._failed(0, exc)
        finally:
            self._in_flight -= 1
        self._settle()

    def _settle_inline(self) -> None:
        if self._in_flight >= self._max_in_flight or self._w_paused:
            self._set_full(True)
        else:
            self._settle()

    async def _call(self, message: Any, task: asyncio.Task[Any] | None) -> None:
        """One call with an id or a call hook, run by ``task`` (the worker it runs as: a cancel
        for its id cancels that task)."""
        rpc = self._rpc
        on_call = self._on_call
        started = time.monotonic() if on_call is not None else 0.0
        outcome = "ok"
        replies = 0
        mid = 0
        if rpc is not None:
            mid = rpc.message_id(message)
            if task is not None:
                self._running[mid] = task
        try:
            result = self._call_fn(message)
            if type(result) is _COROUTINE or (
                result is not None and type(result) is not self._reply_type and hasattr(result, "__await__")
            ):
                result = await result
            if type(result) is self._reply_type and not self._w_paused:
                if self._replies is not None:
                    self._replies.set_message_id(result, mid)
                self.send(result)
                replies = 1
            else:
                replies = await self._reply(mid, result)
        except asyncio.CancelledError:
            if mid in self._cancelled and rpc is not None:
                self._cancelled.discard(mid)
                if task is not None:
                    task.uncancel()
                outcome = "cancelled"
            elif self.closed:
                outcome = "aborted"
            else:
                raise
        except Exception as exc:
            outcome = self._failed(mid, exc)
        finally:
            if rpc is not None:
                self._running.pop(mid, None)
                if self._cancelled:
                    self._cancelled.discard(mid)
            self._in_flight -= 1
        if on_call is None and outcome == "ok":
            if self._full or self._draining:
                self._settle()
            return
        self._finish(mid, outcome, replies, started)

    async def _reply(self, mid: int, result: Any) -> int:
        """Send what the handler returned; returns the replies sent."""
        if result is None:
            if self._rpc is not None:
                self._reply_end(mid)
            return 0
        if hasattr(result, "__aiter__"):
            return await self._stream(mid, result)
        if self._w_paused:
            await self.wait_writable()
        if self._replies is not None:
            self._replies.set_message_id(result, mid)
        self.send(result)
        self._reply_type = type(result)  # not a stream: the next of this type is sent at once
        return 1

    def _failed(self, mid: int, exc: Exception) -> str:
        """A handler raised: log it (``RejectCall`` quietly); without RPC, close the connection
        (no ids: a missing reply would pair the rest wrongly). Returns the call's outcome."""
        if self.closed:
            return "aborted"
        if isinstance(exc, RejectCall):
            if self._rpc is None:
                self.fail(exc)
            return "rejected"
        if isinstance(exc, Overloaded | DeadlineExceeded):  # the server's own limits: no traceback
            log.warning("servers.%s peer=%s call %d: %s: %s", self._app.name, self.peer, mid, type(exc).__name__, exc)
            if self._rpc is None:
                self.fail(exc)
            return "error"
        log.error(
            "servers.%s handler=%s peer=%s call %d failed: %s: %s",
            self._app.name,
            self._app.handler,
            self.peer,
            mid,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        if self._rpc is None:
            self.fail(exc)
        return "error"

    def _finish(self, mid: int, outcome: str, replies: int, started: float) -> None:
        if self._rpc is not None and outcome in ("cancelled", "error", "rejected") and not self.closed:
            self._reply_cancelled(mid)
        on_call = self._on_call
        if on_call is not None:
            on_call(CallRecord(self._app.name, self.peer, mid, outcome, replies, time.monotonic() - started))
        self._settle()

    def _settle(self) -> None:
        """A call ended: resume reading, or close a draining connection with nothing in flight."""
        # Resume at half the bound, not one below it: one pause per half-window, not per call.
        if self._full and self._in_flight <= self._resume_at and not self._w_paused and not self._draining:
            self._set_full(False)
        if self._draining:
            self._maybe_done()

    async def _stream(self, mid: int, items: Any) -> int:
        replies = self._replies
        n = 0
        async for item in items:
            if replies is not None:
                replies.set_message_id(item, mid)
            self.send(item)
            n += 1
            if self._w_paused:
                await self.wait_writable()  # the next item is produced only when there is room
            elif not n & 255:
                await asyncio.sleep(0)  # a producer that never waits still lets the loop run
        if self._rpc is not None:
            self._reply_end(mid)
        return n

    def _reply_end(self, mid: int) -> None:
        assert self._replies is not None
        self.send(self._replies.ended(mid))

    def _reply_cancelled(self, mid: int) -> None:
        assert self._replies is not None
        self.send(self._replies.cancelled(mid))


class MessageServerApp(WeakReferable):  # WeakReferable: the metrics sample apps weakly
    """One message server (listener) in one worker: the runtime's ``ServerApp``.

    ``service`` is either called per message (``per_message=True``: a ``CallConnection``
    runs it) or once per connection with a ``MessageConnection`` (the user's code loops
    ``async for message in conn``). A reload's ``adopt`` swaps the service (and codec and
    settings) for connections accepted from then on.
    """

    def __init__(
        self,
        name: str,
        service: Service[Any, Any],
        codec: Codec[Any],
        *,
        per_message: bool = True,
        settings: StreamSettings | None = None,
        requests: RpcMessages[Any] | None = None,
        responses: RpcMessages[Any] | None = None,
        handler: str = "",
        tls: Any = None,
        on_call: Callable[[CallRecord], None] | None = None,
    ) -> None:
        if (requests is None) != (responses is None):
            raise ValueError("RPC needs both requests and responses accessors (or neither)")
        self.name = name
        self.service = service
        self.codec = codec
        self.per_message = per_message
        self.settings = settings if settings is not None else StreamSettings()
        self.requests = requests
        self.responses = responses
        self.handler = handler or type(service).__qualname__
        self.tls = tls
        self.on_call = on_call
        self.conns: set[Framed[Any]] = set()
        self.draining = False
        self._drained = DrainSignal()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed_stats = {"messages_in": 0, "messages_out": 0, "bytes_in": 0, "bytes_out": 0}

    @property
    def ssl_context(self) -> Any:
        return self.tls.ssl_context if self.tls is not None else None

    def protocol_factory(self) -> Framed[Any]:
        if self.per_message:
            return CallConnection(self)
        return MessageConnection(
            self.codec,
            idle_timeout=self.settings.idle_timeout,
            max_queued=self.settings.max_in_flight,
            label=f"servers.{self.name}",
            on_made=self._serve_connection,
            on_lost=self.conn_done,
        )

    def _serve_connection(self, conn: MessageConnection[Any]) -> None:
        self.conns.add(conn)
        task = asyncio.get_running_loop().create_task(self._run_service(conn, self.service))
        self._tasks.add(task)  # held here: the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _run_service(self, conn: MessageConnection[Any], service: Service[Any, Any]) -> None:
        try:
            await service(conn)
        except Exception as exc:
            if not conn.closed:
                log.error(
                    "servers.%s handler=%s peer=%s failed: %s: %s",
                    self.name,
                    self.handler,
                    conn.peer,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
                conn.abort()
                return
        conn.close()

    def conn_done(self, conn: Framed[Any]) -> None:
        self.conns.discard(conn)
        st = self.closed_stats
        st["messages_in"] += conn.messages_in
        st["messages_out"] += conn.messages_out
        st["bytes_in"] += conn.bytes_in
        st["bytes_out"] += conn.bytes_out
        if not self.conns:
            self._drained.set()

    def adopt(self, new: MessageServerApp) -> None:
        """Serve new connections with ``new``'s service, codec and settings (a reload's commit)."""
        self.service = new.service
        self.codec = new.codec
        self.settings = new.settings
        self.requests = new.requests
        self.responses = new.responses
        self.per_message = new.per_message
        self.handler = new.handler
        self.on_call = new.on_call
        if self.tls is not None and new.tls is not None:
            self.tls.adopt(new.tls)

    def start_draining(self) -> None:
        self.draining = True
        for conn in list(self.conns):
            if isinstance(conn, CallConnection | MessageConnection):
                conn.start_draining()

    async def wait_drained(self) -> None:
        if self.conns:
            await self._drained.wait()

    def close(self) -> None:
        for conn in list(self.conns):
            conn.abort()

    def statistics(self) -> dict[str, int]:
        """Open connections, calls in flight, and messages and bytes each way (closed connections included)."""
        st = dict(self.closed_stats)
        flight = 0
        for c in self.conns:
            st["messages_in"] += c.messages_in
            st["messages_out"] += c.messages_out
            st["bytes_in"] += c.bytes_in
            st["bytes_out"] += c.bytes_out
            if isinstance(c, CallConnection):
                flight += c._in_flight
        st["connections"] = len(self.conns)
        st["in_flight"] = flight
        return st
