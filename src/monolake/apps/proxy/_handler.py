"""Servers from TOML that answer with a user's own service: ``handler = "module:attr"``.

``attr`` may be:

- a ``Factory`` instance (its ``make(old)`` keeps state across reloads), or a
  ``Factory`` subclass (instantiated without arguments);
- a ``Stack``: its layers (outermost first) over its leaf factory;
- a Service class (not a Factory): instantiated without arguments; a reload keeps
  the running instance as long as the class is the same object (its module was not
  reloaded), else makes a new one;
- a service object or an ``async def`` function: served as it is;
- any other callable: called without arguments, and its result read as above.

``proxy_type = "http"`` serves a ``Service[Request, Response]`` through the HTTP
drivers behind ``HandlerGuard`` (500 with the handler's name on an exception, 503
when ``request_timeout`` passes); ``"tcp"`` serves a ``Service[Connection, None]``
once per connection. The server's ``layers`` (from the config) wrap the handler's
own. The module is imported as filter modules are (``_filters.make_importable``: the
config file's directory first, then sys.path, then the working directory);
``ProxyBuilder`` reloads it in two phases like a filter module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from ...core.errors import ConfigError
from ...core.server._service_app import build_http_app
from ...core.server._stream_app import build_stream_app
from ...core.service import Factory, Layer, Stack
from ..config import Config
from ..config import Server as ServerConfig
from ._filters import load_layers, load_object, make_importable


class _ClassFactory(Factory[Any]):
    """A Service class as a factory: the running instance is kept while the class is the same."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def make(self, old: Any) -> Any:
        return old if type(old) is self.cls else self.cls()


class _Fixed(Factory[Any]):
    """A ready service object or ``async def`` function."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def make(self, old: Any) -> Any:
        return self.service


def _is_service(obj: object) -> bool:
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(type(obj), "__call__", None)  # noqa: B004 - the class's, not a bound callable's
    return call is not None and inspect.iscoroutinefunction(call)


def as_stack(obj: object, where: str, *, _depth: int = 0) -> tuple[list[Layer[Any, Any]], Factory[Any]]:
    """Read a handler object as (layers, leaf factory). Raises ConfigError naming ``where``."""
    if isinstance(obj, Stack):
        return list(obj.layers), obj.leaf
    if isinstance(obj, Factory):
        return [], obj
    if isinstance(obj, type):
        if issubclass(obj, Factory):
            try:
                return [], obj()
            except Exception as exc:
                raise ConfigError(where, f"{obj.__qualname__}() failed: {type(exc).__name__}: {exc}") from None
        if not _is_service(obj.__call__):
            raise ConfigError(where, f"class {obj.__qualname__} has no 'async def __call__': not a Service")
        return [], _ClassFactory(obj)
    if _is_service(obj):
        return [], _Fixed(obj)
    if callable(obj) and _depth == 0:
        try:
            made = obj()
        except Exception as exc:
            raise ConfigError(where, f"calling the handler failed: {type(exc).__name__}: {exc}") from None
        return as_stack(made, where, _depth=1)
    raise ConfigError(
        where, f"{type(obj).__name__} is not a Factory, Stack, Service class or service (or a callable returning one)"
    )


def load_handler(
    spec: str, where: str, *, base_dir: str | None = None, modules: Mapping[str, ModuleType] | None = None
) -> tuple[list[Layer[Any, Any]], Factory[Any], str]:
    """Import ``module:attr`` and read it with ``as_stack``; also returns a name for log lines.
    ``modules`` overrides the import of the modules it names (a reload's new versions)."""
    make_importable(base_dir)
    obj = load_object(spec, where, modules)
    layers, factory = as_stack(obj, where)
    return layers, factory, spec


def build_handler_app(
    name: str,
    server: ServerConfig,
    cfg: Config,
    old: object = None,
    *,
    modules: Mapping[str, ModuleType] | None = None,
    on_complete: Any = None,
    on_close: Callable[[], None] | None = None,
) -> Any:
    """The app of a server with a ``handler``: an HTTP or stream app. Raises ConfigError."""
    if server.rpc_grpc is not None:
        from ..rpc.grpc._app import grpc_factory, grpc_settings

        factory: Factory[Any] = grpc_factory(name, server.rpc_grpc, cfg.base_dir, modules)
        label = server.rpc_grpc.handler
        server = grpc_settings(server)  # TLS offers h2
        layers: list[Layer[Any, Any]] = []
    else:
        assert server.handler is not None
        where = f"servers.{name}.handler"
        layers, factory, label = load_handler(server.handler, where, base_dir=cfg.base_dir, modules=modules)
    # ``layers`` from the config wrap the handler's own (a Stack's), outermost first.
    layers = load_layers(server.layers, f"servers.{name}.layers", modules=modules, base_dir=cfg.base_dir) + layers
    if server.rpc_grpc is not None and server.rpc_grpc.tracing is not None:  # outermost: its span is the whole call
        from ..rpc.tracing import grpc_server_tracing

        layers.insert(0, grpc_server_tracing(server.rpc_grpc.tracing, f"servers.{name}.rpc_grpc.tracing"))
    try:
        if server.proxy_type == "tcp":
            return build_stream_app(name, server, factory, layers, old, handler=label)
        return build_http_app(
            name, server, factory, layers, old, handler=label, on_complete=on_complete, on_close=on_close
        )
    except ConfigError as exc:
        raise ConfigError(f"servers.{name}", f"stack: {exc}") from None
