"""``[servers.NAME.rpc_thrift]``: a Thrift RPC server built from the TOML config.

The handler module is imported like a handler server's (the config file's directory
first, then sys.path); on reload the proxy builder hands over the module's new
version when its source changed (two-phase: nothing is installed unless every
worker's build succeeds), and ``build_config_app`` makes the handler anew from it.
A handler given as a class keeps its running instance while the class is the same
object (its module did not change), so state a handler holds survives a reload
that only touched other parts of the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from ....core.errors import ConfigError
from ...config import Config
from ...config import Server as ServerConfig
from ._idl import load_module, service_def
from ._server import ThriftServer, ThriftService, build_server


def load_handler(
    spec: str,
    where: str,
    *,
    base_dir: str | None = None,
    modules: Mapping[str, ModuleType] | None = None,
    old: object = None,
) -> object:
    """The handler ``module:attr`` names: a class is instantiated (or ``old`` kept, when of it)."""
    from ...proxy._filters import load_object, make_importable

    make_importable(base_dir)
    obj = load_object(spec, where, modules)
    if isinstance(obj, type):
        if type(old) is obj:
            return old
        try:
            return obj()
        except Exception as exc:
            raise ConfigError(where, f"{obj.__qualname__}() failed: {type(exc).__name__}: {exc}") from None
    return obj


def build_config_app(
    name: str,
    server: ServerConfig,
    cfg: Config,
    old: object = None,
    *,
    modules: Mapping[str, ModuleType] | None = None,
    access_log: Any = None,
    metrics: bool = False,
) -> ThriftServer:
    """The app of a validated server with ``rpc_thrift``. Raises ConfigError naming the key."""
    from ...observe._conn_metrics import thrift_stats
    from ...proxy._filters import load_layers
    from ...proxy._l4_app import server_tls

    rt = server.rpc_thrift
    assert rt is not None
    where = f"servers.{name}.rpc_thrift"
    module = load_module(rt.idl, f"{where}.idl", include_dirs=rt.include_dirs)
    definition = service_def(module, rt.service, f"{where}.service")
    old_handler = old.service.handler if isinstance(old, ThriftServer) else None
    handler = load_handler(rt.handler, f"{where}.handler", base_dir=cfg.base_dir, modules=modules, old=old_handler)
    layers: list[Any] = list(
        load_layers(server.layers, f"servers.{name}.layers", modules=modules, base_dir=cfg.base_dir)
    )
    if rt.tracing is not None:  # outermost: its span is the whole call
        from ..tracing import thrift_server_tracing

        layers.insert(0, thrift_server_tracing(rt.tracing, f"{where}.tracing"))
    service = ThriftService(
        definition, handler, layers=layers, timeout=server.request_timeout, where=f"{where}.handler"
    )
    stats = thrift_stats(name) if metrics else None
    return build_server(name, server, service, tls=server_tls(name, server), stats=stats, access_log=access_log)
