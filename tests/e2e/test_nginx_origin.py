"""nginx as the origin: static files of several sizes through the proxy, byte for byte."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from conftest import Nginx, Proxy, ProxyFactory, RawClient

pytestmark = [pytest.mark.e2e, pytest.mark.nginx]

CONFIG = """
[runtime]
drain_timeout = 2

[upstreams.nginx]
endpoints = [{ endpoint = "{nginx}" }]

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/static/"
prefix_rewrite = "/"
upstream = "nginx"
"""


@pytest.fixture
def web(proxy: ProxyFactory, nginx_origin: Nginx) -> Proxy:
    # One proxy per test: a connection left broken by one test cannot fail the next.
    return proxy(CONFIG, nginx=nginx_origin.url)


@pytest.mark.parametrize("name", ["small.txt", "medium.bin", "large.bin"])
def test_static_file(web: Proxy, nginx_origin: Nginx, name: str) -> None:
    want = nginx_origin.files[name]
    h = hashlib.sha256()
    n = 0
    with httpx.Client(trust_env=False, timeout=60) as c, c.stream("GET", f"{web.url}/static/{name}") as r:
        assert r.status_code == 200
        assert r.headers["server"].startswith("nginx")
        assert r.headers["content-length"] == str(len(want))
        for piece in r.iter_raw():
            h.update(piece)
            n += len(piece)
    assert n == len(want)
    assert h.hexdigest() == hashlib.sha256(want).hexdigest()


def test_many_requests_over_keepalive(web: Proxy, nginx_origin: Nginx) -> None:
    small = nginx_origin.files["small.txt"]
    with httpx.Client(trust_env=False, timeout=10) as c:
        for _ in range(50):
            r = c.get(web.url + "/static/small.txt")
            assert (r.status_code, r.content) == (200, small)
        assert c.get(web.url + "/static/ok").text == "nginx ok\n"


def test_head_range_and_errors(web: Proxy, nginx_origin: Nginx) -> None:
    large = nginx_origin.files["large.bin"]
    with httpx.Client(trust_env=False, timeout=10) as c:
        r = c.head(web.url + "/static/large.bin")
        assert (r.status_code, r.headers["content-length"], r.content) == (200, str(len(large)), b"")
        r = c.get(web.url + "/static/large.bin", headers={"Range": "bytes=1000-1999"})
        assert r.status_code == 206
        assert r.content == large[1000:2000]
        r = c.get(web.url + "/static/missing.txt")
        assert r.status_code == 404
        assert r.headers["server"].startswith("nginx")
        etag = c.get(web.url + "/static/small.txt").headers["etag"]
        r = c.get(web.url + "/static/small.txt", headers={"If-None-Match": etag})
        assert (r.status_code, r.content) == (304, b"")
        assert c.get(web.url + "/static/small.txt").status_code == 200


def test_pipelined_static_files(web: Proxy, nginx_origin: Nginx) -> None:
    with RawClient(web.address) as c:
        c.send(
            b"GET /static/small.txt HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /static/medium.bin HTTP/1.1\r\nHost: t\r\n\r\n"
            b"HEAD /static/medium.bin HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /static/small.txt HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        a = c.read_response()
        b = c.read_response()
        head = c.read_response(head=True)
        d = c.read_response()
    assert a.body == d.body == nginx_origin.files["small.txt"]
    assert b.body == nginx_origin.files["medium.bin"]
    assert head.header("Content-Length") == str(len(nginx_origin.files["medium.bin"]))


def test_pooled_connection_reusable_after_sendfile_response(web: Proxy, nginx_origin: Nginx) -> None:
    """nginx sends medium.bin (300 kB, more than a body's 256 KiB high-water mark) with
    sendfile, so it arrives before the proxy starts piping it and the upstream connection
    is paused; it goes back to the pool when the response ends and must be read again."""
    want = nginx_origin.files["medium.bin"]
    for i in range(5):
        with httpx.Client(trust_env=False, timeout=10) as c:
            assert c.get(f"{web.url}/static/medium.bin").content == want
        try:
            r = httpx.get(web.url + "/static/small.txt", trust_env=False, timeout=5)
        except httpx.ReadTimeout:
            pytest.fail(f"request after medium.bin #{i + 1} hung: its pooled upstream connection is paused")
        assert r.content == nginx_origin.files["small.txt"]
