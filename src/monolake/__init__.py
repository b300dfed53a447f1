"""monolake: a framework and a proxy for high-performance network services.

The public API: write a ``Service`` (an HTTP one answering ``Request`` with
``Response``, or a stream one called once per ``Connection``), wrap it in
``Layer``s, build it with a ``Factory`` (whose ``make(old)`` keeps state across
reloads), and ``serve`` it on the multi-process runtime, or name its factory as a
server's ``handler = "module:attr"`` in a TOML config for ``monolake run``. ``serve``
also runs the proxy (``ProxyApp``: a TOML server table, its filters Python objects).

The names are imported on first use (PEP 562), so ``import monolake`` (and the
``monolake`` command) stays cheap; type checkers see ordinary re-exports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core import _compiled

_compiled.install()  # before any hot-path module is imported: compiled, or all from source

from .product._examples import examples_path as examples_path  # noqa: E402

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .apps._proxy_app import ProxyApp as ProxyApp
    from .apps._proxy_app import proxy_apps as proxy_apps
    from .apps._serve import HttpApp as HttpApp
    from .apps._serve import StreamApp as StreamApp
    from .apps._serve import serve as serve
    from .core._body import Body as Body
    from .core.proto.http1 import Headers as Headers
    from .core.proto.http1 import Request as Request
    from .core.proto.http1 import Response as Response
    from .core.server._service_app import HttpService as HttpService
    from .core.server._service_app import sse_event as sse_event
    from .core.server._service_app import sse_response as sse_response
    from .core.server._service_app import stream_body as stream_body
    from .core.server._stream_app import Connection as Connection
    from .core.server._stream_app import StreamService as StreamService
    from .core.service import Context as Context
    from .core.service import Factory as Factory
    from .core.service import LaneService as LaneService
    from .core.service import Layer as Layer
    from .core.service import Replier as Replier
    from .core.service import Service as Service
    from .core.service import Stack as Stack
    from .core.service import Taken as Taken

_WHERE = {
    "Body": ".core._body",
    "Headers": ".core.proto.http1",
    "Request": ".core.proto.http1",
    "Response": ".core.proto.http1",
    "HttpApp": ".apps._serve",
    "StreamApp": ".apps._serve",
    "ProxyApp": ".apps._proxy_app",
    "proxy_apps": ".apps._proxy_app",
    "serve": ".apps._serve",
    "HttpService": ".core.server._service_app",
    "sse_event": ".core.server._service_app",
    "sse_response": ".core.server._service_app",
    "stream_body": ".core.server._service_app",
    "Connection": ".core.server._stream_app",
    "StreamService": ".core.server._stream_app",
    "Context": ".core.service",
    "Factory": ".core.service",
    "Layer": ".core.service",
    "LaneService": ".core.service",
    "Replier": ".core.service",
    "Service": ".core.service",
    "Stack": ".core.service",
    "Taken": ".core.service",
}

__all__ = sorted([*_WHERE, "examples_path"])


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'monolake' has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    if isinstance(value, type) and not value.__doc__:
        _compiled.restore_doc(value)  # compiled (mypyc): its docstring is in the source only
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
