"""IP allow/deny rules: per route, with trusted proxies' X-Forwarded-For, behind the PROXY
protocol, and on a tcp server."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from monolake.apps.config import parse_config
from monolake.core.errors import ConfigError

from ._support import EchoOrigin, InProcessProxy, LoopThread


class Env:
    def __init__(self) -> None:
        self.lt = LoopThread()
        self.origin = EchoOrigin(self.lt)
        up = [{"endpoint": self.origin.url}]
        lan = {"allow": ["10.0.0.0/8", "2001:db8::/32"], "trusted_proxies": ["127.0.0.1/32", "192.0.2.1"]}
        self.proxy = InProcessProxy(
            self.lt,
            {
                "servers": {
                    "web": {
                        "listener": "127.0.0.1:0",
                        "routes": [
                            {"path": "/lan/", "upstreams": up, "filters": [{"use": "ip_rules", "args": lan}]},
                            {
                                "path": "/deny/",
                                "upstreams": up,
                                "filters": [{"use": "ip_rules", "args": {"deny": ["127.0.0.0/8"]}}],
                            },
                            {"path": "/", "upstreams": up},
                        ],
                    },
                    "pp": {
                        "listener": "127.0.0.1:0",
                        "proxy_protocol": "v1",
                        "filters": [{"use": "ip_rules", "args": {"allow": ["10.9.0.0/16"]}}],
                        "routes": [{"upstreams": up}],
                    },
                    "tcp": {
                        "listener": "127.0.0.1:0",
                        "proxy_type": "tcp",
                        "upstreams": [{"endpoint": self.origin.address}],
                        "filters": [{"use": "ip_rules", "args": {"deny": ["127.0.0.1"]}}],
                    },
                }
            },
        )

    def close(self) -> None:
        self.proxy.close()
        self.origin.close()
        self.lt.close()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.close()


def exchange(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def get(url: str, path: str, xff: str | None = None, prefix: bytes = b"") -> int:
    extra = f"X-Forwarded-For: {xff}\r\n" if xff is not None else ""
    out = exchange(url, prefix + f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
    return int(out.split(b" ", 2)[1])


def test_route_rules_with_trusted_forwarded_for(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    url = env.proxy.urls["web"]
    assert get(url, "/lan/a") == 403  # the peer (a trusted proxy) is not on the LAN itself
    assert get(url, "/lan/a", "10.1.2.3") == 200
    assert get(url, "/lan/a", "2001:db8::7") == 200
    assert get(url, "/lan/a", "10.1.2.3, 192.0.2.1") == 200  # through a second trusted proxy
    assert get(url, "/lan/a", "10.1.2.3, 198.51.100.4") == 403  # a spoofed left end is not believed
    assert get(url, "/other", None) == 200  # a route without rules
    with caplog.at_level(logging.INFO, logger="monolake.edge.ip_rules"):
        assert get(url, "/deny/x", "10.1.2.3") == 403  # no trusted proxies there: the peer counts
    assert any("ip_rules: refused 127.0.0.1" in r.getMessage() and "/deny/x" in r.getMessage() for r in caplog.records)


def test_proxy_protocol_address(env: Env) -> None:
    url = env.proxy.urls["pp"]
    assert get(url, "/", prefix=b"PROXY TCP4 10.9.8.7 127.0.0.1 40000 80\r\n") == 200
    assert get(url, "/", prefix=b"PROXY TCP4 192.0.2.50 127.0.0.1 40000 80\r\n") == 403


def test_tcp_server_connection_refused(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    before = len(env.origin.requests)
    with caplog.at_level(logging.INFO, logger="monolake.edge.ip_rules"):
        try:
            out = exchange(env.proxy.urls["tcp"], b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        except ConnectionResetError:  # closed with our bytes unread: a reset, not a FIN
            out = b""
    assert out == b""  # closed before anything reached the origin
    assert len(env.origin.requests) == before
    assert any("refused connection from 127.0.0.1" in r.getMessage() for r in caplog.records)


def test_ip_rules_args_checked() -> None:
    def errs(args: dict[str, Any], kind: str = "http") -> list[str]:
        server: dict[str, Any] = {"listener": "127.0.0.1:0", "filters": [{"use": "ip_rules", "args": args}]}
        if kind == "http":
            server["routes"] = [{"upstreams": [{"endpoint": "http://127.0.0.1:9"}]}]
        else:
            server |= {"proxy_type": kind, "routes": [{"upstreams": [{"endpoint": "127.0.0.1:9"}]}]}
        try:
            parse_config({"servers": {"s": server}})
        except ConfigError as exc:
            return [str(e) for e in getattr(exc, "errors", [exc])]
        return []

    at = "servers.s.filters[0]"
    assert errs({"allow": ["10.0.0.0/33"]}) == [
        f"{at}.args.allow[0]: not an IP network: '10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"
    ]
    assert errs({}) == [f"{at}.args.allow: give allow and/or deny networks"]
    assert errs({"deny": ["::1"], "status": 500}) == [f"{at}.args.status: must be a 4xx status, got 500"]
    assert errs({"deny": ["::1"]}, "thrift") == [f"{at}: built-in 'ip_rules' is for http or tcp servers, not thrift"]


def test_the_forwarded_client_is_the_client_of_rate_limit_and_remote_addr(
    env: Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Behind a trusted proxy, ip_rules' client (nginx's realip) is what a later rate_limit keys on
    and what the access log's $remote_addr says; $realip_remote_addr is the peer."""
    import time

    path = tmp_path_factory.mktemp("realip") / "access.log"
    everyone = {"deny": ["192.0.2.0/24"], "trusted_proxies": ["127.0.0.1"]}
    raw = {
        "log": {"access_log": str(path), "access_log_format": "$remote_addr $realip_remote_addr $status"},
        "servers": {
            "web": {
                "listener": "127.0.0.1:0",
                "filters": [
                    {"use": "ip_rules", "args": everyone},
                    {"use": "rate_limit", "args": {"requests": 1, "period": 3600, "workers": 1}},
                ],
                "routes": [{"upstreams": [{"endpoint": env.origin.url}]}],
            }
        },
    }
    proxy = InProcessProxy(env.lt, raw)
    try:
        url = proxy.urls["web"]
        statuses = [get(url, "/", xff) for xff in ("10.1.2.3", "10.1.2.3", "10.9.9.9", "not-an-address", "x")]
        # one bucket per forwarded client; a forwarded value that is no address leaves the peer's
        assert statuses == [200, 429, 200, 200, 429]
        deadline = time.monotonic() + 10
        while len(lines := _flushed(env, proxy, path)) < 5:
            assert time.monotonic() < deadline, lines
            time.sleep(0.02)
        assert lines == [
            "10.1.2.3 127.0.0.1 200",
            "10.1.2.3 127.0.0.1 429",
            "10.9.9.9 127.0.0.1 200",
            "127.0.0.1 127.0.0.1 200",
            "127.0.0.1 127.0.0.1 429",
        ]
    finally:
        proxy.close()


def _flushed(env: Env, proxy: InProcessProxy, path: Any) -> list[str]:
    async def flush() -> None:  # the access log writes in batches
        for app in proxy.apps.values():
            if app.on_close is not None:
                app.on_close()

    env.lt.run(flush())
    return path.read_text().splitlines() if path.exists() else []
