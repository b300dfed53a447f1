"""A reload with a bad config logs every error in it (one line) and keeps the running config."""

from __future__ import annotations

from pathlib import Path

import httpx
from reload_ops import Fleet

from conftest import Origin, ProxyFactory, render

RELOAD = """
[runtime]
drain_timeout = 2

[upstreams.backend]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
upstream = "backend"
{extra}
"""


def test_reload_with_a_bad_config_logs_every_error_and_keeps_serving(tmp_path: Path, origin: Origin) -> None:
    factory = ProxyFactory(tmp_path, "uvloop")
    try:
        p = factory(RELOAD, origin=origin.url, extra="")
        fleet = Fleet(p)
        bad = {"origin": origin.url, "extra": 'timeout = -1\nload_balancer = "fastest"'}
        m = fleet.reload(render(RELOAD, **bad).replace('listener = "127.0.0.1:0"', 'listener = "nohost"'))
        assert m[2] == "failed"
        line = m.string
        assert "config error: 3 errors: " in line, line
        for path in ("servers.web.routes[0].load_balancer", "servers.web.listener", "servers.web.routes[0].timeout"):
            assert path in line
        assert "still serving the running config" in line
        with httpx.Client(trust_env=False) as c:
            assert c.get(p.url + "/echo").status_code == 200
    finally:
        factory.close()
