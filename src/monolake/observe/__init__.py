"""Observability: access logs and Prometheus metrics (``_metrics``; the admin endpoint serves them)."""

from ._accesslog import AccessLog as AccessLog
from ._accesslog import compile_format as compile_format
from ._ratelimit import RateLimitedLog as RateLimitedLog
