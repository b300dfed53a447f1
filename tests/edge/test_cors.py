"""CORS: preflights answered by the proxy; headless Chromium fetching from a page on another
origin (an allowed and a refused cross-origin request, each with a preflight)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from monolake.apps.config import parse_config
from monolake.core.errors import ConfigError

from ._support import EchoOrigin, InProcessProxy, LoopThread

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]

PAGE = b"<!doctype html><title>cors</title><p>page on its own origin</p>"


def page(method: bytes, target: bytes, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
    return 200, [("Content-Type", "text/html")], PAGE


def api(method: bytes, target: bytes, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
    return 200, [("Content-Type", "text/plain"), ("X-Trace", "t-1"), ("X-Hidden", "h")], b"api:" + body


class Env:
    def __init__(self) -> None:
        self.lt = LoopThread()
        self.page = EchoOrigin(self.lt, page)
        self.api = EchoOrigin(self.lt, api)
        up = [{"endpoint": self.api.url}]
        self.page_origin = self.page.url  # http://127.0.0.1:PORT
        cors_open = {
            "use": "cors",
            "args": {
                "allow_origins": [self.page_origin, "https://*.example.com"],
                "allow_origin_regex": [r"https://app-[0-9]+\.test"],
                "allow_methods": ["GET", "PUT"],
                "allow_headers": ["X-Token", "Content-Type"],
                "expose_headers": ["X-Trace"],
                "allow_credentials": True,
                "max_age": 600,
            },
        }
        cors_closed = {"use": "cors", "args": {"allow_origins": ["https://elsewhere.example"]}}
        self.proxy = InProcessProxy(
            self.lt,
            {
                "servers": {
                    "web": {
                        "listener": "127.0.0.1:0",
                        "routes": [
                            {"path": "/api/", "upstreams": up, "filters": [cors_open]},
                            {"path": "/closed/", "upstreams": up, "filters": [cors_closed]},
                        ],
                    }
                }
            },
        )

    def close(self) -> None:
        self.proxy.close()
        self.page.close()
        self.api.close()
        self.lt.close()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.close()


def test_browser_cross_origin_allowed_and_refused(env: Env, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    env.api.requests.clear()
    script = """async (base) => {
        const out = {};
        const r = await fetch(base + "/api/data", {method: "PUT", body: "hi", credentials: "include",
                                                   headers: {"X-Token": "secret", "Content-Type": "text/plain"}});
        out.status = r.status; out.body = await r.text();
        out.trace = r.headers.get("X-Trace"); out.hidden = r.headers.get("X-Hidden");
        try {
            await fetch(base + "/closed/data", {method: "PUT", body: "hi", headers: {"X-Token": "secret"}});
            out.closed = "allowed";
        } catch (e) { out.closed = "blocked: " + e.name; }
        return out;
    }"""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page()
            tab.goto(f"{env.page.url}/index.html")
            result = tab.evaluate(script, env.proxy.url)
        finally:
            browser.close()
    assert result == {"status": 200, "body": "api:hi", "trace": "t-1", "hidden": None, "closed": "blocked: TypeError"}
    seen = [(m, t) for m, t, _ in env.api.requests]
    # Preflights were answered by the proxy: the upstream saw only the allowed PUT.
    assert seen == [(b"PUT", b"/api/data")]


def preflight(env: Env, path: str, origin: str, method: str = "PUT", headers: str | None = None) -> httpx.Response:
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        h["Access-Control-Request-Headers"] = headers
    with httpx.Client(base_url=env.proxy.url, timeout=30) as c:
        return c.options(path, headers=h)


def test_preflights(env: Env) -> None:
    env.api.requests.clear()
    ok = preflight(env, "/api/x", "https://a.b.example.com", headers="x-token, content-type")
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == "https://a.b.example.com"
    assert ok.headers["access-control-allow-credentials"] == "true"
    assert ok.headers["access-control-allow-methods"] == "GET, PUT"
    assert ok.headers["access-control-allow-headers"] == "X-Token, Content-Type"
    assert ok.headers["access-control-max-age"] == "600"
    assert "Origin" in ok.headers["vary"]
    assert preflight(env, "/api/x", "https://app-12.test").status_code == 204
    for origin, method, headers in (
        ("https://example.com", "PUT", None),  # the wildcard needs a subdomain
        ("https://evil.test", "PUT", None),
        ("https://a.example.com", "DELETE", None),
        ("https://a.example.com", "PUT", "x-other"),
    ):
        r = preflight(env, "/api/x", origin, method, headers)
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers, (origin, method, headers)
    assert env.api.requests == []  # no preflight went upstream


def test_actual_requests(env: Env) -> None:
    with httpx.Client(base_url=env.proxy.url, timeout=30) as c:
        ok = c.get("/api/x", headers={"Origin": "https://a.example.com"})
        assert ok.headers["access-control-allow-origin"] == "https://a.example.com"
        assert ok.headers["access-control-expose-headers"] == "X-Trace"
        assert ok.headers["vary"] == "Origin"
        other = c.get("/api/x", headers={"Origin": "https://evil.test"})
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
        assert other.headers["vary"] == "Origin"
        same = c.get("/api/x")  # not a CORS request
        assert "access-control-allow-origin" not in same.headers


def test_cors_args_checked() -> None:
    def errs(args: dict[str, Any]) -> list[str]:
        raw = {
            "servers": {
                "web": {
                    "listener": "127.0.0.1:0",
                    "routes": [
                        {"upstreams": [{"endpoint": "http://127.0.0.1:9"}], "filters": [{"use": "cors", "args": args}]}
                    ],
                }
            }
        }
        try:
            parse_config(raw)
        except ConfigError as exc:
            return [str(e) for e in getattr(exc, "errors", [exc])]
        return []

    at = "servers.web.routes[0].filters[0].args"
    assert errs({"allow_origins": ["*"], "allow_credentials": True}) == [
        f"{at}.allow_origins: '*' with allow_credentials = true would let every site read credentialed "
        "responses; list the origins"
    ]
    assert errs({"allow_origins": ["https://a.com/path"]}) == [
        f"{at}.allow_origins[0]: expected scheme://host[:port] without a path, got 'https://a.com/path'"
    ]
    assert errs({"allow_origins": ["https://a*.com"]}) == [
        f"{at}.allow_origins[0]: a wildcard origin looks like 'https://*.example.com', got 'https://a*.com'"
    ]
    assert errs({"allow_origin_regex": ["("]})[0].startswith(f"{at}.allow_origin_regex[0]: invalid regular expression")
    assert errs({"max_age": -1}) == [f"{at}.max_age: must be >= 0 (seconds)"]
    assert errs({"allow_headers": ["bad header"]}) == [
        f"{at}.allow_headers[0]: not a method or header name: 'bad header'"
    ]
