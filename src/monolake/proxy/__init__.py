"""The reverse proxy: routing, balancing, rewrites, filters, and the app builder."""

from ._app import build_apps as build_apps
from ._app import server_stack as server_stack
from ._balancer import Balancer as Balancer
from ._balancer import make_balancer as make_balancer
from ._builder import ProxyBuilder as ProxyBuilder
from ._filters import HttpFilter as HttpFilter
from ._filters import load_filters as load_filters
from ._proxy import HttpProxy as HttpProxy
from ._proxy import ProxyFactory as ProxyFactory
from ._router import Router as Router
from ._upstream import UpstreamCluster as UpstreamCluster
