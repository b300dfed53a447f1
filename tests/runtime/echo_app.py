"""A tiny ServerApp for the runtime tests.

Run as ``python echo_app.py CONFIG_JSON [CRASH_FLAG_PATH]``: the JSON is a config
document for ``monolake.apps.config.parse_config``. Every request (a line-and-headers
HTTP/1.1 request, no body) is answered ``200 OK`` with ``pid=<worker pid>
loop=<loop module> path=<path>``. ``/slow?s=N`` answers after N seconds and logs
``slow request in flight`` when it arrives, so a test can act while it is in
flight without sleeping; ``/crash`` calls ``os._exit(3)``. While CRASH_FLAG_PATH
exists, a worker's ``build`` exits 4 (the supervisor's dry build is unaffected),
which makes a crash-looping worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import cast

from monolake.apps.config import Config, parse_config
from monolake.core.runtime import ServerApp, run

SUPERVISOR_PID = os.getpid()
log = logging.getLogger("echo")


class EchoConnection(asyncio.Protocol):
    def __init__(self, app: EchoApp) -> None:
        self.app = app
        self.buf = b""
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.app.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.conns.discard(self)
        if self.busy:
            self.busy = False
            self.app.finished()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.next_request()

    def next_request(self) -> None:
        if self.busy:
            return
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        self.buf = rest
        target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
        path, _, query = target.partition("?")
        if path == "/crash":
            os._exit(3)
        self.busy = True
        self.app.inflight += 1
        if path == "/slow":
            delay = float(query.partition("s=")[2] or "1")
            log.info("slow request in flight pid=%d", os.getpid())
            asyncio.get_running_loop().call_later(delay, self.respond, path)
        else:
            self.respond(path)

    def respond(self, path: str) -> None:
        assert self.transport is not None
        if not self.busy:
            return  # closed meanwhile
        close = self.app.draining
        loop_mod = type(asyncio.get_running_loop()).__module__
        body = f"pid={os.getpid()} loop={loop_mod} path={path}\n".encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s"
            % (len(body), b"close" if close else b"keep-alive", body)
        )
        self.busy = False
        self.app.finished()
        if close:
            self.transport.close()
        else:
            self.next_request()


class EchoApp:
    def __init__(self) -> None:
        self.conns: set[EchoConnection] = set()
        self.inflight = 0
        self.draining = False
        self._waiter: asyncio.Future[None] | None = None

    def protocol_factory(self) -> asyncio.BaseProtocol:
        return EchoConnection(self)

    def finished(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def start_draining(self) -> None:
        self.draining = True
        for conn in list(self.conns):
            if not conn.busy and conn.transport is not None:
                conn.transport.close()

    async def wait_drained(self) -> None:
        while self.inflight:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def close(self) -> None:
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()


def main() -> int:
    cfg = parse_config(json.loads(sys.argv[1]))
    crash_flag = sys.argv[2] if len(sys.argv) > 2 else None

    def build(cfg: Config) -> Mapping[str, ServerApp]:
        if crash_flag and os.getpid() != SUPERVISOR_PID and os.path.exists(crash_flag):
            os._exit(4)
        return {name: EchoApp() for name in cfg.servers}

    return run(cfg, build)


if __name__ == "__main__":
    sys.exit(main())
