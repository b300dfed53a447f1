"""Serving a ``GrpcServer`` inside the current event loop, for tests (no processes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ....core.service import Factory


@asynccontextmanager
async def serve_local(factory: Factory[Any], host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve ``factory``'s service (a ``GrpcServer``, or any HTTP service factory) on ``host``
    and a free port in this loop; yields "host:port". The server stops on exit."""
    from ....core.server._service_app import build_http_app
    from ...config import Server

    app = build_http_app("local", Server(listener=f"{host}:0"), factory)
    server = await asyncio.get_running_loop().create_server(app.protocol_factory, host, 0)
    try:
        yield f"{host}:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        app.close()
