"""The reverse proxy: routing, balancing, rewrites, filters, and the app builder."""

from ...core.server._l4 import ConnectionStats as ConnectionStats
from ._app import build_apps as build_apps
from ._app import server_stack as server_stack
from ._balancer import Balancer as Balancer
from ._balancer import make_balancer as make_balancer
from ._builder import ProxyBuilder as ProxyBuilder
from ._filters import FilterError as FilterError
from ._filters import HttpFilter as HttpFilter
from ._filters import RefuseCall as RefuseCall
from ._filters import TcpFilter as TcpFilter
from ._filters import ThriftFilter as ThriftFilter
from ._filters import load_filters as load_filters
from ._filters import load_layers as load_layers
from ._filters import may_await as may_await
from ._proxy import HttpProxy as HttpProxy
from ._proxy import ProxyFactory as ProxyFactory
from ._router import Router as Router
from ._thrift_app import ThriftCall as ThriftCall
from ._upstream import UpstreamCluster as UpstreamCluster
