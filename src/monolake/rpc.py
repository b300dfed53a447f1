"""``monolake.rpc``: serve and call Thrift and gRPC services from IDL.

Thrift names load with this module; the gRPC ones (``monolake.apps.rpc.grpc``, which needs the
``rpc`` extra: protobuf and grpcio-tools) load on first use. ``RetryBudget`` and ``metainfo`` here are
Thrift's; gRPC's are ``monolake.apps.rpc.grpc.RetryBudget`` and ``.metainfo``. Guides:
docs/guides/rpc-thrift.md and docs/guides/rpc-grpc.md.
"""

from typing import TYPE_CHECKING, Any

from .apps.rpc import ClientCall as ClientCall
from .apps.rpc import Metainfo as Metainfo
from .apps.rpc import RetryBudget as RetryBudget
from .apps.rpc import ServiceDef as ServiceDef
from .apps.rpc import SourceDiscovery as SourceDiscovery
from .apps.rpc import StaticDiscovery as StaticDiscovery
from .apps.rpc import ThriftApp as ThriftApp
from .apps.rpc import ThriftClient as ThriftClient
from .apps.rpc import ThriftRequest as ThriftRequest
from .apps.rpc import ThriftServer as ThriftServer
from .apps.rpc import ThriftService as ThriftService
from .apps.rpc import build_server as build_server
from .apps.rpc import load_service as load_service
from .apps.rpc import metainfo as metainfo

if TYPE_CHECKING:
    from .apps.rpc.grpc import DnsDiscover as DnsDiscover
    from .apps.rpc.grpc import GrpcCall as GrpcCall
    from .apps.rpc.grpc import GrpcClient as GrpcClient
    from .apps.rpc.grpc import GrpcReply as GrpcReply
    from .apps.rpc.grpc import GrpcServer as GrpcServer
    from .apps.rpc.grpc import GrpcService as GrpcService
    from .apps.rpc.grpc import HealthServicer as HealthServicer
    from .apps.rpc.grpc import Metadata as Metadata
    from .apps.rpc.grpc import MethodInfo as MethodInfo
    from .apps.rpc.grpc import Protos as Protos
    from .apps.rpc.grpc import RpcError as RpcError
    from .apps.rpc.grpc import ServicerContext as ServicerContext
    from .apps.rpc.grpc import StaticDiscover as StaticDiscover
    from .apps.rpc.grpc import StatusCode as StatusCode
    from .apps.rpc.grpc import grpc_app as grpc_app
    from .apps.rpc.grpc import grpc_factory as grpc_factory
    from .apps.rpc.grpc import load_protos as load_protos
    from .apps.rpc.grpc import serve_local as serve_local

__all__ = [
    "ClientCall",
    "DnsDiscover",
    "GrpcCall",
    "GrpcClient",
    "GrpcReply",
    "GrpcServer",
    "GrpcService",
    "HealthServicer",
    "Metadata",
    "Metainfo",
    "MethodInfo",
    "Protos",
    "RetryBudget",
    "RpcError",
    "ServiceDef",
    "ServicerContext",
    "SourceDiscovery",
    "StaticDiscover",
    "StaticDiscovery",
    "StatusCode",
    "ThriftApp",
    "ThriftClient",
    "ThriftRequest",
    "ThriftServer",
    "ThriftService",
    "build_server",
    "grpc_app",
    "grpc_factory",
    "load_protos",
    "load_service",
    "metainfo",
    "serve_local",
]

_GRPC = frozenset(
    {
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
        "RpcError",
        "ServicerContext",
        "StaticDiscover",
        "StatusCode",
        "grpc_app",
        "grpc_factory",
        "load_protos",
        "serve_local",
    }
)


def __getattr__(name: str) -> Any:
    if name in _GRPC:
        from .apps.rpc import grpc

        value = getattr(grpc, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'monolake.rpc' has no attribute {name!r}")
