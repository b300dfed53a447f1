"""Message stream servers from TOML (``[servers.NAME.streams]``) and from Python (``StreamsApp``).

The application tier's one job here: turn the config (codec name, "module:Class"
message types, "module:attr" handler, semantics and limits) into a core-style
``MessageServerApp``. The handler is read like a handler server's (a Factory, Stack,
Service class or callable) and built with ``Stack.build(old)``, so a reload hands the
running service to ``Factory.make(old)`` and state is kept; the running app adopts
the new chain for connections accepted after the reload. ``request_timeout`` and
``max_concurrency`` of the server wrap the handler in the core's Timeout and
ConcurrencyLimit layers (a call past its deadline, or shed, is answered like a
failed one: ``cancelled(id)`` with RPC, a closed connection without).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ...core.errors import ConfigError
from ...core.service import Factory, Layer, Stack
from ...core.service.layers import ConcurrencyLimitLayer, TimeoutLayer
from ._codec import BytesCodec, Codec, MsgpackCodec, ProtobufCodec
from ._messages import Fields, RpcMessages
from ._metrics import CallLog, streams_stats
from ._server import CallRecord, MessageServerApp, StreamSettings

if TYPE_CHECKING:
    from ..config import Server, ServerTls

S = TypeVar("S")


def server_layers(server: Server) -> list[Layer[Any, Any]]:
    """The core layers a server's settings ask for, outermost first."""
    layers: list[Layer[Any, Any]] = []
    if server.max_concurrency is not None:
        layers.append(ConcurrencyLimitLayer(server.max_concurrency))  # shed: Overloaded, a failed call
    if server.request_timeout is not None:
        layers.append(TimeoutLayer(server.request_timeout))
    return layers


def load_object(spec: str, where: str, *, base_dir: str | None, modules: Mapping[str, ModuleType] | None) -> Any:
    """``module:attr`` imported (the config's directory first). Raises ConfigError naming ``where``."""
    from ..proxy._filters import load_object as load
    from ..proxy._filters import make_importable

    make_importable(base_dir)
    return load(spec, where, modules)


class _Awaited:
    """A plain ``def`` handler under layers: its reply awaited only when it is awaitable (a layer
    awaits the service it wraps, so the handler's own no-coroutine call cannot be kept there)."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, req: Any, /) -> Any:
        reply = self.inner(req)
        if inspect.isawaitable(reply):
            return await reply
        return reply


class AwaitPlain(Layer[Any, Any]):
    """Innermost under layers: a handler whose call is not a coroutine function is wrapped in
    ``_Awaited``; an ``async def`` one is left as it is. Added by the builders only when there are
    layers (without any, the server calls a plain ``def`` directly)."""

    def layer(self, inner: Any) -> Any:
        if inspect.iscoroutinefunction(inner) or inspect.iscoroutinefunction(type(inner).__call__):
            return inner
        return _Awaited(inner)


def with_layers(layers: Sequence[Layer[Any, Any]]) -> list[Layer[Any, Any]]:
    """``layers`` with ``AwaitPlain`` innermost, when there are any."""
    return [*layers, AwaitPlain()] if layers else []


def make_codec(kind: str, message: Any, max_message_size: int) -> Codec[Any]:
    if kind == "protobuf":
        return ProtobufCodec(message, max_message_size=max_message_size)
    if kind == "msgpack":
        return MsgpackCodec(message if message is not None else Any, max_message_size=max_message_size)
    return BytesCodec(max_message_size=max_message_size)


def _server_tls(name: str, tls: ServerTls | None) -> Any:
    if tls is None:
        return None
    from ...core.tls import ServerTlsContexts

    return ServerTlsContexts(f"servers.{name}.tls", tls, default_alpn=())


def build_streams_app(
    name: str,
    server: Server,
    base_dir: str | None,
    old: object = None,
    *,
    modules: Mapping[str, ModuleType] | None = None,
    access_log_fd: int | None = None,
) -> MessageServerApp:
    """The app of a server with a ``[streams]`` table. Raises ConfigError."""
    from ..proxy._handler import load_handler

    st = server.streams
    assert st is not None
    where = f"servers.{name}.streams"
    layers, factory, label = load_handler(st.handler, f"{where}.handler", base_dir=base_dir, modules=modules)
    message = load_object(st.message, f"{where}.message", base_dir=base_dir, modules=modules) if st.message else None
    if st.codec == "protobuf" and not callable(getattr(message, "FromString", None)):
        raise ConfigError(f"{where}.message", f"{st.message} is not a protobuf message class (no FromString)")
    requests: RpcMessages[Any] | None = None
    responses: RpcMessages[Any] | None = None
    if st.rpc:
        assert st.response is not None
        response = load_object(st.response, f"{where}.response", base_dir=base_dir, modules=modules)
        if message is None:
            raise ConfigError(f"{where}.message", "rpc needs the message class")
        for cls, key in ((message, "message"), (response, "response")):
            try:
                probe = cls()
                getattr(probe, st.id_field)
                getattr(probe, st.code_field)
            except Exception as exc:
                raise ConfigError(
                    f"{where}.{key}", f"cannot read {st.id_field!r} and {st.code_field!r} of {cls!r}(): {exc}"
                ) from None
        requests = Fields(message, id_field=st.id_field, code_field=st.code_field)
        responses = Fields(response, id_field=st.id_field, code_field=st.code_field)
    codec = make_codec(st.codec, message, st.max_message_size)
    prev = old.service if isinstance(old, MessageServerApp) else None
    try:
        service = Stack(with_layers([*server_layers(server), *layers]), factory).build(prev)
    except ConfigError as exc:
        raise ConfigError(f"{where}.handler", f"stack: {exc}") from None
    settings = StreamSettings(
        semantics=st.semantics, max_in_flight=st.max_in_flight, idle_timeout=st.idle_timeout or None
    )
    app = MessageServerApp(
        name,
        service,
        codec,
        settings=settings,
        requests=requests,
        responses=responses,
        handler=label,
        tls=_server_tls(name, server.tls),
    )
    app.on_call = _on_call(app, access_log_fd)
    return app


def _on_call(app: MessageServerApp, access_log_fd: int | None) -> Any:
    stats = streams_stats(app)
    log = CallLog(access_log_fd) if access_log_fd is not None else None
    if stats is None:
        return log
    if log is None:
        return stats.record
    record = stats.record

    def both(rec: CallRecord) -> None:
        record(rec)
        log(rec)

    return both


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamsApp(Generic[S]):
    """A message stream server for ``monolake.serve``: ``factory``'s service is called per
    message decoded with ``codec`` (``per_message=True``) or once per ``MessageConnection``.

    ``listen``: "host:port" or "unix:/path"; ``tls``: ``monolake.apps.config.ServerTls``;
    ``rpc``: the (requests, responses) accessors for protosocket-rpc's envelope, e.g.
    ``(Fields(Request), Fields(Response))``; ``streams``: semantics and limits; ``layers``:
    outermost first.
    """

    name: str
    listen: str
    factory: Factory[S]
    codec: Codec[Any]
    per_message: bool = True
    rpc: tuple[RpcMessages[Any], RpcMessages[Any]] | None = None
    streams: StreamSettings = field(default_factory=StreamSettings)
    layers: Sequence[Layer[Any, Any]] = ()
    tls: ServerTls | None = None
    settings: Server | None = None
    """Listener settings (``backlog``) as ``HttpApp``'s."""
    on_call: Callable[[CallRecord], None] | None = None
    """Called as each call ends (per-message servers): metrics, logs of your own."""

    def server_settings(self) -> Server:
        """The listener's settings as ``serve`` gives them to the runtime (a tcp server)."""
        import msgspec

        from ..config import Server

        base = self.settings if self.settings is not None else Server(listener=self.listen)
        return msgspec.structs.replace(base, listener=self.listen, proxy_type="tcp", tls=self.tls)

    def build_app(self, server: Server, old: object) -> MessageServerApp:
        """The worker's app (``monolake.serve``'s builder calls it; a reload passes the running one)."""
        name = self.name
        prev = old.service if isinstance(old, MessageServerApp) else None
        service = Stack(with_layers(self.layers), self.factory).build(prev)
        req, resp = self.rpc if self.rpc is not None else (None, None)
        return MessageServerApp(
            name,
            service,
            self.codec,
            per_message=self.per_message,
            settings=self.streams,
            requests=req,
            responses=resp,
            tls=_server_tls(name, server.tls),
            on_call=self.on_call,
        )
