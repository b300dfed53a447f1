"""Thrift RPC: servers and clients of a service loaded from IDL, on the monolake runtime."""

from ._client import ClientCall as ClientCall
from ._client import RetryBudget as RetryBudget
from ._client import StaticDiscovery as StaticDiscovery
from ._client import ThriftClient as ThriftClient
from ._idl import MethodDef as MethodDef
from ._idl import ServiceDef as ServiceDef
from ._idl import load_service as load_service
from ._metainfo import Metainfo as Metainfo
from ._metainfo import metainfo as metainfo
from ._server import ThriftApp as ThriftApp
from ._server import ThriftRequest as ThriftRequest
from ._server import ThriftServer as ThriftServer
from ._server import ThriftService as ThriftService
from ._server import build_server as build_server

__all__ = [
    "ClientCall",
    "Metainfo",
    "MethodDef",
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
