"""Shared by tests/rpc/test_grpc_*.py: the test proto, an in-process server on a loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monolake.apps.config import Server
from monolake.apps.rpc.grpc import GrpcServer, Protos, load_protos
from monolake.core.server._service_app import build_http_app

PROTOS = Path(__file__).parent / "protos"
ECHO = PROTOS / "grpc_echo.proto"


def echo_protos() -> Protos:
    return load_protos([ECHO], [PROTOS])


class LoopThread:
    """An event loop on a daemon thread; ``run(coro)`` waits for a result from the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Served:
    """A ``GrpcServer`` on 127.0.0.1 (a port from bind(0)) in ``lt``'s loop."""

    def __init__(self, lt: LoopThread, factory: GrpcServer, settings: Server | None = None) -> None:
        self.lt = lt
        self.app = build_http_app("grpc", settings or Server(listener="127.0.0.1:0"), factory)

        async def start() -> Any:
            loop = asyncio.get_running_loop()
            return await loop.create_server(self.app.protocol_factory, "127.0.0.1", 0, ssl=self.app.ssl_context)

        self.server = lt.run(start())
        self.port = self.server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            self.app.close()  # abort open connections: the loop closes without live transports

        self.lt.run(stop())


def wait_for(pred: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``pred`` until it holds or ``timeout`` seconds passed (a readiness wait, not a timing check)."""
    import time

    ev = threading.Event()
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if pred():
            return True
        ev.wait(0.02)
    return pred()
