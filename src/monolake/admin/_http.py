"""The admin endpoint's HTTP/1.1 listener: one event loop in one supervisor thread, bounded.

The supervisor is a poll loop that forks, not an asyncio program, so the listener
runs a stdlib selector loop of its own in a daemon thread. A thread per connection
(what ``ThreadingHTTPServer`` does) let idle clients grow the supervisor by a
thread each; here a connection costs a coroutine, and every bound is explicit:

- ``max_connections`` open at once: one more is answered 503 and closed at once;
- a request's head must arrive within ``header_timeout`` seconds (counted from
  connect for the first request, from its first byte on a kept-alive connection),
  else 408 and close; a kept-alive connection idle for ``idle_timeout`` is closed;
- a head is at most ``MAX_HEAD`` bytes (431), a body at most ``MAX_BODY`` (413),
  and a chunked body is refused (501): admin requests carry none worth streaming.

Handlers are plain blocking functions (a scrape reads the workers' metrics files;
``POST /reload`` waits for the reload's outcome), so they run on ``HANDLER_THREADS``
daemon threads, never on the loop: a slow reload does not stall ``/healthz``. A
connection has at most one request in a handler at a time, so the queue in front
of them is bounded by ``max_connections``.

A failure a client causes (reset, early close, timeout, malformed request) is one
log line, rate-limited; never a traceback. A handler's own bug is logged with its
traceback by the handler wrapper (``_server``) and answered 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..observe._ratelimit import RateLimitedLog
from ..runtime._logging import logger as log

MAX_HEAD = 16 * 1024
"""Bytes of request line plus headers at most; more is answered 431."""
MAX_BODY = 64 * 1024
"""Bytes of request body at most; more is answered 413."""
HANDLER_THREADS = 4
"""Threads that run handlers (all daemons: a reload wait never holds up the process's exit)."""
LINGER = 2.0
"""Seconds an error reply's connection keeps reading (and discarding) before it closes."""
STOP_WAIT = 5.0
"""Seconds ``close`` waits for the loop thread."""

_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ", "."""
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Reply]


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_connections: int = 256
    header_timeout: float = 10.0
    idle_timeout: float = 30.0


class _Refuse(Exception):
    """Answer ``status`` and close: the request cannot be read or served."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _error(status: int, message: str) -> bytes:
    body = b'{"error": "%s"}\n' % message.encode()
    return _head(status, len(body), "application/json", {}, close=True) + body


def _head(status: int, length: int, ctype: str, extra: dict[str, str], *, close: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        "Server: monolake-admin",
        f"Content-Type: {ctype}",
        f"Content-Length: {length}",
        "Cache-Control: no-store",
    ]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _peer(writer: asyncio.StreamWriter) -> str:
    addr = writer.get_extra_info("peername")
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
    return str(addr)


class _Pool:
    """``size`` daemon threads running handlers; results go back to the loop as futures."""

    def __init__(self, size: int) -> None:
        self._jobs: queue.SimpleQueue[tuple[Handler, Request, asyncio.Future[Reply]] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"monolake-admin-{i}", daemon=True) for i in range(size)
        ]
        for t in self._threads:
            t.start()

    def run(self, handler: Handler, req: Request) -> asyncio.Future[Reply]:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._jobs.put((handler, req, fut))
        return fut

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            handler, req, fut = job
            loop = fut.get_loop()
            try:
                reply = handler(req)
            except BaseException as exc:  # handed to the loop, which logs it
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, fut, None, exc)
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, fut, reply, None)

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close and discard what the client still sends, for at most ``LINGER`` seconds: closing
    with unread input would reset the connection, and a reset can destroy the error reply before
    the client reads it."""
    with contextlib.suppress(OSError, TimeoutError):
        writer.write_eof()
        async with asyncio.timeout(LINGER):
            while await reader.read(65536):
                pass


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _settle(fut: asyncio.Future[Reply], reply: Reply | None, exc: BaseException | None) -> None:
    if fut.done():  # the connection went away meanwhile
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        assert reply is not None
        fut.set_result(reply)


class HttpListener:
    """Serves ``handler`` on the bound, listening ``sock`` (see the module docstring).

    ``start`` returns once the loop accepts; ``close`` stops accepting, cancels open
    connections and waits (at most ``STOP_WAIT`` seconds) for the thread.
    """

    def __init__(self, sock: socket.socket, handler: Handler, limits: Limits) -> None:
        self.sock = sock
        self.handler = handler
        self.limits = limits
        self.open = 0
        """Connections being served now (read by tests and ``statistics``)."""
        self._loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(target=self._run, name="monolake-admin", daemon=True)
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._stop: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pool: _Pool | None = None
        self._failures = RateLimitedLog(log, "admin: connection failures", level=logging.INFO)
        self._refusals = RateLimitedLog(log, "admin: refused connections", level=logging.WARNING)

    def start(self) -> None:
        self._pool = _Pool(HANDLER_THREADS)
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    def close(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(_resolve, self._stop)
            self._thread.join(STOP_WAIT)
        elif self._thread.ident is None:  # never started: the loop was never run
            self._loop.close()
        if self._pool is not None:
            self._pool.close()
        self.sock.close()

    def statistics(self) -> dict[str, int]:
        return {"open": self.open, "max_connections": self.limits.max_connections}

    # -- the loop thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start() when it happens before the loop serves
            if not self._ready.is_set():
                self._failed = exc
                self._ready.set()
            else:
                log.exception("admin: the listener's loop failed")
        finally:
            self._loop.close()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        server = await asyncio.start_server(self._connection, sock=self.sock, limit=MAX_HEAD)
        self._ready.set()
        ticker = loop.create_task(self._flush_logs())
        try:
            await self._stop
        finally:
            ticker.cancel()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(ticker, *self._tasks, return_exceptions=True)

    async def _flush_logs(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._failures.flush()
            self._refusals.flush()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        if self.open >= self.limits.max_connections:
            self._refusals.log(
                "admin: %d connections open (admin.max_connections); answered %s with 503",
                self.open,
                peer,
            )
            writer.write(_error(503, "too many admin connections"))
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.open += 1
        self._tasks.add(task)
        try:
            await self._serve(reader, writer, peer)
        except asyncio.CancelledError:
            # Only ``close`` cancels, and this is the task's outermost frame: end it here. Python
            # 3.11's start_server callback calls ``task.exception()``, which raises (and logs a
            # traceback) for a cancelled task.
            return
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            why = "closed the connection mid-request" if isinstance(exc, asyncio.IncompleteReadError) else str(exc)
            self._failures.log("admin: %s: %s", peer, why or type(exc).__name__)
        except OSError as exc:
            self._failures.log("admin: %s: %s", peer, exc.strerror or exc)
        except Exception:
            log.exception("admin: %s: serving the connection failed", peer)
        finally:
            self.open -= 1
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        limits, loop = self.limits, asyncio.get_running_loop()
        first = True
        while True:
            try:
                req = await self._read(reader, loop, first)
            except _Refuse as exc:
                self._failures.log("admin: %s: %d %s", peer, exc.status, exc.reason)
                writer.write(_error(exc.status, exc.reason))
                await _linger(reader, writer)
                return
            if req is None:
                return
            first = False
            assert self._pool is not None
            reply = await self._pool.run(self.handler, req)
            connection = req.headers.get("connection", "").lower()
            close = connection == "close"
            extra = reply.headers if connection != "keep-alive" else {**reply.headers, "Connection": "keep-alive"}
            head = _head(reply.status, len(reply.body), reply.content_type, extra, close=close)
            writer.write(head if req.method == "HEAD" else head + reply.body)
            try:
                async with asyncio.timeout(limits.idle_timeout):
                    await writer.drain()
            except TimeoutError:
                self._failures.log("admin: %s: did not read its response in %g s; closed", peer, limits.idle_timeout)
                writer.transport.abort()
                return
            if close:
                return

    async def _read(self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop, first: bool) -> Request | None:
        """The next request; None when the client closed (or stayed idle) between requests.
        Raises _Refuse for a request that cannot be served."""
        limits = self.limits
        started = False
        try:
            async with asyncio.timeout(limits.header_timeout if first else limits.idle_timeout) as deadline:
                line = await reader.readline()
                if not line:
                    return None
                started = True
                if not first:  # a kept-alive connection's request has header_timeout from its first byte
                    deadline.reschedule(loop.time() + limits.header_timeout)
                lines: list[bytes] = []
                size = len(line)
                while True:
                    h = await reader.readline()
                    if not h:
                        raise asyncio.IncompleteReadError(h, None)
                    size += len(h)
                    if size > MAX_HEAD:
                        raise _Refuse(431, f"request head larger than {MAX_HEAD} bytes")
                    if h in (b"\r\n", b"\n"):
                        break
                    lines.append(h)
                method, target, headers = self._parse_head(line, lines)
                body = b""
                if "transfer-encoding" in headers:
                    raise _Refuse(501, "chunked request bodies are not supported")
                length = headers.get("content-length", "0").strip()
                if not length.isdigit():
                    raise _Refuse(400, "bad Content-Length")
                if int(length) > MAX_BODY:
                    raise _Refuse(413, f"request body larger than {MAX_BODY} bytes")
                if int(length):
                    body = await reader.readexactly(int(length))
        except TimeoutError:
            if not started and not first:
                return None  # idle keep-alive connection: closed quietly
            what = "complete its request" if started else "send a request"
            waited = limits.header_timeout
            raise _Refuse(408, f"did not {what} within {waited:g} s") from None
        except ValueError:  # StreamReader: a line longer than its limit
            raise _Refuse(431, f"request head larger than {MAX_HEAD} bytes") from None
        return Request(method=method, target=target, headers=headers, body=body)

    def _parse_head(self, line: bytes, lines: list[bytes]) -> tuple[str, str, dict[str, str]]:
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _Refuse(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _Refuse(505, f"{version} is not served here")
        headers: dict[str, str] = {}
        for raw in lines:
            name, sep, value = raw.decode("latin-1").partition(":")
            name = name.strip().lower()
            if not sep or not name or " " in name:
                raise _Refuse(400, "malformed header line")
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            headers["connection"] = "close"
        return method, target, headers
