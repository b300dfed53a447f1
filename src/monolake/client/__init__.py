"""Upstream connections: the HTTP/1.1 client driver and the per-worker pool."""

from ._http import UpstreamConnection as UpstreamConnection
from ._pool import Pool as Pool
