"""gRPC services and clients in Python on the monolake runtime (``monolake.rpc``'s gRPC half).

Serve: ``GrpcServer(protos, servicer)`` is a ``Factory`` of an HTTP service, run by the
HTTP/2 driver like any other (``grpc_app`` wraps it in an ``HttpApp`` for ``monolake.serve``).
Call: ``GrpcClient`` (see ``_client``).
"""

from . import _metainfo as metainfo
from ._app import grpc_app, grpc_factory
from ._client import DnsDiscover, GrpcCall, GrpcClient, GrpcReply, RetryBudget, StaticDiscover
from ._protos import MethodInfo, Protos, load_protos
from ._server import GrpcServer, GrpcService, HealthServicer, ServicerContext
from ._status import Metadata, RpcError, StatusCode
from ._testing import serve_local

__all__ = [
    "DnsDiscover",
    "GrpcCall",
    "GrpcClient",
    "GrpcReply",
    "GrpcServer",
    "GrpcService",
    "HealthServicer",
    "Metadata",
    "MethodInfo",
    "Protos",
    "RetryBudget",
    "RpcError",
    "ServicerContext",
    "StaticDiscover",
    "StatusCode",
    "grpc_app",
    "grpc_factory",
    "load_protos",
    "metainfo",
    "serve_local",
]
