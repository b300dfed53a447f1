"""Balancers: exact sequences where the policy is deterministic, tolerances where random."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from types import SimpleNamespace

import pytest

from monolake.apps.proxy._balancer import (
    MAGLEV_TABLE_SIZE,
    Balancer,
    LeastRequestBalancer,
    MaglevBalancer,
    RandomBalancer,
    RingHashBalancer,
    RoundRobinBalancer,
    WeightedRoundRobinBalancer,
    make_balancer,
)
from monolake.core.address import Endpoint
from monolake.core.proto.http._message import Headers, Request


def eps(*weights: int) -> list[Endpoint]:
    return [Endpoint(host=f"10.0.0.{i + 1}", port=8080, weight=w) for i, w in enumerate(weights)]


def req(peer: str | None = "10.1.1.1", headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    r = Request(b"GET", b"/", Headers([(b"Host", b"x"), *(headers or [])]), host=b"x")
    r.ctx = SimpleNamespace(peer=peer)
    return r


def shares(picks: Sequence[Endpoint], endpoints: Sequence[Endpoint]) -> list[float]:
    c = Counter(picks)
    return [c[ep] / len(picks) for ep in endpoints]


ALL_KINDS = [
    ("round_robin", "ring"),
    ("weighted_round_robin", "ring"),
    ("random", "ring"),
    ("least_request", "ring"),
    ("consistent_hash", "ring"),
    ("consistent_hash", "maglev"),
]


# --- construction -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "algo", "cls"),
    [
        ("round_robin", "ring", RoundRobinBalancer),
        ("weighted_round_robin", "ring", WeightedRoundRobinBalancer),
        ("random", "ring", RandomBalancer),
        ("least_request", "ring", LeastRequestBalancer),
        ("consistent_hash", "ring", RingHashBalancer),
        ("consistent_hash", "maglev", MaglevBalancer),
    ],
)
def test_make_balancer_kinds(kind: str, algo: str, cls: type[Balancer]) -> None:
    b = make_balancer(kind, eps(1, 2), hash_algorithm=algo)
    assert type(b) is cls
    assert b.endpoints == tuple(eps(1, 2))


def test_make_balancer_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="load_balancer"):
        make_balancer("fastest", eps(1))
    with pytest.raises(ValueError, match="at least one endpoint"):
        make_balancer("round_robin", [])
    with pytest.raises(ValueError, match="hash_algorithm"):
        make_balancer("consistent_hash", eps(1), hash_algorithm="jump")
    for bad in ("ip", "header:", "cookie", "query:x"):
        with pytest.raises(ValueError, match="hash_on"):
            make_balancer("consistent_hash", eps(1), hash_on=bad)
    with pytest.raises(ValueError, match="weights"):
        make_balancer("weighted_round_robin", [Endpoint(host="a", port=1, weight=0)])
    with pytest.raises(ValueError, match="prime"):
        MaglevBalancer(eps(1, 1), table_size=1000)


@pytest.mark.parametrize(("kind", "algo"), ALL_KINDS)
def test_single_endpoint_always_chosen(kind: str, algo: str) -> None:
    (only,) = eps(3)
    b = make_balancer(kind, [only], hash_algorithm=algo)
    assert all(b.pick(req(peer=f"10.9.0.{i}")) is only for i in range(50))


# --- round robin --------------------------------------------------------------------


def test_round_robin_cycles_ignoring_weights() -> None:
    a, b_, c = eps(5, 1, 1)
    b = make_balancer("round_robin", [a, b_, c])
    assert [b.pick(req()) for _ in range(7)] == [a, b_, c, a, b_, c, a]


# --- smooth weighted round robin ----------------------------------------------------


def test_wrr_nginx_sequence() -> None:
    a, b_, c = eps(5, 1, 1)
    b = make_balancer("weighted_round_robin", [a, b_, c])
    assert [b.pick(req()) for _ in range(14)] == [a, a, b_, a, c, a, a] * 2


def test_wrr_scaled_weights_same_sequence() -> None:
    a, b_, c = eps(10, 2, 2)
    b = make_balancer("weighted_round_robin", [a, b_, c])
    assert [b.pick(req()) for _ in range(7)] == [a, a, b_, a, c, a, a]


def test_wrr_two_to_one() -> None:
    a, b_ = eps(2, 1)
    b = make_balancer("weighted_round_robin", [a, b_])
    assert [b.pick(req()) for _ in range(6)] == [a, b_, a] * 2


def test_wrr_huge_period_runs_live_with_exact_counts() -> None:
    a, b_ = eps(70001, 1)  # period 70002 is over the precompute limit
    b = make_balancer("weighted_round_robin", [a, b_])
    picks = Counter(b.pick(req()) for _ in range(70002))
    assert picks == {a: 70001, b_: 1}


# --- random -------------------------------------------------------------------------


def test_random_weighted_distribution() -> None:
    endpoints = eps(1, 2, 7)
    b = RandomBalancer(endpoints, rng=random.Random(1))
    got = shares([b.pick(req()) for _ in range(10_000)], endpoints)
    for share, want in zip(got, [0.1, 0.2, 0.7], strict=True):
        assert abs(share - want) < 0.02


def test_random_huge_coprime_weights_keep_everyone() -> None:
    endpoints = eps(100_003, 1, 99_991)
    b = RandomBalancer(endpoints, rng=random.Random(2))
    got = shares([b.pick(req()) for _ in range(10_000)], endpoints)
    assert abs(got[0] - 0.5) < 0.03
    assert abs(got[2] - 0.5) < 0.03


def test_random_uniform_via_make_balancer() -> None:
    endpoints = eps(1, 1, 1, 1)
    b = make_balancer("random", endpoints)
    got = shares([b.pick(req()) for _ in range(10_000)], endpoints)
    assert all(abs(s - 0.25) < 0.03 for s in got)


# --- least request (power of two choices) -------------------------------------------


def test_p2c_two_endpoints_prefers_less_loaded() -> None:
    a, b_ = eps(1, 1)
    b = LeastRequestBalancer([a, b_], rng=random.Random(3))
    b.started(a)
    assert all(b.pick(req()) is b_ for _ in range(100))
    b.started(b_)
    b.started(b_)
    assert all(b.pick(req()) is a for _ in range(100))
    b.finished(b_)
    b.finished(b_)
    assert b.statistics() == {str(a): 1, str(b_): 0}


def test_p2c_most_loaded_never_chosen() -> None:
    a, b_, c = eps(1, 1, 1)
    b = LeastRequestBalancer([a, b_, c], rng=random.Random(4))
    for _ in range(2):
        b.started(a)
    b.started(b_)
    picks = Counter(b.pick(req()) for _ in range(3000))
    assert picks[a] == 0  # it loses every pairing
    # c wins both pairings it is in (2/3); b wins only against a (1/3).
    assert abs(picks[c] / 3000 - 2 / 3) < 0.04


def test_p2c_idle_spreads_evenly() -> None:
    endpoints = eps(1, 1, 1, 1)
    b = LeastRequestBalancer(endpoints, rng=random.Random(5))
    got = shares([b.pick(req()) for _ in range(10_000)], endpoints)
    assert all(abs(s - 0.25) < 0.03 for s in got)


def test_p2c_weight_aware() -> None:
    a, b_ = eps(3, 1)
    b = LeastRequestBalancer([a, b_], rng=random.Random(6))
    # Idle: candidates are drawn by weight.
    got = shares([b.pick(req()) for _ in range(10_000)], [a, b_])
    assert abs(got[0] - 0.75) < 0.03
    # Two in flight on a (weight 3) is less load per weight than one on b (weight 1).
    b.started(a)
    b.started(a)
    b.started(b_)
    assert all(b.pick(req()) is a for _ in range(100))


def test_p2c_finished_never_goes_negative_and_equal_endpoint_counts() -> None:
    a, b_ = eps(1, 1)
    b = LeastRequestBalancer([a, b_])
    b.finished(a)
    b.started(Endpoint(host=a.host, port=a.port))  # equal, not identical (e.g. after a reload)
    b.started(Endpoint(host="192.0.2.1", port=1))  # unknown: ignored
    assert b.statistics() == {str(a): 1, str(b_): 0}


def test_p2c_pick_excluding_takes_least_loaded_remaining() -> None:
    a, b_, c = eps(1, 1, 1)
    b = LeastRequestBalancer([a, b_, c])
    b.started(b_)
    assert b.pick_excluding(req(), [a]) is c
    assert b.pick_excluding(req(), [a, c]) is b_
    assert b.pick_excluding(req(), [a, b_, c]) is None


# --- consistent hashing -------------------------------------------------------------


def _keys(n: int) -> list[Request]:
    return [req(peer=f"172.16.{i // 256}.{i % 256}") for i in range(n)]


@pytest.mark.parametrize("algo", ["ring", "maglev"])
def test_hash_same_key_same_endpoint(algo: str) -> None:
    endpoints = eps(1, 1, 1, 1, 1)
    b1 = make_balancer("consistent_hash", endpoints, hash_algorithm=algo)
    b2 = make_balancer("consistent_hash", list(reversed(endpoints)), hash_algorithm=algo)
    for r in _keys(200):
        first = b1.pick(r)
        assert b1.pick(r) is first
        assert b2.pick(r) == first  # depends on the endpoints, not their order


@pytest.mark.parametrize("algo", ["ring", "maglev"])
def test_hash_spreads_keys(algo: str) -> None:
    endpoints = eps(1, 1, 1, 1)
    b = make_balancer("consistent_hash", endpoints, hash_algorithm=algo)
    got = shares([b.pick(r) for r in _keys(10_000)], endpoints)
    assert all(0.15 < s < 0.35 for s in got), got


@pytest.mark.parametrize("algo", ["ring", "maglev"])
def test_hash_adding_one_endpoint_moves_about_its_share(algo: str) -> None:
    n = 5
    old_eps = eps(*[1] * n)
    new_eps = eps(*[1] * (n + 1))
    old = make_balancer("consistent_hash", old_eps, hash_algorithm=algo)
    new = make_balancer("consistent_hash", new_eps, hash_algorithm=algo)
    keys = _keys(10_000)
    moved = [(old.pick(r), new.pick(r)) for r in keys if old.pick(r) != new.pick(r)]
    frac = len(moved) / len(keys)
    assert abs(frac - 1 / (n + 1)) < 0.07, frac
    to_new = sum(1 for _, dst in moved if dst == new_eps[-1]) / len(moved)
    if algo == "ring":
        assert to_new == 1.0  # a ring only ever hands keys to the newcomer
    else:
        assert to_new > 0.9  # Maglev trades a little extra disruption for balance


def test_maglev_table_full_and_balanced() -> None:
    endpoints = eps(*[1] * 7)
    b = MaglevBalancer(endpoints)
    counts = b.statistics()
    assert sum(counts.values()) == MAGLEV_TABLE_SIZE
    assert set(counts) == {str(ep) for ep in endpoints}
    ideal = MAGLEV_TABLE_SIZE / 7
    assert all(abs(c - ideal) / ideal < 0.02 for c in counts.values()), counts


def test_maglev_weighted_table() -> None:
    a, b_ = eps(3, 1)
    counts = MaglevBalancer([a, b_]).statistics()
    assert abs(counts[str(a)] / MAGLEV_TABLE_SIZE - 0.75) < 0.01


def test_ring_weighted_share() -> None:
    endpoints = eps(3, 1)
    b = RingHashBalancer(endpoints)
    got = shares([b.pick(r) for r in _keys(10_000)], endpoints)
    assert abs(got[0] - 0.75) < 0.06, got


@pytest.mark.parametrize("algo", ["ring", "maglev"])
def test_hash_key_sources_agree(algo: str) -> None:
    """client_ip, header and cookie keys with the same bytes land on the same endpoint."""
    endpoints = eps(1, 1, 1, 1, 1, 1)
    by_ip = make_balancer("consistent_hash", endpoints, hash_algorithm=algo)
    by_hdr = make_balancer("consistent_hash", endpoints, hash_on="header:X-User", hash_algorithm=algo)
    by_cookie = make_balancer("consistent_hash", endpoints, hash_on="cookie:sid", hash_algorithm=algo)
    seen = set()
    for i in range(100):
        key = f"user-{i}"
        want = by_ip.pick(req(peer=key))
        seen.add(want)
        assert by_hdr.pick(req(peer="1.1.1.1", headers=[(b"x-user", key.encode())])) == want
        cookie = f"a=1; sid={key}; b=2".encode()
        assert by_cookie.pick(req(peer="2.2.2.2", headers=[(b"Cookie", cookie)])) == want
        # Second Cookie header (as HTTP/2 sends them) is searched too.
        split = [(b"cookie", b"a=1"), (b"cookie", f"sid={key}".encode())]
        assert by_cookie.pick(req(peer="2.2.2.2", headers=split)) == want
    assert len(seen) > 1


@pytest.mark.parametrize("algo", ["ring", "maglev"])
def test_hash_missing_key_falls_back_to_ip_then_round_robin(algo: str) -> None:
    endpoints = eps(1, 1, 1)
    by_ip = make_balancer("consistent_hash", endpoints, hash_algorithm=algo)
    by_cookie = make_balancer("consistent_hash", endpoints, hash_on="cookie:sid", hash_algorithm=algo)
    by_hdr = make_balancer("consistent_hash", endpoints, hash_on="header:x-user", hash_algorithm=algo)
    for i in range(50):
        peer = f"10.3.0.{i}"
        want = by_ip.pick(req(peer=peer))
        assert by_cookie.pick(req(peer=peer, headers=[(b"cookie", b"sidx=1; other=sid")])) == want
        assert by_cookie.pick(req(peer=peer, headers=[(b"cookie", b"sid=")])) == want
        assert by_hdr.pick(req(peer=peer)) == want
        assert by_hdr.pick(req(peer=peer, headers=[(b"x-user", b"")])) == want
    # No usable key at all (Unix socket clients, or no context): round robin.
    for b in (by_ip, by_cookie, by_hdr):
        assert {b.pick(req(peer="unix")) for _ in range(3)} == set(endpoints)
        r = req()
        r.ctx = None
        assert {b.pick(r) for _ in range(3)} == set(endpoints)


@pytest.mark.parametrize("algo", ["ring", "maglev"])
def test_hash_pick_excluding_is_deterministic_failover(algo: str) -> None:
    endpoints = eps(1, 1, 1, 1)
    b = make_balancer("consistent_hash", endpoints, hash_algorithm=algo)
    for r in _keys(100):
        primary = b.pick(r)
        second = b.pick_excluding(r, [primary])
        assert second is not None and second != primary
        assert b.pick_excluding(r, {primary}) == second
        third = b.pick_excluding(r, [primary, second])
        assert third not in (None, primary, second)
        assert b.pick_excluding(r, endpoints) is None
        assert b.pick_excluding(r, []) == primary


# --- pick_excluding for every kind --------------------------------------------------


@pytest.mark.parametrize(("kind", "algo"), ALL_KINDS)
def test_pick_excluding_never_returns_excluded(kind: str, algo: str) -> None:
    endpoints = eps(5, 1, 1, 3)
    b = make_balancer(kind, endpoints, hash_algorithm=algo)
    for i in range(200):
        r = req(peer=f"10.4.0.{i % 50}")
        ex = [endpoints[i % 4], endpoints[(i + 1) % 4]]
        got = b.pick_excluding(r, ex)
        assert got in endpoints and got not in ex
        only = endpoints[(i + 2) % 4]
        assert b.pick_excluding(r, [ep for ep in endpoints if ep != only]) == only
    assert b.pick_excluding(req(), endpoints) is None
    assert b.pick_excluding(req(), []) in endpoints


def test_started_finished_are_no_ops_elsewhere() -> None:
    a, b_ = eps(1, 1)
    b = make_balancer("round_robin", [a, b_])
    b.started(a)
    b.finished(a)
    b.finished(b_)
    assert [b.pick(req()) for _ in range(2)] == [a, b_]
