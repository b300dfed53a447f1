"""Upstream load balancers: choose one endpoint of a cluster per request.

Theory of operation. A balancer is built once per cluster (per worker) and then
asked ``pick(req)`` on every request, so all the work that depends only on the
endpoint list happens in the constructor: weights are reduced by their gcd, smooth
weighted round robin is unrolled into its period, weighted random becomes a flat
table indexed by one ``random()``, a hash ring or Maglev table is filled. ``pick`` is
then an iterator step, an index, or one crc32 plus a bisect or modulo.

``pick_excluding`` serves retries: an endpoint other than the ones already tried,
or None when there is none. It is off the hot path and may scan.

``started``/``finished`` bracket each request sent to an endpoint; only
least_request keeps in-flight counts, the rest ignore them. Counts are per worker
process, like everything here: balancers hold no shared state and do no I/O.

Consistent hashing must agree across worker processes and restarts, so keys are
hashed with ``zlib.crc32`` (stable, and several times cheaper than blake2b; on IP, numeric
and random keys it spreads over a ring as evenly as blake2b does) and the ring and
Maglev permutations are seeded from ``str(endpoint)`` with blake2b, never
Python's per-process randomized ``hash()``.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import math
import random as _random_mod
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, Final, Protocol, TypeVar

from ...core.address import Endpoint
from ...core.errors import Overloaded
from ...core.proto.http._message import Headers

_I = TypeVar("_I")

# Bound once and Final: mypyc keeps Final module constants in C statics (or inlines them),
# where a plain module global is a dict lookup at every use.
_crc32: Final = zlib.crc32
_bisect_left: Final = bisect.bisect_left

# Above this many entries a precomputed table is not worth its memory.
_TABLE_LIMIT: Final = 1 << 16

RING_POINTS_PER_WEIGHT: Final = 160
"""Virtual nodes per unit of (gcd-reduced) weight on the hash ring (Ketama's 160)."""

MAGLEV_TABLE_SIZE: Final = 65537
"""Maglev lookup table size: a prime, much larger than the endpoint count (Maglev §3.4)."""


def _reduced_weights(endpoints: Sequence[Endpoint]) -> list[int]:
    ws = [ep.weight for ep in endpoints]
    g = math.gcd(*ws)
    return [w // g for w in ws]


class PickKey(Protocol):
    """What a balancer reads of a request: ``headers`` and ``ctx.peer``. A ``Request``, or the
    request-shaped keys of the L4 and Thrift servers: a protocol, so that compiled code (mypyc)
    checks no class at the call."""

    @property
    def headers(self) -> Headers: ...

    @property
    def ctx(self) -> Any: ...


class Balancer:
    """Chooses an endpoint per request. Subclasses override ``pick``.

    ``endpoints`` is never empty and weights are >= 1 (constructors raise ValueError).
    """

    __slots__ = ("endpoints",)

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        if not endpoints:
            raise ValueError("a balancer needs at least one endpoint")
        if any(ep.weight < 1 for ep in endpoints):
            raise ValueError("endpoint weights must be >= 1")
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)

    def pick(self, req: PickKey) -> Endpoint:
        """The endpoint for ``req``."""
        raise NotImplementedError

    def pick_excluding(self, req: PickKey, exclude: Collection[Endpoint]) -> Endpoint | None:
        """An endpoint not in ``exclude`` (for a retry), or None if every one is excluded.

        The default asks ``pick`` up to once per endpoint, so the policy still
        applies when it can, then falls back to a weighted random choice.
        """
        if not exclude:
            return self.pick(req)
        for _ in self.endpoints:
            ep = self.pick(req)
            if ep not in exclude:
                return ep
        rest = [ep for ep in self.endpoints if ep not in exclude]
        if not rest:
            return None
        return _random_mod.choices(rest, weights=[ep.weight for ep in rest])[0]

    def started(self, ep: Endpoint) -> None:
        """A request was sent to ``ep``."""

    def finished(self, ep: Endpoint) -> None:
        """A request sent to ``ep`` ended (successfully or not)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {', '.join(map(str, self.endpoints))}>"


class RoundRobinBalancer(Balancer):
    """Each endpoint in turn; weights are ignored."""

    __slots__ = ("_next",)

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        super().__init__(endpoints)
        self._next: Callable[[], Endpoint] = itertools.cycle(self.endpoints).__next__

    def pick(self, req: PickKey) -> Endpoint:
        return self._next()


def _smooth_wrr(endpoints: Sequence[Endpoint], weights: Sequence[int]) -> Iterator[Endpoint]:
    """nginx's smooth weighted round robin (ngx_http_upstream_get_peer), forever.

    Each step every current weight grows by its weight, the largest (first on ties)
    is chosen and pays back the total. The sequence has period sum(weights).
    """
    n = len(endpoints)
    total = sum(weights)
    current = [0] * n
    while True:
        best = 0
        for i in range(n):
            current[i] += weights[i]
            if current[i] > current[best]:
                best = i
        current[best] -= total
        yield endpoints[best]


class WeightedRoundRobinBalancer(Balancer):
    """nginx's smooth weighted round robin: for weights 5,1,1 → a a b a c a a.

    The period (sum of gcd-reduced weights) is precomputed when it is at most
    65536 entries; beyond that the algorithm runs live (O(n) per pick).
    """

    __slots__ = ("_next",)

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        super().__init__(endpoints)
        weights = _reduced_weights(self.endpoints)
        gen = _smooth_wrr(self.endpoints, weights)
        total = sum(weights)
        it: Iterator[Endpoint] = itertools.cycle(list(itertools.islice(gen, total))) if total <= _TABLE_LIMIT else gen
        self._next: Callable[[], Endpoint] = it.__next__

    def pick(self, req: PickKey) -> Endpoint:
        return self._next()


def _weighted_table(items: Sequence[_I], weights: Sequence[int]) -> list[_I]:
    """Each item repeated by its weight, so one ``random()`` and an index draw by weight.

    Weights must be gcd-reduced. Past _TABLE_LIMIT entries (huge co-prime weights)
    they are scaled down to about that many, every item keeping at least one: each
    share is off by about 1/_TABLE_LIMIT at most, and picks stay O(1).
    """
    total = sum(weights)
    if total > _TABLE_LIMIT:
        weights = [max(1, round(w * _TABLE_LIMIT / total)) for w in weights]
    return [it for it, w in zip(items, weights, strict=True) for _ in range(w)]


class RandomBalancer(Balancer):
    """Weighted random: each pick independent, probability proportional to weight."""

    __slots__ = ("_n", "_random", "_table")

    def __init__(self, endpoints: Sequence[Endpoint], *, rng: _random_mod.Random | None = None) -> None:
        super().__init__(endpoints)
        self._random = rng.random if rng is not None else _random_mod.random
        self._table = _weighted_table(self.endpoints, _reduced_weights(self.endpoints))
        self._n = len(self._table)

    def pick(self, req: PickKey) -> Endpoint:
        return self._table[int(self._random() * self._n)]


class LeastRequestBalancer(Balancer):
    """Power of two choices by in-flight requests (Mitzenmacher; Envoy's LEAST_REQUEST).

    Two distinct candidates are drawn (uniformly; or, when weights differ, the
    first in proportion to weight) and the one with fewer in-flight requests per
    unit of weight wins; on a tie the first draw wins, so an idle cluster is spread
    like ``random``. One endpoint: always it. In-flight counts move with
    ``started``/``finished``.
    """

    __slots__ = ("_index", "_load", "_n", "_random", "_weights", "_wn", "_wtable")

    def __init__(self, endpoints: Sequence[Endpoint], *, rng: _random_mod.Random | None = None) -> None:
        super().__init__(endpoints)
        self._n = n = len(self.endpoints)
        self._random = rng.random if rng is not None else _random_mod.random
        self._load = [0] * n
        self._weights = weights = _reduced_weights(self.endpoints)
        self._wtable = None if len(set(weights)) == 1 else _weighted_table(range(n), weights)
        self._wn = len(self._wtable or ())
        # started()/finished() get back the very objects pick() returned: look them
        # up by id (an int hash) rather than hashing a five-field dataclass.
        self._index = {id(ep): i for i, ep in enumerate(self.endpoints)}

    def pick(self, req: PickKey) -> Endpoint:
        n = self._n
        if n == 1:
            return self.endpoints[0]
        rnd = self._random
        load = self._load
        wtable = self._wtable
        # The second candidate is uniform among the others even when weights differ:
        # drawing both by weight would often draw the heavy endpoint twice and leave
        # no choice at all.
        j = int(rnd() * (n - 1))
        if wtable is None:
            i = int(rnd() * n)
            if j >= i:
                j += 1
            return self.endpoints[i if load[i] <= load[j] else j]
        i = wtable[int(rnd() * self._wn)]
        if j >= i:
            j += 1
        w = self._weights
        return self.endpoints[i if load[i] * w[j] <= load[j] * w[i] else j]

    def pick_excluding(self, req: PickKey, exclude: Collection[Endpoint]) -> Endpoint | None:
        """Power of two choices among the endpoints not in ``exclude`` (drawn uniformly)."""
        rest = [i for i, ep in enumerate(self.endpoints) if ep not in exclude]
        if len(rest) < 2:
            return self.endpoints[rest[0]] if rest else None
        rnd = self._random
        a = int(rnd() * len(rest))
        b = int(rnd() * (len(rest) - 1))
        if b >= a:
            b += 1
        i, j = rest[a], rest[b]
        load, w = self._load, self._weights
        return self.endpoints[i if load[i] * w[j] <= load[j] * w[i] else j]

    def _slow_slot(self, ep: Endpoint) -> int | None:
        # An equal endpoint built elsewhere (e.g. across a config reload): compare by
        # value. Unknown endpoints are ignored.
        for k, mine in enumerate(self.endpoints):
            if mine == ep:
                return k
        return None

    def started(self, ep: Endpoint) -> None:
        i = self._index.get(id(ep))
        if i is None:
            i = self._slow_slot(ep)
            if i is None:
                return
        self._load[i] += 1

    def finished(self, ep: Endpoint) -> None:
        i = self._index.get(id(ep))
        if i is None:
            i = self._slow_slot(ep)
            if i is None:
                return
        if self._load[i] > 0:
            self._load[i] -= 1

    def statistics(self) -> dict[str, int]:
        """In-flight requests per endpoint (``str(endpoint)`` → count)."""
        return {str(ep): self._load[i] for i, ep in enumerate(self.endpoints)}


# --- consistent hashing -------------------------------------------------------------

_KeyFn = Callable[[PickKey], bytes | None]


def _client_ip(req: PickKey) -> bytes | None:
    try:
        peer: str | None = req.ctx.peer
    except AttributeError:  # no context (a request built outside a server)
        return None
    # Every client of a Unix listener has the same "peer": hashing it would pin all
    # of them to one endpoint, so it counts as no key.
    if not peer or peer == "unix":
        return None
    return peer.encode()


def _header_key(name: str) -> _KeyFn:
    lname = name.lower().encode("latin-1")

    def key(req: PickKey) -> bytes | None:
        for v in req.headers.get_all(lname):
            if v:
                return v
        return _client_ip(req)

    return key


def _cookie_key(name: str) -> _KeyFn:
    needle = name.encode("latin-1") + b"="
    skip = len(needle)

    def key(req: PickKey) -> bytes | None:
        # HTTP/2 may split cookies over several headers (RFC 9113 §8.2.3): scan all.
        for v in req.headers.get_all(b"cookie"):
            # RFC 6265 §4.2.1: pairs are separated by "; ". Cookie values hold no
            # space or ';', so "NAME=" at the start or after one is a pair start.
            i = v.find(needle)
            while i >= 0:
                if i == 0 or v[i - 1] in b" \t;":
                    end = v.find(b";", i)
                    val = v[i + skip : end if end >= 0 else len(v)].strip()
                    if val:
                        return val
                i = v.find(needle, i + 1)
        return _client_ip(req)

    return key


def _key_fn(hash_on: str) -> _KeyFn:
    kind, sep, name = hash_on.partition(":")
    if hash_on == "client_ip":
        return _client_ip
    if sep and name and kind == "header":
        return _header_key(name)
    if sep and name and kind == "cookie":
        return _cookie_key(name)
    raise ValueError(f"hash_on must be client_ip, header:NAME or cookie:NAME, got {hash_on!r}")


class _HashBalancer(Balancer):
    """Shared part of the consistent-hash balancers: key extraction and fallback.

    The key is ``hash_on`` (client IP, a header or a cookie); a missing header or
    cookie falls back to the client IP, and no usable key at all to round robin.
    """

    __slots__ = ("_key", "_rr")

    def __init__(self, endpoints: Sequence[Endpoint], hash_on: str) -> None:
        super().__init__(endpoints)
        self._key = _key_fn(hash_on)
        self._rr: Callable[[], Endpoint] = itertools.cycle(self.endpoints).__next__


@functools.lru_cache(maxsize=4096)
def _ring_points(name: str, digests: int) -> tuple[int, ...]:
    """An endpoint's ring points: four 32-bit points per blake2b digest of ``"{name}-{k}"``.
    Cached: a discovery update rebuilds the ring of endpoints that mostly stayed."""
    out: list[int] = []
    for k in range(digests):
        digest = hashlib.blake2b(f"{name}-{k}".encode(), digest_size=16).digest()
        out.extend(int.from_bytes(digest[j : j + 4], "little") for j in range(0, 16, 4))
    return tuple(out)


class RingHashBalancer(_HashBalancer):
    """Ketama-style consistent hash ring.

    Each endpoint owns 160 points per unit of weight, placed by blake2b of
    ``"{endpoint}-{i}"`` (four 32-bit points per digest, as Ketama does with md5);
    a key goes to the owner of the first point at or after crc32(key). Adding one
    endpoint to n moves about 1/(n+1) of the keys, all of them to the new one.
    """

    __slots__ = ("_owners", "_points")

    def __init__(self, endpoints: Sequence[Endpoint], *, hash_on: str = "client_ip") -> None:
        super().__init__(endpoints, hash_on)
        # Each point is one int, (point, rank of the name, index) packed: sorting ints is several
        # times faster than sorting tuples (a discovery update rebuilds the ring), and the order is
        # the same: ties (vanishingly rare) are broken by name, then position, so every process agrees.
        names = [str(ep) for ep in self.endpoints]
        rank = {name: r for r, name in enumerate(sorted(set(names)))}
        bits = max(len(self.endpoints), 2).bit_length()
        ring: list[int] = []
        for idx, (name, w) in enumerate(zip(names, _reduced_weights(self.endpoints), strict=True)):
            tag = (rank[name] << bits) | idx
            ring.extend([(p << (2 * bits)) | tag for p in _ring_points(name, w * RING_POINTS_PER_WEIGHT // 4)])
        ring.sort()
        mask = (1 << bits) - 1
        self._points = [v >> (2 * bits) for v in ring]
        self._owners = [self.endpoints[v & mask] for v in ring]
        # Sentinel past every 32-bit hash wraps the ring without a branch in pick().
        self._points.append(1 << 32)
        self._owners.append(self._owners[0])

    def pick(self, req: PickKey) -> Endpoint:
        key = self._key(req)
        if key is None:
            return self._rr()
        return self._owners[_bisect_left(self._points, _crc32(key))]

    def pick_excluding(self, req: PickKey, exclude: Collection[Endpoint]) -> Endpoint | None:
        """The next endpoint clockwise on the ring that is not excluded."""
        key = self._key(req)
        if key is None or not exclude:
            return super().pick_excluding(req, exclude)
        if all(ep in exclude for ep in self.endpoints):
            return None
        owners = self._owners
        n = len(owners) - 1
        start = _bisect_left(self._points, _crc32(key))
        for step in range(n):
            ep = owners[(start + step) % n]
            if ep not in exclude:
                return ep
        return None  # unreachable: some endpoint is not excluded and owns a point


class MaglevBalancer(_HashBalancer):
    """Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4).

    Each endpoint walks its own permutation of the table (``offset`` and ``skip``
    from blake2b of its name) and the endpoints take turns claiming their next free
    slot until the table is full; weights set how many turns each gets per round.
    A key goes to ``table[crc32(key) % size]``: one modulo and one index.
    """

    __slots__ = ("_size", "_table")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        hash_on: str = "client_ip",
        table_size: int = MAGLEV_TABLE_SIZE,
    ) -> None:
        super().__init__(endpoints, hash_on)
        if table_size < len(self.endpoints) or any(table_size % d == 0 for d in range(2, math.isqrt(table_size) + 1)):
            raise ValueError(f"maglev table size must be a prime >= the endpoint count, got {table_size}")
        self._size = m = table_size
        self._table = self._populate(m)

    def _populate(self, m: int) -> list[Endpoint]:
        eps = self.endpoints
        weights = _reduced_weights(eps)
        wmax = max(weights)
        offsets, skips = [], []
        for ep in eps:
            d = hashlib.blake2b(str(ep).encode(), digest_size=16, person=b"monolake-maglev").digest()
            offsets.append(int.from_bytes(d[:8], "little") % m)
            skips.append(int.from_bytes(d[8:], "little") % (m - 1) + 1)
        # pos[i] is the next slot in endpoint i's permutation (offset + j*skip) % m,
        # advanced by addition: this loop runs ~m log m times at build.
        pos = offsets
        credit = [0] * len(eps)
        owner = [-1] * m
        filled = 0
        while True:
            for i in range(len(eps)):
                # Integer credit: the heaviest endpoint claims one slot per round, the
                # others in proportion to their weight.
                credit[i] += weights[i]
                while credit[i] >= wmax:
                    credit[i] -= wmax
                    c, skip = pos[i], skips[i]
                    while owner[c] >= 0:
                        c += skip
                        if c >= m:
                            c -= m
                    owner[c] = i
                    c += skip
                    pos[i] = c - m if c >= m else c
                    filled += 1
                    if filled == m:
                        return [eps[k] for k in owner]

    def pick(self, req: PickKey) -> Endpoint:
        key = self._key(req)
        if key is None:
            return self._rr()
        return self._table[_crc32(key) % self._size]

    def pick_excluding(self, req: PickKey, exclude: Collection[Endpoint]) -> Endpoint | None:
        """The next table entry after the key's slot whose endpoint is not excluded."""
        key = self._key(req)
        if key is None or not exclude:
            return super().pick_excluding(req, exclude)
        if all(ep in exclude for ep in self.endpoints):
            return None
        table, m = self._table, self._size
        start = _crc32(key) % m
        for step in range(m):
            ep = table[(start + step) % m]
            if ep not in exclude:
                return ep
        return None  # unreachable: every endpoint owns at least one slot

    def statistics(self) -> dict[str, int]:
        """Table slots owned per endpoint (``str(endpoint)`` → count)."""
        counts: dict[str, int] = {str(ep): 0 for ep in self.endpoints}
        for ep in self._table:
            counts[str(ep)] += 1
        return counts


class EmptyBalancer(Balancer):
    """The balancer of a cluster whose discovery found no endpoint (yet): every pick raises
    ``Overloaded``, which the server answers 503."""

    __slots__ = ("_why",)

    def __init__(self, cluster: str) -> None:
        # No endpoint: the base class's checks would refuse it.
        self.endpoints = ()
        self._why = f"cluster {cluster} has no endpoints"

    def pick(self, req: PickKey) -> Endpoint:
        raise Overloaded(self._why)

    def pick_excluding(self, req: PickKey, exclude: Collection[Endpoint]) -> Endpoint | None:
        return None


def make_balancer(
    kind: str, endpoints: Sequence[Endpoint], *, hash_on: str = "client_ip", hash_algorithm: str = "ring"
) -> Balancer:
    """Build the balancer a cluster's ``load_balancer`` names.

    Raises ValueError for an unknown kind, hash_on or hash_algorithm, or no endpoints.
    """
    if kind == "round_robin":
        return RoundRobinBalancer(endpoints)
    if kind == "weighted_round_robin":
        return WeightedRoundRobinBalancer(endpoints)
    if kind == "random":
        return RandomBalancer(endpoints)
    if kind == "least_request":
        return LeastRequestBalancer(endpoints)
    if kind == "consistent_hash":
        if hash_algorithm == "ring":
            return RingHashBalancer(endpoints, hash_on=hash_on)
        if hash_algorithm == "maglev":
            return MaglevBalancer(endpoints, hash_on=hash_on)
        raise ValueError(f"hash_algorithm must be ring or maglev, got {hash_algorithm!r}")
    raise ValueError(
        "load_balancer must be round_robin, weighted_round_robin, random, least_request or "
        f"consistent_hash, got {kind!r}"
    )
