"""Outlier ejection and back-off, retry budget and retries, circuit breaker counters, active
checks: an ``UpstreamCluster`` against tiny origins on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from monolake.apps.config import CircuitBreaker, Cluster, Endpoint, HealthCheck, OutlierDetection, Retry, UpstreamSpec
from monolake.apps.proxy._health import EndpointState, HealthChecker, Outliers
from monolake.apps.proxy._retry import Attempt, RetryingCluster, RetryLayer, RetryPolicy
from monolake.apps.proxy._upstream import UpstreamCluster
from monolake.core._body import Body
from monolake.core.client import Pool, _pool
from monolake.core.errors import ConnectError, ReadTimeout
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.service import Layer


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` (bounded) on the running loop."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class Origin:
    """An HTTP/1.1 origin answering ``status`` (settable) with its name as the body;
    ``delay`` holds each answer back."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 200
        self.delay = 0.0
        self.hits = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        await self.server.wait_closed()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                if b"/health" not in head:
                    self.hits += 1
                if self.delay:
                    await asyncio.sleep(self.delay)
                body = self.name.encode()
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (self.status, len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            self.tasks.discard(task)
            writer.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def origins() -> AsyncIterator[list[Origin]]:
    out = [Origin("a"), Origin("b")]
    for o in out:
        await o.start()
    yield out
    for o in out:
        if o.server is not None and o.server.is_serving():
            await o.stop()


def request(method: bytes = b"GET", body: object = None) -> Request:
    r = Request(method, b"/x", Headers([(b"Host", b"t")]), host=b"t", raw_host=b"t", body=body)
    r.ctx = SimpleNamespace(peer="127.0.0.1", endpoint=None, user=None)
    return r


def cluster(ports: list[int], pool: Pool, **kw: object) -> UpstreamCluster:
    c = Cluster(endpoints=[UpstreamSpec(endpoint=f"127.0.0.1:{p}") for p in ports], connect_timeout=2.0, **kw)  # type: ignore[arg-type]
    return UpstreamCluster.from_config("c", c, pool)


async def body_of(resp: object) -> bytes:
    b = resp.body  # type: ignore[attr-defined]
    return await b.read_all() if isinstance(b, Body) else bytes(b)


# -- outlier detection ---------------------------------------------------------------


async def test_outlier_ejects_after_consecutive_5xx_and_backs_off() -> None:
    # Times are bracketed by loop.time() read before and after each ejection, and the
    # back-off window (max_ejection_time) is wide enough for a busy machine's pauses.
    states = [EndpointState(Endpoint(host="127.0.0.1", port=p)) for p in (1, 2, 3, 4)]
    changes: list[int] = []
    od = OutlierDetection(consecutive_5xx=3, base_ejection_time=0.2, max_ejection_time=0.5, max_ejection_percent=50)
    out = Outliers("c", od, states, lambda: changes.append(1))
    st = states[0]
    loop = asyncio.get_running_loop()
    out.responded(st, 503)
    out.responded(st, 200)  # a success resets the count
    for _ in range(2):
        out.responded(st, 500)
    assert not st.ejected_until
    before = loop.time()
    out.responded(st, 502)
    assert before + 0.2 <= st.ejected_until <= loop.time() + 0.2
    assert not st.eligible and len(changes) == 1
    await wait_for(lambda: not st.ejected_until)
    assert st.eligible and len(changes) == 2
    # Ejected again soon after: twice as long; then capped at max_ejection_time.
    before = loop.time()
    for _ in range(3):
        out.failed(st, "ReadError")
    assert before + 0.4 <= st.ejected_until <= loop.time() + 0.4
    await wait_for(lambda: not st.ejected_until)
    before = loop.time()
    for _ in range(3):
        out.responded(st, 500)
    assert before + 0.5 <= st.ejected_until <= loop.time() + 0.5
    assert st.total_ejections == 3
    out.close()


async def test_outlier_connect_failures_and_max_ejection_percent() -> None:
    states = [EndpointState(Endpoint(host="127.0.0.1", port=p)) for p in (1, 2, 3, 4)]
    od = OutlierDetection(consecutive_connect_failures=2, base_ejection_time=30, max_ejection_percent=50)
    out = Outliers("c", od, states, lambda: None)
    for st in states:
        out.connect_failed(st)
        out.connect_failed(st)
    # 50% of 4: only two are ejected, whatever the others do.
    assert [bool(s.ejected_until) for s in states] == [True, True, False, False]
    out.close()


# -- retry budget ----------------------------------------------------------------------


def test_retry_budget() -> None:
    p = RetryPolicy(Retry(budget_percent=20.0, min_retry_concurrency=2))
    p.active = 5
    assert p.admit() and p.admit()  # the minimum, although 20% of 5 is 1
    assert not p.admit()
    assert p.budget_exhausted == 1
    p.active = 20  # 20% of 20 = 4
    assert p.admit() and p.admit() and not p.admit()
    p.done()
    assert p.admit()
    assert p.statistics() == {"active": 20, "retrying": 4, "retries": 5, "budget_exhausted": 2}
    assert p.on_status == {502, 503, 504} and p.on_connect and p.on_reset and not p.on_timeout


# -- retries -----------------------------------------------------------------------------


async def test_retry_layer_over_a_fake_try_service(caplog: pytest.LogCaptureFixture) -> None:
    # The layer alone: its inner service stands in for the cluster's tries (no sockets);
    # the cluster only aims the tries. A route without ``retry`` gets the cluster itself.
    pool = Pool()
    c = cluster([1, 2, 3], pool, load_balancer="round_robin")
    assert c.with_retry(None) is c
    assert isinstance(c.with_retry(Retry()), RetryingCluster)
    seen: list[int] = []

    class Tries:
        async def __call__(self, a: Attempt) -> Response:
            assert a.endpoint is not None and a.per_try_timeout == 0.5
            seen.append(a.endpoint.port)
            if len(seen) < 3:
                raise ConnectError("refused")
            return Response(200, Headers([]), b"ok")

    layer: Layer[Attempt, Response] = RetryLayer(RetryPolicy(Retry(attempts=2, per_try_timeout=0.5)))
    a = Attempt(c, request(), None)
    a.endpoint = c.endpoints[0]
    a.tried.append(a.endpoint)
    with caplog.at_level(logging.INFO, logger="monolake.apps.proxy"):
        resp = await layer.layer(Tries())(a)
    assert resp.status == 200 and seen == [1, 2, 3], "each retry on an endpoint not tried yet"
    assert "retrying GET /x: cluster=c endpoint=127.0.0.1:1: connect failure; try 2 on 127.0.0.1:2" in caplog.text
    assert "retrying GET /x: cluster=c endpoint=127.0.0.1:2: connect failure; try 3 on 127.0.0.1:3" in caplog.text
    pool.close()


async def test_get_retried_on_another_endpoint_after_connect_failure(origins: list[Origin]) -> None:
    pool = Pool()
    c = cluster([closed_port(), origins[0].port], pool, load_balancer="round_robin")
    route = c.with_retry(Retry(attempts=1))
    for _ in range(4):  # round robin starts each request on the closed port: 4 retries
        resp = await route.forward(request(), None)
        assert resp.status == 200 and await body_of(resp) == b"a"
    assert origins[0].hits == 4
    stats = route.statistics()
    assert stats["retry"] == {"active": 0, "retrying": 0, "retries": 4, "budget_exhausted": 0}
    # A POST with a body is not retried: the connect failure is the answer.
    failures = 0
    for _ in range(2):
        body = Body(None, 3)  # type: ignore[arg-type]
        body.feed(b"abc")
        body.feed_eof()
        try:
            resp = await route.forward(request(b"POST", body), None)
            assert resp.status == 200
        except ConnectError:
            failures += 1
    assert failures == 1
    pool.close()


async def test_retry_on_503_and_per_try_timeout(origins: list[Origin]) -> None:
    pool = Pool()
    a, b = origins
    a.status = 503
    c = cluster([a.port, b.port], pool)
    route = c.with_retry(Retry(attempts=2, on=["503", "timeout"], per_try_timeout=0.3))
    for _ in range(2):
        resp = await route.forward(request(), None)
        assert (resp.status, await body_of(resp)) == (200, b"b")
    a.status = 200
    a.delay = 2.0  # a's tries time out and go to b (a's answer, had it been awaited, says "a")
    for _ in range(2):
        resp = await route.forward(request(), None)
        assert (resp.status, await body_of(resp)) == (200, b"b")
    # Without "timeout" in ``on`` the per-try timeout is the answer (a 504).
    plain = c.with_retry(Retry(attempts=2, on=["503"], per_try_timeout=0.2))
    with pytest.raises(ReadTimeout):
        for _ in range(2):
            await plain.forward(request(), None)
    pool.close()


# -- circuit breaker --------------------------------------------------------------------


async def test_circuit_breaker_max_requests(origins: list[Origin], caplog: pytest.LogCaptureFixture) -> None:
    pool = Pool()
    a = origins[0]
    a.delay = 0.3
    c = cluster([a.port], pool, circuit_breaker=CircuitBreaker(max_requests=2))
    results = await asyncio.gather(*(c.forward(request(), None) for _ in range(5)))
    assert sorted(r.status for r in results) == [200, 200, 503, 503, 503]
    assert c.overflows == {"max_requests": 3}
    assert c.active == 0
    assert "circuit breaker open: cluster=c max_requests=2" in caplog.text
    pool.close()


async def test_circuit_breaker_max_connections_and_pending(
    origins: list[Origin], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = Pool()
    a = origins[0]
    a.delay = 0.3
    c = cluster([a.port], pool, circuit_breaker=CircuitBreaker(max_connections=1))
    results = await asyncio.gather(*(c.forward(request(), None) for _ in range(3)))
    statuses = sorted(r.status for r in results)
    assert statuses[0] == 200 and statuses.count(503) >= 1
    assert c.open_connections() == 1 and pool.open
    assert c.statistics()["open_connections"] == 1
    pool.close()
    await wait_for(lambda: c.open_connections() == 0)

    gate = asyncio.Event()
    real_open = _pool.open_transport

    async def slow_open(*args: Any, **kw: Any) -> Any:
        await gate.wait()
        return await real_open(*args, **kw)

    # The module's global, not Pool.connect: compiled, a Pool's methods cannot be replaced.
    monkeypatch.setattr(_pool, "open_transport", slow_open)
    pool2 = Pool()
    a.delay = 0.0
    c2 = cluster([a.port], pool2, circuit_breaker=CircuitBreaker(max_pending=1))
    first = asyncio.ensure_future(c2.forward(request(), None))
    await wait_for(lambda: c2.pending == 1)
    second = await c2.forward(request(), None)
    assert second.status == 503 and c2.overflows == {"max_pending": 1}
    gate.set()
    assert (await first).status == 200
    assert c2.pending == 0
    pool2.close()


# -- active health checks ---------------------------------------------------------------


async def test_active_checks_move_traffic_and_bring_it_back(origins: list[Origin]) -> None:
    pool = Pool()
    a, b = origins
    hc = HealthCheck(path="/health", interval=0.05, timeout=0.5, healthy_threshold=2, unhealthy_threshold=2)
    c = cluster([a.port, b.port], pool, health_check=hc)
    c.start()
    a.status = 500  # /health answers 500 too
    await wait_for(lambda: len(c.eligible()) == 1)
    assert c.statistics()["endpoints"][f"127.0.0.1:{a.port}"]["healthy"] is False  # type: ignore[index]
    a.status = 200
    b.hits = 0
    await wait_for(lambda: len(c.eligible()) == 2)
    seen = {await body_of(await c.forward(request(), None)) for _ in range(4)}
    assert seen == {b"a", b"b"}
    c.close()
    pool.close()


async def test_tcp_check_and_all_unhealthy_falls_back_to_all() -> None:
    st = EndpointState(Endpoint(host="127.0.0.1", port=closed_port()))
    changes: list[int] = []
    checker = HealthChecker(
        "c", HealthCheck(type="tcp", interval=0.02, timeout=0.5, unhealthy_threshold=2), [st], lambda: changes.append(1)
    )
    checker.start()
    await wait_for(lambda: not st.healthy)
    checker.stop()
    assert changes == [1] and st.checks_failed >= 2

    pool = Pool()
    port = closed_port()
    c = cluster([port], pool, health_check=HealthCheck(type="tcp", interval=0.02, unhealthy_threshold=1))
    c.start()
    await wait_for(lambda: not c.eligible())
    assert c.balancer is c._all  # panic mode: balance over all
    with pytest.raises(ConnectError):
        await c.forward(request(), None)
    c.close()
    pool.close()


async def test_passive_ejection_through_forward(origins: list[Origin]) -> None:
    pool = Pool()
    a, b = origins
    a.status = 500
    od = OutlierDetection(consecutive_5xx=2, base_ejection_time=30)
    c = cluster([a.port, b.port], pool, outlier_detection=od)
    for _ in range(6):
        await body_of(await c.forward(request(), None))
    assert c.eligible() == [c.endpoints[1]]
    a.hits = 0
    for _ in range(4):
        assert await body_of(await c.forward(request(), None)) == b"b"
    assert a.hits == 0
    c.close()
    pool.close()


# -- reload -------------------------------------------------------------------------------


async def test_a_reload_stops_the_checks_of_a_replaced_cluster(origins: list[Origin]) -> None:
    from monolake.apps.config import parse_config
    from monolake.apps.proxy import ProxyBuilder

    def cfg(interval: float) -> dict[str, object]:
        hc = {"path": "/health", "interval": interval}
        ep = [{"endpoint": f"127.0.0.1:{origins[0].port}"}]
        return {
            "upstreams": {"a": {"endpoints": ep, "health_check": hc}, "b": {"endpoints": ep, "health_check": hc}},
            "servers": {
                "web": {"listener": "127.0.0.1:0", "routes": [{"path": "/", "upstream": "a"}]},
                "api": {"listener": "127.0.0.1:0", "routes": [{"path": "/", "upstream": "b"}]},
            },
        }

    b = ProxyBuilder()
    apps = b(parse_config(cfg(0.05)))
    old = dict(b._clusters)
    for _, u in old.values():
        u.start()
    raw = cfg(0.05)
    raw["upstreams"]["a"]["health_check"] = {"path": "/health", "interval": 0.1}  # type: ignore[index]
    p = b.prepare(parse_config(raw), apps)
    assert old["a"][1]._checker is not None and old["a"][1]._checker.running  # prepare stops nothing
    p.commit()
    assert not old["a"][1]._checker.running  # replaced: stopped
    assert b._clusters["b"][1] is old["b"][1] and old["b"][1]._checker is not None
    assert old["b"][1]._checker.running  # unchanged: kept, still checking
    for _, u in b._clusters.values():
        u.close()
    b.pool.close()


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster_extra", "route_extra", "server_extra", "where"),
    [
        ({"health_check": {"interval": 0}}, {}, {}, "upstreams.a.health_check.interval"),
        ({"health_check": {"path": "health"}}, {}, {}, "upstreams.a.health_check.path"),
        ({"health_check": {"expected_status": [700]}}, {}, {}, "upstreams.a.health_check.expected_status"),
        ({"health_check": {"unhealthy_threshold": 0}}, {}, {}, "upstreams.a.health_check.unhealthy_threshold"),
        ({"outlier_detection": {"consecutive_5xx": -1}}, {}, {}, "upstreams.a.outlier_detection.consecutive_5xx"),
        ({"outlier_detection": {"max_ejection_percent": 101}}, {}, {}, "upstreams.a.outlier_detection"),
        ({"circuit_breaker": {"max_requests": 0}}, {}, {}, "upstreams.a.circuit_breaker.max_requests"),
        ({"circuit_breaker": {"max_request": 1}}, {}, {}, "upstreams.a.circuit_breaker"),
        ({}, {"retry": {"attempts": -1}}, {}, "servers.web.routes[0].retry.attempts"),
        ({}, {"retry": {"per_try_timeout": 0}}, {}, "servers.web.routes[0].retry.per_try_timeout"),
        ({}, {"retry": {"on": ["500"]}}, {}, "servers.web.routes[0].retry.on[0]"),
    ],
)
def test_config_errors_name_the_key(
    cluster_extra: dict[str, object], route_extra: dict[str, object], server_extra: dict[str, object], where: str
) -> None:
    from monolake.apps.config import parse_config
    from monolake.core.errors import ConfigError

    raw = {
        "upstreams": {"a": {"endpoints": [{"endpoint": "127.0.0.1:9"}], **cluster_extra}},
        "servers": {"web": {"listener": "127.0.0.1:0", "routes": [{"upstream": "a", **route_extra}], **server_extra}},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert str(info.value).startswith(where), str(info.value)


def test_config_resilience_keys_only_where_they_apply() -> None:
    from monolake.apps.config import parse_config
    from monolake.core.errors import ConfigError

    up = {"a": {"endpoints": [{"endpoint": "127.0.0.1:9"}], "outlier_detection": {}}}
    tcp = {"t": {"listener": "127.0.0.1:0", "proxy_type": "tcp", "upstream": "a"}}
    with pytest.raises(ConfigError, match=r"^servers\.t\.upstream: cluster 'a' has outlier_detection"):
        parse_config({"upstreams": up, "servers": tcp})
    ok = parse_config(
        {
            "upstreams": up,
            "servers": {"web": {"listener": "127.0.0.1:0", "routes": [{"upstream": "a", "retry": {}}]}},
        }
    )
    retry = ok.servers["web"].routes[0].retry
    assert retry is not None and retry.attempts == 2 and retry.on == ["connect_failure", "reset", "502", "503", "504"]
