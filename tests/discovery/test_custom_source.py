"""A source of one's own (``kind = "custom"``): examples/discovery/http_poll.py, the guide's
example, named by a running proxy's config, polls a JSON endpoint list this test serves and
changes; the proxy follows it. A source that cannot be imported stops the start with its key path."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import TIMEOUT, Origin, Proxy

CONFIG = """
[upstreams.api]
[upstreams.api.discovery]
kind = "custom"
source = "examples.discovery.http_poll:HttpPollSource"
args = {{ url = "http://127.0.0.1:{port}/endpoints", interval = 0.05 }}
[servers.web]
listener = "127.0.0.1:0"
routes = [{{ path = "/", upstream = "api" }}]
"""


class Registry(ThreadingHTTPServer):
    records: list[dict[str, Any]] = []


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(self.server.records).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[Registry]:
    srv = Registry(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(5)


def name_of(proxy: Proxy) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(proxy.url + "/name", timeout=TIMEOUT) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as exc:  # 503 until the first set arrives
        return f"status {exc.code}"


def test_custom_source_in_a_running_proxy(registry: Registry, origins: list[Origin], tmp_path: Path) -> None:
    a, b, _ = origins
    registry.records = [{"address": a.address}]
    proxy = Proxy(CONFIG.format(port=registry.server_address[1]), tmp_path, loop="uvloop")
    try:
        _until(lambda: name_of(proxy) == "a")
        registry.records = [{"address": b.address}]
        _until(lambda: name_of(proxy) == "b")
    finally:
        proxy.close()


def test_a_custom_source_that_cannot_be_imported_stops_the_start(tmp_path: Path) -> None:
    text = CONFIG.format(port=1).replace("examples.discovery.http_poll:HttpPollSource", "nowhere.at_all:Source")
    with pytest.raises(AssertionError, match=r"upstreams\.api\.discovery\.source: cannot import"):
        Proxy(text, tmp_path, loop="uvloop")


def _until(cond: Any) -> bool:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return True
