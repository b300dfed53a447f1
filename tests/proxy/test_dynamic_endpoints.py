"""A cluster's endpoint set changes at run time (``UpstreamCluster.set_endpoints``, what
discovery calls in each worker): the balancer is rebuilt, connections to endpoints that stay
are reused, those to removed endpoints drain (in-flight requests finish, then close), health
checks follow the set, an empty set answers 503. Real origins on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import collections

import pytest
from test_resilience import Origin, body_of, cluster, request, wait_for  # tests/proxy is on sys.path

from monolake.apps.discovery import EndpointRecord, to_endpoints
from monolake.core.address import Endpoint, parse_endpoint
from monolake.core.client import Pool
from monolake.core.errors import Overloaded


def ep(o: Origin, weight: int = 1) -> Endpoint:
    return parse_endpoint(f"127.0.0.1:{o.port}", weight)


async def started(n: int) -> list[Origin]:
    out = [Origin(chr(ord("a") + i)) for i in range(n)]
    for o in out:
        await o.start()
    return out


async def hits(c: object, n: int) -> collections.Counter[bytes]:
    seen: collections.Counter[bytes] = collections.Counter()
    for _ in range(n):
        resp = await c.forward(request(), None)  # type: ignore[attr-defined]
        assert resp.status == 200
        seen[await body_of(resp)] += 1
    return seen


async def test_set_endpoints_keeps_warm_connections_and_drains_removed() -> None:
    a, b, c_ = await started(3)
    pool = Pool()
    c = cluster([a.port, b.port], pool)
    try:
        assert set(await hits(c, 4)) == {b"a", b"b"}
        connects = pool.connects
        c.set_endpoints([ep(b), ep(c_)])
        # a's idle connection closes at once (no cluster names it any more).
        await wait_for(lambda: not a.writers)
        assert set(await hits(c, 6)) == {b"b", b"c"}
        assert pool.connects == connects + 1  # only the new endpoint connected; b's stayed warm
        assert c.statistics()["updates"] == 1
    finally:
        c.close()
        pool.close()
        for o in (a, b, c_):
            await o.stop()


async def test_request_in_flight_to_a_removed_endpoint_finishes_then_its_connection_closes() -> None:
    a, b = await started(2)
    a.delay = 0.3
    pool = Pool()
    c = cluster([a.port], pool)
    try:
        pending = asyncio.ensure_future(c.forward(request(), None))
        await wait_for(lambda: a.hits == 1)
        c.set_endpoints([ep(b)])
        resp = await pending
        assert resp.status == 200 and await body_of(resp) == b"a"
        await wait_for(lambda: not a.writers)  # released into a draining key: closed, not kept idle
        assert pool.statistics()["idle"] == 0
        assert await hits(c, 2) == {b"b": 2}
    finally:
        c.close()
        pool.close()
        for o in (a, b):
            await o.stop()


async def test_endpoint_kept_by_another_cluster_keeps_its_connections() -> None:
    (a,) = await started(1)
    pool = Pool()
    one, two = cluster([a.port], pool), cluster([a.port], pool)
    try:
        await hits(one, 1)
        one.set_endpoints([])
        assert await hits(two, 3) == {b"a": 3}
        assert pool.connects == 1  # the connection one made is still pooled for two
    finally:
        one.close()
        two.close()
        pool.close()
        await a.stop()


async def test_reweight_and_empty_set() -> None:
    a, b = await started(2)
    pool = Pool()
    c = cluster([a.port, b.port], pool, load_balancer="weighted_round_robin")
    try:
        assert await hits(c, 4) == {b"a": 2, b"b": 2}
        c.set_endpoints([ep(a, 3), ep(b, 1)])
        assert await hits(c, 8) == {b"a": 6, b"b": 2}
        c.set_endpoints([])
        with pytest.raises(Overloaded, match="no endpoints"):
            await c.forward(request(), None)
        c.set_endpoints([ep(b)])
        assert await hits(c, 2) == {b"b": 2}
    finally:
        c.close()
        pool.close()
        for o in (a, b):
            await o.stop()


async def test_health_checks_follow_the_set() -> None:
    a, b = await started(2)
    pool = Pool()
    hc = {"type": "tcp", "interval": 0.05, "timeout": 1.0, "unhealthy_threshold": 1, "healthy_threshold": 1}
    from monolake.apps.config import HealthCheck

    c = cluster([a.port], pool, health_check=HealthCheck(**hc))  # type: ignore[arg-type]
    try:
        c.start()
        c.set_endpoints([ep(b)])
        checker = c._checker
        assert checker is not None and len(checker._tasks) == 1
        st = c._states[0]
        assert st.endpoint.port == b.port
        await wait_for(lambda: st.checks_passed >= 2)
        c.set_endpoints([ep(b, 2), ep(a)])  # b reweighted keeps its state; a is checked anew
        assert c._states[0] is st and st.endpoint.weight == 2
        await wait_for(lambda: c._states[1].checks_passed >= 1)
        assert c.endpoint_states() == {"healthy": 2, "unhealthy": 0, "ejected": 0, "draining": 0}
    finally:
        c.close()
        pool.close()
        for o in (a, b):
            await o.stop()


def test_records_carry_weight_zone_tags_and_draining() -> None:
    recs = [
        EndpointRecord(address="10.0.0.1:80", weight=3, zone="eu-1a", tags=("canary",)),
        EndpointRecord(address="10.0.0.2:80", draining=True),
    ]
    active, draining = to_endpoints(recs)
    assert [str(e) for e in active] == ["10.0.0.1:80"] and active[0].weight == 3
    assert active[0].meta == {"zone": "eu-1a", "tags": ["canary"]}
    assert [str(e) for e in draining] == ["10.0.0.2:80"]


def test_builder_applies_sets_to_running_prepared_and_rebuilt_clusters(tmp_path: object) -> None:
    from monolake.apps.config import parse_config
    from monolake.apps.proxy import ProxyBuilder

    def cfg(read_timeout: float) -> object:
        return parse_config(
            {
                "upstreams": {"api": {"discovery": {"kind": "file", "path": "e.json"}, "read_timeout": read_timeout}},
                "servers": {"web": {"listener": "127.0.0.1:0", "routes": [{"path": "/", "upstream": "api"}]}},
            }
        )

    def msg(*addresses: str) -> dict[str, object]:
        return {"op": "app", "cluster": "api", "records": [{"address": a} for a in addresses]}

    b = ProxyBuilder()
    b.on_message(msg("10.0.0.1:80"))  # retained, before the first build (a restarted worker)
    apps = b(cfg(60.0))
    running = b._clusters["api"][1]
    assert [str(e) for e in running.endpoints] == ["10.0.0.1:80"]
    b.on_message(msg("10.0.0.2:80"))
    assert [str(e) for e in running.endpoints] == ["10.0.0.2:80"]
    prepared = b.prepare(cfg(30.0), apps)  # the cluster changed: rebuilt with the current set
    new = b._preparing["api"][1]
    assert new is not running and [str(e) for e in new.endpoints] == ["10.0.0.2:80"]
    b.on_message(msg("10.0.0.3:80"))  # between prepare and commit: both get it
    assert [str(e) for e in new.endpoints] == [str(e) for e in running.endpoints] == ["10.0.0.3:80"]
    prepared.commit()
    assert b._clusters["api"][1] is new and not b._preparing
    b.on_message({"op": "app", "cluster": "api"})  # forgotten (discovery removed by a reload)
    assert "api" not in b._discovered


def test_discovered_https_endpoints_speak_tls_with_the_cluster_settings(tmp_path: object) -> None:
    from monolake.apps.config import Cluster as ClusterCfg
    from monolake.apps.config import Discovery
    from monolake.apps.proxy._upstream import UpstreamCluster

    plain = UpstreamCluster.from_config("p", ClusterCfg(discovery=Discovery(kind="file", path="x")), Pool())
    plain.set_endpoints([parse_endpoint("https://10.0.0.1"), parse_endpoint("10.0.0.2:80")])
    assert [e.tls is not None for e in plain.endpoints] == [True, False]
    h2 = UpstreamCluster.from_config("h", ClusterCfg(discovery=Discovery(kind="file", path="x"), protocol="h2"), Pool())
    h2.set_endpoints([parse_endpoint("https://10.0.0.1")])
    assert h2.endpoints[0].tls is not None
    assert h2.endpoints[0].tls.fingerprint != plain.endpoints[0].tls.fingerprint  # it offers h2 by ALPN
