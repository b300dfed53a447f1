"""A reload with an edited route filter module: loaded fresh, installed at commit; a broken edit
is a config error naming the route's key path. Built-in names are not modules to reload."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from monolake.apps.config import Config, parse_config
from monolake.apps.proxy import ProxyBuilder
from monolake.core.errors import ConfigError

MOD = """\
from monolake.apps.proxy import HttpFilter

STAMP = "{value}"


class Stamp(HttpFilter):
    def response_filter(self, resp, ctx):
        return None
"""


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("route_stamp_mod", None)


def config() -> Config:
    route = {
        "path": "/",
        "upstreams": [{"endpoint": "127.0.0.1:9"}],
        "filters": ["request_id", "route_stamp_mod:Stamp"],
    }
    return parse_config({"servers": {"web": {"listener": "127.0.0.1:0", "routes": [route]}}})


def test_route_filter_module_reloads(module_dir: Path) -> None:
    mod = module_dir / "route_stamp_mod.py"
    mod.write_text(MOD.replace("{value}", "v1"))
    cfg = config()
    b = ProxyBuilder()
    apps = b(cfg)
    first = sys.modules["route_stamp_mod"]
    assert b.prepare(cfg, apps).changes == {"web": "unchanged"}
    mod.write_text(MOD.replace("{value}", "v2"))
    p = b.prepare(cfg, apps)
    assert p.changes == {"web": "changed"}
    p.commit()
    assert sys.modules["route_stamp_mod"] is not first and sys.modules["route_stamp_mod"].STAMP == "v2"
    mod.write_text('raise RuntimeError("boom")\n')
    with pytest.raises(ConfigError) as info:
        b.prepare(cfg, apps)
    assert info.value.path == "servers.web.routes[0].filters[1]"
    assert "RuntimeError: boom" in info.value.reason
