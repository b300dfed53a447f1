"""ProxyBuilder starts active health checks when a worker builds (its loop runs), not on
a cluster's first request; a reload starts new clusters' checks at commit, keeps the
running checks of unchanged clusters and stops those of removed or changed ones."""

from __future__ import annotations

import asyncio
from typing import Any

from monolake.apps.config import Config, parse_config
from monolake.apps.proxy import ProxyBuilder

DEAD = [{"endpoint": "127.0.0.1:9"}]
CHECK = {"type": "tcp", "interval": 60.0, "timeout": 1.0}


def config(*names: str, changed: str = "") -> Config:
    ups: dict[str, Any] = {}
    for n in names:
        ups[n] = {"endpoints": DEAD, "health_check": dict(CHECK, interval=30.0) if n == changed else CHECK}
    raw = {
        "upstreams": ups,
        "servers": {"web": {"listener": "127.0.0.1:0", "routes": [{"upstream": names[0]}]}},
    }
    return parse_config(raw)


def checkers(b: ProxyBuilder) -> dict[str, Any]:
    return {name: u._checker for name, (_, u) in b._clusters.items()}


def test_no_checks_start_without_a_running_loop() -> None:
    b = ProxyBuilder()
    b(config("a"))  # the supervisor's dry build: nothing to run checks on
    assert not checkers(b)["a"].running


def test_checks_start_at_build_and_follow_reloads() -> None:
    async def main() -> None:
        b = ProxyBuilder()
        apps = b(config("a", "b", "c"))
        first = checkers(b)
        assert all(c.running for c in first.values())  # before any request

        # a unchanged, b removed, c changed, d added
        p = b.prepare(config("a", "c", "d", changed="c"), apps)
        assert all(c.running for c in first.values())  # prepare changes nothing that runs
        p.commit()
        now = checkers(b)
        assert now["a"] is first["a"] and now["a"].running
        assert not first["b"].running and not first["c"].running
        assert now["c"] is not first["c"] and now["c"].running
        assert now["d"].running

        # an aborted reload starts nothing
        p = b.prepare(config("a", "e"), apps)
        p.abort()
        assert not p._clusters["e"][1]._checker.running
        assert "e" not in checkers(b)
        for c in checkers(b).values():
            c.stop()

    asyncio.run(main())
