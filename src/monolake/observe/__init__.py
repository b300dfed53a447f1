"""Observability: access logs (metrics and admin come with the operations issue)."""

from ._accesslog import AccessLog as AccessLog
from ._accesslog import compile_format as compile_format
