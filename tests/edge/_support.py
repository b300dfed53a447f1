"""In-process servers for the edge tests: a proxy built from a config dict and an origin
that echoes what it received, both on one event loop in a background thread."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from monolake.apps.config import parse_config
from monolake.apps.proxy import build_apps
from monolake.apps.proxy._app import Shared, new_access_log
from monolake.apps.proxy._upstream import UpstreamCluster
from monolake.core.client import Pool

Answer = Callable[[bytes, bytes, dict[str, str], bytes], tuple[int, list[tuple[str, str]], bytes]]
"""(method, target, headers lowercased, body) -> (status, headers, body)."""


def echo(
    method: bytes, target: bytes, headers: dict[str, str], body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The request as JSON."""
    doc = {"method": method.decode(), "target": target.decode(), "headers": headers, "body_len": len(body)}
    return 200, [("Content-Type", "application/json")], json.dumps(doc).encode()


class LoopThread:
    """An asyncio event loop running in a daemon thread; ``run(coro)`` waits for a result. (The
    features under test do not depend on the loop kind; the e2e tests cover the others.)"""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def settle() -> None:
            await asyncio.sleep(0)  # closed transports' connection_lost callbacks run

        self.run(settle())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class EchoOrigin:
    """An HTTP/1.1 origin on 127.0.0.1 answering with ``answer`` (default: the request as JSON).
    ``requests`` records every (method, target, headers) it received."""

    def __init__(self, lt: LoopThread, answer: Answer = echo) -> None:
        self.answer = answer
        self.requests: list[tuple[bytes, bytes, dict[str, str]]] = []
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server = lt.run(self._start())
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.lt = lt

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, target, _ = lines[0].split(b" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(b":")
                        headers[k.decode().lower()] = v.strip().decode("latin-1")
                body = b""
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding") == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        chunk = await reader.readexactly(size + 2)
                        if size == 0:
                            break
                        body += chunk[:-2]
                self.requests.append((method, target, headers))
                status, out_headers, out = self.answer(method, target, headers, body)
                head_out = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in out_headers)
                if not any(k.lower() == "content-length" for k, _ in out_headers):
                    head_out += f"Content-Length: {len(out)}\r\n"
                writer.write(head_out.encode("latin-1") + b"\r\n" + (b"" if method == b"HEAD" else out))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for w in list(self.writers):
                w.close()
            await self.server.wait_closed()

        self.lt.run(stop())


class InProcessProxy:
    """Every server of ``config`` (a dict as TOML would give) built with ``build_apps`` and
    listening on 127.0.0.1 (each server's listener port is replaced by bind(0))."""

    def __init__(self, lt: LoopThread, config: dict[str, Any], base_dir: Any = None) -> None:
        self.lt = lt
        self.cfg = parse_config(config, base_dir=base_dir)
        self.pool = Pool()
        clusters = {n: UpstreamCluster.from_config(n, c, self.pool) for n, c in self.cfg.upstreams.items()}
        shared = Shared(pool=self.pool, clusters=clusters, access_log=new_access_log(self.cfg))
        self.apps = build_apps(self.cfg, shared=shared)
        self.servers: list[asyncio.AbstractServer] = []
        self.urls: dict[str, str] = {}
        for name, app in self.apps.items():
            server = lt.run(self._listen(app))
            self.servers.append(server)
            self.urls[name] = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self.url = next(iter(self.urls.values()))

    async def _listen(self, app: Any) -> asyncio.AbstractServer:
        return await asyncio.get_running_loop().create_server(app.protocol_factory, "127.0.0.1", 0)

    def close(self) -> None:
        async def stop() -> None:
            for s in self.servers:
                s.close()
            for app in self.apps.values():
                app.close()
            self.pool.close()
            for s in self.servers:
                await s.wait_closed()

        self.lt.run(stop())


def run_sync(lt: LoopThread, f: Callable[[], Awaitable[Any]]) -> Any:
    async def call() -> Any:
        return await f()

    return lt.run(call())
