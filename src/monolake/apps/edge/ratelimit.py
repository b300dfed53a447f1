"""Rate limits: token buckets per key, per worker or shared by a fleet through Redis.

Built-ins ``rate_limit`` (``RateLimit``) and, for tcp servers, ``connection_limit``
(``ConnectionLimit``); their settings are ``RateLimitArgs`` and ``ConnectionLimitArgs``.

``rate_limit`` with ``requests = 100, period = 1`` lets each key make ``requests`` per ``period``
seconds, with bursts up to ``burst`` (default ``requests``). The key is the client IP
(``key = "ip"``: the peer, or the client an ``ip_rules`` filter before this one found behind
its ``trusted_proxies``), a request header (``"header:X-Api-Key"``; a request without it is
keyed by its IP), a JWT claim set by a ``Jwt`` filter listed before this one
(``"claim:sub"``; none: the IP), or ``"route"``: one bucket for everything the filter
sees (the whole server, or the route it is on).

Local limits (no ``redis``) live in each worker: the configured rate and burst are
divided by ``runtime.workers`` (the kernel spreads connections across workers, so
each sees about its share). The bucket state is two floats per key in a dict, the
clock is the request's own ``ctx.start``: a plain ``request_filter`` with no syscall and
no await. Idle keys (their bucket full again) are swept when the table reaches
``max_keys``; if every key is busy the table is cleared (a burst of new keys forgets
old debts rather than growing memory without bound).

Global limits (``redis = "redis://host:6379/0"``) keep one bucket per key in Redis,
updated by one Lua script (atomic, Redis's clock), so every monolake instance and
worker using that Redis shares it. The filter is then ``async``. When Redis does not
answer within ``redis_timeout``, ``fail = "open"`` lets the request through and
``"closed"`` answers 503; either way a warning is logged, at most once per 10 s. After
a failure Redis is left alone for ``redis_retry`` seconds (the fail mode applies at
once), so an unreachable Redis does not add ``redis_timeout`` to every request.

A refused request gets 429 with ``Retry-After`` and the IETF draft's
``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` and
``RateLimit-Policy`` headers; with ``headers = true`` (the ``*Headers`` variants) passing
responses get them too.

``ConnectionLimit`` is the ``proxy_type = "tcp"`` filter: new connections per second
and concurrent connections per client IP (per worker: both divided by the workers,
at least 1 each).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Literal

import msgspec

from ...core.proto.http1 import Request, Response
from ...core.service import Context, ContextSlot
from ..proxy._filters import HttpFilter, TcpFilter
from ._shared import CLAIMS, ArgError, answer, outage_log, settings_of, workers
from ._slots import CLIENT_ADDR

log = logging.getLogger("monolake.edge.ratelimit")

_IP, _HEADER, _CLAIM, _ROUTE = range(4)
_ROUTE_KEY = "*"


def _client(ctx: Context) -> str:
    """The client's address: an ``ip_rules`` filter's behind trusted proxies, else the peer."""
    user = ctx.user
    if user is not None:
        addr = user.get(CLIENT_ADDR)
        if addr is not None:
            return addr  # type: ignore[no-any-return]
    return ctx.peer


def _parse_key(key: str) -> tuple[int, str]:
    if key == "ip":
        return _IP, ""
    if key == "route":
        return _ROUTE, ""
    kind, sep, name = key.partition(":")
    if sep and name and kind == "header":
        return _HEADER, name.lower()
    if sep and name and kind == "claim":
        return _CLAIM, name
    raise ArgError("key", f'must be "ip", "route", "header:NAME" or "claim:NAME", got {key!r}')


def _positive(name: str, value: float) -> float:
    if not value > 0 or math.isinf(value):
        raise ArgError(name, f"must be a number > 0, got {value!r}")
    return float(value)


def _workers_of(n: int | None) -> int:
    if n is None:
        return workers()
    if n < 1:
        raise ArgError("workers", f"must be >= 1, got {n!r}")
    return n


class RateLimitArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Settings of ``rate_limit`` (``RateLimit``)."""

    requests: float
    """Requests allowed per ``period``: for the whole fleet with ``redis``, else for this server (each
    worker enforces its share)."""
    period: float = 1.0
    """Seconds."""
    burst: float | None = None
    """Requests that may come at once (the bucket's size); default: ``requests``."""
    key: str = "ip"
    """What gets its own bucket: "ip", "header:NAME", "claim:NAME" (a Jwt filter's claim) or "route"."""
    redis: str | None = None
    """A redis:// (rediss://, unix://) URL: one bucket per key shared by every worker and instance."""
    fail: Literal["open", "closed"] = "open"
    """Redis not answering: "open" lets requests through, "closed" answers 503."""
    redis_timeout: float = 0.1
    """Seconds to wait for Redis per request."""
    redis_retry: float = 1.0
    """Seconds after a Redis failure during which requests get the fail mode without asking Redis."""
    prefix: str = "monolake:ratelimit:"
    """Prefix of the Redis keys (separates limits sharing one Redis)."""
    max_keys: int = 100_000
    """Keys remembered per worker (local limits)."""
    workers: int | None = None
    """Workers sharing a local limit; default: ``runtime.workers``."""
    headers: bool = False
    """Also send ``RateLimit-Limit``/``-Remaining``/``-Reset``/``-Policy`` on responses that passed (a
    local limit's Remaining is this worker's share times the workers)."""


class RateLimit(HttpFilter):
    """A token bucket per key; see the module docstring. With ``redis``, a ``RedisRateLimit``."""

    Args = RateLimitArgs

    def __new__(cls, args: RateLimitArgs | None = None, /, **kwargs: Any) -> RateLimit:
        if cls is not RateLimit:
            return super().__new__(cls)
        redis = args.redis if args is not None else kwargs.get("redis")
        headers = args.headers if args is not None else kwargs.get("headers")
        # The variants are classes, not flags: a plain local limit keeps its plain call and no
        # response_filter (only the phases a class defines are called).
        if redis:
            return super().__new__(RedisRateLimitHeaders if headers else RedisRateLimit)
        return super().__new__(RateLimitHeaders if headers else RateLimit)

    def __init__(self, args: RateLimitArgs | None = None, /, **kwargs: Any) -> None:
        a = self.args = settings_of(RateLimitArgs, args, kwargs)
        self.requests = _positive("requests", a.requests)
        self.period = _positive("period", a.period)
        self.burst_total = self.requests if a.burst is None else _positive("burst", a.burst)
        if self.burst_total < 1:
            raise ArgError("burst", f"must be >= 1, got {a.burst!r}")
        self.kind, self.name = _parse_key(a.key)
        self.key_text = a.key
        if a.max_keys < 1:
            raise ArgError("max_keys", f"must be >= 1, got {a.max_keys!r}")
        self.max_keys = a.max_keys
        n = _workers_of(a.workers) if a.redis is None else 1
        self.rate = self.requests / self.period / n
        """Tokens per second, this worker's share."""
        self.burst = max(1.0, self.burst_total / n)
        self.workers = n
        self.buckets: dict[Any, list[float]] = {}
        limit = str(int(self.requests) if self.requests.is_integer() else self.requests)
        window = str(int(self.period) if self.period.is_integer() else self.period)
        self._limit = limit.encode()
        self._policy = f"{limit};w={window}".encode()

    def key_of(self, req: Request, ctx: Context) -> Any:
        kind = self.kind
        if kind == _IP:
            user = ctx.user
            if user is not None:
                addr = user.get(CLIENT_ADDR)
                if addr is not None:
                    return addr
            return ctx.peer
        if kind == _ROUTE:
            return _ROUTE_KEY
        if kind == _HEADER:
            value = req.headers.get(self.name)
            return _client(ctx) if value is None else value
        claims = CLAIMS.get(ctx, None)
        value = None if claims is None else claims.get(self.name)
        return _client(ctx) if value is None else f"claim:{value}"

    def refuse(self, wait: float) -> Response:
        secs = str(max(1, math.ceil(wait))).encode()
        return answer(
            429,
            b"too many requests\n",
            [
                (b"Retry-After", secs),
                (b"RateLimit-Limit", self._limit),
                (b"RateLimit-Remaining", b"0"),
                (b"RateLimit-Reset", secs),
                (b"RateLimit-Policy", self._policy),
            ],
        )

    def request_filter(self, req: Request, ctx: Context) -> Response | None:
        key = self.key_of(req, ctx)
        now = ctx.start
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self.sweep(now)
            self.buckets[key] = [self.burst - 1.0, now]
            return None
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        return self.refuse((1.0 - tokens) / self.rate)

    def sweep(self, now: float) -> None:
        """Forget the keys whose bucket is full again; all of them if none is."""
        rate, burst = self.rate, self.burst
        idle = [k for k, (t, s) in self.buckets.items() if t + (now - s) * rate >= burst]
        if not idle:
            self.buckets.clear()
            return
        for k in idle:
            del self.buckets[k]


_STATE: ContextSlot[tuple[float, float]] = ContextSlot(
    "edge_rate_limit", tuple, "tokens left for the whole limit, seconds until the bucket is full"
)


def _add_headers(limit: RateLimit, resp: Response, ctx: Context) -> None:
    state = _STATE.get(ctx, None)
    if state is None:  # refused (or answered before this filter ran)
        return
    remaining, reset = state
    h = resp.headers
    h.set(b"RateLimit-Limit", limit._limit)
    h.set(b"RateLimit-Remaining", str(max(0, int(remaining))).encode())
    h.set(b"RateLimit-Reset", str(max(0, math.ceil(reset))).encode())
    h.set(b"RateLimit-Policy", limit._policy)


class RateLimitHeaders(RateLimit):
    """A local ``RateLimit`` with ``headers = true``: passing responses carry the RateLimit headers."""

    def response_filter(self, resp: Response, ctx: Context) -> None:
        _add_headers(self, resp, ctx)

    def request_filter(self, req: Request, ctx: Context) -> Response | None:
        out = RateLimit.request_filter(self, req, ctx)
        if out is None:
            tokens = self.buckets[self.key_of(req, ctx)][0]
            _STATE.set(ctx, (tokens * self.workers, (self.burst - tokens) / self.rate))
        return out


LUA_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 't', 's')
local tokens = tonumber(v[1])
local stamp = tonumber(v[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 's', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait), tostring(tokens)}
"""
"""One token bucket in a Redis hash (t: tokens, s: stamp), taken atomically with Redis's clock;
the key expires once the bucket would be full again. Returns {allowed, seconds to wait, tokens left}."""


class RedisRateLimit(RateLimit):
    """A fleet-wide token bucket per key in Redis (``RateLimit(redis=...)``); async."""

    def __init__(self, args: RateLimitArgs | None = None, /, **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        a = self.args
        url = a.redis
        if url is None or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ArgError("redis", f"must be a redis://, rediss:// or unix:// URL, got {url!r}")
        try:
            import redis.asyncio  # noqa: F401  (checked at build time, so a missing extra is a config error)
        except ImportError:
            raise ArgError("redis", "needs the redis package: pip install 'monolake[edge]'") from None
        self.url = url
        self.fail_open = a.fail == "open"
        self.timeout = _positive("redis_timeout", a.redis_timeout)
        self.retry = _positive("redis_retry", a.redis_retry)
        self.down_until = float("-inf")
        """Loop time until which Redis is not asked (set by a failure)."""
        self.prefix = a.prefix
        self.headers = a.headers
        self.args_lua = (repr(self.rate), repr(self.burst))
        self._client: Any = None
        self._script: Any = None
        self._down = outage_log(log, "rate limit store failures")

    def _connect(self) -> Any:
        # Made on first use, in the worker's loop (a client binds its connections to the loop).
        import redis.asyncio as aioredis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._script = self._client.register_script(LUA_TOKEN_BUCKET)
        return self._script

    def failed(self) -> Response | None:
        if self.fail_open:
            return None
        return answer(503, b"rate limit store unavailable\n", [(b"Retry-After", b"1")])

    async def request_filter(self, req: Request, ctx: Context) -> Response | None:  # type: ignore[override]
        if ctx.start < self.down_until:
            return self.failed()
        key = self.key_of(req, ctx)
        script = self._script or self._connect()
        try:
            async with asyncio.timeout(self.timeout):
                allowed, wait, tokens = await script(keys=[f"{self.prefix}{self.key_text}:{key}"], args=self.args_lua)
        except Exception as exc:  # redis errors, OSError, TimeoutError: the store is down
            self.down_until = ctx.start + self.retry
            self._down.log(
                "rate limit store %s unavailable (%s: %s): failing %s for %gs",
                self.url,
                type(exc).__name__,
                str(exc) or "timed out",
                "open" if self.fail_open else "closed",
                self.retry,
            )
            return self.failed()
        if allowed:
            if self.headers:
                left = float(tokens)
                _STATE.set(ctx, (left, (self.burst - left) / self.rate))
            return None
        return self.refuse(float(wait))


class RedisRateLimitHeaders(RedisRateLimit):
    """A Redis ``RateLimit`` with ``headers = true``: passing responses carry the RateLimit headers."""

    def response_filter(self, resp: Response, ctx: Context) -> None:
        _add_headers(self, resp, ctx)


_HELD: ContextSlot[str] = ContextSlot("edge_connection_limit", str, "the client IP a ConnectionLimit counted")


class ConnectionLimitArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Settings of ``connection_limit`` (``ConnectionLimit``, tcp servers)."""

    rate: float | None = None
    """New connections per second per client IP (each worker enforces its share)."""
    burst: float | None = None
    """New connections that may come at once; default: ``rate``."""
    concurrent: int | None = None
    """Connections open at once per client IP (each worker: its share, at least 1)."""
    max_keys: int = 100_000
    """Client IPs remembered per worker for ``rate``."""
    workers: int | None = None
    """Workers sharing the limits; default: ``runtime.workers``."""


class ConnectionLimit(TcpFilter):
    """New connections per second (``rate``, bursts of ``burst``) and ``concurrent`` connections
    per client IP, for a tcp server; this worker's share of each (divided by the workers)."""

    Args = ConnectionLimitArgs
    kinds = ("tcp",)

    def __init__(self, args: ConnectionLimitArgs | None = None, /, **kwargs: Any) -> None:
        a = settings_of(ConnectionLimitArgs, args, kwargs)
        if a.rate is None and a.concurrent is None:
            raise ArgError("rate", "set rate (connections per second) or concurrent (connections at once), or both")
        n = _workers_of(a.workers)
        self.buckets: RateLimit | None = None
        if a.rate is not None:
            rate = _positive("rate", a.rate)
            burst = rate if a.burst is None else _positive("burst", a.burst)
            self.buckets = RateLimit(RateLimitArgs(requests=rate, burst=burst, max_keys=a.max_keys, workers=n))
        self.concurrent = 0
        if a.concurrent is not None:
            if a.concurrent < 1:
                raise ArgError("concurrent", f"must be >= 1, got {a.concurrent!r}")
            self.concurrent = max(1, a.concurrent // n)
        self.open: dict[str, int] = {}

    def on_connect(self, peer: str, ctx: Context) -> bool:
        if self.concurrent and self.open.get(peer, 0) >= self.concurrent:
            return False
        if self.buckets is not None:
            b = self.buckets
            now = ctx.start
            bucket = b.buckets.get(peer)
            if bucket is None:
                if len(b.buckets) >= b.max_keys:
                    b.sweep(now)
                b.buckets[peer] = [b.burst - 1.0, now]
            else:
                tokens = min(b.burst, bucket[0] + (now - bucket[1]) * b.rate)
                bucket[1] = now
                if tokens < 1.0:
                    bucket[0] = tokens
                    return False
                bucket[0] = tokens - 1.0
        if self.concurrent:
            self.open[peer] = self.open.get(peer, 0) + 1
            _HELD.set(ctx, peer)
        return True

    def on_close(self, ctx: Context, stats: Any) -> None:
        peer = _HELD.get(ctx, None)
        if peer is None:
            return
        n = self.open.get(peer, 0) - 1
        if n > 0:
            self.open[peer] = n
        else:
            self.open.pop(peer, None)
