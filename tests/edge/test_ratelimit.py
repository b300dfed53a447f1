"""Local token buckets (RateLimit, ConnectionLimit) driven by hand: the clock is ``ctx.start``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from monolake.apps.config import FilterSpec
from monolake.apps.edge._shared import CLAIMS
from monolake.apps.edge.ratelimit import ConnectionLimit, RateLimit, RateLimitHeaders, RedisRateLimit
from monolake.apps.proxy._filters import load_filters
from monolake.core.errors import ConfigError
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.service import Context


def _req(headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request(b"GET", b"/", Headers(headers or []))


def _ctx(t: float, peer: str = "10.0.0.1") -> Context:
    return Context(peer, "web", t)


def test_bucket_allows_the_burst_then_429_with_the_ratelimit_headers() -> None:
    rl = RateLimit(requests=2, period=1, workers=1)
    assert rl.request_filter(_req(), _ctx(100.0)) is None
    assert rl.request_filter(_req(), _ctx(100.0)) is None
    r = rl.request_filter(_req(), _ctx(100.0))
    assert r is not None and r.status == 429
    h = r.headers
    assert (h.get("retry-after"), h.get("ratelimit-limit"), h.get("ratelimit-remaining")) == (b"1", b"2", b"0")
    assert (h.get("ratelimit-reset"), h.get("ratelimit-policy")) == (b"1", b"2;w=1")
    # Half a second later one token came back (2/s); another client was never limited.
    assert rl.request_filter(_req(), _ctx(100.5)) is None
    assert rl.request_filter(_req(), _ctx(100.5)) is not None
    assert rl.request_filter(_req(), _ctx(100.5, peer="10.0.0.2")) is None


def test_the_limit_is_divided_across_workers() -> None:
    rl = RateLimit(requests=10, period=60, workers=2)  # 5 per worker per minute
    allowed = sum(rl.request_filter(_req(), _ctx(0.0)) is None for _ in range(10))
    assert allowed == 5
    r = rl.request_filter(_req(), _ctx(0.0))
    assert r is not None and r.headers.get("retry-after") == b"12"  # one token per 12 s here
    assert r.headers.get("ratelimit-policy") == b"10;w=60"


def test_header_key_falls_back_to_the_ip() -> None:
    rl = RateLimit(requests=1, key="header:X-Api-Key", workers=1)
    assert rl.request_filter(_req([(b"X-Api-Key", b"a")]), _ctx(0.0)) is None
    assert rl.request_filter(_req([(b"X-Api-Key", b"a")]), _ctx(0.0)) is not None
    assert rl.request_filter(_req([(b"X-Api-Key", b"b")]), _ctx(0.0)) is None
    assert rl.request_filter(_req(), _ctx(0.0)) is None  # keyed by 10.0.0.1
    assert rl.request_filter(_req(), _ctx(0.0)) is not None


def test_claim_and_route_keys() -> None:
    rl = RateLimit(requests=1, key="claim:sub", workers=1)
    for sub, ok in (("alice", True), ("alice", False), ("bob", True)):
        ctx = _ctx(0.0)
        CLAIMS.set(ctx, {"sub": sub})
        assert (rl.request_filter(_req(), ctx) is None) is ok
    route = RateLimit(requests=1, key="route", workers=1)
    assert route.request_filter(_req(), _ctx(0.0, "1.1.1.1")) is None
    assert route.request_filter(_req(), _ctx(0.0, "2.2.2.2")) is not None


def test_the_key_table_is_bounded() -> None:
    rl = RateLimit(requests=1, period=1, max_keys=3, workers=1)
    for i in range(3):
        rl.request_filter(_req(), _ctx(0.0, f"10.0.0.{i}"))
    rl.request_filter(_req(), _ctx(0.5, "10.0.1.1"))  # none idle yet: cleared
    assert len(rl.buckets) == 1
    for i in range(2):
        rl.request_filter(_req(), _ctx(0.6, f"10.0.2.{i}"))
    rl.request_filter(_req(), _ctx(1.55, "10.0.3.1"))  # 10.0.1.1's bucket is full again: swept
    assert "10.0.1.1" not in rl.buckets and len(rl.buckets) == 3


def test_redis_variant_is_async_and_chosen_by_the_redis_key() -> None:
    rl = RateLimit(requests=5, redis="redis://127.0.0.1:1/0", fail="closed")
    assert isinstance(rl, RedisRateLimit)
    assert rl.burst == 5 and rl.rate == 5  # global: not divided


@pytest.mark.parametrize(
    ("args", "where", "reason"),
    [
        ({"requests": 0}, "args.requests", "must be a number > 0"),
        ({"requests": 1, "key": "cookie:x"}, "args.key", 'must be "ip", "route", "header:NAME" or "claim:NAME"'),
        ({"requests": 1, "redis": "http://x"}, "args.redis", "must be a redis://"),
        ({"requests": 1, "redis": "redis://x", "fail": "maybe"}, "args.fail", "Invalid enum value 'maybe'"),
        ({"requests": 1, "burst": 0.5}, "args.burst", "must be >= 1"),
        ({"period": 1}, "args", "missing required field `requests`"),
        ({"requests": 1, "per": 1}, "args", "unknown field `per`"),
    ],
)
def test_bad_settings_are_config_errors_at_their_key_path(args: dict[str, Any], where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_filters([FilterSpec(use="rate_limit", args=args)], "servers.web.filters")
    assert str(info.value).startswith(f"servers.web.filters[0].{where}: ") and reason in str(info.value)


def test_connection_limit_is_for_tcp_servers() -> None:
    with pytest.raises(ConfigError, match=r"servers\.web\.filters\[0\]: built-in 'connection_limit' is for tcp"):
        load_filters([FilterSpec(use="connection_limit", args={"concurrent": 1})], "servers.web.filters")
    (f,) = load_filters([FilterSpec(use="connection_limit", args={"concurrent": 1})], "servers.t.filters", kind="tcp")
    assert isinstance(f, ConnectionLimit)


def test_connection_limit_counts_concurrent_connections_and_their_rate() -> None:
    cl = ConnectionLimit(concurrent=2, rate=3, workers=1)
    ctxs = [_ctx(0.0) for _ in range(3)]
    assert [cl.on_connect("10.0.0.1", c) for c in ctxs] == [True, True, False]
    assert cl.on_connect("10.0.0.2", _ctx(0.0)) is True
    cl.on_close(ctxs[0], None)
    cl.on_close(ctxs[2], None)  # refused: never counted, nothing to give back
    assert cl.open["10.0.0.1"] == 1
    assert cl.on_connect("10.0.0.1", _ctx(0.0)) is True  # the 3rd new connection this second
    c = _ctx(0.0)
    cl.on_close(ctxs[1], None)
    assert cl.on_connect("10.0.0.1", c) is False  # a free slot, but no token left
    assert cl.on_connect("10.0.0.1", _ctx(1.0)) is True
    with pytest.raises(ValueError, match="rate: set rate"):
        ConnectionLimit()


class FailingStore:
    """Stands in for the Redis script: every call fails as a refused connection would."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, keys: list[str], args: tuple[str, ...]) -> list[Any]:
        self.calls += 1
        raise ConnectionRefusedError("refused")


def test_redis_failure_leaves_redis_alone_for_redis_retry() -> None:
    rl = RateLimit(requests=5, redis="redis://127.0.0.1:1/0", fail="closed", redis_retry=1)
    assert isinstance(rl, RedisRateLimit)
    store = rl._script = FailingStore()

    async def go() -> list[Any]:
        return [await rl.request_filter(_req(), _ctx(t)) for t in (10.0, 10.5, 10.99, 11.0, 11.5)]

    out = asyncio.run(go())
    assert [r.status for r in out] == [503] * 5 and out[0].headers.get("retry-after") == b"1"
    assert store.calls == 2  # at 10.0 and 11.0: the other three got the fail mode without asking


def test_headers_variant_reports_what_is_left_on_passing_responses() -> None:
    plain = RateLimit(requests=4, workers=2)
    assert type(plain) is RateLimit and "response_filter" not in vars(RateLimit)  # no phase unless asked
    rl = RateLimit(requests=4, period=1, workers=2, headers=True)  # each worker: 2/s, bursts of 2
    assert isinstance(rl, RateLimitHeaders)
    ctx = _ctx(0.0)
    assert rl.request_filter(_req(), ctx) is None
    resp = Response(200)
    rl.response_filter(resp, ctx)
    h = resp.headers
    assert (h.get("ratelimit-limit"), h.get("ratelimit-remaining"), h.get("ratelimit-reset")) == (b"4", b"2", b"1")
    assert h.get("ratelimit-policy") == b"4;w=1"
    refused_ctx = _ctx(0.0)
    rl.request_filter(_req(), _ctx(0.0))
    out = rl.request_filter(_req(), refused_ctx)
    assert out is not None and out.status == 429
    resp = Response(200)
    rl.response_filter(resp, refused_ctx)  # a refused request has no state: nothing added
    assert "ratelimit-limit" not in resp.headers
