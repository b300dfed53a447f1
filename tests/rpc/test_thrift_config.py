"""``[servers.NAME.rpc_thrift]``: config checks, and a real ``monolake run`` serving a handler
from TOML (thriftpy2 client), with its access log, metrics, reload of the handler module and drain."""

from __future__ import annotations

import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from thrift_support import write_idl
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TFramedTransportFactory

from conftest import Proxy, free_port
from monolake.apps.config import parse_config
from monolake.apps.proxy import build_apps
from monolake.apps.rpc import ThriftServer
from monolake.core.errors import ConfigError

HANDLER = """
import os

import thriftpy2

echo_thrift = thriftpy2.load(os.path.join(os.path.dirname(__file__), "echo.thrift"), module_name="echo_thrift")


class Handler:
    def __init__(self):
        self.calls = 0

    async def echo(self, msg):
        self.calls += 1
        return "{prefix}" + msg

    async def item(self, it):
        if it.name == "bad":
            raise echo_thrift.Oops(why="no")
        return it

    def fire(self, msg):
        pass

    def add(self, a, b):
        return self.calls

    async def slow(self, seconds, tag):
        return tag

    async def boom(self, why):
        raise ValueError(why)

    async def meta(self, key):
        return key

    async def nothing(self):
        return None
"""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    write_idl(tmp_path)
    (tmp_path / "rpc_handler_mod.py").write_text(HANDLER.replace("{prefix}", "v1:"))
    sys.modules.pop("rpc_handler_mod", None)
    yield tmp_path
    sys.modules.pop("rpc_handler_mod", None)


def rpc(**extra: Any) -> dict[str, Any]:
    table = {"idl": "echo.thrift", "handler": "rpc_handler_mod:Handler", **extra}
    return {"servers": {"rpc": {"listener": "127.0.0.1:0", "proxy_type": "thrift", "rpc_thrift": table}}}


def test_builds_a_thrift_server_without_routes(project: Path) -> None:
    cfg = parse_config(rpc(), project)
    app = build_apps(cfg)["rpc"]
    assert isinstance(app, ThriftServer)
    assert sorted(app.service.definition.methods) == [
        "add", "boom", "echo", "fire", "item", "meta", "nothing", "slow",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "where", "why"),
    [
        (rpc(idl="missing.thrift"), "servers.rpc.rpc_thrift.idl", "no such IDL file"),
        (rpc(service="Nope"), "servers.rpc.rpc_thrift.service", "no service 'Nope'"),
        (rpc(handler="no_colon"), "servers.rpc.rpc_thrift.handler", "is not"),
    ],
)
def test_config_errors_name_the_key(project: Path, raw: dict[str, Any], where: str, why: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, project)
    assert where in str(exc.value) and why in str(exc.value)


def test_routes_and_proxy_type_are_refused(project: Path) -> None:
    raw = rpc()
    raw["servers"]["rpc"]["proxy_type"] = "http"
    raw["servers"]["rpc"]["routes"] = [{"path": "/", "upstreams": [{"endpoint": "http://127.0.0.1:1"}]}]
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, project)
    assert "servers.rpc.proxy_type" in str(exc.value) and "servers.rpc.routes" in str(exc.value)


def test_a_handler_missing_a_method_fails_the_build(project: Path) -> None:
    (project / "rpc_handler_mod.py").write_text(
        HANDLER.replace("    async def nothing(self):", "    async def x(self):")
    )
    with pytest.raises(ConfigError, match=r"servers\.rpc\.rpc_thrift\.handler: Handler lacks method\(s\) nothing"):
        build_apps(parse_config(rpc(), project))


TOML = """
[log]
access_log = "stdout"

[admin]
listen = "127.0.0.1:{admin}"

[servers.rpc]
listener = "127.0.0.1:0"
proxy_type = "thrift"

[servers.rpc.rpc_thrift]
idl = "echo.thrift"
handler = "rpc_handler_mod:Handler"
"""


@pytest.fixture
def running(project: Path) -> Iterator[tuple[Proxy, Any, int]]:
    admin = free_port()
    p = Proxy(TOML.format(admin=admin), project, loop="uvloop")
    mod = thriftpy2.load(str(project / "echo.thrift"), module_name="echo_cfg_thrift")
    try:
        yield p, mod, admin
    finally:
        p.close()


def _client(p: Proxy, mod: Any) -> Any:
    host, port = p.servers["rpc"].rsplit(":", 1)
    return make_client(
        mod.Echo, host, int(port), proto_factory=TBinaryProtocolFactory(),
        trans_factory=TFramedTransportFactory(), timeout=30000,
    )  # fmt: skip


def test_toml_server_logs_counts_reloads_and_drains(running: tuple[Proxy, Any, int], project: Path) -> None:
    p, mod, admin = running
    c = _client(p, mod)
    try:
        assert c.echo("a") == "v1:a"
        with pytest.raises(mod.Oops):
            c.item(mod.Item(id=1, name="bad"))
        with pytest.raises(TApplicationException):
            c.boom("x")
        p.log.wait_line(r"handler failed: server=rpc .* method=boom: ValueError: x")
        p.stdout.wait_line(r"127\.0\.0\.1 thrift rpc Echo\.echo seq=\d+ ok ")
        p.stdout.wait_line(r"Echo\.item seq=\d+ exception ")
        metrics = ""
        deadline = time.monotonic() + 30
        while 'method="boom"' not in metrics and time.monotonic() < deadline:
            # The worker writes its counters out about once a second; poll until they are there.
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=30).read().decode()
        calls = [line for line in metrics.splitlines() if line.startswith("monolake_thrift_calls_total{")]
        assert any('method="echo"' in x and 'outcome="ok"' in x and 'server="rpc"' in x for x in calls), calls
        assert any('method="boom"' in x and 'outcome="error"' in x for x in calls), calls
        assert any('method="item"' in x and 'outcome="exception"' in x for x in calls), calls

        # Reload with a changed handler module: the new code answers on the same connection.
        (project / "rpc_handler_mod.py").write_text(HANDLER.replace("{prefix}", "v2:"))
        mark = p.log.mark()
        p.proc.send_signal(signal.SIGHUP)
        p.log.wait_line(r"reload 1 \(SIGHUP\) done", after=mark)
        assert c.echo("b") == "v2:b"
    finally:
        c.close()
    assert p.stop() == 0
