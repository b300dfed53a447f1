"""An HTTP/2 origin over the ``h2`` library, for the HTTP/2 upstream tests.

Cleartext (prior knowledge) or TLS with ALPN "h2". Run as a script it prints
``PORT n`` when listening, then ``CONN n`` per accepted connection; tests import
``H2Origin`` to run it in-process on their own loop.

Paths: ``/hello`` (text naming the connection), ``/bytes/N`` (N bytes of the
shared pattern), ``/echo`` (streams the request body back), ``/sha`` (sha256 and
length of the request body), ``/trailers`` (a body, then trailers), ``/slow/MS``
(answers after MS milliseconds), ``/goaway`` (answers, then GOAWAY naming this
stream as the last), ``/hold`` (three arriving together: the first is answered,
then GOAWAY naming it as the last stream; fewer are answered after a second),
``/refuse`` (RST_STREAM REFUSED_STREAM), ``/die`` (drops the connection), ``/headers`` (the request's header list as
JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import ssl
import sys
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

BLOCK = bytes(range(256)) * 256


def pattern(n: int) -> bytes:
    full, rest = divmod(n, len(BLOCK))
    return BLOCK * full + BLOCK[:rest]


class _Conn(asyncio.Protocol):
    def __init__(self, origin: H2Origin) -> None:
        self.origin = origin
        self.index = origin.connections = origin.connections + 1
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.transport: Any = None
        self.bodies: dict[int, asyncio.Queue[bytes | None]] = {}
        self.window = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.held: list[int] = []
        self.goaway_sent = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.origin.transports.add(transport)
        if self.origin.announce:
            print(f"CONN {self.index}", flush=True)
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.origin.max_streams},
        )
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.origin.transports.discard(self.transport)
        for t in self.tasks:
            t.cancel()
        self.window.set()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                q: asyncio.Queue[bytes | None] = asyncio.Queue()
                self.bodies[ev.stream_id] = q
                if ev.stream_ended is not None:
                    q.put_nowait(None)
                task = asyncio.get_running_loop().create_task(self.handle(ev.stream_id, list(ev.headers)))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif isinstance(ev, h2.events.DataReceived):
                q2 = self.bodies.get(ev.stream_id)
                if q2 is not None:
                    q2.put_nowait(ev.data)
                    if ev.stream_ended is not None:
                        q2.put_nowait(None)
                # acknowledged as the handler reads it
            elif isinstance(ev, h2.events.StreamEnded):
                pass
            elif isinstance(ev, h2.events.StreamReset):
                self.origin.resets += 1
                q3 = self.bodies.pop(ev.stream_id, None)
                if q3 is not None:
                    q3.put_nowait(None)
                self.window.set()
            elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self.window.set()
        self.flush()

    async def read(self, sid: int) -> bytes | None:
        q = self.bodies.get(sid)
        if q is None:
            return None
        chunk = await q.get()
        if chunk:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.conn.acknowledge_received_data(len(chunk), sid)
            self.flush()
        return chunk

    async def read_all(self, sid: int) -> bytes:
        parts = []
        while (chunk := await self.read(sid)) is not None:
            parts.append(chunk)
        return b"".join(parts)

    async def send(self, sid: int, data: bytes, end: bool) -> None:
        view = memoryview(data)
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.window.clear()
                await self.window.wait()
                if self.transport.is_closing():
                    return
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    def respond(self, sid: int, status: int, headers: list[tuple[bytes, bytes]], end: bool = False) -> None:
        self.conn.send_headers(sid, [(b":status", b"%d" % status), *headers], end_stream=end)
        self.flush()

    async def handle(self, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            await self._handle(sid, headers)

    async def _handle(self, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        h = dict(headers)
        path = h.get(b":path", b"/").decode().partition("?")[0]
        self.origin.requests.append((self.index, path))
        if path == "/hello":
            await self.read_all(sid)
            body = f"hello from connection {self.index}\n".encode()
            self.respond(sid, 200, [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))])
            await self.send(sid, body, True)
        elif path.startswith("/bytes/"):
            await self.read_all(sid)
            n = int(path.rsplit("/", 1)[1])
            self.respond(sid, 200, [(b"content-length", b"%d" % n)])
            await self.send(sid, pattern(n), True)
        elif path == "/echo":
            self.respond(sid, 200, [(b"content-type", b"application/octet-stream")])
            while (chunk := await self.read(sid)) is not None:
                await self.send(sid, chunk, False)
            await self.send(sid, b"", True)
        elif path == "/sha":
            data = await self.read_all(sid)
            body = json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}).encode()
            self.respond(sid, 200, [(b"content-type", b"application/json")])
            await self.send(sid, body, True)
        elif path == "/trailers":
            await self.read_all(sid)
            self.respond(sid, 200, [(b"content-type", b"text/plain")])
            await self.send(sid, b"body before trailers\n", False)
            self.conn.send_headers(sid, [(b"x-checksum", b"abc123"), (b"x-done", b"yes")], end_stream=True)
            self.flush()
        elif path.startswith("/slow/"):
            await self.read_all(sid)
            await asyncio.sleep(int(path.rsplit("/", 1)[1]) / 1000)
            self.respond(sid, 200, [(b"content-length", b"5")])
            await self.send(sid, b"slow\n", True)
        elif path == "/goaway":
            await self.read_all(sid)
            self.respond(sid, 200, [(b"content-length", b"7")])
            await self.send(sid, b"goaway\n", True)
            self.conn.close_connection(last_stream_id=sid)
            self.flush()
        elif path == "/hold":
            self.held.append(sid)
            if len(self.held) >= self.origin.hold_then_goaway:
                # GOAWAY naming the first held stream: the others were "not processed".
                # (h2 sends nothing after its GOAWAY: the first one is answered before it.)
                first = self.held[0]
                self.respond(first, 200, [(b"content-length", b"5")])
                await self.send(first, b"held\n", True)
                self.conn.close_connection(last_stream_id=first)
                self.flush()
                self.goaway_sent = True
            else:
                # Fewer arrived together (the retries of the unprocessed ones, on a new
                # connection): answered after a second.
                await asyncio.sleep(1.0)
                if not self.goaway_sent and sid in self.held:
                    self.held.remove(sid)
                    self.respond(sid, 200, [(b"content-length", b"5")])
                    await self.send(sid, b"held\n", True)
        elif path == "/die":
            self.transport.abort()  # no GOAWAY, no answer: as a peer that crashed or timed the connection out
        elif path == "/refuse":
            self.conn.reset_stream(sid, 0x7)  # REFUSED_STREAM: not processed, safe to retry
            self.flush()
        elif path == "/headers":
            await self.read_all(sid)
            body = json.dumps([[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]).encode()
            self.respond(sid, 200, [(b"content-type", b"application/json")])
            await self.send(sid, body, True)
        else:
            await self.read_all(sid)
            self.respond(sid, 404, [(b"content-length", b"0")], end=True)


class H2Origin:
    """The origin server; ``start()`` binds 127.0.0.1 on an ephemeral port."""

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, max_streams: int = 100, announce: bool = False
    ) -> None:
        self.ssl_context = ssl_context
        self.max_streams = max_streams
        self.announce = announce
        self.connections = 0
        self.resets = 0
        self.hold_then_goaway = 3
        self.requests: list[tuple[int, str]] = []
        self.server: asyncio.Server | None = None
        self.transports: set[Any] = set()
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in list(self.transports):
                t.abort()
            await self.server.wait_closed()


def server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def _main(args: argparse.Namespace) -> None:
    ctx = server_context(args.cert, args.key) if args.cert else None
    origin = H2Origin(ssl_context=ctx, max_streams=args.max_streams, announce=True)
    await origin.start()
    print(f"PORT {origin.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--max-streams", type=int, default=100)
    try:
        asyncio.run(_main(p.parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)
