"""monolake: a framework and a proxy for high-performance network services.

The public API: write a ``Service`` (an HTTP one answering ``Request`` with
``Response``, or a stream one called once per ``Connection``), wrap it in
``Layer``s, build it with a ``Factory`` (whose ``make(old)`` keeps state across
reloads), and ``serve`` it on the multi-process runtime, or name its factory as a
server's ``handler = "module:attr"`` in a TOML config for ``monolake run``.
"""

__version__ = "0.1.0"

from ._body import Body as Body
from ._examples import examples_path as examples_path
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

__all__ = [
    "Body",
    "Connection",
    "Context",
    "Factory",
    "Headers",
    "HttpApp",
    "HttpService",
    "Layer",
    "Request",
    "Response",
    "Service",
    "Stack",
    "StreamApp",
    "StreamService",
    "examples_path",
    "serve",
    "sse_event",
    "sse_response",
    "stream_body",
]
