"""User filters from ``examples/filters/add_header.py``, loaded by name from the config."""

from __future__ import annotations

import httpx
import pytest

from conftest import Origin, Proxy, ProxyFactory

pytestmark = pytest.mark.e2e

CONFIG = """
[servers.web]
listener = "127.0.0.1:0"
filters = [
    { use = "examples.filters.add_header:AddHeader", args = { name = "X-Served-By", value = "edge-1" } },
    "examples.filters.add_header:AddHeader",
    { use = "examples.filters.add_header:DenyPath", args = { prefix = "/admin" } },
    "examples.filters.add_header:TagUpstreamRequest",
    "examples.filters.add_header:FailOnPath",
]

[[servers.web.routes]]
path = "/"
upstreams = [{ endpoint = "{origin}" }]
"""


@pytest.fixture(scope="module")
def web(module_proxy: ProxyFactory, origin: Origin) -> Proxy:
    return module_proxy(CONFIG, origin=origin.url)


def test_response_filter_adds_headers_in_order(web: Proxy) -> None:
    r = httpx.get(web.url + "/echo", trust_env=False)
    assert r.status_code == 200
    assert r.headers.get_list("x-served-by") == ["edge-1", "monolake"]


def test_upstream_request_filter_sees_the_route(web: Proxy) -> None:
    r = httpx.get(web.url + "/echo", trust_env=False)
    headers = {k.lower(): v for k, v in r.json()["headers"]}
    assert headers["x-matched-route"] == "0"


def test_request_filter_answers_403_without_the_origin(web: Proxy, origin: Origin) -> None:
    mark = origin.log.mark()
    r = httpx.get(web.url + "/admin/users", trust_env=False)
    assert r.status_code == 403
    assert r.text == "forbidden\n"
    assert httpx.get(web.url + "/administrator", trust_env=False).status_code == 403  # a prefix
    assert httpx.get(web.url + "/echo?after=admin", trust_env=False).status_code == 200
    assert origin.log.count(r"/admin", after=mark) == 0


def test_raising_filter_is_500_logged_and_worker_survives(web: Proxy) -> None:
    (worker,) = web.workers()
    mark = web.log.mark()
    with httpx.Client(trust_env=False, timeout=20) as c:
        r = c.get(web.url + "/boom/now")
        assert r.status_code == 500
        web.log.wait_line(r"FailOnPath: refusing /boom/now", after=mark)
        # The same connection and the same worker go on serving.
        for _ in range(3):
            assert c.get(web.url + "/echo").status_code == 200
    assert web.workers() == [worker]
