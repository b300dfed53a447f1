"""``handler = "module:attr"`` servers in TOML: no routes or upstream needed, clear errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monolake.config import parse_config
from monolake.errors import ConfigError
from monolake.proxy import build_apps
from monolake.server import HttpServerApp
from monolake.server._stream_app import StreamServerApp

HANDLERS = """
from monolake import Factory, Headers, Request, Response, Stack
from monolake.service.layers import TimeoutLayer


class Hello:
    async def __call__(self, req: Request) -> Response:
        return Response(200, Headers(), b"hi")


class HelloFactory(Factory[Hello]):
    def make(self, old):
        return old or Hello()


async def plain(req):
    return Response(200, Headers(), b"plain")


def made():
    return HelloFactory()


class Echo:
    async def __call__(self, conn):
        conn.write(await conn.read())


stack = Stack([TimeoutLayer(5)], HelloFactory())
factory = HelloFactory()
not_a_service = 42


class Broken(Factory[Hello]):
    def __init__(self):
        raise RuntimeError("cannot start")

    def make(self, old):
        return Hello()
"""


@pytest.fixture
def handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"user_handlers_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(HANDLERS)
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def config(**server: Any) -> dict[str, Any]:
    return {"servers": {"web": {"listener": "127.0.0.1:0", **server}}}


@pytest.mark.parametrize("attr", ["HelloFactory", "factory", "Hello", "plain", "made", "stack"])
def test_an_http_handler_needs_no_route_or_upstream(handlers: str, attr: str) -> None:
    cfg = parse_config(config(handler=f"{handlers}:{attr}"))
    app = build_apps(cfg)["web"]
    assert isinstance(app, HttpServerApp)


def test_a_tcp_handler_needs_no_upstream(handlers: str) -> None:
    cfg = parse_config(config(handler=f"{handlers}:Echo", proxy_type="tcp"))
    assert isinstance(build_apps(cfg)["web"], StreamServerApp)


UP = {"endpoint": "127.0.0.1:1"}


@pytest.mark.parametrize(
    ("server", "path", "reason"),
    [
        ({"handler": "nocolon"}, "servers.web.handler", 'is not "module:attr"'),
        ({"handler": "m:a", "routes": [{"path": "/", "upstream": "x"}]}, "servers.web.routes", "answers itself"),
        (
            {"handler": "m:a", "proxy_type": "tcp", "upstreams": [{"endpoint": "127.0.0.1:1"}]},
            "servers.web.upstreams",
            "no upstream",
        ),
        ({"handler": "m:a", "proxy_type": "thrift"}, "servers.web.handler", '"http" or "tcp"'),
        ({"handler": "m:a", "filters": ["a:B"]}, "servers.web.filters", "no routes or filters"),
        ({}, "servers.web.routes", "at least one route (or a handler)"),
    ],
)
def test_bad_handler_servers_name_the_key(server: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(**server))
    errors = getattr(info.value, "errors", [info.value])
    assert any(e.path == path and reason in e.reason for e in errors), [str(e) for e in errors]


@pytest.mark.parametrize(
    ("attr", "reason"),
    [
        ("missing", "has no attribute 'missing'"),
        ("not_a_service", "int is not a Factory, Stack, Service class or service"),
        ("Broken", "Broken() failed: RuntimeError: cannot start"),
    ],
)
def test_bad_handlers_fail_the_build_naming_the_key(handlers: str, attr: str, reason: str) -> None:
    cfg = parse_config(config(handler=f"{handlers}:{attr}"))
    with pytest.raises(ConfigError) as info:
        build_apps(cfg)
    assert info.value.path == "servers.web.handler" and reason in info.value.reason


def test_an_unknown_module_fails_the_build() -> None:
    cfg = parse_config(config(handler="no_such_module_here:App"))
    with pytest.raises(ConfigError, match=r"servers\.web\.handler: cannot import 'no_such_module_here'"):
        build_apps(cfg)


@pytest.mark.parametrize("name", ["hello_stream", "echo_tcp", "layer"])
def test_example_configs_check_from_anywhere(name: str, tmp_path: Path) -> None:
    # The handler module is found beside the config file, whatever the working directory.
    path = Path(__file__).resolve().parents[2] / "examples" / "services" / f"{name}.toml"
    out = subprocess.run(
        [sys.executable, "-m", "monolake.cli", "check", "-c", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert ": ok (1 server(s)" in out.stdout


def test_config_layers_wrap_the_handlers_own(handlers: str, tmp_path: Path) -> None:
    (tmp_path / f"{handlers}_layer.py").write_text(
        "from monolake import Layer\n\n"
        "class Outer(Layer):\n"
        "    def layer(self, inner):\n"
        "        return Wrapped(inner)\n\n"
        "class Wrapped:\n"
        "    def __init__(self, inner):\n"
        "        self.inner = inner\n\n"
        "    async def __call__(self, req):\n"
        "        return await self.inner(req)\n"
    )
    cfg = parse_config(config(handler=f"{handlers}:stack", layers=[f"{handlers}_layer:Outer"]), base_dir=tmp_path)
    app = build_apps(cfg)["web"]
    assert isinstance(app, HttpServerApp)
    chain = app.service.inner  # inside HandlerGuard: the config's layer, then the Stack's Timeout
    assert type(chain).__name__ == "Wrapped" and type(chain.inner).__name__ == "Timeout"
