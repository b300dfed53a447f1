"""monolake: a framework and a proxy for high-performance network services.

The public API: write a ``Service`` (an HTTP one answering ``Request`` with
``Response``, or a stream one called once per ``Connection``), wrap it in
``Layer``s, build it with a ``Factory`` (whose ``make(old)`` keeps state across
reloads), and ``serve`` it on the multi-process runtime, or name its factory as a
server's ``handler = "module:attr"`` in a TOML config for ``monolake run``.

The names are imported on first use (PEP 562), so ``import monolake`` (and the
``monolake`` command) stays cheap; type checkers see ordinary re-exports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._examples import examples_path as examples_path

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ._body import Body as Body
    from .proto.http1 import Headers as Headers
    from .proto.http1 import Request as Request
    from .proto.http1 import Response as Response
    from .runtime._serve import HttpApp as HttpApp
    from .runtime._serve import StreamApp as StreamApp
    from .runtime._serve import serve as serve
    from .server._service_app import HttpService as HttpService
    from .server._service_app import sse_event as sse_event
    from .server._service_app import sse_response as sse_response
    from .server._service_app import stream_body as stream_body
    from .server._stream_app import Connection as Connection
    from .server._stream_app import StreamService as StreamService
    from .service import Context as Context
    from .service import Factory as Factory
    from .service import Layer as Layer
    from .service import Service as Service
    from .service import Stack as Stack

_WHERE = {
    "Body": "._body",
    "Headers": ".proto.http1",
    "Request": ".proto.http1",
    "Response": ".proto.http1",
    "HttpApp": ".runtime._serve",
    "StreamApp": ".runtime._serve",
    "serve": ".runtime._serve",
    "HttpService": ".server._service_app",
    "sse_event": ".server._service_app",
    "sse_response": ".server._service_app",
    "stream_body": ".server._service_app",
    "Connection": ".server._stream_app",
    "StreamService": ".server._stream_app",
    "Context": ".service",
    "Factory": ".service",
    "Layer": ".service",
    "Service": ".service",
    "Stack": ".service",
}

__all__ = sorted([*_WHERE, "examples_path"])


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'monolake' has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
