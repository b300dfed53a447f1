"""``monolake.rpc``: serve and call Thrift (and gRPC) services from IDL. See docs/rpc-thrift.md."""

from .apps.rpc import ClientCall as ClientCall
from .apps.rpc import Metainfo as Metainfo
from .apps.rpc import RetryBudget as RetryBudget
from .apps.rpc import ServiceDef as ServiceDef
from .apps.rpc import StaticDiscovery as StaticDiscovery
from .apps.rpc import ThriftApp as ThriftApp
from .apps.rpc import ThriftClient as ThriftClient
from .apps.rpc import ThriftRequest as ThriftRequest
from .apps.rpc import ThriftServer as ThriftServer
from .apps.rpc import ThriftService as ThriftService
from .apps.rpc import build_server as build_server
from .apps.rpc import load_service as load_service
from .apps.rpc import metainfo as metainfo

__all__ = [
    "ClientCall",
    "Metainfo",
    "RetryBudget",
    "ServiceDef",
    "StaticDiscovery",
    "ThriftApp",
    "ThriftClient",
    "ThriftRequest",
    "ThriftServer",
    "ThriftService",
    "build_server",
    "load_service",
    "metainfo",
]
