"""Access log: one line per request, nginx-style ``$variables``, written in batches.

The format is compiled once into a list of literal pieces and getters; a request
costs one join when the log is on and nothing when it is off. Values a client or an
upstream controls are escaped (``escape``: nginx's ``escape=default``); with ``[log]
format = "json"`` a line is one JSON object of the format's variables instead. Upstream
timings are measured only when the format names them (``uses_upstream_timing``, read
when the proxy is built). Lines are collected
and written with one ``os.write`` per second (or per 64 KiB), whole lines only, so
lines from several workers appending to one file do not interleave mid-line.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from typing import Any

import msgspec

from ...core.proto.http1 import Request, Response
from ..edge._slots import CLIENT_ADDR, REQUEST_ID, TRACE_ID, UPSTREAM_CONNECT_TIME, UPSTREAM_TIMES

Getter = Callable[[Request, Response, int, float], str]
_encode = msgspec.json.Encoder().encode


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


def _upstream_header_getter(name: str) -> Getter:
    bname = name.replace("_", "-").encode()

    def get(req: Request, resp: Response, sent: int, now: float) -> str:
        if req.ctx.endpoint is None:  # answered by the proxy itself: no upstream header
            return "-"
        v = resp.headers.get(bname)
        return "-" if v is None else v.decode("latin-1")

    return get


def _cookie_getter(name: str) -> Getter:
    want = name.encode()

    def get(req: Request, resp: Response, sent: int, now: float) -> str:
        for header in req.headers.get_all(b"cookie"):
            for pair in header.split(b";"):
                k, sep, v = pair.strip().partition(b"=")
                if sep and k == want:
                    return v.decode("latin-1")
        return "-"

    return get


def _request_id(req: Request, resp: Response, sent: int, now: float) -> str:
    rid = REQUEST_ID.get(req.ctx, None)
    return "-" if rid is None else rid.decode("latin-1")


def _trace_id(req: Request, resp: Response, sent: int, now: float) -> str:
    tid = TRACE_ID.get(req.ctx, None)
    return "-" if tid is None else tid.decode()


def _upstream_header_time(req: Request, resp: Response, sent: int, now: float) -> str:
    t = UPSTREAM_TIMES.get(req.ctx, None)
    return "-" if t is None else f"{t[1] - t[0]:.3f}"


def _upstream_response_time(req: Request, resp: Response, sent: int, now: float) -> str:
    # Until the response was written out, which for a streamed body is when its last upstream
    # byte was relayed.
    t = UPSTREAM_TIMES.get(req.ctx, None)
    return "-" if t is None else f"{now - t[0]:.3f}"


def _upstream_connect_time(req: Request, resp: Response, sent: int, now: float) -> str:
    # nginx's: 0 when the request reused a connection, "-" when no upstream was tried.
    if req.ctx.endpoint is None:
        return "-"
    return f"{UPSTREAM_CONNECT_TIME.get(req.ctx, 0.0):.6f}"  # microseconds: a local connect takes well under 1 ms


def _remote_addr(req: Request, resp: Response, sent: int, now: float) -> str:
    # nginx's realip: the client an ip_rules filter found behind its trusted proxies, else the peer.
    ctx = req.ctx
    user = ctx.user
    if user is not None:
        addr = user.get(CLIENT_ADDR)
        if addr is not None:
            return addr  # type: ignore[no-any-return]
    return ctx.peer  # type: ignore[no-any-return]


VARIABLES: dict[str, Getter] = {
    "remote_addr": _remote_addr,
    "realip_remote_addr": lambda req, resp, sent, now: req.ctx.peer,
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
    "request_id": _request_id,
    "trace_id": _trace_id,
    "upstream_header_time": _upstream_header_time,
    "upstream_response_time": _upstream_response_time,
    "upstream_connect_time": _upstream_connect_time,
}

PREFIXED: dict[str, Callable[[str], Getter]] = {
    "http_": _header_getter,
    "cookie_": _cookie_getter,
    "upstream_http_": _upstream_header_getter,
}
"""``$http_NAME`` (request header; "_" for "-"), ``$cookie_NAME``, ``$upstream_http_NAME``."""

SAFE = frozenset(
    {"remote_addr", "status", "body_bytes_sent", "bytes_received", "request_time", "server", "route", "trace_id"}
    | {"upstream_connect_time", "realip_remote_addr"}
)
"""Variables whose values no client or upstream controls (numbers, our names): never escaped."""
NUMBERS = frozenset(
    {"status", "body_bytes_sent", "bytes_received", "request_time", "upstream_header_time", "upstream_response_time"}
    | {"upstream_connect_time"}
)
"""Written as JSON numbers (null for "-") in the JSON format."""
UPSTREAM_TIMING = frozenset({"upstream_header_time", "upstream_response_time"})

_VAR = re.compile(r"\$([a-z_][a-z0-9_]*)")
_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def _hex(m: re.Match[str]) -> str:
    return f"\\x{ord(m.group()):02X}"


def escape(value: str) -> str:
    """nginx's ``escape=default``: ``"``, ``\\`` and characters outside printable ASCII as ``\\xHH``,
    so a logged value cannot end its field or forge a line."""
    return value if _UNSAFE.search(value) is None else _UNSAFE.sub(_hex, value)


def _escaped(get: Getter) -> Getter:
    def escaped(req: Request, resp: Response, sent: int, now: float) -> str:
        return escape(get(req, resp, sent, now))

    return escaped


def _lookup(name: str) -> Getter:
    for prefix, make in PREFIXED.items():
        if name.startswith(prefix) and name != prefix:
            return make(name[len(prefix) :])
    getter = VARIABLES.get(name)
    if getter is None:
        known = ", ".join(sorted(VARIABLES)) + ", " + ", ".join(f"{p}<name>" for p in PREFIXED)
        raise ValueError(f"unknown variable ${name} (known: {known})")
    return getter


def variables(fmt: str) -> list[str]:
    """The variable names ``fmt`` uses, in order."""
    return [m.group(1) for m in _VAR.finditer(fmt)]


def uses_upstream_timing(fmt: str) -> bool:
    return any(v in UPSTREAM_TIMING for v in variables(fmt))


def uses_connect_timing(fmt: str) -> bool:
    """Whether ``fmt`` names ``$upstream_connect_time`` (the pool then times its connects)."""
    return "upstream_connect_time" in variables(fmt)


def compile_format(fmt: str) -> list[str | Getter]:
    """Split ``fmt`` into literals and getters (escaping ones for values a client or upstream
    controls). Raises ValueError for unknown variables."""
    parts: list[str | Getter] = []
    pos = 0
    for m in _VAR.finditer(fmt):
        if m.start() > pos:
            parts.append(fmt[pos : m.start()])
        name = m.group(1)
        getter = _lookup(name)
        parts.append(getter if name in SAFE else _escaped(getter))
        pos = m.end()
    if pos < len(fmt):
        parts.append(fmt[pos:])
    return parts


def compile_json(fmt: str) -> list[tuple[str, Getter, bool]]:
    """The JSON format's fields: (key, getter, is a number), one per variable of ``fmt`` (the
    literals between them are dropped). Raises ValueError for unknown variables."""
    return [(name, _lookup(name), name in NUMBERS) for name in dict.fromkeys(variables(fmt))]


def _json_line(fields: list[tuple[str, Getter, bool]], req: Request, resp: Response, sent: int, now: float) -> str:
    doc: dict[str, str | float | None] = {}
    for key, get, number in fields:
        v = get(req, resp, sent, now)
        if number:
            doc[key] = None if v == "-" else float(v) if "." in v else int(v)
        else:
            doc[key] = v
    return _encode(doc).decode()


class LineWriter:
    """Log lines written to ``fd`` in batches: one write per 64 KiB or per second, never one per
    line. A failed write (a full disk, a closed stdout) is counted in ``dropped``, never raised."""

    def __init__(self, fd: int, own: bool = False) -> None:
        self.fd, self._own = fd, own
        self.dropped = 0
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: Any = None

    def write(self, line: str) -> None:
        """Log a line made by the caller (a Thrift call's or a stream call's, which have no HTTP request)."""
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


class AccessLog(LineWriter):
    """Writes formatted lines to ``dest`` ("stdout", "stderr" or a path)."""

    def __init__(self, dest: str, fmt: str, style: str = "text") -> None:
        self.parts = compile_format(fmt)
        self.fields = compile_json(fmt) if style == "json" else None
        if dest == "stdout":
            super().__init__(1)
        elif dest == "stderr":
            super().__init__(2)
        else:
            super().__init__(os.open(dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), own=True)

    def __call__(self, req: Request, resp: Response, sent: int) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        if self.fields is None:
            line = "".join(p if isinstance(p, str) else p(req, resp, sent, now) for p in self.parts)
        else:
            line = _json_line(self.fields, req, resp, sent, now)
        self._lines.append(line)
        self._size += len(line)
        if self._size > 65536:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(1.0, self.flush)
