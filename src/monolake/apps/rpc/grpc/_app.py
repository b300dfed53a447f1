"""Serving a ``GrpcServer``: from Python (``grpc_app`` for ``monolake.serve``) and from TOML
(``[servers.NAME.rpc_grpc]``, read by the handler-server builder through ``grpc_factory``).

From TOML the servicer module is imported as a ``handler`` module is (the config file's
directory first) and reloaded with it in two phases; the ``.proto`` files are compiled
once (``load_protos``' cache), by the supervisor's dry build before any worker needs them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ....core.errors import ConfigError
from ..._apps import HttpApp
from ...config import Server
from ._metrics import GrpcStats, grpc_stats
from ._protos import Protos, load_protos
from ._server import DEFAULT_MAX_RECEIVE, GrpcServer

if TYPE_CHECKING:
    from ....core.proto.http1 import Request, Response
    from ....core.service import Layer
    from ...config import RpcGrpc, ServerTls

access = logging.getLogger("monolake.grpc.access")


def grpc_settings(server: Server) -> Server:
    """``server`` as a gRPC server needs it: TLS offers "h2" by ALPN unless ``tls.alpn`` says
    otherwise (an http server's default is "http/1.1", which gRPC clients refuse); and
    ``limits.max_body_bytes`` left at its default is off, since it counts a stream's bytes over its
    whole life and would end a long client stream; gRPC bounds each message instead
    (``max_receive_message_bytes``)."""
    import msgspec

    from ...config import Limits

    tls = server.tls
    if tls is not None and tls.alpn is None:
        server = msgspec.structs.replace(server, tls=msgspec.structs.replace(tls, alpn=["h2"]))
    if server.limits.max_body_bytes == Limits().max_body_bytes:
        server = msgspec.structs.replace(server, limits=msgspec.structs.replace(server.limits, max_body_bytes=0))
    return server


class CallRecorder:
    """``on_call`` of a served ``GrpcServer``: counts the call, and logs it when asked."""

    __slots__ = ("log", "server", "stats")

    def __init__(self, server: str, stats: GrpcStats, log: bool) -> None:
        self.server = server
        self.stats = stats
        self.log = log

    def __call__(self, method: str, code: int, seconds: float) -> None:
        self.stats.record(method, code, seconds)
        if self.log:
            access.info("grpc server=%s method=%s code=%d time=%.6f", self.server, method, code, seconds)


def grpc_app(
    name: str,
    listen: str,
    protos: Protos | Sequence[str | os.PathLike[str] | ModuleType],
    servicers: Mapping[str, Any] | Any,
    *,
    import_paths: Sequence[str] = (),
    tls: ServerTls | None = None,
    settings: Server | None = None,
    log_calls: bool = False,
    layers: Sequence[Layer[Request, Response]] = (),
    **options: Any,
) -> HttpApp[Any]:
    """An ``HttpApp`` for ``monolake.serve`` serving ``servicers`` (see ``GrpcServer``, which takes
    ``options``); calls are counted in ``monolake_grpc_server_calls`` and, with ``log_calls``,
    logged one line each to the ``monolake.grpc.access`` logger. ``layers`` wrap each call's
    service, outermost first (``monolake.apps.rpc.tracing.GrpcServerTracing``...)."""
    loaded = protos if isinstance(protos, Protos) else load_protos(list(protos), import_paths)
    factory = GrpcServer(loaded, servicers, on_call=CallRecorder(name, grpc_stats(name), log_calls), **options)
    if tls is not None and tls.alpn is None:
        import msgspec

        tls = msgspec.structs.replace(tls, alpn=["h2"])  # see grpc_settings
    settings = grpc_settings(settings if settings is not None else Server(listener=listen))
    return HttpApp(name=name, listen=listen, factory=factory, layers=layers, tls=tls, settings=settings)


def grpc_factory(
    name: str, spec: RpcGrpc, base_dir: str | None, modules: Mapping[str, ModuleType] | None = None
) -> GrpcServer:
    """The ``GrpcServer`` of ``servers.NAME.rpc_grpc``. Raises ConfigError naming the key."""
    from ...proxy._filters import load_object, make_importable

    where = f"servers.{name}.rpc_grpc"
    base = base_dir or "."

    def rel(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(base, p)

    protos = load_protos([rel(p) for p in spec.protos], [rel(p) for p in spec.import_paths], where=f"{where}.protos")
    make_importable(base_dir)
    servicers = load_object(spec.handler, f"{where}.handler", modules)
    try:
        return GrpcServer(
            protos,
            servicers,
            health=spec.health,
            reflection=spec.reflection,
            max_receive_message_bytes=spec.max_receive_message_bytes,
            max_send_message_bytes=spec.max_send_message_bytes,
            compression=None if spec.compression == "off" else spec.compression,
            on_call=CallRecorder(name, grpc_stats(name), spec.log_calls),
        )
    except ValueError as exc:
        raise ConfigError(f"{where}.handler", str(exc)) from None


__all__ = ["DEFAULT_MAX_RECEIVE", "CallRecorder", "grpc_app", "grpc_factory", "grpc_settings"]
