"""Route-level filters and layers, and built-in filters named in config (``apps/edge``)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from monolake.apps.config import parse_config
from monolake.core.errors import ConfigError

from ._support import EchoOrigin, InProcessProxy, LoopThread

HERE = Path(__file__).parent


def config(origin: str) -> dict[str, Any]:
    up = [{"endpoint": origin}]
    return {
        "servers": {
            "web": {
                "listener": "127.0.0.1:0",
                "filters": [{"use": "edge_user_filters:Mark", "args": {"name": "server"}}],
                "routes": [
                    {
                        "path": "/rid/",
                        "upstreams": up,
                        "filters": [{"use": "request_id", "args": {"response_header": True}}],
                    },
                    {
                        "path": "/both/",
                        "upstreams": up,
                        "filters": [
                            "edge_user_filters:AsyncDeny",
                            {"use": "edge_user_filters:Mark", "args": {"name": "route"}},
                        ],
                        "layers": [{"use": "edge_user_filters:Stamp", "args": {"name": "r1"}}],
                    },
                    {"path": "/", "upstreams": up},
                ],
            }
        }
    }


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[EchoOrigin, InProcessProxy]]:
    lt = LoopThread()
    origin = EchoOrigin(lt)
    raw = config(origin.url)
    cfg = parse_config(raw, base_dir=HERE)
    proxy = InProcessProxy(lt, raw, base_dir=HERE)
    assert cfg.servers["web"].routes[1].filters
    yield origin, proxy
    proxy.close()
    origin.close()
    lt.close()


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def get(proxy: InProcessProxy, path: str, **kw: Any) -> httpx.Response:
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        return c.get(path, **kw)


def test_builtin_request_id_only_on_its_route(stack: tuple[EchoOrigin, InProcessProxy]) -> None:
    _origin, proxy = stack
    r = get(proxy, "/rid/a")
    sent = r.json()["headers"]
    assert re.fullmatch(r"[0-9a-f]{32}", sent["x-request-id"])
    assert r.headers["x-request-id"] == sent["x-request-id"]
    kept = get(proxy, "/rid/b", headers={"X-Request-Id": "abc-123"})
    assert kept.json()["headers"]["x-request-id"] == "abc-123" == kept.headers["x-request-id"]
    bad = get(proxy, "/rid/c", headers={"X-Request-Id": "has space"})
    assert re.fullmatch(r"[0-9a-f]{32}", bad.json()["headers"]["x-request-id"])
    plain = get(proxy, "/other")
    assert "x-request-id" not in plain.json()["headers"] and "x-request-id" not in plain.headers


def test_route_filters_run_after_the_servers_in_each_phase(stack: tuple[EchoOrigin, InProcessProxy]) -> None:
    _origin, proxy = stack
    logged = sys.modules["edge_user_filters"].LOGGED  # as the proxy imported it (from the config's directory)
    logged.clear()
    r = get(proxy, "/both/x")
    assert r.status_code == 200
    assert r.json()["headers"]["x-order"] == "server,route"  # upstream_request_filter
    assert r.headers["x-order"] == "server,route"  # response_filter
    assert r.headers["x-layer"] == "r1"  # the route's layer wrapped its upstream call
    plain = get(proxy, "/other")
    assert plain.json()["headers"]["x-order"] == "server" and plain.headers["x-order"] == "server"
    assert "x-layer" not in plain.headers
    # logging (after the response was written): the server's filter for both requests, the
    # route's only for its own, after the server's
    wait_for(lambda: len(logged) >= 3)
    assert [e for e in logged if e[1] == b"/both/x"] == [("server", b"/both/x"), ("route", b"/both/x")]
    assert ("route", b"/other") not in logged


def test_route_request_filter_answers_without_the_upstream(stack: tuple[EchoOrigin, InProcessProxy]) -> None:
    origin, proxy = stack
    before = len(origin.requests)
    r = get(proxy, "/both/deny")
    assert r.status_code == 403 and r.text == "denied\n"
    assert len(origin.requests) == before
    assert get(proxy, "/other/deny").status_code == 200  # another route: not its filter


def errors(raw: dict[str, Any]) -> list[str]:
    try:
        parse_config(raw, base_dir=HERE)
    except ConfigError as exc:
        return [str(e) for e in getattr(exc, "errors", [exc])]
    return []


def test_builtin_args_are_checked_with_key_paths() -> None:
    raw = config("http://127.0.0.1:9")
    routes = raw["servers"]["web"]["routes"]
    routes[0]["filters"] = [
        {"use": "request_id", "args": {"response_header": "yes"}},
        {"use": "request_id", "args": {"nope": 1}},
        {"use": "nosuch"},
        {"use": "request_id", "args": {"header": "bad header"}},
    ]
    assert errors(raw) == [
        "servers.web.routes[0].filters[0].args.response_header: Expected `bool`, got `str`",
        "servers.web.routes[0].filters[1].args: Object contains unknown field `nope`",
        "servers.web.routes[0].filters[2]: unknown built-in filter 'nosuch' (built-ins: "
        + ", ".join(sorted(__import__("monolake.apps.edge", fromlist=["BUILTINS"]).BUILTINS))
        + "; a user filter is 'module:Class')",
        "servers.web.routes[0].filters[3].args.header: not a header name: 'bad header'",
    ]


def test_route_filters_belong_to_http_servers() -> None:
    raw = {
        "servers": {
            "rpc": {
                "listener": "127.0.0.1:0",
                "proxy_type": "thrift",
                "routes": [{"upstreams": [{"endpoint": "127.0.0.1:9"}], "filters": ["request_id"]}],
            }
        }
    }
    assert any(e.startswith("servers.rpc.routes[0].filters: an HTTP route key") for e in errors(raw)), errors(raw)


def test_example_json_shape() -> None:
    assert (
        json.loads(json.dumps(config("http://x")))["servers"]["web"]["routes"][0]["filters"][0]["use"] == "request_id"
    )
