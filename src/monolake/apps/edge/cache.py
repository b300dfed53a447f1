"""``cache``: a bounded in-memory response cache, per worker.

Entries are keyed by host + path + query (``example.com/img/a.png?v=2``) and, when the
stored response has a ``Vary``, by the request values of the headers it names. Only GET
responses are stored; a HEAD is answered from a stored GET. What is stored and for how
long follows the response (RFC 9111 for a shared cache): ``s-maxage``, then ``max-age``,
then ``Expires`` (against ``Date``), then ``default_ttl``; the upstream's ``Age`` counts
against it. Not stored: ``no-store``, ``private`` and ``no-cache`` responses, ``Vary: *``,
``Set-Cookie``, statuses not in ``statuses``, bodies over ``max_entry_bytes``, and anything
for a request with ``Authorization`` or ``Cache-Control: no-store``.

A request with ``Cache-Control: no-cache`` (or ``max-age=0``, or ``Pragma: no-cache``) is
not answered from the cache: it goes upstream and its response replaces the entry. Going
upstream for a stored entry, the request carries its ``ETag``/``Last-Modified`` as
``If-None-Match``/``If-Modified-Since`` (when the client sent no conditions of its own); a 304
makes the entry fresh again and the client gets it as ``REVALIDATED``. An
``If-None-Match`` matching a stored 200's ``ETag`` is answered 304. A successful POST, PUT,
DELETE or PATCH drops what is stored for its URL.

A stale entry inside its stale-while-revalidate window (the response's
``stale-while-revalidate=N``, else ``stale_while_revalidate``) is served as ``STALE`` and
one background request refreshes it (``must-revalidate`` and ``proxy-revalidate``
responses are never served stale). Concurrent misses for one key wait for the first
one's response (at most ``lock_timeout``) and are answered from the cache when it is
stored; otherwise they go upstream themselves.

A streamed body is captured as it flows to the first client (each chunk is forwarded
at once, with the same backpressure); past ``max_entry_bytes`` the capture stops and
the response is not stored. The cache is bounded by ``max_bytes`` and ``max_entries``,
least recently used first out. Responses get ``Age`` and ``X-Cache: HIT|MISS|STALE|BYPASS``
(``header``; ``REVALIDATED`` after a 304). ``POST /cache/purge`` on the admin endpoint drops entries by key prefix
in every worker (``purge_all``).

The background refresh of a route-level cache goes to the route's upstream through its
layers, with its path rewrite and request headers; the server's upstream filters and
X-Forwarded-* are not applied to it. At server level (before routing) a stale entry is
refetched in line instead.
"""

from __future__ import annotations

import asyncio
import calendar
import email.utils
import logging
import time
import weakref
from collections import OrderedDict
from typing import Any

import msgspec

from ...core._body import Body
from ...core.proto.http1 import Headers, Request, Response
from ...core.service import Context, ContextSlot
from ..proxy._filters import HttpFilter
from ._base import ArgError

log = logging.getLogger("monolake.cache")

DEFAULT_STATUSES = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501]


class CacheArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    max_bytes: int = 64 * 1024 * 1024
    """Bytes of bodies and headers one worker keeps (each worker has its own cache)."""
    max_entry_bytes: int = 1024 * 1024
    """Bytes: a larger response is not stored (a streamed one stops being captured there)."""
    max_entries: int = 10000
    """Entries one worker keeps."""
    default_ttl: float = 0.0
    """Seconds a response without ``max-age``, ``s-maxage`` or ``Expires`` stays fresh; 0: such
    responses are not stored."""
    stale_while_revalidate: float = 0.0
    """Seconds a stale entry is still served while one background request refreshes it, for
    responses without their own ``stale-while-revalidate``."""
    lock_timeout: float = 5.0
    """Seconds concurrent misses for one key wait for the first one's response before going
    upstream themselves."""
    statuses: list[int] = msgspec.field(default_factory=lambda: list(DEFAULT_STATUSES))
    """Response statuses stored."""
    header: str = "X-Cache"
    """Response header saying HIT, MISS, STALE or BYPASS; "" for none."""


class Entry:
    """A stored response: status, header block (``Name: value\\r\\n`` lines), body and freshness."""

    __slots__ = (
        "block",
        "body",
        "etag",
        "fresh_until",
        "size",
        "stale_until",
        "status",
        "stored",
        "swr",
        "ttl",
        "validators",
    )

    def __init__(
        self,
        status: int,
        block: bytes,
        body: bytes,
        stored: float,
        ttl: float,
        swr: float,
        etag: bytes | None,
        validators: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.status = status
        self.ttl = ttl
        self.swr = swr
        self.validators = validators
        """``If-None-Match`` / ``If-Modified-Since`` to revalidate it with upstream."""
        self.etag = etag
        """The opaque tag of the ``ETag`` (``W/`` and quotes kept off), for ``If-None-Match``."""
        self.block = block
        self.body = body
        self.stored = stored
        """Monotonic time the response was current (its upstream ``Age`` already subtracted)."""
        self.fresh_until = stored + ttl
        self.stale_until = self.fresh_until + swr
        self.size = len(block) + len(body) + 200  # + the objects around them, roughly


Key = tuple[bytes, tuple[bytes | None, ...]]


class Plan:
    """How a storable response is kept: its status, the request headers it varies on, its header
    block, seconds fresh and stale-while-revalidate, and the upstream's ``Age``."""

    __slots__ = ("age", "block", "etag", "status", "swr", "ttl", "validators", "vary")

    def __init__(
        self,
        status: int,
        vary: tuple[bytes, ...],
        block: bytes,
        ttl: float,
        swr: float,
        age: float,
        etag: bytes | None = None,
        validators: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.status = status
        self.etag = etag
        self.validators = validators
        self.vary = vary
        self.block = block
        self.ttl = ttl
        self.swr = swr
        self.age = age


class _State:
    """A request's cache state between its request and response phases."""

    __slots__ = ("base", "capture", "done", "headers", "key", "leader", "stale", "word")

    def __init__(
        self,
        base: bytes,
        key: Key,
        headers: Headers,
        capture: bool,
        leader: asyncio.Future[None] | None,
        word: bytes,
    ) -> None:
        self.word = word
        """What the response's X-Cache says: MISS or BYPASS."""
        self.stale: Entry | None = None
        """The stored entry this request asks upstream to confirm (a 304 makes it fresh again)."""
        self.base = base
        self.key = key
        self.headers = headers
        """The request's headers, for the values of what the response varies on."""
        self.capture = capture
        """Store the response if it is cacheable (a GET that was not a bypass)."""
        self.leader = leader
        """Set for the request others wait for: resolved once its response is stored or not."""
        self.done = False


STATE: ContextSlot[_State] = ContextSlot("cache_state", _State, "The cache filter's state for this request.")

_HOP = frozenset({b"age", b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"trailer"})

_caches: weakref.WeakSet[Cache] = weakref.WeakSet()


def statistics() -> dict[str, int]:
    """This process's caches together: lookups by result (counted since start), bytes, entries."""
    out = {"hit": 0, "miss": 0, "stale": 0, "revalidated": 0, "bytes": 0, "entries": 0}
    for c in list(_caches):
        out["hit"] += c.hits
        out["miss"] += c.misses
        out["stale"] += c.stale
        out["revalidated"] += c.revalidations
        out["bytes"] += c.size
        out["entries"] += len(c.entries)
    return out


def purge_all(prefix: str) -> int:
    """Drop, in every cache of this process, the entries whose key starts with ``prefix``
    ("*": all). Returns how many were dropped."""
    n = sum(c.purge(prefix) for c in list(_caches))
    log.info("cache: purged %d entries for %r", n, prefix)
    return n


def _directives(value: bytes | None) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    if not value:
        return out
    for item in value.split(b","):
        name, _, arg = item.partition(b"=")
        name = name.strip().lower()
        if name:
            out[name] = arg.strip().strip(b'"')
    return out


def _seconds(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return float(n) if n >= 0 else None


def _http_date(value: bytes | None) -> float | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate(value.decode("latin-1"))
    except (ValueError, UnicodeDecodeError):
        return None
    return float(calendar.timegm(parsed)) if parsed is not None else None


class Cache(HttpFilter):
    """The response cache; see the module docstring."""

    Args = CacheArgs

    def __init__(self, args: CacheArgs) -> None:
        for key in ("max_bytes", "max_entry_bytes", "max_entries"):
            if getattr(args, key) < 1:
                raise ArgError(key, "must be >= 1")
        if args.max_entry_bytes > args.max_bytes:
            raise ArgError("max_entry_bytes", f"must be <= max_bytes ({args.max_bytes})")
        for key in ("default_ttl", "stale_while_revalidate"):
            if getattr(args, key) < 0:
                raise ArgError(key, "must be >= 0 (seconds)")
        if args.lock_timeout <= 0:
            raise ArgError("lock_timeout", "must be > 0 (seconds)")
        for i, s in enumerate(args.statuses):
            if not 200 <= s <= 599:
                raise ArgError(f"statuses[{i}]", f"must be a final status (200..599), got {s}")
        h = args.header.strip()
        if h and (not h.isascii() or any(c in h for c in ' :\t\r\n"(),/;<=>?@[\\]{}')):
            raise ArgError("header", f"not a header name: {args.header!r}")
        self.max_bytes = args.max_bytes
        self.max_entry_bytes = args.max_entry_bytes
        self.max_entries = args.max_entries
        self.default_ttl = args.default_ttl
        self.swr = args.stale_while_revalidate
        self.lock_timeout = args.lock_timeout
        self.statuses = frozenset(args.statuses)
        self.header = h.encode()
        self.lheader = self.header.lower()
        self.lines = {
            w: (self.header + b": " + w + b"\r\n") if h else b""
            for w in (b"HIT", b"MISS", b"STALE", b"BYPASS", b"REVALIDATED")
        }
        self.entries: OrderedDict[Key, Entry] = OrderedDict()
        self.vary: dict[bytes, tuple[bytes, ...]] = {}
        """Per base key, the request headers its stored responses vary on (lowercased)."""
        self.pending: dict[Key, asyncio.Future[None]] = {}
        self.refreshing: set[Key] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.size = 0
        self.hits = self.misses = self.stale = self.revalidations = 0
        self.waiting = 0
        """Requests waiting now for another's response (coalesced misses)."""
        _caches.add(self)

    # -- the store ---------------------------------------------------------------

    def key_of(self, base: bytes, headers: Headers) -> Key:
        names = self.vary.get(base)
        if not names:
            return (base, ())
        return (base, tuple(headers.get(n) for n in names))

    def store(self, base: bytes, headers: Headers, plan: Plan, data: bytes) -> None:
        """Keep ``data`` as the response ``plan`` describes, for the request ``headers``."""
        names = plan.vary
        if self.vary.get(base, ()) != names:
            # The upstream changed what it varies on: the old variants are keyed wrongly.
            self._drop_base(base)
            if names:
                self.vary[base] = names
            else:
                self.vary.pop(base, None)
        key: Key = (base, tuple(headers.get(n) for n in names))
        now = time.monotonic()
        entry = Entry(plan.status, plan.block, data, now - plan.age, plan.ttl, plan.swr, plan.etag, plan.validators)
        entries = self.entries
        old = entries.pop(key, None)
        if old is not None:
            self.size -= old.size
        entries[key] = entry
        self.size += entry.size
        while self.size > self.max_bytes or len(entries) > self.max_entries:
            _, gone = entries.popitem(last=False)
            self.size -= gone.size
        if len(self.vary) > 2 * self.max_entries:
            alive = {k[0] for k in entries}
            self.vary = {b: n for b, n in self.vary.items() if b in alive}

    def invalidate(self, base: bytes) -> None:
        """Drop what is stored for ``base`` (every variant)."""
        if base in self.vary:
            self._drop_base(base)
            return
        gone = self.entries.pop((base, ()), None)
        if gone is not None:
            self.size -= gone.size

    def _drop_base(self, base: bytes) -> None:
        for k in [k for k in self.entries if k[0] == base]:
            self.size -= self.entries.pop(k).size

    def purge(self, prefix: str) -> int:
        """Drop the entries whose key starts with ``prefix`` ("*": all); how many were dropped."""
        if prefix == "*":
            n = len(self.entries)
            self.entries.clear()
            self.vary.clear()
            self.size = 0
            return n
        p = prefix.encode("latin-1", "replace")
        gone = [k for k in self.entries if k[0].startswith(p)]
        for k in gone:
            self.size -= self.entries.pop(k).size
        return len(gone)

    # -- the request phase -------------------------------------------------------

    def _answer(self, req: Request, entry: Entry, now: float, word: bytes) -> Response:
        block = entry.block + b"Age: %d\r\n" % int(now - entry.stored) + self.lines[word]
        etag = entry.etag
        if etag is not None and entry.status == 200:
            inm = req.headers.get(b"if-none-match")
            if inm is not None and _matches(inm, etag):
                return Response(304, Headers(block=block), None)  # the client's copy is current
        resp = Response(entry.status, Headers(block=block), entry.body)
        if req.method == b"HEAD":
            resp.content_length = len(entry.body)
        return resp

    async def request_filter(self, req: Request, ctx: Context) -> Response | None:
        method = req.method
        headers = req.headers
        base = req.host + req.path + (b"?" + req.query if req.query else b"")
        if method != b"GET" and method != b"HEAD":
            if method in _UNSAFE:  # its success makes what is stored for the URL out of date
                STATE.set(ctx, _State(base, (base, ()), headers, False, None, b""))
            return None
        cc = headers.get(b"cache-control")
        if headers.get(b"authorization") is not None or (cc is not None and b"no-store" in cc.lower()):
            STATE.set(ctx, _State(base, (base, ()), headers, False, None, b"BYPASS"))
            return None
        key = self.key_of(base, headers)
        revalidate = (cc is not None and _wants_refetch(cc)) or (cc is None and headers.get(b"pragma") == b"no-cache")
        now = time.monotonic()
        if not revalidate:
            entry = self.entries.get(key)
            if entry is not None:
                if now < entry.fresh_until:
                    self.entries.move_to_end(key)
                    self.hits += 1
                    return self._answer(req, entry, now, b"HIT")
                if now < entry.stale_until and ctx.route is not None:
                    self.stale += 1
                    if key not in self.refreshing and key not in self.pending:
                        self._refresh(req, ctx, key, entry)
                    return self._answer(req, entry, now, b"STALE")
            waiter = self.pending.get(key)
            if waiter is not None:
                self.waiting += 1
                try:
                    async with asyncio.timeout(self.lock_timeout):
                        await asyncio.shield(waiter)
                except TimeoutError:
                    if self.pending.get(key) is waiter:  # its request is stuck: stop waiting on it
                        del self.pending[key]
                        waiter.cancel()
                finally:
                    self.waiting -= 1
                key = self.key_of(base, headers)  # the response may have named a Vary
                entry = self.entries.get(key)
                if entry is not None and time.monotonic() < entry.fresh_until:
                    self.entries.move_to_end(key)
                    self.hits += 1
                    return self._answer(req, entry, time.monotonic(), b"HIT")
        self.misses += 1
        leader: asyncio.Future[None] | None = None
        if method == b"GET" and key not in self.pending:
            leader = self.pending[key] = asyncio.get_running_loop().create_future()
        state = _State(base, key, headers, method == b"GET", leader, b"MISS")
        if method == b"GET":
            stale = self.entries.get(key)
            if stale is not None and stale.validators:
                names = headers.names()
                if b"if-none-match" not in names and b"if-modified-since" not in names and b"range" not in names:
                    # Ask upstream whether the stored copy is still good: a 304 costs no body.
                    for name, value in stale.validators:
                        headers.add(name, value)
                    state.stale = stale
        STATE.set(ctx, state)
        return None

    def _refresh(self, req: Request, ctx: Context, key: Key, entry: Entry) -> None:
        """Refetch ``key`` in the background through the matched route (one at a time per key)."""
        route = ctx.route
        names = req.headers.names()
        pairs = [
            p
            for p, n in zip(req.headers.pairs(), names, strict=True)
            if n not in (b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"range")
        ]
        original = Headers(list(pairs))
        pairs.extend(entry.validators)
        again = Request(
            b"GET", req.target, Headers(pairs), version=b"1.1", host=req.host, raw_host=req.raw_host, body=None
        )
        again.ctx = Context(ctx.peer, ctx.server, ctx.start)
        again.ctx.route = route
        again.ctx.cluster = ctx.cluster
        self.refreshing.add(key)
        task = asyncio.get_running_loop().create_task(self._refetch(route, again, original, key, entry))
        self.tasks.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self.tasks.discard)

    async def _refetch(self, route: Any, req: Request, original: Headers, key: Key, entry: Entry) -> None:
        try:
            if route.prefix is not None:
                route.rewrite_path(req)
            if route.request_ops is not None:
                route.request_ops.apply(req.headers)
            edge = route.edge
            resp = await (edge.service(req) if edge is not None else route.call(req))
            if route.response_ops is not None:
                route.response_ops.apply(resp.headers)
            body = resp.body
            if resp.status == 304 and entry.validators:
                if isinstance(body, Body):
                    body.cancel()
                self.revalidated(entry, resp)
                return
            if isinstance(body, Body):
                try:
                    data = await body.read_all(self.max_entry_bytes)
                except Exception:
                    body.cancel()
                    return
            else:
                data = body if isinstance(body, bytes) else b""
            plan = self.plan(resp)
            if plan is not None and len(data) <= self.max_entry_bytes:
                self.store(key[0], original, plan, data)
        except Exception as exc:
            log.warning("cache: refreshing %s failed: %s: %s", key[0].decode("latin-1"), type(exc).__name__, exc)
        finally:
            self.refreshing.discard(key)

    # -- the response phase ------------------------------------------------------

    def lifetime(
        self, headers: Headers, names: list[bytes], cc: dict[bytes, bytes]
    ) -> tuple[float | None, float, float]:
        """(seconds fresh, or None when the response does not say; stale-while-revalidate seconds;
        the upstream's ``Age``)."""
        ttl: float | None = None
        swr = self.swr
        if cc:
            ttl = _seconds(cc.get(b"s-maxage"))
            if ttl is None:
                ttl = _seconds(cc.get(b"max-age"))
            if b"must-revalidate" in cc or b"proxy-revalidate" in cc:
                swr = 0.0
            else:
                own = _seconds(cc.get(b"stale-while-revalidate"))
                if own is not None:
                    swr = own
        if ttl is None and b"expires" in names:
            expires = _http_date(headers.get(b"expires"))
            date = _http_date(headers.get(b"date"))
            ttl = max(0.0, expires - (date if date is not None else time.time())) if expires is not None else 0.0
        age = (_seconds(headers.get(b"age")) or 0.0) if b"age" in names else 0.0
        return ttl, swr, age

    def revalidated(self, entry: Entry, resp: Response) -> None:
        """Upstream answered 304 to our validators: ``entry`` is fresh again, for as long as the
        304 says (or as long as before)."""
        headers = resp.headers
        names = headers.names()
        cc = _directives(headers.get(b"cache-control"))
        ttl, swr, age = self.lifetime(headers, names, cc)
        if ttl is None:
            ttl, swr = entry.ttl, entry.swr
        entry.stored = time.monotonic() - age
        entry.ttl, entry.swr = ttl, swr
        entry.fresh_until = entry.stored + ttl
        entry.stale_until = entry.fresh_until + swr

    def plan(self, resp: Response) -> Plan | None:
        """How to keep ``resp``; None if it must not be stored."""
        if resp.status not in self.statuses:
            return None
        headers = resp.headers
        wire = headers.block  # as the upstream sent it (hop-by-hop lines removed), if untouched
        names = headers.names()
        if b"set-cookie" in names:
            return None
        pairs = headers.pairs()
        cc = _directives(pairs[names.index(b"cache-control")][1]) if b"cache-control" in names else _NONE
        if b"no-store" in cc or b"private" in cc or b"no-cache" in cc:
            return None
        ttl, swr, age = self.lifetime(headers, names, cc)
        if ttl is None:
            ttl = self.default_ttl
        if ttl - age <= 0:
            return None
        vary: list[bytes] = []
        for v in headers.get_all(b"vary") if b"vary" in names else ():
            for token in v.split(b","):
                t = token.strip().lower()
                if t == b"*":
                    return None
                if t and t not in vary:
                    vary.append(t)
        etag: bytes | None = None
        validators: tuple[tuple[bytes, bytes], ...] = ()
        if b"etag" in names:
            tag = pairs[names.index(b"etag")][1]
            etag = _opaque(tag)
            validators = ((b"If-None-Match", tag),)
        if b"last-modified" in names:
            validators += ((b"If-Modified-Since", pairs[names.index(b"last-modified")][1]),)
        lheader = self.lheader
        if wire is not None and b"age" not in names and lheader not in names:
            return Plan(resp.status, tuple(vary), wire, ttl, swr, age, etag, validators)
        block = b"".join(
            n + b": " + v + b"\r\n" for (n, v), ln in zip(pairs, names, strict=True) if ln not in _HOP and ln != lheader
        )
        return Plan(resp.status, tuple(vary), block, ttl, swr, age, etag, validators)

    def response_filter(self, resp: Response, ctx: Context) -> None:
        state = STATE.get(ctx, None)
        if state is None:
            return
        if not state.word:  # an unsafe method
            if resp.status < 400:
                self.invalidate(state.base)
            return
        stale = state.stale
        if stale is not None and resp.status == 304:
            # Our validators matched: answer with the stored response, fresh again.
            self.revalidations += 1
            self.revalidated(stale, resp)
            if isinstance(resp.body, Body):
                resp.body.cancel()
            resp.status = stale.status
            resp.reason = b""
            resp.headers = Headers(block=stale.block + b"Age: 0\r\n" + self.lines[b"REVALIDATED"])
            resp.body = stale.body
            resp.content_length = len(stale.body)
            self.finish(state)
            return
        plan = self.plan(resp) if state.capture else None
        if self.header:
            headers = resp.headers
            if self.lheader in headers.names():
                headers.remove(self.lheader)
            headers.add(self.header, state.word)
        if plan is None:
            self.finish(state)
            return
        body = resp.body
        if isinstance(body, Body):
            if body.length is not None and body.length > self.max_entry_bytes:
                self.finish(state)
                return
            resp.body = _Tee(self, state, plan, body).out
            return
        data = body if isinstance(body, bytes) else b""
        if len(data) <= self.max_entry_bytes:
            self.keep(state, plan, data)
        self.finish(state)

    def keep(self, state: _State, plan: Plan, data: bytes) -> None:
        self.store(state.base, state.headers, plan, data)

    def finish(self, state: _State) -> None:
        """The leader's response was stored or will not be: wake the requests waiting on it."""
        if state.done:
            return
        state.done = True
        leader = state.leader
        if leader is not None:
            if self.pending.get(state.key) is leader:
                del self.pending[state.key]
            if not leader.done():
                leader.set_result(None)

    def logging(self, req: Request, resp: Response, ctx: Context) -> None:
        state = STATE.get(ctx, None)
        if state is not None and not state.done:
            self.finish(state)  # the upstream call failed, or the client went away mid-body


_NONE: dict[bytes, bytes] = {}

_UNSAFE = frozenset({b"POST", b"PUT", b"DELETE", b"PATCH"})


def _opaque(etag: bytes | None) -> bytes | None:
    if not etag:
        return None
    e = etag.strip()
    if e.startswith(b"W/"):
        e = e[2:]
    return e.strip(b'"')


def _matches(if_none_match: bytes, etag: bytes) -> bool:
    """``If-None-Match`` against a stored tag (weak comparison, RFC 9110 §13.1.2)."""
    if if_none_match.strip() == b"*":
        return True
    return any(_opaque(t) == etag for t in if_none_match.split(b","))


def _wants_refetch(cc: bytes) -> bool:
    d = _directives(cc)
    return b"no-cache" in d or d.get(b"max-age") == b"0"


class _Tee:
    """Forwards a streamed body chunk by chunk and keeps a copy up to the entry limit."""

    __slots__ = ("cache", "chunks", "out", "plan", "size", "state", "up")

    def __init__(self, cache: Cache, state: _State, plan: Plan, up: Body) -> None:
        self.cache = cache
        self.state = state
        self.plan = plan
        self.up = up
        self.chunks: list[bytes] | None = []
        self.size = 0
        self.out = Body(self, up.length)
        up.pipe(self)

    def write(self, data: bytes) -> None:
        chunks = self.chunks
        if chunks is not None:
            self.size += len(data)
            if self.size > self.cache.max_entry_bytes:
                self.chunks = None
                self.cache.finish(self.state)
            else:
                chunks.append(data)
        self.out.feed(data)

    def end(self) -> None:
        chunks = self.chunks
        self.out.trailers = self.up.trailers
        if chunks is not None:
            self.chunks = None
            self.cache.keep(self.state, self.plan, b"".join(chunks))
            self.cache.finish(self.state)
        self.out.feed_eof()

    def abort(self, exc: BaseException) -> None:
        self.chunks = None
        self.cache.finish(self.state)
        self.out.feed_error(exc)

    def pause_body(self) -> None:
        self.up.pause()

    def resume_body(self) -> None:
        self.up.resume()

    def cancel_body(self) -> None:
        self.chunks = None
        self.cache.finish(self.state)
        self.up.cancel()
