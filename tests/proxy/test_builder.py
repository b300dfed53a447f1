"""ProxyBuilder: what a reload keeps, rebuilds, adopts or replaces, and filter modules
reloaded from source — in process, without sockets (apps are built, never served)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monolake.apps.config import Config, parse_config
from monolake.apps.proxy import ProxyBuilder
from monolake.core.errors import ConfigError
from monolake.core.server import HttpServerApp

ORIGIN = [{"endpoint": "127.0.0.1:9"}]


def config(**servers: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {
        "upstreams": {"a": {"endpoints": ORIGIN}, "b": {"endpoints": ORIGIN}},
        "servers": servers,
    }
    return parse_config(raw)


def http(path: str = "/", upstream: str = "a", **extra: Any) -> dict[str, Any]:
    return {"listener": "127.0.0.1:0", "routes": [{"path": path, "upstream": upstream}], **extra}


def tcp(upstream: str = "a") -> dict[str, Any]:
    return {"listener": "127.0.0.1:0", "proxy_type": "tcp", "upstream": upstream}


def leaf(app: Any) -> Any:
    svc = app.service
    while hasattr(svc, "inner"):
        svc = svc.inner
    return svc


def test_unchanged_servers_keep_their_app_changed_ones_adopt_at_commit() -> None:
    b = ProxyBuilder()
    apps = b(config(web=http(), api=http("/api"), relay=tcp()))
    web, api, relay = apps["web"], apps["api"], apps["relay"]
    old_web_leaf = leaf(web)

    p = b.prepare(config(web=http("/new"), api=http("/api"), relay=tcp("b")), apps)
    assert p.changes == {"web": "changed", "api": "unchanged", "relay": "changed"}
    assert p.apps["web"] is web and p.apps["api"] is api and p.apps["relay"] is relay
    assert leaf(web) is old_web_leaf  # prepare changed nothing that serves
    assert relay.upstream.name == "a"

    p.commit()
    assert leaf(web) is not old_web_leaf
    assert web.cfg.routes[0].path == "/new"
    assert relay.upstream.name == "b"


def test_a_cluster_change_rebuilds_only_the_servers_that_use_it() -> None:
    b = ProxyBuilder()
    apps = b(config(one=http(upstream="a"), two=http(upstream="b")))
    raw = {
        "upstreams": {"a": {"endpoints": ORIGIN, "connect_timeout": 1.0}, "b": {"endpoints": ORIGIN}},
        "servers": {"one": http(upstream="a"), "two": http(upstream="b")},
    }
    p = b.prepare(parse_config(raw), apps)
    assert p.changes == {"one": "changed", "two": "unchanged"}


def test_type_change_replaces_and_new_names_are_added() -> None:
    b = ProxyBuilder()
    apps = b(config(web=http()))
    p = b.prepare(config(web=tcp(), extra=http()), apps)
    assert p.changes == {"web": "replaced", "extra": "added"}
    assert p.apps["web"] is not apps["web"] and isinstance(p.apps["extra"], HttpServerApp)
    p.abort()


def test_the_pool_is_the_workers_not_the_configs() -> None:
    b = ProxyBuilder()
    apps = b(config(web=http()))
    pool = b.pool
    p = b.prepare(config(web=http("/x")), apps)
    p.commit()
    assert b.pool is pool
    assert leaf(apps["web"]).clusters["a"].pool is pool


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("stamp_filter_mod", "new_filter_mod"):
        sys.modules.pop(name, None)


STAMP = """\
from monolake.apps.proxy import HttpFilter

STAMP = "{value}"


class Stamp(HttpFilter):
    def response_filter(self, resp, ctx):
        return None
"""


def test_edited_filter_module_is_loaded_fresh_and_installed_at_commit(module_dir: Path) -> None:
    mod = module_dir / "stamp_filter_mod.py"
    mod.write_text(STAMP.replace("{value}", "v1"))
    cfg = config(web=http(filters=["stamp_filter_mod:Stamp"]), plain=http("/p"))
    b = ProxyBuilder()
    apps = b(cfg)
    first = sys.modules["stamp_filter_mod"]
    assert first.STAMP == "v1"

    assert b.prepare(cfg, apps).changes == {"web": "unchanged", "plain": "unchanged"}

    mod.write_text(STAMP.replace("{value}", "v2"))  # same size, same second
    p = b.prepare(cfg, apps)
    assert p.changes == {"web": "changed", "plain": "unchanged"}
    assert sys.modules["stamp_filter_mod"] is first and first.STAMP == "v1"  # nothing installed yet
    p.abort()
    assert sys.modules["stamp_filter_mod"] is first

    p = b.prepare(cfg, apps)
    p.commit()
    assert sys.modules["stamp_filter_mod"] is not first and sys.modules["stamp_filter_mod"].STAMP == "v2"
    assert first.STAMP == "v1"  # the old module object is untouched (old chains keep working)
    assert b.prepare(cfg, apps).changes["web"] == "unchanged"


def test_broken_filter_edit_is_a_config_error_and_the_module_stays(module_dir: Path) -> None:
    mod = module_dir / "stamp_filter_mod.py"
    mod.write_text(STAMP.replace("{value}", "v1"))
    cfg = config(web=http(filters=["stamp_filter_mod:Stamp"]))
    b = ProxyBuilder()
    apps = b(cfg)
    first = sys.modules["stamp_filter_mod"]
    mod.write_text('STAMP = "half"\nraise RuntimeError("boom")\n')
    with pytest.raises(ConfigError) as info:
        b.prepare(cfg, apps)
    assert info.value.path == "servers.web.filters[0]"
    assert "RuntimeError: boom" in info.value.reason
    assert sys.modules["stamp_filter_mod"] is first and first.STAMP == "v1"


def test_a_new_filter_module_fixed_after_a_failed_reload_is_loaded_again(module_dir: Path) -> None:
    b = ProxyBuilder()
    apps = b(config(web=http()))
    new = module_dir / "new_filter_mod.py"
    new.write_text("from monolake.apps.proxy import HttpFilter\n")  # no class yet
    cfg = config(web=http(filters=["new_filter_mod:Late"]))
    with pytest.raises(ConfigError, match="has no attribute 'Late'"):
        b.prepare(cfg, apps)
    new.write_text(
        "from monolake.apps.proxy import HttpFilter\n\n\nclass Late(HttpFilter):\n"
        "    def request_filter(self, req, ctx):\n        return None\n"
    )
    p = b.prepare(cfg, apps)
    assert p.changes == {"web": "changed"}
    p.commit()
