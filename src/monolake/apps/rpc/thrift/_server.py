"""Thrift RPC server: a user's handler object served from an IDL, on the core Thrift driver.

Theory of operation. The core driver (``core.server._thrift``) cuts each connection
into frames (framed, TTHeader, THeader; binary or compact) and hands every frame to
a dispatcher with a plain call; ``ThriftServer`` adds unframed ("buffered")
connections, told apart by their first byte (an unframed message starts ``80`` or
``82``; a frame length never has its top bit set), which ``_UnframedConnection``
cuts into messages by walking their structs (``_codec.message_end``).

The usual call (binary, framed or TTHeader without metainfo, a method with nothing around
its handler) is served from the read's bytes by ``_Dispatcher.dispatch_bytes``: no ``Frame``,
the reply returned to the connection to write; an ``async def`` handler runs in a long-lived
pump coroutine (``_pump``), so one that returns at once costs no StopIteration. Everything
else goes the general way:
``_Dispatcher.dispatch`` reads the message head (a strict binary call inline, its
name looked up as bytes; others through ``peek_message``), decodes the argument
struct (the method's generated decoder, ``_gen``; thriftpy2 for what it refuses) and
calls the handler inline: a plain ``def`` method, or an
``async def`` one run to its first ``await`` (``coro.send``), so a handler that
never waits costs no task and no loop iteration. One that does wait goes on in a
task (``core._resume.Resume`` carries it on there), as does every call once the service has
layers or a timeout; many calls run at once per connection. The core driver
writes the replies of one read's calls in one write. A header transport (TTHeader,
THeader) carries the sequence id in every frame, so replies go out as calls
finish, out of order; framed and unframed clients match replies by order, so on
those connections the replies wait for the calls before them (a queue per
connection, only while a call waits in a task).

Answers: a value becomes the result struct's ``success``; an exception declared
by the method goes into its result field; ``TApplicationException`` raised by the
handler goes out as it is; anything else is logged with its traceback and
answered ``TApplicationException(INTERNAL_ERROR)``. Unknown methods are answered
``UNKNOWN_METHOD``, undecodable arguments ``PROTOCOL_ERROR`` (the connection
stays up: its framing is intact); a frame that breaks the framing is answered if
its head can be read and the connection closed. Oneway calls are run and never
answered. Each finished call is counted (``ThriftStats``: by method and outcome)
and written to the access log when there is one.

Reload: ``adopt`` swaps the running dispatcher's table for the new one; calls
already running finish on the handler they started on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import struct
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ....core._resume import Resume
from ....core.errors import ConfigError, RemoteProtocolError
from ....core.proto.thrift import (
    AppError,
    Frame,
    MessageType,
    ThriftProtocol,
    Transport,
    application_exception,
    classify,
    encode_frame,
    message_begin,
    peek_message,
    read_header_info,
)
from ....core.server._thrift import ThriftConnection, ThriftServerApp
from ....core.service import Factory, Layer, Stack
from . import _metainfo
from ._codec import StructCodec, message_end
from ._gen import args_decoder, field_encoder
from ._idl import MethodDef, ServiceDef, as_service_def, load_service

if TYPE_CHECKING:
    from ....core.server._settings import ThriftSettings
    from ....core.tls import ServerTlsContexts
    from ...observe._conn_metrics import ThriftStats

log = logging.getLogger("monolake.rpc.thrift")

_FRAMED = Transport.FRAMED
_CALL = MessageType.CALL
_ONEWAY = MessageType.ONEWAY
_REPLY = MessageType.REPLY
_BINARY = ThriftProtocol.BINARY
_BIN_HEAD = struct.Struct("!Ii")
_BIN_CALL = 0x80010000 | MessageType.CALL  # a strict binary CALL's first word
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_STOP = b"\x00"
_join = b"".join
_CURRENT = _metainfo.current


def _framed(frame: Frame, payload: bytes, proto: ThriftProtocol, meta: _metainfo.Metainfo | None) -> bytes:
    """A reply's payload in its call's transport (the call's sequence id; backward metainfo on
    header transports)."""
    if frame.payload == 0:  # unframed
        return payload
    if frame.transport is _FRAMED:
        return _U32.pack(len(payload)) + payload
    return encode_frame(
        frame.transport, payload, seq_id=frame.seq_id, protocol=proto, headers=_metainfo.backward_headers(meta)
    )


def _app_exception_type() -> type:
    from thriftpy2.thrift import TApplicationException

    return TApplicationException


_TAppExc = _app_exception_type()


class ThriftRequest:
    """What server layers see: one call. ``args`` in IDL order; ``metainfo`` is the call's."""

    __slots__ = ("args", "metainfo", "method", "peer", "service")

    def __init__(self, service: str, method: str, args: list[Any], peer: str, metainfo: _metainfo.Metainfo) -> None:
        self.service = service
        self.method = method
        self.args = args
        self.peer = peer
        self.metainfo = metainfo

    def __repr__(self) -> str:
        return f"<ThriftRequest {self.service}.{self.method} from {self.peer}>"


class _Bound:
    __slots__ = (
        "cdecode", "cencode_ok", "decode", "encode_ok", "fn", "framed_head", "framed_size", "is_async", "m",
        "reply_head", "tt_head", "tt_size",
    )  # fmt: skip

    def __init__(self, m: MethodDef, fn: Callable[..., Any]) -> None:
        self.m = m
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        raw = m.name.encode()
        # A binary REPLY's head up to its sequence id: the same bytes for every reply.
        self.reply_head = _BIN_HEAD.pack(0x80010000 | _REPLY, len(raw)) + raw
        # A framed binary reply up to its body: ``framed_head(framed_size + len(body), reply_head, seq)``.
        self.framed_head = struct.Struct(f"!I{len(self.reply_head)}si").pack
        self.framed_size = len(self.reply_head) + 4
        # A TTHeader binary reply without info blocks up to its body (encode_frame's bytes):
        # ``tt_head(tt_size + len(body), 0x1000, header seq, 1, reply_head, seq)``; the 4 zero
        # bytes are the protocol id (binary), no transforms and the padding.
        self.tt_head = struct.Struct(f"!IH2xIH4x{len(self.reply_head)}si").pack
        self.tt_size = len(self.reply_head) + 18
        # Generated binary codecs (``_gen``): the arguments straight into a list, a value
        # straight into its result struct's bytes; None (or a raise) means thriftpy2's path.
        self.decode = args_decoder(m.args_cls)
        self.encode_ok = None if m.void else field_encoder(m.result_cls, 0)
        self.cdecode = args_decoder(m.args_cls, compact=True)  # the same for the compact protocol
        self.cencode_ok = None if m.void else field_encoder(m.result_cls, 0, compact=True)


class _Leaf:
    """The innermost service of a layered server: calls the handler's method."""

    def __init__(self, bound: dict[str, _Bound]) -> None:
        self.bound = bound

    async def __call__(self, req: ThriftRequest) -> Any:
        b = self.bound[req.method]
        if b.is_async:
            return await b.fn(*req.args)
        return b.fn(*req.args)


class _LeafFactory(Factory[Any]):
    def __init__(self, bound: dict[str, _Bound]) -> None:
        self.bound = bound

    def make(self, old: Any) -> Any:
        return _Leaf(self.bound)


class ThriftService:
    """A service of an IDL bound to a handler object: what a ``ThriftServer`` serves.

    ``idl``: a path to a ``.thrift`` file, a ``ServiceDef`` or a thriftpy2 service
    class; ``service``: the service's name when the IDL has several. ``handler``:
    an object with a method per IDL method (``async def``, or ``def`` for CPU-only
    work), taking the arguments in IDL order. ``layers`` (outermost first) wrap the
    handler as ``Service[ThriftRequest, Any]``; ``timeout`` (seconds) bounds each
    call (``TApplicationException(INTERNAL_ERROR)`` past it). Raises ConfigError when
    the IDL cannot be read or the handler lacks a method.
    """

    def __init__(
        self,
        idl: str | ServiceDef | Any,
        handler: object,
        *,
        service: str | None = None,
        layers: Sequence[Layer[ThriftRequest, Any]] = (),
        timeout: float | None = None,
        where: str = "handler",
    ) -> None:
        self.definition = load_service(idl, service) if isinstance(idl, str) else as_service_def(idl)
        self.handler = handler
        self.layers = list(layers)
        self.timeout = timeout
        missing = [m for m in self.definition.methods if not callable(getattr(handler, m, None))]
        if missing:
            raise ConfigError(
                where, f"{type(handler).__name__} lacks method(s) {', '.join(missing)} of {self.definition.name}"
            )
        self.bound = {name: _Bound(m, getattr(handler, name)) for name, m in self.definition.methods.items()}
        self.raw = {name.encode(): b for name, b in self.bound.items()}
        """The bound methods by their names' bytes: a binary call is looked up without decoding its name."""
        self.chain: Any = Stack(self.layers, _LeafFactory(self.bound)).build() if self.layers else None
        self.plain = self.chain is None and not timeout
        """Nothing around the handler: a call runs inline, in a task only once it awaits."""
        self.inline = {k: b for k, b in self.raw.items() if b.decode is not None} if self.plain else {}
        """``raw`` for ``_Dispatcher.dispatch_bytes``: the methods a binary call of which is
        served in place (nothing around the handler, a generated decoder)."""

    @property
    def name(self) -> str:
        return self.definition.name


class _Call:
    """One call being served."""

    __slots__ = ("bound", "conn", "frame", "meta", "name", "ordered", "out", "proto", "seq", "start")

    def __init__(
        self, conn: Any, frame: Frame, name: str, seq: int, proto: ThriftProtocol, start: float, bound: _Bound | None
    ) -> None:
        self.conn = conn
        self.frame = frame
        self.name = name
        self.seq = seq
        self.proto = proto
        self.start = start
        self.bound = bound
        self.meta: _metainfo.Metainfo | None = None
        self.ordered = frame.transport is _FRAMED
        self.out: bytes | None = None


def _begun(
    conn: Any, frame: Frame, name: str, seq: int, proto: ThriftProtocol, start: float, b: _Bound | None, oneway: bool
) -> _Call:
    """The record of a call not answered inside its dispatch; one that expects a reply is now in flight."""
    if not oneway:
        conn.begin()
    return _Call(conn, frame, name, seq, proto, start, b)


async def _invoke(svc: ThriftService, b: _Bound, call: _Call, values: list[Any]) -> Any:
    if svc.chain is not None:
        return await svc.chain(ThriftRequest(svc.name, call.name, values, call.conn.peer, _metainfo.metainfo()))
    if b.is_async:
        return await b.fn(*values)
    return b.fn(*values)


class _Box:
    """An ``async def`` handler's call between ``dispatch_bytes`` and the pump (``_pump``)."""

    __slots__ = ("args", "detached", "error", "fn", "value")

    def __init__(self) -> None:
        self.fn: Any = None
        self.args: list[Any] = []
        self.value: Any = None
        self.error: BaseException | None = None
        self.detached = False


class _Ready(tuple[Any, ...]):
    """``(box,)``, awaitable: yields the box once, then returns None; all in C (a tuple iterator),
    where a generator ``__await__`` would cost a Python call and a generator per call."""

    __slots__ = ()
    __await__ = tuple.__iter__


async def _pump(box: _Box, ready: Any) -> Any:
    """Runs ``async def`` handlers for ``dispatch_bytes``: one ``coro.send`` per call, and a
    handler that returns without waiting is awaited here, inside a coroutine, so its result
    costs no StopIteration (``coro.send`` from Python raises one per call). A handler that
    waits takes the pump with it: ``dispatch_bytes`` sets ``detached`` and hands the pump to a
    task, where it ends as the handler does (returns its value, raises its error)."""
    while True:
        await ready  # hands the call back to dispatch_bytes (it gets the box), and waits for the next
        try:
            value = await box.fn(*box.args)
        except (Exception, asyncio.CancelledError) as exc:
            if box.detached:
                raise
            box.error = exc
        else:
            if box.detached:
                return value
            box.value = value


class _Dispatcher:
    """The core driver's ``Dispatcher`` for one server. See the module docstring."""

    def __init__(
        self,
        name: str,
        service: ThriftService,
        *,
        stats: ThriftStats | None = None,
        access_log: Any = None,
    ) -> None:
        self.name = name
        self.service = service
        self.stats = stats
        self.access_log = access_log
        self._order: dict[Any, deque[_Call]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.codec = StructCodec()
        self.calls = 0
        self.errors = 0
        self._inline = service.inline
        self._timed = stats is not None or access_log is not None
        self._box = _Box()
        self._pump = self._new_pump()

    def _new_pump(self) -> Coroutine[Any, Any, Any]:
        self._box = box = _Box()
        pump = _pump(box, _Ready((box,)))
        pump.send(None)  # up to its first ``await ready``
        return pump

    def adopt(self, new: _Dispatcher) -> None:
        self.service = new.service
        self._inline = new.service.inline
        self.stats = new.stats
        self.access_log = new.access_log
        self._timed = new._timed

    # -- per frame ---------------------------------------------------------------------

    def dispatch(self, conn: Any, frame: Frame) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        proto = frame.protocol
        if proto is None or frame.transforms:
            why = "unsupported protocol id" if proto is None else f"unsupported transforms {list(frame.transforms)}"
            log.warning("thrift: %s: server=%s client=%s", why, self.name, conn.peer)
            kind = AppError.INVALID_PROTOCOL if proto is None else AppError.INVALID_TRANSFORM
            conn.reject(frame, "", frame.seq_id, kind, f"monolake: {why}")
            return
        data = frame.data
        off = frame.payload
        svc = self.service
        b: _Bound | None = None
        oneway = False
        if proto is _BINARY and len(data) - off >= 12:
            # The usual call: a strict binary CALL of a method we serve, read inline (the name as bytes).
            word, n = _BIN_HEAD.unpack_from(data, off)
            if word == _BIN_CALL and n >= 0 and off + 12 + n <= len(data):
                key = data[off + 8 : off + 8 + n]
                b = svc.raw.get(key if key.__class__ is bytes else bytes(key))  # a bytearray slice is unhashable
                if b is not None:
                    name = b.m.name
                    seq = _I32.unpack_from(data, off + 8 + n)[0]
                    body = off + 12 + n
        if b is None:
            try:
                head = peek_message(data, off, proto)
            except RemoteProtocolError as exc:
                log.warning("thrift: bad message: server=%s client=%s: %s", self.name, conn.peer, exc)
                conn.reject(frame, "", frame.seq_id, AppError.PROTOCOL_ERROR, f"monolake: {exc}")
                return
            mtype = head.type
            oneway = mtype == _ONEWAY
            if mtype != _CALL and not oneway:
                log.warning(
                    "thrift: message of type %d is not a call: server=%s client=%s", mtype, self.name, conn.peer
                )
                conn.reject(frame, head.name, head.seq_id, AppError.INVALID_MESSAGE_TYPE, "monolake: not a call")
                return
            name, seq, body = head.name, head.seq_id, head.end
            b = svc.bound.get(name)
        start = loop.time() if self.stats is not None or self.access_log is not None else 0.0
        # The call's record is made only when needed: a call answered at once has none.
        call: _Call | None = None
        queued = False  # on its connection's reply queue (framed: replies in call order)
        # ``conn.begin()`` (the call is in flight) comes with its record: a call answered at
        # once, inside this dispatch, is never in flight (``conn.answer_now``).
        if not oneway and frame.transport is _FRAMED:
            q = self._order.get(conn)
            if q is not None:  # earlier calls still running: this reply waits for theirs
                call = _begun(conn, frame, name, seq, proto, start, b, oneway)
                q.append(call)
                queued = True
        if b is None:
            log.info("thrift: unknown method %r: server=%s client=%s", name, self.name, conn.peer)
            call = call or _begun(conn, frame, name, seq, proto, start, b, oneway)
            self._error(call, oneway, AppError.UNKNOWN_METHOD, f"Unknown method {name}", "unknown_method")
            return
        values: list[Any] | None = None
        dec = b.decode if proto is _BINARY else b.cdecode
        if dec is not None and data.__class__ is bytes:
            try:
                values = dec(data, body)
            except Exception:  # anything unusual: thriftpy2 reads it, or says what is wrong
                values = None
        if values is None:
            try:
                args = self.codec.decode(b.m.args_cls, data[body:], proto)
            except Exception as exc:
                log.warning(
                    "thrift: bad arguments: server=%s client=%s method=%s: %s: %s",
                    self.name, conn.peer, name, type(exc).__name__, exc,
                )  # fmt: skip
                call = call or _begun(conn, frame, name, seq, proto, start, b, oneway)
                self._error(call, oneway, AppError.PROTOCOL_ERROR, f"monolake: bad arguments: {exc}", "bad_request")
                return
            d = args.__dict__
            values = [d[n] for n in b.m.arg_names]
        meta: _metainfo.Metainfo | None = None
        # Only metainfo keys (RPC_...) are read from the info blocks: frames without any skip the parse.
        if frame.info and frame.info < off and data.find(b"RPC_", frame.info, off) >= 0:
            try:
                headers = read_header_info(frame).headers
            except RemoteProtocolError as exc:
                log.warning("thrift: bad header info: server=%s client=%s: %s", self.name, conn.peer, exc)
            else:
                if headers:
                    meta = _metainfo.from_headers(headers)
        # No Metainfo is made for a call that brought none: ``metainfo()`` makes one on demand,
        # in the handler's own context (its task's, or the one set and reset around an inline call).
        if not svc.plain:
            call = call or _begun(conn, frame, name, seq, proto, start, b, oneway)
            self._defer(call, queued, loop.create_task(self._run(call, svc, b, values, oneway, meta, None)))
            return
        # Inline: a plain ``def`` handler, or an ``async def`` one run to its first await; only a
        # call that really waits goes on in a task (in a copy of this context, metainfo included).
        token = _metainfo.current.set(meta)
        try:
            if b.is_async:
                coro = b.fn(*values)
                try:
                    first = coro.send(None)
                except StopIteration as stop:
                    value = stop.value
                else:
                    call = call or _begun(conn, frame, name, seq, proto, start, b, oneway)
                    self._defer(
                        call, queued, loop.create_task(self._run(call, svc, b, values, oneway, None, (coro, first)))
                    )
                    return
            else:
                value = b.fn(*values)
        except asyncio.CancelledError:
            call = call or _begun(conn, frame, name, seq, proto, start, b, oneway)
            call.meta = _metainfo.current.get()
            self._error(call, oneway, AppError.INTERNAL_ERROR, "monolake: call cancelled", "error")
        except Exception as exc:
            call = call or _begun(conn, frame, name, seq, proto, start, b, oneway)
            call.meta = _metainfo.current.get()
            self._failed(call, exc, oneway)
        else:
            if call is None and not oneway and proto is _BINARY:
                self._answer_now(conn, frame, b, seq, value, _metainfo.current.get(), start)
            else:
                call = call or _begun(conn, frame, name, seq, proto, start, b, oneway)
                call.meta = _metainfo.current.get()
                self._succeeded(call, value, oneway)
        finally:
            _metainfo.current.reset(token)

    def dispatch_bytes(self, conn: Any, data: bytes) -> bytes | None:
        """``dispatch`` of the usual call, read in place (no ``Frame``, no ``peek_message``): ``data``
        is one whole frame, at least 16 bytes. Served here when it is a strict binary CALL of a
        method in ``ThriftService.inline``, framed (no call before it on ``conn`` still running)
        or TTHeader without transforms or metainfo, and no metainfo is set in this context: then
        the reply frame for the caller to write (as ``conn.answer_now`` would), or b"" when it
        is answered through ``conn``. Otherwise None, having done nothing (the caller then
        ``dispatch``es it)."""
        if data[4] == 0x80:  # framed binary
            off = 4
            tt = False
        elif data[4] == 0x10 and data[5] == 0 and data[14] == 0 and data[15] == 0:  # TTHeader, binary, no transforms
            off = 14 + (data[12] << 8 | data[13]) * 4
            if off + 12 > len(data) or (off > 16 and data.find(b"RPC_", 16, off) >= 0):
                return None  # too short for a call, or metainfo in the info blocks
            tt = True
        else:
            return None
        word, n = _BIN_HEAD.unpack_from(data, off)
        # A negative n slices b"", which names no method.
        b = self._inline.get(data[off + 8 : off + 8 + n]) if word == _BIN_CALL else None
        if b is None or (not tt and self._order and conn in self._order) or _CURRENT.get() is not None:
            return None
        loop = self._loop
        if loop is None:
            return None  # dispatch() finds the loop first
        body = off + 12 + n
        try:
            values = b.decode(data, body)  # type: ignore[misc]  # inline only has decoders
        except Exception:  # thriftpy2 reads it in dispatch(), or says what is wrong
            return None
        seq = _I32.unpack_from(data, body - 4)[0]
        start = loop.time() if self._timed else 0.0
        # The handler runs with no metainfo (this call brought none), as in dispatch(); one it
        # makes (``metainfo()``) is dropped after it, without a token: the value before was None.
        try:
            if b.is_async:
                box = self._box
                box.fn = b.fn
                box.args = values
                pump = self._pump
                try:
                    first = pump.send(None)
                except BaseException:  # not the handler's error (the pump keeps those): a new pump
                    self._pump = self._new_pump()
                    raise
                if first is not box:  # the handler waits: it goes on in a task with this pump
                    box.detached = True
                    self._pump = self._new_pump()
                    call = _begun(conn, classify(data), b.m.name, seq, _BINARY, start, b, False)
                    task = loop.create_task(self._run(call, self.service, b, values, False, None, (pump, first)))
                    self._defer(call, False, task)
                    return b""
                if box.error is not None:
                    exc, box.error = box.error, None
                    raise exc
                value = box.value
                box.value = None
            else:
                value = b.fn(*values)
        except (Exception, asyncio.CancelledError) as exc:
            call = _begun(conn, classify(data), b.m.name, seq, _BINARY, start, b, False)
            call.meta = _CURRENT.get()
            if isinstance(exc, asyncio.CancelledError):
                self._error(call, False, AppError.INTERNAL_ERROR, "monolake: call cancelled", "error")
            else:
                self._failed(call, exc, False)
            return b""
        finally:
            meta = _CURRENT.get()
            if meta is not None:
                _CURRENT.set(None)
        enc = b.encode_ok
        out: bytes | None = None
        if enc is not None and value is not None and (meta is None or not tt or not meta.backward):
            try:
                out = enc(value)
            except Exception:
                out = None
        if out is None:  # void, None, backward metainfo, or thriftpy2 encodes it (or says why it cannot)
            self._answer_now(conn, classify(data), b, seq, value, meta, start)
            return b""
        self.calls += 1
        if self._timed:
            self._record(conn, b.m.name, seq, "ok", start)
        if tt:
            return b.tt_head(b.tt_size + len(out), 0x1000, _U32.unpack_from(data, 8)[0], 1, b.reply_head, seq) + out
        return b.framed_head(b.framed_size + len(out), b.reply_head, seq) + out

    def _defer(self, call: _Call, queued: bool, task: asyncio.Task[None]) -> None:
        """``call`` goes on in ``task``; on a framed connection the replies after it wait for its reply."""
        if call.ordered and not queued:
            q = self._order.get(call.conn)
            if q is None:
                q = self._order[call.conn] = deque()
            q.append(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        call: _Call,
        svc: ThriftService,
        b: _Bound,
        values: list[Any],
        oneway: bool,
        meta: Any,
        started: tuple[Any, Any] | None,
    ) -> None:
        # A task begun from dispatch runs in a copy of its context, where ``current`` is unset
        # (``started``: the inline part ran with ``current`` set, and the copy has it).
        if meta is not None:
            _metainfo.current.set(meta)
        cm = asyncio.timeout(svc.timeout) if svc.timeout else None
        try:
            if started is not None:
                value = await Resume(*started)  # the usual case: an async method that awaits
            elif cm is None:
                value = await _invoke(svc, b, call, values)
            else:
                async with cm:
                    value = await _invoke(svc, b, call, values)
        except asyncio.CancelledError:
            call.meta = _metainfo.current.get()
            if not oneway:
                self._error(call, oneway, AppError.INTERNAL_ERROR, "monolake: call cancelled", "error")
            raise
        except TimeoutError as exc:
            call.meta = _metainfo.current.get()
            if cm is not None and cm.expired():
                log.warning(
                    "thrift: handler timed out: server=%s client=%s method=%s after %gs",
                    self.name, call.conn.peer, call.name, svc.timeout,
                )  # fmt: skip
                self._error(call, oneway, AppError.INTERNAL_ERROR, "monolake: handler timed out", "timeout")
            else:
                self._failed(call, exc, oneway)
        except Exception as exc:
            call.meta = _metainfo.current.get()
            self._failed(call, exc, oneway)
        else:
            call.meta = _metainfo.current.get()
            self._succeeded(call, value, oneway)

    # -- answers -----------------------------------------------------------------------

    def _answer_now(
        self, conn: Any, frame: Frame, b: _Bound, seq: int, value: Any, meta: _metainfo.Metainfo | None, start: float
    ) -> None:
        """``_succeeded`` for the usual call: binary, a value, nothing before it on the connection."""
        enc = b.encode_ok
        body: bytes | None = None
        if enc is not None and value is not None:
            try:
                body = enc(value)
            except Exception:  # thriftpy2 encodes it below, or says why it cannot
                body = None
        if body is None:
            try:
                body = self._encode_ok(b, value, _BINARY)
            except Exception:
                call = _begun(conn, frame, b.m.name, seq, _BINARY, start, b, False)
                call.meta = meta
                self._succeeded(call, value, False)  # logs it and answers INTERNAL_ERROR
                return
        if frame.transport is _FRAMED and frame.payload:
            # The frame's length, the head and the sequence id in one pack; one copy of the body.
            conn.answer_now(b.framed_head(b.framed_size + len(body), b.reply_head, seq) + body)
        else:
            conn.answer_now(_framed(frame, b.reply_head + _I32.pack(seq) + body, _BINARY, meta))
        self.calls += 1
        if self.stats is not None or self.access_log is not None:
            self._record(conn, b.m.name, seq, "ok", start)

    def _succeeded(self, call: _Call, value: Any, oneway: bool) -> None:
        if oneway:
            self._done(call, "oneway")
            return
        b = call.bound
        assert b is not None
        proto = call.proto
        if (b.encode_ok if proto is _BINARY else b.cencode_ok) is not None or b.m.void:
            try:
                body = self._encode_ok(b, value, proto)
            except Exception:
                pass  # _result below encodes it again, and logs why it cannot
            else:
                if proto is _BINARY:
                    head = b.reply_head + _I32.pack(call.seq)
                else:
                    head = message_begin(call.name, _REPLY, call.seq, proto)
                self._write(call, head + body, "ok")
                return
        m = b.m
        result = m.result_cls()
        if not m.void:
            result.success = value
        self._result(call, result, "ok")

    def _encode_ok(self, b: _Bound, value: Any, proto: ThriftProtocol) -> bytes:
        """The result struct of a call that returned ``value``. Raises when it cannot be encoded."""
        m = b.m
        if m.void:
            return _STOP  # a void result has no field set
        enc = b.encode_ok if proto is _BINARY else b.cencode_ok
        if value is not None and enc is not None:
            try:
                return enc(value)
            except Exception:
                pass  # thriftpy2 encodes it, or raises the error to log
        result = m.result_cls()
        result.success = value
        return self.codec.encode(result, proto)

    def _failed(self, call: _Call, exc: Exception, oneway: bool) -> None:
        assert call.bound is not None
        m = call.bound.m
        if not oneway:
            for field, cls in m.exceptions:
                # By name too: a handler module that loaded the IDL itself raises its own classes.
                if isinstance(exc, cls) or (type(exc).__name__ == cls.__name__ and hasattr(exc, "thrift_spec")):
                    result = m.result_cls()
                    setattr(result, field, exc)
                    self._result(call, result, "exception")
                    return
            if isinstance(exc, _TAppExc):
                app_exc: Any = exc
                self._error(call, oneway, app_exc.type, app_exc.message or "", "error")
                return
        log.error(
            "thrift: handler failed: server=%s client=%s method=%s: %s: %s",
            self.name, call.conn.peer, call.name, type(exc).__name__, exc, exc_info=exc,
        )  # fmt: skip
        self._error(
            call, oneway, AppError.INTERNAL_ERROR, f"monolake: {call.name} failed: {type(exc).__name__}", "error"
        )

    def _result(self, call: _Call, result: Any, outcome: str) -> None:
        try:
            body = self.codec.encode(result, call.proto)
        except Exception as exc:
            log.error(
                "thrift: cannot encode the result: server=%s method=%s: %s: %s",
                self.name, call.name, type(exc).__name__, exc,
            )  # fmt: skip
            self._error(call, False, AppError.INTERNAL_ERROR, f"monolake: bad result: {type(exc).__name__}", "error")
            return
        if call.proto is _BINARY and call.bound is not None:
            head = call.bound.reply_head + _I32.pack(call.seq)
        else:
            head = message_begin(call.name, _REPLY, call.seq, call.proto)
        self._write(call, head + body, outcome)

    def _error(self, call: _Call, oneway: bool, kind: int, message: str, outcome: str) -> None:
        self.errors += 1
        if oneway:
            self._done(call, outcome)
            return
        self._write(call, application_exception(call.name, call.seq, call.proto, kind, message), outcome)

    def _write(self, call: _Call, payload: bytes, outcome: str) -> None:
        data = _framed(call.frame, payload, call.proto, call.meta)
        conn = call.conn
        q = self._order.get(conn) if call.ordered else None
        if q is None:
            conn.answer(data)
        else:
            call.out = data
            while q and q[0].out is not None:
                c = q.popleft()
                conn.answer(c.out)
            if not q:
                del self._order[conn]
        self._done(call, outcome)

    def _done(self, call: _Call, outcome: str) -> None:
        self.calls += 1
        if self.stats is None and self.access_log is None:
            return
        self._record(call.conn, call.name, call.seq, outcome, call.start)

    def _record(self, conn: Any, name: str, seq: int, outcome: str, start: float) -> None:
        assert self._loop is not None
        took = self._loop.time() - start
        if self.stats is not None:
            self.stats.record(self.service.name, name, outcome, took)
        if self.access_log is not None:
            self.access_log.write(
                f"{conn.peer} thrift {self.name} {self.service.name}.{name} seq={seq} {outcome} {took * 1000:.3f}ms"
            )

    # -- the rest ----------------------------------------------------------------------

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def statistics(self) -> dict[str, int]:
        return {"calls": self.calls, "call_errors": self.errors, "handlers_running": len(self._tasks)}


class _UnframedConnection(asyncio.Protocol):
    """A client speaking unframed Thrift: messages back to back, replies in order."""

    def __init__(self, server: ThriftServer) -> None:
        self.server = server
        self.dispatch = server.dispatcher.dispatch
        self.max = server.max_frame_size
        self.transport: Any = None
        self.peer = ""
        self.protocol: ThriftProtocol | None = None
        self.buf = b""
        self.in_flight = 0
        self.closed = False
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else "unix"
        self.server.unframed.add(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while buf and not self.closed:
            proto = self.protocol
            if proto is None:
                proto = self.protocol = ThriftProtocol.BINARY if buf[0] == 0x80 else ThriftProtocol.COMPACT
            try:
                end = message_end(buf, proto)
            except RemoteProtocolError as exc:
                log.warning("thrift: bad unframed message: server=%s client=%s: %s", self.server.name, self.peer, exc)
                self._close()
                return
            if end is None:
                if len(buf) > self.max:
                    log.warning(
                        "thrift: unframed message over %d bytes: server=%s client=%s",
                        self.max, self.server.name, self.peer,
                    )  # fmt: skip
                    self._close()
                    return
                break
            msg, buf = (buf, b"") if end == len(buf) else (buf[:end], buf[end:])
            self.dispatch(self, Frame(msg, _FRAMED, proto, 0))
        self.buf = buf

    def eof_received(self) -> bool | None:
        self.eof = True
        return True if self.in_flight else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.unframed.discard(self)

    def begin(self) -> None:
        self.in_flight += 1
        self.server.unframed_in_flight += 1

    def answer(self, data: bytes | bytearray) -> None:
        if not self.closed:
            self.transport.write(data)
        self.in_flight -= 1
        self.server.unframed_done()
        if self.in_flight == 0 and (self.server.draining or self.eof):
            self._close()

    def answer_now(self, data: bytes | bytearray) -> None:
        if not self.closed:
            self.transport.write(data)
        if self.in_flight == 0 and (self.server.draining or self.eof):
            self._close()

    def reject(self, frame: Frame, name: str, seq_id: int, kind: int, message: str) -> None:
        if not self.closed:
            proto = frame.protocol if frame.protocol is not None else ThriftProtocol.BINARY
            self.transport.write(application_exception(name, seq_id, proto, kind, message))
        self._close()

    def drain(self) -> None:
        if self.in_flight == 0:
            self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.unframed.discard(self)
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.unframed.discard(self)
            self.transport.abort()


class _Sniff(asyncio.Protocol):
    """A new connection until its first byte says framed (the core driver) or unframed."""

    def __init__(self, server: ThriftServer) -> None:
        self.server = server
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.server.sniffing.add(self)
        # A client that connects and sends nothing is closed after header_timeout.
        self.timer = asyncio.get_running_loop().call_later(self.server.settings.header_timeout, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.sniffing.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        server = self.server
        server.sniffing.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        proto: asyncio.Protocol
        # An unframed message starts 0x80 (binary) or 0x82 (compact); a frame length never does.
        proto = _UnframedConnection(server) if data[0] & 0x80 else ThriftConnection(server.inner)
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(data)


class ThriftServer:
    """One Thrift RPC server (listener) in one worker: the runtime's ``ServerApp``.

    Framed, TTHeader and THeader connections run on the core driver
    (``ThriftServerApp``: drain, idle timeout, ``limits.max_pipelined``,
    ``max_frame_size``); unframed ones on ``_UnframedConnection``. Behind a PROXY
    protocol header only framed transports are served.
    """

    def __init__(
        self,
        name: str,
        settings: ThriftSettings,
        dispatcher: _Dispatcher,
        *,
        tls: ServerTlsContexts | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.dispatcher = dispatcher
        self.inner = ThriftServerApp(name, settings, dispatcher, tls=tls)
        self.max_frame_size = settings.max_frame_size
        self.unframed: set[_UnframedConnection] = set()
        self.sniffing: set[_Sniff] = set()
        """Connections that sent nothing yet (closed at once on drain, as idle ones are)."""
        self.unframed_in_flight = 0
        self.draining = False
        self._drained: asyncio.Future[None] | None = None

    @property
    def service(self) -> ThriftService:
        return self.dispatcher.service

    @property
    def ssl_context(self) -> Any:
        return self.inner.ssl_context

    def protocol_factory(self) -> asyncio.BaseProtocol:
        if self.settings.proxy_protocol != "off":
            return self.inner.protocol_factory()
        if self.inner.loop is None:
            self.inner.protocol_factory()  # starts its idle sweep; that first protocol is never connected
        return _Sniff(self)

    def adopt(self, new: ThriftServer) -> None:
        """Serve ``new``'s handler and settings from now on (a reload); running calls finish on theirs.

        New handshakes use ``new``'s certificates; turning TLS on or off needs a new listener.
        """
        self.dispatcher.adopt(new.dispatcher)
        inner, fresh = self.inner, new.inner
        inner.cfg, inner.max_frame_size, inner.max_pipelined = fresh.cfg, fresh.max_frame_size, fresh.max_pipelined
        inner._adopt_tls(fresh.tls, log)
        inner._set_idle_timeout(fresh.idle_timeout)
        self.settings, self.max_frame_size = new.settings, new.max_frame_size

    def unframed_done(self) -> None:
        self.unframed_in_flight -= 1
        if self.unframed_in_flight == 0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def start_draining(self) -> None:
        self.draining = True
        self.inner.start_draining()
        for conn in list(self.unframed):
            conn.drain()
        for sniff in list(self.sniffing):
            sniff.transport.close()

    async def wait_drained(self) -> None:
        await self.inner.wait_drained()
        if self.unframed_in_flight:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def close(self) -> None:
        self.inner.close()
        for conn in list(self.unframed):
            conn.abort()
        for sniff in list(self.sniffing):
            sniff.transport.abort()

    def statistics(self) -> dict[str, int]:
        st = self.inner.statistics()
        st["connections"] += len(self.unframed)
        st["in_flight"] += self.unframed_in_flight
        return st


def build_server(
    name: str,
    settings: ThriftSettings,
    service: ThriftService,
    *,
    tls: ServerTlsContexts | None = None,
    stats: ThriftStats | None = None,
    access_log: Any = None,
) -> ThriftServer:
    return ThriftServer(name, settings, _Dispatcher(name, service, stats=stats, access_log=access_log), tls=tls)


@dataclass(frozen=True, slots=True, kw_only=True)
class ThriftApp:
    """A Thrift RPC server for ``monolake.serve``: ``service`` served on ``listen``.

    ``listen``: "host:port" or "unix:/path"; ``settings``: a ``monolake.apps.config.Server``
    for ``max_frame_size``, ``idle_timeout``, ``limits.max_pipelined`` (its listener and
    proxy_type are replaced); ``tls``: the listener's certificates; ``access_log``:
    "stdout", "stderr" or a path for a line per call.
    """

    name: str
    listen: str
    service: ThriftService
    settings: Any = None
    tls: Any = None
    access_log: str | None = None

    def server_settings(self) -> Any:
        import msgspec

        from ...config import Server

        base = self.settings if self.settings is not None else Server(listener=self.listen)
        return msgspec.structs.replace(base, listener=self.listen, proxy_type="thrift", tls=self.tls)

    def build_app(self, server: Any, old: object) -> ThriftServer:
        from ...observe import AccessLog
        from ...observe._conn_metrics import thrift_stats
        from ...observe._metrics import multiprocess_dir

        tls = None
        if server.tls is not None:
            from ....core.tls import ServerTlsContexts

            tls = ServerTlsContexts(f"servers.{self.name}.tls", server.tls, default_alpn=())
        log_ = None
        if self.access_log:
            kept = old.dispatcher.access_log if isinstance(old, ThriftServer) else None
            log_ = kept if kept is not None else AccessLog(self.access_log, "")  # one file open across reloads
        stats = thrift_stats(self.name) if multiprocess_dir() is not None else None
        return build_server(self.name, server, self.service, tls=tls, stats=stats, access_log=log_)
