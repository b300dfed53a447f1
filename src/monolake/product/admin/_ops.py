"""What the supervisor runs beside its workers: the metrics directory and the admin listener.

``operations(cfg, supervisor)`` is entered after the listeners are reserved and
before any worker is forked: with metrics on (``[admin]`` or ``[metrics] enabled``)
it makes the directory every process writes its metrics to and sets
``PROMETHEUS_MULTIPROC_DIR`` so the workers inherit it; with ``[admin]`` it binds
the admin listener (ConfigError if it cannot) and serves it from a thread
(``_http``: bounded by ``[admin]`` ``max_connections``, ``header_timeout``, ``idle_timeout``). On exit
it stops the listener and removes the directory. Both are decided at start: a
reload that adds, removes or moves ``[admin]`` takes effect at the next start or
upgrade (a changed ``token`` applies at once).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ...apps.config import Config
from ...apps.observe._metrics import cleanup_multiprocess, count_reload, metrics_enabled, prepare_multiprocess
from ...core.runtime._logging import logger as log
from ._http import Limits
from ._server import AdminServer, AdminState


@contextlib.contextmanager
def operations(cfg: Config, supervisor: Any) -> Iterator[AdminServer | None]:
    """Set up metrics and the admin endpoint for ``supervisor``; yields the admin server or None."""
    path = prepare_multiprocess() if metrics_enabled(cfg) else None
    admin: AdminServer | None = None
    if path is not None:
        log.info("metrics: workers write to %s", path)
    try:
        state = AdminState(supervisor, path, cfg.admin.token if cfg.admin is not None else None)

        def on_reload(result: Any) -> None:
            if path is not None:
                count_reload(bool(getattr(result, "ok", False)))
            state.reload_done(result)

        hub: Any = None

        def follow(config: Any) -> None:
            # One discovery hub per supervisor, made when a cluster first discovers its endpoints.
            nonlocal hub
            if (
                hub is None
                and hasattr(supervisor, "broadcast")
                and any(c.discovery is not None for c in config.upstreams.values())
            ):
                from ...apps.discovery import DiscoveryHub

                hub = DiscoveryHub(config, supervisor.broadcast)
                hub.start()
                state.hub = hub
            elif hub is not None:
                hub.reconfigure(config)

        def on_reload_and_follow(result: Any) -> None:
            on_reload(result)
            if getattr(result, "ok", False):
                follow(supervisor.config)

        follow(cfg)
        if hasattr(supervisor, "on_reload"):
            supervisor.on_reload = on_reload_and_follow
        if cfg.admin is not None:
            a = cfg.admin
            limits = Limits(
                max_connections=a.max_connections, header_timeout=a.header_timeout, idle_timeout=a.idle_timeout
            )
            admin = AdminServer(a.listen, state, limits)
            admin.start()
        yield admin
    finally:
        if state.hub is not None:
            state.hub.close()
        if admin is not None:
            admin.close()
        if path is not None:
            cleanup_multiprocess(path)
