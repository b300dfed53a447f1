"""examples/edge/ext_authz.toml under ``monolake run`` with an auth service this test runs
(a thread): what the service is sent, 2xx passing listed headers upstream, other
statuses returned to the client with their body and headers, and a service that does
not answer in time failing closed (403) on one server and open on the other.

The loop does not matter to the filter (it awaits the core client): uvloop only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from conftest import REPO, TIMEOUT, Origin, Proxy, ProxyFactory
from monolake.apps.config import FilterSpec
from monolake.apps.proxy._filters import load_filters
from monolake.core.errors import ConfigError

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "examples" / "edge" / "ext_authz.toml"


class AuthService:
    """Allows ``Authorization: Bearer ok-NAME``; holds requests for ``/echo/hang`` until closed."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.release = threading.Event()
        svc = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                svc.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                assert body == b""
                if self.path.endswith("/echo/hang"):
                    svc.release.wait(TIMEOUT * 3)
                token = self.headers.get("Authorization", "")
                if token.startswith("Bearer ok-"):
                    self.send_response(200)
                    self.send_header("X-User", token.removeprefix("Bearer ok-"))
                    self.send_header("X-Tenant", "t1")
                    self.send_header("X-Not-Listed", "x")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                deny = b"go away\n"
                self.send_response(401 if not token else 403)
                self.send_header("WWW-Authenticate", 'Bearer realm="authz"')
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(deny)))
                self.end_headers()
                self.wfile.write(deny)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[tuple[AuthService, Proxy]]:
    svc = AuthService()
    text = EXAMPLE.read_text()
    for port in ("8080", "8081"):
        text = text.replace(f'listener = "127.0.0.1:{port}"', 'listener = "127.0.0.1:0"')
    text = text.replace("127.0.0.1:9000", origin.address).replace("127.0.0.1:9200", svc.address)
    factory = ProxyFactory(tmp_path_factory.mktemp("authz"), "uvloop")
    try:
        yield svc, factory(text)
    finally:
        svc.release.set()
        factory.close()
        svc.close()


def _upstream_headers(r: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in r.json()["headers"]}


def test_allowed_requests_carry_the_listed_headers_upstream(setup: tuple[AuthService, Proxy]) -> None:
    svc, p = setup
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        r = c.post(
            p.url_of("api") + "/echo/x?q=1",
            content=b"payload",
            headers={"Authorization": "Bearer ok-alice", "Cookie": "s=1", "X-Secret": "no", "X-User": "mallory"},
        )
        assert r.status_code == 200
        up = _upstream_headers(r)
        assert (up["x-user"], up["x-tenant"]) == ("alice", "t1") and "x-not-listed" not in up
        method, path, sent = svc.seen[-1]
        assert (method, path) == ("POST", "/authz/echo/x?q=1")
        assert sent["authorization"] == "Bearer ok-alice" and sent["cookie"] == "s=1"
        assert "x-secret" not in sent and sent["x-forwarded-for"] == "127.0.0.1"
        assert r.json()["body_len"] == len(b"payload")  # the body went upstream, not to the auth service


def test_denials_are_returned_to_the_client(setup: tuple[AuthService, Proxy]) -> None:
    _, p = setup
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        r = c.get(p.url_of("api") + "/echo")
        assert (r.status_code, r.text, r.headers["www-authenticate"]) == (401, "go away\n", 'Bearer realm="authz"')
        r = c.get(p.url_of("api") + "/echo", headers={"Authorization": "Bearer bad"})
        assert (r.status_code, r.text) == (403, "go away\n")


def test_no_answer_in_time_fails_closed_or_open(setup: tuple[AuthService, Proxy]) -> None:
    _, p = setup
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        mark = p.log.mark()
        r = c.get(p.url_of("api") + "/echo/hang", headers={"Authorization": "Bearer ok-a"})
        assert (r.status_code, r.text) == (403, "authorization service unavailable\n")
        r = c.get(p.url_of("public") + "/echo/hang")
        assert r.status_code == 200 and r.json()["path"] == "/echo/hang"
        closed = r"ext_authz http://127\.0\.0\.1:\d+/authz failed \(TimeoutError: timed out\): failing closed"
        p.log.wait_line(closed, after=mark)
        p.log.wait_line(r"ext_authz .* failing open", after=mark)


@pytest.mark.parametrize(
    ("args", "where", "reason"),
    [
        ({"url": "tcp://x"}, "args.url", "must be http(s)://host:port[/path_prefix]"),
        ({"url": "http://x/", "fail": "maybe"}, "args.fail", "Invalid enum value 'maybe'"),
        ({"url": "http://x/", "status_on_error": 200}, "args.status_on_error", "must be a 4xx or 5xx"),
        ({"url": "http://x/", "allowed_headers": ["A", "X Y"]}, "args.allowed_headers[1]", "not a header name"),
        ({"url": "http://x/", "timeout": 0}, "args.timeout", "must be a number of seconds > 0"),
    ],
)
def test_bad_settings_are_config_errors_at_their_key_path(args: dict[str, Any], where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_filters([FilterSpec(use="ext_authz", args=args)], "servers.api.filters")
    assert str(info.value).startswith(f"servers.api.filters[0].{where}: ") and reason in str(info.value)
