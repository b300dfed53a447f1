"""Router.match and Balancer.pick without sockets.

Run: python -m pytest bench/micro/test_bench_routing.py --benchmark-columns=min,median,mean
(bench/ is outside testpaths, so CI's test run never times these.)
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from monolake.apps.config._schema import Route
from monolake.apps.proxy._balancer import make_balancer
from monolake.apps.proxy._router import Router
from monolake.core.address import Endpoint
from monolake.core.proto.http._message import Headers, Request


def _req(path: bytes, host: bytes = b"www.example.com", headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    hdrs = [
        (b"Host", host),
        (b"User-Agent", b"bench/1.0"),
        (b"Accept", b"*/*"),
        (b"Accept-Encoding", b"gzip"),
        *(headers or []),
    ]
    r = Request(b"GET", path, Headers(hdrs), host=host)
    r.ctx = SimpleNamespace(peer="10.20.30.40")
    return r


def _table() -> Router[int]:
    """20 routes of the usual mix; the last one is a catch-all for one host."""
    routes = [
        Route(path_exact="/first"),
        Route(host="api.example.com", path="/v1/"),
        Route(host="api.example.com", path="/v2/"),
        Route(host="*.static.example.com"),
        Route(path="/assets/"),
        Route(path="/images/"),
        Route(path_regex=r"/users/\d+"),
        Route(path_regex=r"/orders/[0-9a-f]{8}"),
        Route(path="/admin", methods=["GET", "POST"]),
        Route(path="/canary", headers={"x-canary": "1"}),
        Route(path_exact="/health"),
        Route(path_exact="/ready"),
        Route(path="/login"),
        Route(path="/logout"),
        Route(path="/search"),
        Route(path="/cart"),
        Route(path="/checkout", methods=["POST"]),
        Route(path="/static/"),
        Route(path="/docs/"),
        Route(host="www.example.com", path="/"),
    ]
    return Router([(r, i) for i, r in enumerate(routes)])


ROUTER = _table()


def _run(benchmark: Any, fn: Any, *args: Any) -> None:
    # Many calls per timed round: these functions take well under a microsecond,
    # and with one call per round the timer's own overhead (~0.3 us here) dominates.
    benchmark.pedantic(fn, args=args, iterations=2000, rounds=100, warmup_rounds=2)


@pytest.mark.parametrize(
    ("name", "request_", "want"),
    [
        ("hit_first", _req(b"/first"), 0),
        ("hit_last", _req(b"/zzz/last"), 19),
        ("miss", _req(b"/zzz/miss", host=b"other.org"), None),
        ("hit_regex", _req(b"/users/12345"), 6),
        ("hit_wildcard", _req(b"/a.css", host=b"cdn.static.example.com"), 3),
    ],
)
def test_router_match(benchmark: Any, name: str, request_: Request, want: int | None) -> None:
    assert ROUTER.match(request_) == want
    _run(benchmark, ROUTER.match, request_)


ENDPOINTS = [Endpoint(host=f"10.0.0.{i}", port=8080, weight=1 + i % 3) for i in range(8)]


@pytest.mark.parametrize(
    ("kind", "hash_on", "algo"),
    [
        ("round_robin", "client_ip", "ring"),
        ("weighted_round_robin", "client_ip", "ring"),
        ("random", "client_ip", "ring"),
        ("least_request", "client_ip", "ring"),
        ("consistent_hash", "client_ip", "ring"),
        ("consistent_hash", "client_ip", "maglev"),
        ("consistent_hash", "header:x-user", "maglev"),
        ("consistent_hash", "cookie:sid", "ring"),
    ],
)
def test_balancer_pick(benchmark: Any, kind: str, hash_on: str, algo: str) -> None:
    b = make_balancer(kind, ENDPOINTS, hash_on=hash_on, hash_algorithm=algo)
    r = _req(b"/", headers=[(b"X-User", b"user-42"), (b"Cookie", b"theme=dark; sid=abcdef0123456789")])
    _run(benchmark, b.pick, r)


def test_least_request_pick_with_accounting(benchmark: Any) -> None:
    b = make_balancer("least_request", [Endpoint(host=f"10.0.0.{i}", port=8080) for i in range(8)])
    r = _req(b"/")

    def cycle() -> None:
        ep = b.pick(r)
        b.started(ep)
        b.finished(ep)

    _run(benchmark, cycle)
