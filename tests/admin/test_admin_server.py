"""admin._server without a supervisor: redaction, auth, 501 when reload is missing, a bad listen address,
the listener's bounds (connection cap, timeouts, size caps) and the warning for a non-loopback listener."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from monolake.admin import AdminServer, AdminState, redact
from monolake.admin._http import MAX_HEAD, Limits
from monolake.config import parse_config
from monolake.errors import ConfigError

CFG_RAW: dict[str, Any] = {
    "admin": {"listen": "127.0.0.1:0", "token": "t0k"},
    "upstreams": {"api": {"endpoints": [{"endpoint": "http://127.0.0.1:9"}]}},
    "servers": {
        "web": {
            "listener": "127.0.0.1:0",
            "routes": [{"path": "/", "upstream": "api"}, {"path": "/x", "upstreams": [{"endpoint": "unix:/s"}]}],
        }
    },
}
CFG = parse_config(CFG_RAW)


def test_redact() -> None:
    assert redact({"admin": {"token": "x", "listen": "a"}, "args": [{"password": "p", "n": 1}], "api_key": None}) == {
        "admin": {"token": "<redacted>", "listen": "a"},
        "args": [{"password": "<redacted>", "n": 1}],
        "api_key": None,
    }


@pytest.fixture
def server() -> Iterator[str]:
    sup = SimpleNamespace(config=CFG)  # no request_reload: a supervisor without reload
    admin = AdminServer("127.0.0.1:0", AdminState(sup, None, "t0k"))
    admin.start()
    try:
        yield "http://{}:{}".format(*admin.address)
    finally:
        admin.close()


def get(url: str, **kw: Any) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10) as c:
        return c.request(kw.pop("method", "GET"), url, **kw)


def test_without_metrics_and_reload(server: str) -> None:
    h = {"Authorization": "Bearer t0k"}
    assert get(f"{server}/metrics").status_code == 401
    assert get(f"{server}/metrics", headers=h).status_code == 200
    r = get(f"{server}/reload", method="POST", headers=h)
    assert r.status_code == 501 and "not implemented" in r.json()["error"]
    ups = get(f"{server}/upstreams", headers=h).json()
    assert ups["health_checks"] is False
    assert ups["upstreams"]["api"]["endpoints"] == [{"endpoint": "127.0.0.1:9", "healthy": None}]
    assert ups["upstreams"]["web.routes[1]"]["endpoints"][0]["endpoint"] == "unix:/s"
    assert get(f"{server}/nope", headers=h).status_code == 404
    assert get(f"{server}/metrics", method="POST", headers=h).status_code == 405
    assert get(f"{server}/stats.json", headers=h).json()["metrics"] is False


def test_bad_listen() -> None:
    with pytest.raises(ConfigError, match=r"admin\.listen"):
        AdminServer("nowhere", AdminState(SimpleNamespace(config=CFG), None, None))
    with pytest.raises(ConfigError, match=r"admin\.listen"):
        AdminServer("unix:/tmp/x", AdminState(SimpleNamespace(config=CFG), None, None))


# -- /config redaction (issue 17 F) ------------------------------------------------------------


def test_config_redacts_header_values_and_key_paths(tmp_path: Path) -> None:
    for name in ("chain.pem", "server.key", "client.pem", "client.key"):
        (tmp_path / name).write_text("-")
    cfg = parse_config(
        {
            "upstreams": {
                "api": {
                    "endpoints": [{"endpoint": "https://127.0.0.1:9"}],
                    "tls": {"client_cert": str(tmp_path / "client.pem"), "client_key": str(tmp_path / "client.key")},
                }
            },
            "servers": {
                "web": {
                    "listener": "127.0.0.1:0",
                    "tls": {
                        "certificates": [{"chain": str(tmp_path / "chain.pem"), "key": str(tmp_path / "server.key")}]
                    },
                    "routes": [
                        {
                            "path": "/",
                            "upstream": "api",
                            "headers": {"x-tenant": "match-secret"},
                            "request_headers": {
                                "set": {"X-Api-Key": "key-secret", "X-Auth": "auth-secret"},
                                "add": {"Cookie": "cookie-secret"},
                                "remove": ["x-drop"],
                            },
                            "response_headers": {"set": {"X-Plain": "resp-secret"}},
                        }
                    ],
                }
            },
        }
    )
    sup = SimpleNamespace(config=cfg)
    admin = AdminServer("127.0.0.1:0", AdminState(sup, None, None))
    admin.start()
    try:
        shown = get("http://{}:{}/config".format(*admin.address)).text
    finally:
        admin.close()
    for secret in (
        "match-secret",
        "key-secret",
        "auth-secret",
        "cookie-secret",
        "resp-secret",
        "server.key",
        "client.key",
    ):
        assert secret not in shown
    route = json.loads(shown)["servers"]["web"]["routes"][0]
    assert route["request_headers"] == {
        "add": {"Cookie": "<redacted>"},
        "set": {"X-Api-Key": "<redacted>", "X-Auth": "<redacted>"},
        "remove": ["x-drop"],
    }
    assert route["headers"] == {"x-tenant": "<redacted>"}
    # what is not secret stays readable: header names, certificate chains, listeners
    assert str(tmp_path / "chain.pem") in shown and str(tmp_path / "client.pem") in shown
    assert json.loads(shown)["servers"]["web"]["tls"]["certificates"][0]["key"] == "<redacted>"


# -- the listener's bounds (issue 17 E) ----------------------------------------------------------


def test_warns_when_listening_beyond_loopback_without_a_token(caplog: pytest.LogCaptureFixture) -> None:
    for listen, token, warned in (("0.0.0.0:0", None, True), ("0.0.0.0:0", "t", False), ("127.0.0.1:0", None, False)):
        caplog.clear()
        # a config without [admin]: the token given at start is the one in force
        admin = AdminServer(listen, AdminState(SimpleNamespace(config=SimpleNamespace()), None, token))
        admin.start()
        admin.close()
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        expected = f"admin endpoint listens on 0.0.0.0:{admin.address[1]} without a token"
        assert any(expected in line for line in lines) is warned, (listen, token, lines)


@pytest.fixture
def bounded() -> Iterator[AdminServer]:
    sup = SimpleNamespace(config=SimpleNamespace())  # no [admin] token
    admin = AdminServer(
        "127.0.0.1:0",
        AdminState(sup, None, None),
        Limits(max_connections=4, header_timeout=0.5, idle_timeout=0.5),
    )
    admin.start()
    try:
        yield admin
    finally:
        admin.close()


def exchange(admin: AdminServer, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes (every case here ends with a close)."""
    with socket.create_connection(admin.address, timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_request_limits(bounded: AdminServer) -> None:
    assert exchange(bounded, b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200 "
    )
    big = b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n"
    assert exchange(bounded, big).startswith(b"HTTP/1.1 431 ")
    assert exchange(bounded, b"POST /reload HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n").startswith(b"HTTP/1.1 413 ")
    assert exchange(bounded, b"POST /reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").startswith(
        b"HTTP/1.1 501 "
    )
    assert exchange(bounded, b"GET / HTTP/2.0\r\n\r\n").startswith(b"HTTP/1.1 505 ")
    assert exchange(bounded, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    # a head that never completes: 408 once header_timeout has passed
    assert exchange(bounded, b"GET /healthz HTTP/1.1\r\n").startswith(b"HTTP/1.1 408 ")
    # a kept-alive connection: two requests, then closed quietly once idle
    reply = exchange(bounded, b"GET /healthz HTTP/1.1\r\n\r\nHEAD /healthz HTTP/1.1\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200 ") == 2 and b"408" not in reply
    assert b"Connection: close" in exchange(bounded, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert b"Connection: keep-alive" in exchange(bounded, b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert bounded.listener.open == 0


def test_connection_cap_and_threads(bounded: AdminServer) -> None:
    threads = threading.active_count()
    idle = [socket.create_connection(bounded.address, timeout=10) for _ in range(4)]
    try:
        poll_until(lambda: bounded.listener.open == 4)
        extra = [socket.create_connection(bounded.address, timeout=10) for _ in range(6)]
        for s in extra:
            assert s.recv(65536).startswith(b"HTTP/1.1 503 ")
            s.close()
        assert threading.active_count() <= threads  # no thread per connection
    finally:
        for s in idle:
            s.close()
    poll_until(lambda: bounded.listener.open == 0)


def poll_until(fn: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize(("key", "value"), [("max_connections", 0), ("header_timeout", 0), ("idle_timeout", -1.0)])
def test_admin_limits_are_validated(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"admin\.{key}: must be"):
        parse_config({**CFG_RAW, "admin": {key: value}})


def test_close_with_open_connections_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    admin = AdminServer("127.0.0.1:0", AdminState(SimpleNamespace(config=SimpleNamespace()), None, None))
    admin.start()
    idle = [socket.create_connection(admin.address, timeout=10) for _ in range(3)]
    try:
        poll_until(lambda: admin.listener.open == 3)
        admin.close()
        for s in idle:
            assert s.recv(100) == b""  # closed by the stop, without a reply
    finally:
        for s in idle:
            s.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_close_without_start() -> None:
    admin = AdminServer("127.0.0.1:0", AdminState(SimpleNamespace(config=CFG), None, None))
    admin.close()  # no unclosed-loop or unclosed-socket warning (warnings are errors here)
    with pytest.raises(OSError):
        socket.create_connection(admin.address, timeout=10)
