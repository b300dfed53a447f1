"""The docs/edge.md examples (examples/edge/*.toml) pass ``monolake check`` and serve as documented
(in process, their upstream replaced by an echo origin)."""

from __future__ import annotations

import gzip
import json
import re
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ._support import EchoOrigin, InProcessProxy, LoopThread

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "edge"


def load(name: str, origin: EchoOrigin, tmp: Path) -> dict[str, Any]:
    text = (EXAMPLES / name).read_text()
    text = text.replace("http://127.0.0.1:9000", origin.url).replace("127.0.0.1:5432", origin.address)
    raw = tomllib.loads(text)
    for server in raw["servers"].values():
        server["listener"] = "127.0.0.1:0"
    if raw.get("log", {}).get("access_log") == "stdout":
        raw["log"]["access_log"] = str(tmp / "access.log")
    return raw


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopThread, EchoOrigin, Path]]:
    lt = LoopThread()
    origin = EchoOrigin(lt)
    yield lt, origin, tmp_path_factory.mktemp("edge-examples")
    origin.close()
    lt.close()


def check(*paths: Path) -> tuple[int, str]:
    """``monolake check -c PATH`` for each path, in one process (as the CLI runs it)."""
    code = (
        "import sys; from monolake.product.cli import main; "
        "sys.exit(max(main(['check', '-c', p]) for p in sys.argv[1:]))"
    )
    r = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def test_examples_pass_check() -> None:
    # docs/edge.md's (the auth and limit guide's, beside them, are its tests' business)
    names = ["compress.toml", "cors.toml", "ip_rules.toml", "logs.toml", "route_filters.toml", "tracing.toml"]
    names.append("cache.toml")
    names.append("tracing_thrift.toml")
    paths = [EXAMPLES / n for n in names]
    code, out = check(*paths)
    assert code == 0, out
    assert out.count(": ok (") == len(paths)


def test_check_names_a_builtins_key_path(tmp_path: Path) -> None:
    bad = (EXAMPLES / "cors.toml").read_text().replace("max_age = 600", 'max_age = "ten minutes"')
    (tmp_path / "bad.toml").write_text(bad)
    code, out = check(tmp_path / "bad.toml")
    assert code != 0
    assert "servers.web.routes[0].filters[0].args.max_age: Expected `int | null`, got `str`" in out


def serve(env: Any, name: str) -> InProcessProxy:
    lt, origin, tmp = env
    return InProcessProxy(lt, load(name, origin, tmp))


def test_route_filters_example(env: Any) -> None:
    proxy = serve(env, "route_filters.toml")
    try:
        with httpx.Client(base_url=proxy.url, timeout=30) as c:
            r = c.get("/api/x", headers={"Origin": "https://app.example.com", "Accept-Encoding": "gzip"})
            assert r.headers["access-control-allow-origin"] == "https://app.example.com"
            assert len(r.json()["headers"]["x-request-id"]) == 32
            other = c.get("/x", headers={"Origin": "https://app.example.com"})
            assert "access-control-allow-origin" not in other.headers
    finally:
        proxy.close()


def test_logs_example(env: Any) -> None:
    lt, origin, tmp = env
    proxy = serve(env, "logs.toml")
    try:
        with httpx.Client(base_url=proxy.url, timeout=30) as c:
            r = c.get("/", headers={"User-Agent": 'ua "1"', "Cookie": "session=abc"})
        rid = r.headers["x-request-id"]
        deadline = time.monotonic() + 10
        path = tmp / "access.log"
        while not (path.exists() and path.read_text()):
            lt.run(_flush(proxy))
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proxy.close()
    doc = json.loads(path.read_text().splitlines()[0])
    assert doc["request_id"] == rid and doc["http_user_agent"] == 'ua "1"' and doc["cookie_session"] == "abc"
    assert doc["status"] == 200 and doc["upstream_http_x_cache"] == "-"
    assert doc["upstream_addr"] == origin.address and doc["upstream_response_time"] >= 0


async def _flush(proxy: InProcessProxy) -> None:
    for app in proxy.apps.values():
        if app.on_close is not None:
            app.on_close()


def test_compress_example(env: Any) -> None:
    proxy = serve(env, "compress.toml")
    try:
        with httpx.Client(base_url=proxy.url, timeout=30) as c:
            r = c.post("/upload/x", content=gzip.compress(b"a" * 1000), headers={"Content-Encoding": "gzip"})
            assert r.json()["body_len"] == 1000
            with c.stream("GET", "/" + "x" * 300, headers={"Accept-Encoding": "gzip"}) as s:
                assert s.headers["content-encoding"] == "gzip"
                assert b"x" * 300 in gzip.decompress(b"".join(s.iter_raw()))
    finally:
        proxy.close()


def test_cors_example(env: Any) -> None:
    proxy = serve(env, "cors.toml")
    try:
        with httpx.Client(base_url=proxy.url, timeout=30) as c:
            h = {"Origin": "https://preview-7.example.net", "Access-Control-Request-Method": "PUT"}
            assert c.options("/api/x", headers=h).status_code == 204
            h["Origin"] = "https://example.org"
            assert c.options("/api/x", headers=h).status_code == 403
    finally:
        proxy.close()


def test_ip_rules_example(env: Any) -> None:
    proxy = serve(env, "ip_rules.toml")
    try:
        with httpx.Client(base_url=proxy.urls["web"], timeout=30) as c:
            assert c.get("/admin/x").status_code == 403
            assert c.get("/admin/x", headers={"X-Forwarded-For": "10.2.3.4"}).status_code == 200
            assert c.get("/x").status_code == 200
        host, port = proxy.urls["db"].removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(
                b"PROXY TCP4 10.0.0.5 127.0.0.1 5000 15432\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            out = b""
            while b"\r\n\r\n" not in out:  # the head of the origin's answer, relayed
                chunk = s.recv(65536)
                assert chunk, out
                out += chunk
        assert out.startswith(b"HTTP/1.1 200")
    finally:
        proxy.close()


def test_tracing_example(env: Any) -> None:
    lt, origin, tmp = env
    raw = load("tracing.toml", origin, tmp)
    args = raw["servers"]["web"]["filters"][0]["args"]
    args |= {"endpoint": "http://127.0.0.1:1/v1/traces", "sample_ratio": 1.0, "export_timeout": 0.5}
    proxy = InProcessProxy(lt, raw)
    try:
        with httpx.Client(base_url=proxy.url, timeout=30) as c:
            # the collector is down: requests are served all the same, the spans dropped
            sent = c.get("/x").json()["headers"]
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[13]", sent["traceparent"])
        deadline = time.monotonic() + 10
        path = tmp / "access.log"
        while not (path.exists() and "trace=" in path.read_text()):
            lt.run(_flush(proxy))
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert f"trace={sent['traceparent'][3:35]}" in path.read_text()
    finally:
        proxy.close()
