"""Logs: escaped $vars in the text access log, the JSON format, request id, header/cookie/upstream
variables and timings; the JSON error log; the log level set through the admin endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from monolake.core.runtime import _logging
from monolake.product.admin._http import Request as AdminRequest
from monolake.product.admin._server import AdminState, _Routes

from ._support import EchoOrigin, InProcessProxy, LoopThread

FORMAT = (
    '$remote_addr "$request" $status $request_id "$http_user_agent" $cookie_sid '
    "$upstream_http_x_up $upstream_header_time $upstream_response_time $body_bytes_sent"
)


def answer(method: bytes, target: bytes, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
    return 200, [("X-Up", 'up"val')], b"hello"


def make(lt: LoopThread, origin: EchoOrigin, tmp: Path, style: str) -> tuple[InProcessProxy, Path]:
    path = tmp / f"access-{style}.log"
    raw = {
        "log": {"access_log": str(path), "access_log_format": FORMAT, "format": style},
        "servers": {
            "web": {
                "listener": "127.0.0.1:0",
                "filters": ["request_id"],
                "routes": [{"upstreams": [{"endpoint": origin.url}]}],
            }
        },
    }
    return InProcessProxy(lt, raw), path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopThread, EchoOrigin, Path]]:
    lt = LoopThread()
    origin = EchoOrigin(lt, answer)
    yield lt, origin, tmp_path_factory.mktemp("logs")
    origin.close()
    lt.close()


def raw_get(url: str, path: str, headers: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode() + headers + b"\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def read_lines(lt: LoopThread, proxy: InProcessProxy, path: Path, n: int) -> list[str]:
    """The access log's lines once ``n`` are there (the log writes in batches: flush it)."""
    deadline = time.monotonic() + 10
    while True:

        async def flush() -> None:
            for app in proxy.apps.values():
                if app.on_close is not None:
                    app.on_close()

        lt.run(flush())
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


EVIL = b'User-Agent: evil" 200 \xff\tx\r\nCookie: a=1; sid=s"1\r\nX-Request-Id: given-id\r\n'


def test_text_access_log_escapes_what_clients_and_upstreams_control(env: Any) -> None:
    lt, origin, tmp = env
    proxy, path = make(lt, origin, tmp, "text")
    try:
        resp = raw_get(proxy.url, '/p?q="x"', EVIL)
        assert resp.startswith(b"HTTP/1.1 200")
        plain = raw_get(proxy.url, "/plain", b"")
        assert plain.startswith(b"HTTP/1.1 200")
        first, second = read_lines(lt, proxy, path, 2)
    finally:
        proxy.close()
    assert first.startswith(
        '127.0.0.1 "GET /p?q=\\x22x\\x22 HTTP/1.1" 200 given-id "evil\\x22 200 \\xFF\\x09x" s\\x221 '
    )
    fields = first.split(" ")
    assert fields[-4] == "up\\x22val"  # $upstream_http_x_up
    header_time, response_time = float(fields[-3]), float(fields[-2])
    assert 0 <= header_time <= response_time
    assert fields[-1] == "5"
    assert re.fullmatch(
        r'127\.0\.0\.1 "GET /plain HTTP/1\.1" 200 [0-9a-f]{32} "-" - up\\x22val [\d.]+ [\d.]+ 5', second
    )


def test_json_access_log(env: Any) -> None:
    lt, origin, tmp = env
    proxy, path = make(lt, origin, tmp, "json")
    try:
        assert raw_get(proxy.url, '/p?q="x"', EVIL).startswith(b"HTTP/1.1 200")
        (line,) = read_lines(lt, proxy, path, 1)
    finally:
        proxy.close()
    doc = json.loads(line)
    assert doc["request"] == 'GET /p?q="x" HTTP/1.1'
    assert doc["http_user_agent"] == 'evil" 200 \xff\tx'
    assert doc["cookie_sid"] == 's"1' and doc["request_id"] == "given-id"
    assert doc["upstream_http_x_up"] == 'up"val'
    assert doc["status"] == 200 and doc["body_bytes_sent"] == 5
    assert 0 <= doc["upstream_header_time"] <= doc["upstream_response_time"]


def test_json_error_log_is_one_escaped_object_per_line() -> None:
    rec = logging.LogRecord("monolake.x", logging.WARNING, __file__, 1, 'bad "%s"', ("a\nb",), None)
    line = _logging.JsonFormatter().format(rec)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["message"] == 'bad "a\nb"' and doc["level"] == "WARNING" and doc["logger"] == "monolake.x"


def _child(conn: Any) -> None:
    """A forked 'worker': follows the shared level, reports its logger's level when asked."""

    async def main() -> None:
        _logging.watch_level(asyncio.get_running_loop(), interval=0.02)
        conn.send("ready")
        while True:
            await asyncio.sleep(0.02)
            if conn.poll():
                if conn.recv() == "stop":
                    return
                conn.send(_logging.logger.level)

    asyncio.run(main())


def test_admin_sets_the_log_level_of_forked_workers() -> None:
    before = _logging.shared_level()
    parent, child = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(child,))
    proc.start()
    routes = _Routes(AdminState(SimpleNamespace(config=None), None, None))
    try:
        assert parent.poll(30) and parent.recv() == "ready"
        bad = routes(AdminRequest(method="POST", target="/log_level?level=loud", headers={}))
        assert bad.status == 400
        ok = routes(AdminRequest(method="POST", target="/log_level", headers={}, body=b'{"level": "debug"}'))
        assert ok.status == 200 and json.loads(ok.body) == {"level": "debug"}
        assert json.loads(routes(AdminRequest(method="GET", target="/log_level", headers={})).body) == {
            "level": "debug"
        }
        assert _logging.logger.level == logging.DEBUG
        deadline = time.monotonic() + 30
        while True:  # the worker looks at the shared level on its own timer
            parent.send("level?")
            assert parent.poll(30)
            if parent.recv() == logging.DEBUG:
                break
            assert time.monotonic() < deadline, "the forked worker did not follow the level"
    finally:
        parent.send("stop")
        proc.join(30)
        _logging.set_level(before)
    assert proc.exitcode == 0
