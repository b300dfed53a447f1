"""The proxy served from Python: ``monolake.ProxyApp`` beside an ``HttpApp`` in one ``serve`` call
(examples/filters/serve_auth.py, the async auth filter given as a Python object), reload keeping
the proxy as it runs, and the same key-path validation as the TOML file (the TOML variant of the
example is served by tests/e2e/test_filters_async.py)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import READY, REPO, TIMEOUT, LineLog, Origin, _stop_process
from monolake import Factory, HttpApp, ProxyApp, Request, Response, proxy_apps
from monolake.apps._serve import ServeBuilder, apps_config
from monolake.apps.proxy import HttpFilter
from monolake.core.errors import ConfigError
from monolake.core.service import Context

pytestmark = pytest.mark.e2e


class Served:
    """examples/filters/serve_auth.py: the proxy on a port-0 listener, the auth service on a port
    reserved with SO_REUSEPORT (the runtime binds its listeners so too; ours never listens, so it
    takes no connections) because the proxy's filter must know it before the process starts."""

    def __init__(self, origin: Origin) -> None:
        self.reserved = socket.socket()
        self.reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.reserved.bind(("127.0.0.1", 0))
        auth = f"127.0.0.1:{self.reserved.getsockname()[1]}"
        script = REPO / "examples" / "filters" / "serve_auth.py"
        cmd = [sys.executable, str(script), "--listen", "127.0.0.1:0", "--auth-listen", auth, "--upstream", origin.url]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        self.log = LineLog(self.proc.stderr, "serve_auth.py stderr")
        try:
            m = self.log.wait_line(READY)
        except AssertionError:
            self.close()
            raise
        self.addresses = dict(item.split("=", 1) for item in m["servers"].split(","))
        assert self.addresses["auth"] == auth

    def url(self, name: str) -> str:
        return f"http://{self.addresses[name]}"

    def close(self) -> None:
        _stop_process(self.proc)
        self.log.join()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.reserved.close()


@pytest.fixture(scope="module")
def served(origin: Origin) -> Iterator[Served]:
    s = Served(origin)
    yield s
    s.close()


def _seen_headers(r: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in r.json()["headers"]}


def test_async_auth_filter_object_on_a_proxy_served_from_python(served: Served, origin: Origin) -> None:
    url = served.url("web")
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        r = c.get(url + "/echo", headers={"Authorization": "Bearer ok-alice"})
        assert r.status_code == 200
        assert _seen_headers(r)["x-user"] == "alice"  # set by the filter from the auth service's answer
        mark, mark_log = origin.log.mark(), served.log.mark()
        r = c.get(url + "/echo/secret")
        assert (r.status_code, r.text) == (401, "credentials required\n")  # the filter's own answer
        r = c.get(url + "/echo/secret", headers={"Authorization": "Bearer nope"})
        assert (r.status_code, r.text) == (401, "unauthorized\n")  # the auth service's
        r = c.get(url + "/echo/secret", headers={"Authorization": "Bearer no"})
        assert (r.status_code, r.text) == (403, "forbidden\n")
        assert c.get(url + "/echo", headers={"Authorization": "Bearer ok-bob"}).status_code == 200
        origin.log.wait_line(r"REQ GET /echo ", after=mark)
        served.log.wait_line(r'"GET /echo/secret HTTP/1.1" 403 .* web ', after=mark_log)
        assert origin.log.count(r"/echo/secret", after=mark) == 0  # refused ones never reached the origin
        # The HttpApp served beside the proxy answers by itself too.
        r = c.get(served.url("auth") + "/auth", headers={"Authorization": "Bearer ok-carol"})
        assert (r.status_code, r.headers["x-auth-user"]) == (200, "carol")


def test_reload_keeps_the_proxy_and_rebuilds_the_service(served: Served) -> None:
    mark = served.log.mark()
    served.proc.send_signal(signal.SIGHUP)
    line = served.log.wait_line(r"reload \d+ \(SIGHUP\) done: ", after=mark).string
    assert "rebuilt=auth" in line and "unchanged=web" in line
    r = httpx.get(served.url("web") + "/echo", headers={"Authorization": "Bearer ok-dave"}, timeout=TIMEOUT)
    assert (r.status_code, _seen_headers(r)["x-user"]) == (200, "dave")


# -- validation, in process (the supervisor's dry build) ------------------------------------


class Hello:
    async def __call__(self, req: Request) -> Response:
        return Response(200, body=b"hi\n")


class HelloFactory(Factory[Hello]):
    def make(self, old: Hello | None) -> Hello:
        return Hello()


class Tag(HttpFilter):
    made = 0

    def __init__(self, value: str = "x") -> None:
        Tag.made += 1
        self.value = value.encode()

    def response_filter(self, resp: Response, ctx: Context) -> None:
        resp.headers.set(b"X-Tag", self.value)


class OneArg(HttpFilter):
    def request_filter(self, req: Request) -> None:  # type: ignore[override]
        return None


ROUTES = [{"path": "/", "upstreams": [{"endpoint": "http://127.0.0.1:9"}]}]


def _build(*apps: HttpApp[Hello] | ProxyApp) -> dict[str, object]:
    return dict(ServeBuilder(apps)(apps_config(apps, workers=1)))


def test_filters_and_layers_as_objects_classes_and_strings() -> None:
    from examples.filters.layers import Maintenance

    made = Tag.made
    tag = Tag("object")
    app = ProxyApp(
        name="web",
        listen="127.0.0.1:0",
        routes=[{**ROUTES[0], "filters": [Tag]}],  # a route's filters take objects too
        filters=[tag, "cors", {"use": "examples.filters.add_header:AddHeader", "args": {"name": "A", "value": "b"}}],
        layers=[Maintenance(path="/down"), "examples.filters.layers:ResponseHeader"],
        upstreams={"spare": {"endpoints": [{"endpoint": "http://127.0.0.1:9"}]}},
    )
    hello = HttpApp(name="hello", listen="127.0.0.1:0", factory=HelloFactory())
    cfg = apps_config([app, hello], workers=1)
    assert list(cfg.upstreams) == ["spare"]
    web = cfg.servers["web"]
    assert [f if isinstance(f, str) else f.use for f in web.filters][1:] == [
        "cors",
        "examples.filters.add_header:AddHeader",
    ]
    built = ServeBuilder([app, hello])(cfg)
    assert sorted(built) == ["hello", "web"]
    assert Tag.made == made + 2  # the object once (by us), the class once for this build
    ServeBuilder([app, hello])(cfg)
    assert Tag.made == made + 3  # the class again for each build (each worker's); the object is reused
    with pytest.raises(ConfigError, match=r"servers\.bad\.layers\[0\]: .*made a Tag, not a monolake"):
        _build(ProxyApp(name="bad", listen="127.0.0.1:0", routes=ROUTES, layers=[tag]))


def test_errors_name_the_key_path() -> None:
    bad_endpoint = ProxyApp(
        name="web", listen="127.0.0.1:0", routes=[{"path": "/", "upstreams": [{"endpoint": "x:y"}]}]
    )
    with pytest.raises(ConfigError) as exc:
        apps_config([bad_endpoint])
    assert exc.value.path.startswith("servers.web.routes[0].upstreams[0]")
    with pytest.raises(ConfigError, match=r"servers\.web\.routes: a server needs at least one route"):
        apps_config([ProxyApp(name="web", listen="127.0.0.1:0")])
    shape = ProxyApp(name="web", listen="127.0.0.1:0", routes=ROUTES, filters=[OneArg()])
    with pytest.raises(ConfigError) as exc:
        _build(shape)
    assert exc.value.path == "servers.web.filters[0]"
    assert "OneArg" in exc.value.reason and "a request_filter takes (req, ctx)" in exc.value.reason
    twice = ProxyApp(name="web", listen="127.0.0.1:0", routes=ROUTES, settings={"routes": ROUTES})
    with pytest.raises(ConfigError, match=r"servers\.web\.routes: given both"):
        apps_config([twice])
    with pytest.raises(ConfigError, match=r"servers\.web: two apps have this name"):
        apps_config([ProxyApp(name="web", listen="127.0.0.1:0", routes=ROUTES)] * 2)


BESIDE = """
from monolake.apps.proxy import HttpFilter


class Beside(HttpFilter):
    def response_filter(self, resp, ctx):
        resp.headers.add(b"X-Beside", b"found")
"""

CONFIG = """
[runtime]
workers = 3   # not used: serve()'s arguments say how to run

[upstreams.app]
endpoints = [{ endpoint = "http://127.0.0.1:9" }]

[servers.web]
listener = "127.0.0.1:0"
filters = ["h11_beside_py:Beside"]
[[servers.web.routes]]
path = "/"
upstream = "app"

[servers.l4]
listener = "127.0.0.1:0"
proxy_type = "tcp"
upstream = "app"
"""


def test_a_toml_config_served_from_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the build puts the config's directory first
    monkeypatch.chdir("/")
    (tmp_path / "h11_beside_py.py").write_text(BESIDE)
    (tmp_path / "proxy.toml").write_text(CONFIG)
    apps = [*proxy_apps(tmp_path / "proxy.toml"), HttpApp(name="hello", listen="127.0.0.1:0", factory=HelloFactory())]
    assert [a.name for a in apps[:2]] == ["web", "l4"]
    cfg = apps_config(apps, workers=1)
    assert (cfg.runtime.workers, list(cfg.upstreams), cfg.base_dir) == (1, ["app"], str(tmp_path))
    assert sorted(ServeBuilder(apps)(cfg)) == ["hello", "l4", "web"]  # the filter found beside the file
    with pytest.raises(ConfigError, match=r"upstreams\.api\.discovery: is followed by `monolake run`"):
        apps_config(proxy_apps(REPO / "examples" / "fleet.toml"))  # (a dict or a Config is taken too)
