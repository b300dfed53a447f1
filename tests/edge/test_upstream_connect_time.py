"""``$upstream_connect_time``: the connect time of the connection a request opened, 0 when it reused
a pooled one, "-" when no upstream was tried (nginx's meaning), on the plain and the guarded path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ._support import EchoOrigin, InProcessProxy, LoopThread
from .test_logs import read_lines


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopThread, InProcessProxy, Path]]:
    lt = LoopThread()
    origin, other = EchoOrigin(lt), EchoOrigin(lt)  # the pool's connections are per endpoint: one per route
    path = tmp_path_factory.mktemp("ct") / "access.log"
    up = [{"endpoint": origin.url}]
    raw = {
        "log": {"access_log": str(path), "access_log_format": "$uri $upstream_connect_time"},
        "servers": {
            "web": {
                "listener": "127.0.0.1:0",
                "routes": [
                    {"path": "/plain/", "upstreams": up},
                    {"path": "/retrying/", "upstreams": [{"endpoint": other.url}], "retry": {"attempts": 1}},
                ],
            }
        },
    }
    proxy = InProcessProxy(lt, raw)
    yield lt, proxy, path
    proxy.close()
    origin.close()
    other.close()
    lt.close()


def test_connect_time_of_opened_connections_zero_when_reused(env: Any) -> None:
    lt, proxy, path = env
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        for p in ("/plain/a", "/plain/b", "/retrying/a", "/retrying/b", "/nowhere"):
            c.get(p)
    lines = dict(line.split(" ") for line in read_lines(lt, proxy, path, 5))
    # each route opens one connection, then reuses it
    assert float(lines["/plain/a"]) > 0 and float(lines["/plain/b"]) == 0
    assert float(lines["/retrying/a"]) > 0 and float(lines["/retrying/b"]) == 0
    assert lines["/nowhere"] == "-"  # no route: no upstream tried


def test_h2c_upstream_connect_time(tmp_path: Path) -> None:
    """An HTTP/2 (h2c) upstream, here a second monolake server in front of the echo origin: the first
    request waits for the new connection (its connect time), the next one shares it (0)."""
    lt = LoopThread()
    origin = EchoOrigin(lt)
    h2_origin = InProcessProxy(
        lt, {"servers": {"h2": {"listener": "127.0.0.1:0", "routes": [{"upstreams": [{"endpoint": origin.url}]}]}}}
    )
    path = tmp_path / "access.log"
    raw = {
        "log": {"access_log": str(path), "access_log_format": "$uri $upstream_connect_time"},
        "servers": {
            "web": {
                "listener": "127.0.0.1:0",
                "routes": [{"path": "/h2/", "upstreams": [{"endpoint": h2_origin.url}], "protocol": "h2c"}],
            }
        },
    }
    proxy = InProcessProxy(lt, raw)
    try:
        with httpx.Client(base_url=proxy.url, timeout=30) as c:
            for p in ("/h2/a", "/h2/b"):
                r = c.get(p)
                assert r.status_code == 200 and r.json()["target"] == p, r.text
        lines = dict(line.split(" ") for line in read_lines(lt, proxy, path, 2))
        assert float(lines["/h2/a"]) > 0 and float(lines["/h2/b"]) == 0
    finally:
        proxy.close()
        h2_origin.close()
        origin.close()
        lt.close()
