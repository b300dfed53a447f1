"""Upstream connections: ``Client.send`` over the per-worker pool's HTTP/1.1 and HTTP/2
connections, the HTTP/1.1 driver and the pool itself."""

from ._client import Client as Client
from ._client import PoolSettings as PoolSettings
from ._http import UpstreamConnection as UpstreamConnection
from ._pool import Pool as Pool
