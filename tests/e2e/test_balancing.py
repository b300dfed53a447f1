"""Load balancing across three origin processes (named a, b, c; ``/name`` answers the name).

The proxy runs two workers. Round-robin style checks go over one keep-alive
connection (one worker, one balancer); hash checks open a fresh connection per
request, so both workers answer and must agree.
"""

from __future__ import annotations

import itertools
from collections import Counter

import httpx
import pytest

from conftest import Origin, Proxy, ProxyFactory

pytestmark = pytest.mark.e2e

CONFIG = """
[upstreams.rr]
endpoints = [{ endpoint = "{a}" }, { endpoint = "{b}" }, { endpoint = "{c}" }]

[upstreams.wrr]
load_balancer = "weighted_round_robin"
endpoints = [{ endpoint = "{a}", weight = 3 }, { endpoint = "{b}", weight = 1 }]

[upstreams.ring]
load_balancer = "consistent_hash"
hash_on = "header:X-User"
endpoints = [{ endpoint = "{a}" }, { endpoint = "{b}" }, { endpoint = "{c}" }]

[upstreams.maglev]
load_balancer = "consistent_hash"
hash_on = "cookie:session"
hash_algorithm = "maglev"
endpoints = [{ endpoint = "{a}" }, { endpoint = "{b}" }, { endpoint = "{c}" }]

[upstreams.random]
load_balancer = "random"
endpoints = [{ endpoint = "{a}" }, { endpoint = "{b}" }]

[upstreams.least]
load_balancer = "least_request"
endpoints = [{ endpoint = "{a}" }, { endpoint = "{b}" }]

[servers.lb]
listener = "127.0.0.1:0"

[[servers.lb.routes]]
path = "/rr/"
strip_prefix = true
upstream = "rr"

[[servers.lb.routes]]
path = "/wrr/"
strip_prefix = true
upstream = "wrr"

[[servers.lb.routes]]
path = "/ring/"
strip_prefix = true
upstream = "ring"

[[servers.lb.routes]]
path = "/maglev/"
strip_prefix = true
upstream = "maglev"

[[servers.lb.routes]]
path = "/random/"
strip_prefix = true
upstream = "random"

[[servers.lb.routes]]
path = "/least/"
strip_prefix = true
upstream = "least"

[[servers.lb.routes]]
path = "/inline/"
strip_prefix = true
load_balancer = "weighted_round_robin"
upstreams = [{ endpoint = "{b}", weight = 1 }, { endpoint = "{c}", weight = 2 }]
"""


@pytest.fixture(scope="module")
def lb(module_proxy: ProxyFactory, origins: list[Origin]) -> Proxy:
    a, b, c = origins
    return module_proxy(CONFIG, workers=2, a=a.url, b=b.url, c=c.url)


def names_over_one_connection(proxy: Proxy, prefix: str, n: int) -> list[str]:
    with httpx.Client(trust_env=False, timeout=20) as client:
        out = []
        for _ in range(n):
            r = client.get(f"{proxy.url}{prefix}name")
            assert r.status_code == 200
            out.append(r.text)
        return out


def test_round_robin_cycles_through_all(lb: Proxy) -> None:
    names = names_over_one_connection(lb, "/rr/", 12)
    assert sorted(set(names[:3])) == ["a", "b", "c"]
    assert names == names[:3] * 4


def test_weighted_round_robin_ratio(lb: Proxy) -> None:
    names = names_over_one_connection(lb, "/wrr/", 40)
    assert Counter(names) == {"a": 30, "b": 10}
    # Smooth: b comes once in every window of four.
    for i in range(0, 40, 4):
        assert names[i : i + 4].count("b") == 1


def test_inline_upstreams_weighted(lb: Proxy) -> None:
    names = names_over_one_connection(lb, "/inline/", 30)
    assert Counter(names) == {"b": 10, "c": 20}


def test_consistent_hash_on_header_sticks(lb: Proxy) -> None:
    placement: dict[str, set[str]] = {}
    for user, _ in itertools.product(range(12), range(4)):
        # A fresh connection each time: either worker may answer.
        r = httpx.get(f"{lb.url}/ring/name", headers={"X-User": f"user-{user}"}, trust_env=False, timeout=20)
        assert r.status_code == 200
        placement.setdefault(f"user-{user}", set()).add(r.text)
    assert all(len(s) == 1 for s in placement.values()), placement
    assert len(set().union(*placement.values())) >= 2, "every key landed on one endpoint"


def test_consistent_hash_maglev_on_cookie_sticks(lb: Proxy) -> None:
    placement: dict[str, set[str]] = {}
    for sid, _ in itertools.product(range(12), range(3)):
        r = httpx.get(f"{lb.url}/maglev/name", headers={"Cookie": f"theme=dark; session=s{sid}"}, trust_env=False)
        assert r.status_code == 200
        placement.setdefault(f"s{sid}", set()).add(r.text)
    assert all(len(s) == 1 for s in placement.values()), placement
    assert len(set().union(*placement.values())) >= 2


def test_random_uses_every_endpoint(lb: Proxy) -> None:
    names = names_over_one_connection(lb, "/random/", 40)
    assert set(names) == {"a", "b"}


def test_least_request_serves(lb: Proxy) -> None:
    names = names_over_one_connection(lb, "/least/", 10)
    assert set(names) <= {"a", "b"}
