"""Access log: one line per request, nginx-style ``$variables``, written in batches.

The format is compiled once into a list of literal pieces and getters; a request
costs one join when the log is on and nothing when it is off. Lines are collected
and written with one ``os.write`` per second (or per 64 KiB), whole lines only, so
lines from several workers appending to one file do not interleave mid-line.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from typing import Any

from ...core.proto.http1 import Request, Response

Getter = Callable[[Request, Response, int, float], str]


def _request_line(req: Request, resp: Response, sent: int, now: float) -> str:
    return f"{req.method.decode()} {req.original_target.decode('latin-1')} HTTP/{req.version.decode()}"


def _upstream(req: Request, resp: Response, sent: int, now: float) -> str:
    ep = req.ctx.endpoint
    return "-" if ep is None else str(ep)


def _route(req: Request, resp: Response, sent: int, now: float) -> str:
    r = req.ctx.route
    return "-" if r is None else str(r.name)


def _bytes_received(req: Request, resp: Response, sent: int, now: float) -> str:
    # A tunnel's answer carries what it relayed from the client; else the request body's size.
    up = getattr(resp.body, "tunnel_up", None)
    if up is not None:
        return str(up)
    body = req.body
    if body is None:
        return "0"
    return str(len(body) if isinstance(body, bytes) else body.received)


def _header_getter(name: str) -> Getter:
    bname = name.replace("_", "-").encode()

    def get(req: Request, resp: Response, sent: int, now: float) -> str:
        v = req.headers.get(bname)
        return "-" if v is None else v.decode("latin-1")

    return get


VARIABLES: dict[str, Getter] = {
    "remote_addr": lambda req, resp, sent, now: req.ctx.peer,
    "request": _request_line,
    "method": lambda req, resp, sent, now: req.method.decode(),
    "uri": lambda req, resp, sent, now: req.original_target.decode("latin-1"),
    "upstream_uri": lambda req, resp, sent, now: req.target.decode("latin-1"),
    "host": lambda req, resp, sent, now: req.host.decode("latin-1") or "-",
    "status": lambda req, resp, sent, now: str(resp.status),
    "body_bytes_sent": lambda req, resp, sent, now: str(sent),
    "bytes_received": _bytes_received,
    "request_time": lambda req, resp, sent, now: f"{now - req.ctx.start:.6f}",
    "upstream_addr": _upstream,
    "server": lambda req, resp, sent, now: req.ctx.server,
    "route": _route,
}

_VAR = re.compile(r"\$([a-z_][a-z0-9_]*)")


def compile_format(fmt: str) -> list[str | Getter]:
    """Split ``fmt`` into literals and getters. Raises ValueError for unknown variables."""
    parts: list[str | Getter] = []
    pos = 0
    for m in _VAR.finditer(fmt):
        if m.start() > pos:
            parts.append(fmt[pos : m.start()])
        name = m.group(1)
        if name.startswith("http_"):
            parts.append(_header_getter(name[5:]))
        elif name in VARIABLES:
            parts.append(VARIABLES[name])
        else:
            known = ", ".join(sorted(VARIABLES)) + ", http_<header>"
            raise ValueError(f"unknown variable ${name} (known: {known})")
        pos = m.end()
    if pos < len(fmt):
        parts.append(fmt[pos:])
    return parts


class AccessLog:
    """Writes formatted lines to ``dest`` ("stdout", "stderr" or a path)."""

    def __init__(self, dest: str, fmt: str) -> None:
        self.parts = compile_format(fmt)
        if dest == "stdout":
            self.fd, self._own = 1, False
        elif dest == "stderr":
            self.fd, self._own = 2, False
        else:
            self.fd = os.open(dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._own = True
        self.dropped = 0
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: Any = None

    def __call__(self, req: Request, resp: Response, sent: int) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        line = "".join(p if isinstance(p, str) else p(req, resp, sent, now) for p in self.parts)
        self._lines.append(line)
        self._size += len(line)
        if self._size > 65536:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(1.0, self.flush)

    def write(self, line: str) -> None:
        """Log a line made by the caller (a Thrift call's, which has no HTTP request)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._lines.append(line)
        self._size += len(line)
        if self._size > 65536:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(1.0, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            data = ("\n".join(self._lines) + "\n").encode("utf-8", "replace")
            self._lines.clear()
            self._size = 0
            try:
                os.write(self.fd, data)
            except OSError:
                # A full disk or a closed stdout must not fail requests; count the loss.
                self.dropped += data.count(b"\n")

    def close(self) -> None:
        self.flush()
        if self._own:
            os.close(self.fd)
            self._own = False
