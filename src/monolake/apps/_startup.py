"""What an application says once when the runtime starts serving its config.

The runtime knows nothing of HTTP/2 or of clusters, so the applications (the proxy, ``serve``)
hand it this as the ``operations`` context of ``core.runtime.run``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from ..core.runtime._logging import logger as log
from .config import Config


def log_h2_codec(cfg: Config) -> None:
    """Say once per start which HTTP/2 codec the workers get (workers pick it per connection,
    so this is the one line; a fallback to the pure-Python codec must not be silent)."""
    servers = cfg.servers.values()
    if not (
        any(s.proxy_type == "http" and s.http2.enabled for s in servers)
        or any(c.protocol != "http1" for c in cfg.upstreams.values())
        or any(r.protocol != "http1" for s in servers for r in s.routes)
    ):
        return
    from ..core.proto.http2 import codec_notice

    severity, message = codec_notice()
    log.log(logging.getLevelNamesMapping()[severity.upper()], message)


def log_compiled() -> None:
    """Say once per start whether the hot path runs compiled (mypyc) or as pure Python, and why."""
    from ..core._compiled import notice

    severity, message = notice()
    log.log(logging.getLevelNamesMapping()[severity.upper()], message)


@contextlib.contextmanager
def started(cfg: Config, supervisor: Any) -> Iterator[None]:
    """The ``operations`` of an app without an admin endpoint: the start-up notices only."""
    log_compiled()
    log_h2_codec(cfg)
    yield
