"""Async filter phases, layers from config, and where filter modules are found, through
``monolake run`` on every loop: examples/filters/{auth,async_phases,layers}.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import REPO, Origin, Proxy, ProxyFactory

pytestmark = pytest.mark.e2e

CONFIG = """
[servers.auth]
listener = "127.0.0.1:0"
filters = [
    { use = "examples.filters.auth:ExternalAuth", args = { url = "{origin}/auth" } },
]
[[servers.auth.routes]]
path = "/"
upstreams = [{ endpoint = "{origin}" }]

[servers.slowauth]
listener = "127.0.0.1:0"
request_timeout = 1
filters = [
    { use = "examples.filters.auth:ExternalAuth", args = { url = "{origin}/delay/5", timeout = 30 } },
]
[[servers.slowauth.routes]]
path = "/"
upstreams = [{ endpoint = "{origin}" }]

[servers.mixed]
listener = "127.0.0.1:0"
filters = [
    { use = "examples.filters.async_phases:Stamp", args = { name = "a" } },
    { use = "examples.filters.async_phases:AsyncStamp", args = { name = "b" } },
    { use = "examples.filters.async_phases:Stamp", args = { name = "c" } },
    { use = "examples.filters.async_phases:AsyncStamp", args = { name = "d" } },
    { use = "examples.filters.async_phases:AsyncDeny", args = { prefix = "/private" } },
    { use = "examples.filters.async_phases:AsyncFail", args = { prefix = "/async-boom" } },
    "examples.filters.async_phases:AsyncAccessLog",
]
[[servers.mixed.routes]]
path = "/"
upstreams = [{ endpoint = "{origin}" }]

[servers.layered]
listener = "127.0.0.1:0"
layers = [
    { use = "examples.filters.layers:Maintenance", args = { path = "/down" } },
    { use = "examples.filters.layers:ResponseHeader", args = { name = "X-Layer", value = "on" } },
]
[[servers.layered.routes]]
path = "/"
upstreams = [{ endpoint = "{origin}" }]
"""


@pytest.fixture(scope="module")
def web(module_proxy: ProxyFactory, origin: Origin) -> Proxy:
    return module_proxy(CONFIG, origin=origin.url)


def _headers(r: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in r.json()["headers"]}


def test_async_auth_filter_calls_the_auth_service(web: Proxy, origin: Origin) -> None:
    url = web.url_of("auth")
    with httpx.Client(trust_env=False, timeout=20) as c:
        mark = origin.log.mark()
        r = c.get(url + "/echo", headers={"Authorization": "Bearer ok-alice"})
        assert r.status_code == 200
        assert _headers(r)["x-user"] == "alice"
        origin.log.wait_line(r"REQ GET /auth ", after=mark)
        mark = origin.log.mark()
        r = c.get(url + "/echo/secret", headers={"Authorization": "Bearer nope"})
        assert (r.status_code, r.text) == (401, "unauthorized\n")
        r = c.get(url + "/echo/secret", headers={"Authorization": "Bearer no"})
        assert (r.status_code, r.text) == (403, "forbidden\n")
        r = c.get(url + "/echo/secret")
        assert r.status_code == 401
        # The refused requests asked the auth service (twice) but never reached the origin's /echo.
        # The origin's log reaches the test through a pipe and a reader thread: wait for the lines.
        assert origin.log.wait_count(r"REQ GET /auth ", 2, after=mark)
        assert origin.log.count(r"REQ GET /auth ", after=mark) == 2
        assert origin.log.count(r"REQ GET /echo/secret", after=mark) == 0
        assert c.get(url + "/echo", headers={"Authorization": "Bearer ok-bob"}).status_code == 200


def test_async_filters_over_http2(web: Proxy) -> None:
    # HTTP/2 streams go through the same chain (each stream in its own task): h2c by prior knowledge.
    with httpx.Client(http1=False, http2=True, trust_env=False, timeout=20) as c:
        r = c.get(web.url_of("auth") + "/echo", headers={"Authorization": "Bearer ok-h2"})
        assert (r.http_version, r.status_code) == ("HTTP/2", 200)
        assert _headers(r)["x-user"] == "h2"
        assert c.get(web.url_of("auth") + "/echo").status_code == 401
        r = c.get(web.url_of("mixed") + "/echo")
        assert r.headers["x-order"] == "a,b,c,d"


def test_deadline_while_an_async_filter_waits_is_500_naming_it_not_504(web: Proxy) -> None:
    (worker,) = web.workers()
    mark = web.log.mark()
    with httpx.Client(trust_env=False, timeout=20) as c:
        r = c.get(web.url_of("slowauth") + "/echo", headers={"Authorization": "Bearer ok-x"})
    assert r.status_code == 500
    line = web.log.wait_line(r"500 for GET /echo .*FilterError", after=mark).string
    assert "request timeout of 1s exceeded while examples.filters.auth:ExternalAuth.request_filter ran" in line
    assert "upstream" not in line
    assert web.workers() == [worker]


def test_sync_and_async_filters_run_in_config_order(web: Proxy) -> None:
    r = httpx.get(web.url_of("mixed") + "/echo", trust_env=False)
    assert r.status_code == 200
    assert _headers(r)["x-order"] == "a,b,c,d"  # upstream_request_filter, as the origin saw it
    assert r.headers["x-order"] == "a,b,c,d"  # response_filter


def test_async_filter_answers_directly(web: Proxy, origin: Origin) -> None:
    mark = origin.log.mark()
    r = httpx.get(web.url_of("mixed") + "/private/x", trust_env=False)
    assert (r.status_code, r.text) == (403, "denied after a lookup\n")
    assert origin.log.count(r"/private", after=mark) == 0


def test_async_filter_raising_is_500_logged_and_worker_survives(web: Proxy) -> None:
    (worker,) = web.workers()
    mark = web.log.mark()
    with httpx.Client(trust_env=False, timeout=20) as c:
        r = c.get(web.url_of("mixed") + "/async-boom/now")
        assert r.status_code == 500
        web.log.wait_line(
            r"500 for GET /async-boom/now .*examples\.filters\.async_phases:AsyncFail\.request_filter failed: "
            r"RuntimeError: AsyncFail: refusing /async-boom/now",
            after=mark,
        )
        for _ in range(3):  # the same connection, the same worker
            assert c.get(web.url_of("mixed") + "/echo").status_code == 200
    assert web.workers() == [worker]


def test_async_logging_phase_runs_after_the_response(web: Proxy) -> None:
    mark = web.log.mark()
    r = httpx.get(web.url_of("mixed") + "/echo?logged=1", trust_env=False)
    assert r.status_code == 200
    web.log.wait_line(r"async-log GET /echo\?logged=1 200", after=mark)


def test_layers_from_config(web: Proxy, origin: Origin) -> None:
    url = web.url_of("layered")
    r = httpx.get(url + "/echo", trust_env=False)
    assert r.status_code == 200
    assert r.headers["x-layer"] == "on"
    mark = origin.log.mark()
    r = httpx.get(url + "/down/now", trust_env=False)
    assert (r.status_code, r.text) == (503, "down\n")  # answered without calling the proxy
    assert "x-layer" not in r.headers  # the inner layer never ran
    assert origin.log.count(r"/down", after=mark) == 0


# -- where filter modules are found --------------------------------------------------------

BESIDE = """
from monolake.apps.proxy import HttpFilter


class Beside(HttpFilter):
    def response_filter(self, resp, ctx):
        resp.headers.add(b"X-Beside", b"found")
"""

BESIDE_CONFIG = """
[servers.web]
listener = "127.0.0.1:0"
filters = ["h9_beside_filter:Beside"]
[[servers.web.routes]]
path = "/"
upstreams = [{ endpoint = "{origin}" }]
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def test_filter_module_beside_the_config_from_another_cwd(tmp_path: Path, loop_kind: str, origin: Origin) -> None:
    conf, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    conf.mkdir()
    elsewhere.mkdir()
    (conf / "h9_beside_filter.py").write_text(BESIDE)
    config = conf / "proxy.toml"
    config.write_text(BESIDE_CONFIG.replace("{origin}", origin.url))
    check = subprocess.run(
        [sys.executable, "-m", "monolake.product.cli", "check", "-c", str(config)],
        cwd=elsewhere,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    factory = ProxyFactory(conf, loop_kind)
    try:
        proxy = factory(BESIDE_CONFIG, origin=origin.url, cwd=elsewhere)
        r = httpx.get(proxy.url + "/echo", trust_env=False)
        assert r.headers["x-beside"] == "found"
    finally:
        factory.close()


SHAPES = """
from monolake.apps.proxy import HttpFilter


class OneArg(HttpFilter):
    async def request_filter(self, req):
        return None
"""


def test_check_rejects_a_wrong_shape_naming_it(tmp_path: Path) -> None:
    (tmp_path / "h9_shapes.py").write_text(SHAPES)
    config = tmp_path / "proxy.toml"
    text = BESIDE_CONFIG.replace("h9_beside_filter:Beside", "h9_shapes:OneArg")
    config.write_text(text.replace("{origin}", "http://127.0.0.1:9"))
    check = subprocess.run(
        [sys.executable, "-m", "monolake.product.cli", "check", "-c", str(config)],
        cwd="/",
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 2
    assert (
        "servers.web.filters[0]: `h9_shapes:OneArg.request_filter` takes 1 positional argument, "
        "a request_filter takes (req, ctx)"
    ) in check.stderr
