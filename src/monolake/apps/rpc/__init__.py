"""RPC frameworks on the monolake runtime: Thrift (``thrift/``) and gRPC (``grpc/``)."""

from ._discovery import SourceDiscovery as SourceDiscovery
from .thrift import ClientCall as ClientCall
from .thrift import Metainfo as Metainfo
from .thrift import RetryBudget as RetryBudget
from .thrift import ServiceDef as ServiceDef
from .thrift import StaticDiscovery as StaticDiscovery
from .thrift import ThriftApp as ThriftApp
from .thrift import ThriftClient as ThriftClient
from .thrift import ThriftRequest as ThriftRequest
from .thrift import ThriftServer as ThriftServer
from .thrift import ThriftService as ThriftService
from .thrift import build_server as build_server
from .thrift import load_service as load_service
from .thrift import metainfo as metainfo

__all__ = [
    "ClientCall",
    "Metainfo",
    "RetryBudget",
    "ServiceDef",
    "SourceDiscovery",
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
