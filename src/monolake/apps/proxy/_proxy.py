"""The HTTP reverse proxy: the leaf service of an HTTP server's stack.

Per request: target normalisation → request filters → route → rewrites (path, Host, headers, X-Forwarded-*)
→ upstream request filters → forward → response rewrites → response filters. All
of it is plain calls except ``forward``, the single await. Everything that can be
decided from config (header bytes, prefixes, which filters run in which phase) is
decided in ``RouteRuntime.__init__`` and ``HttpProxy.__init__``, not per request.

Async filters. A phase with an ``async def`` filter has a non-empty ``_*_mixed``
tuple (and an empty plain one), so a phase costs one extra truth test when all its
filters are plain, and only a phase with an async filter awaits (``_run_mixed``).
An async filter runs within the server's ``request_timeout``, measured from the
request head: when it passes while the filter awaits, the request is answered 500
(``FilterError``, naming the filter), not 504, and no upstream is blamed; anything
else an async filter raises is a 500 naming it too. Sync filters raise as before
(CatchPanic: 500 and a log line).

Route filters and layers. A route with its own ``filters`` or ``layers`` has a
``RouteEdge`` (``route.edge``); the proxy then continues in ``_routed``, where each
phase runs the server's filters and then the route's, and the upstream call goes
through the route's layers. A route without them costs one ``is not None`` test.

Targets first, so filters, routes and the origin all see one spelling of a path:
an absolute-form target (``GET http://host/p HTTP/1.1``, RFC 9112 §3.2.2) becomes
origin-form and its authority replaces Host, for routing and upstream alike; then
the path is normalised (``proto._target``) when it holds ``%``, ``/.`` or ``//``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from ...core._body import Body
from ...core.client import Pool, UpstreamConnection
from ...core.errors import ReadTimeout, RemoteProtocolError, Source
from ...core.proto._target import normalize_path, split_absolute
from ...core.proto.http1 import Headers, Request, Response
from ...core.server._h2 import host_only
from ...core.service import Context, Factory, Layer, Replier, Service, Taken
from ..config import Cluster, Config, Forwarded, HeaderRewrite, Route, Server
from ..edge._slots import UPSTREAM_TIMES
from ..observe._accesslog import uses_connect_timing, uses_upstream_timing
from ._filters import MAYBE, Call, FilterError, Phases, call_kind, filter_name
from ._retry import RetryingCluster
from ._router import Router
from ._tunnel import connect_only, connect_settings, switch
from ._upstream import UpstreamCluster

Handler = Service[Request, Response]
"""An async ``handler(req) -> Response`` that answers a route itself."""


def _pairs(d: dict[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in d.items())


class HeaderOps:
    """A header rewrite with its bytes prepared."""

    __slots__ = ("add", "append", "append_names", "drop", "remove", "set", "set_names")

    def __init__(self, rw: HeaderRewrite) -> None:
        self.add = _pairs(rw.add)
        self.set = _pairs(rw.set)
        self.remove = frozenset(n.lower().encode("latin-1") for n in rw.remove)
        self.set_names = frozenset(n.lower() for n, _ in self.set)
        self.drop = tuple(self.remove | self.set_names)
        self.append = self.set + self.add
        self.append_names = [n.lower() for n, _ in self.append]

    def __bool__(self) -> bool:
        return bool(self.add or self.set or self.remove)

    def apply(self, headers: Headers) -> None:
        block = headers.block  # a local: mypy(c) would keep ``headers.block`` narrowed past remove()
        if block is not None:
            # An upstream response's wire block: names it does not hold cost no parse.
            for lname in self.drop:
                headers.remove(lname)
            if headers.block is not None:
                for name, value in self.append:
                    headers.add(name, value)
                return
        names = headers.names()
        for lname in self.drop:
            if lname in names:
                headers.remove(lname)
        raw = headers.pairs()
        raw.extend(self.append)
        names.extend(self.append_names)


class RouteRuntime:
    """A route, ready to serve: its cluster and its precomputed rewrites."""

    __slots__ = (
        "cluster",
        "connect",
        "edge",
        "handler",
        "host",
        "index",
        "name",
        "prefix",
        "replacement",
        "request_ops",
        "response_ops",
        "timeout",
    )

    def __init__(
        self,
        index: int,
        r: Route,
        cluster: UpstreamCluster | RetryingCluster | None,
        handler: Handler | None = None,
    ) -> None:
        self.index = index
        self.name = str(index)
        self.cluster = cluster
        self.handler = handler
        """Answers instead of forwarding (a gateway route); ``cluster`` is then None."""
        self.prefix: bytes | None = None
        self.replacement = b""
        if r.path is not None and (r.strip_prefix or r.prefix_rewrite is not None):
            self.prefix = r.path.encode()
            self.replacement = (r.prefix_rewrite or "").encode()
        # None: keep the client's Host; b"": the endpoint's authority; else literal.
        self.host: bytes | None = (
            None if r.host_header == "keep" else b"" if r.host_header == "upstream" else r.host_header.encode("latin-1")
        )
        self.request_ops = HeaderOps(r.request_headers) if r.request_headers != HeaderRewrite() else None
        self.response_ops = HeaderOps(r.response_headers) if r.response_headers != HeaderRewrite() else None
        self.timeout = r.timeout
        self.connect = connect_settings(r)
        self.edge: RouteEdge | None = None
        """The route's own filters and layers; None (the common case) keeps the proxy's plain path."""

    async def call(self, req: Request) -> Response:
        """The route's upstream call (a tunnel, its handler, or a forward within its timeout): the
        leaf a route's layers wrap. The plain path inlines it."""
        if req.upgrade is not None:
            return await switch(req, self)
        if self.handler is not None:
            return await self.handler(req)
        if self.timeout is None:
            return await self.cluster.forward(req, self.host)  # type: ignore[union-attr]  # set unless handler is
        try:
            async with asyncio.timeout(self.timeout):
                return await self.cluster.forward(req, self.host)  # type: ignore[union-attr]
        except TimeoutError:
            raise ReadTimeout(f"route timeout of {self.timeout:g}s exceeded") from None

    def rewrite_path(self, req: Request) -> None:
        prefix = self.prefix
        if prefix is not None and req.path.startswith(prefix):
            rest = req.path[len(prefix) :]
            new = self.replacement + rest
            if not new.startswith(b"/"):
                new = b"/" + new
            req.set_path(new)


class RouteEdge:
    """A route's filters (each phase: plain calls, or the mixed triples when one is async) and its
    service: ``RouteRuntime.call`` wrapped by its layers."""

    __slots__ = (
        "logging",
        "logging_mixed",
        "request_filter",
        "request_mixed",
        "response_filter",
        "response_mixed",
        "service",
        "timed",
        "upstream_filter",
        "upstream_mixed",
    )

    def __init__(
        self,
        route: RouteRuntime,
        filters: Sequence[object],
        layers: Sequence[Layer[Request, Response]],
        timed: bool = False,
    ) -> None:
        self.timed = timed
        """Record when the upstream call started and answered (the access log's upstream times)."""
        phases = Phases(filters)
        self.request_mixed = phases.mixed("request_filter")
        self.upstream_mixed = phases.mixed("upstream_request_filter")
        self.response_mixed = phases.mixed("response_filter")
        self.logging_mixed = phases.mixed("logging")
        self.request_filter = () if self.request_mixed else phases.request_filter
        self.upstream_filter = () if self.upstream_mixed else phases.upstream_request_filter
        self.response_filter = () if self.response_mixed else phases.response_filter
        self.logging = () if self.logging_mixed else phases.logging
        service: Handler = route.call
        for layer in reversed(layers):
            service = layer.layer(service)
        self.service = service


class _Forwarding:
    """X-Forwarded-* / Forwarded (RFC 7239) as configured."""

    __slots__ = ("forwarded", "proto", "xff", "xfh", "xfp", "xfp_field")

    def __init__(self, f: Forwarded, https: bool = False) -> None:
        self.xff = f.x_forwarded_for
        self.xfp = f.x_forwarded_proto
        self.xfh = f.x_forwarded_host
        self.forwarded = f.forwarded
        self.proto = b"https" if https else b"http"
        """The listener's scheme (the server's, so computed once)."""
        # Any: compiled, a fixed-length tuple attribute is kept unboxed, a new tuple at every read.
        self.xfp_field: Any = (b"X-Forwarded-Proto", self.proto)
        """The whole X-Forwarded-Proto field: the same for every request of the server."""

    def __bool__(self) -> bool:
        return self.xff or self.xfp or self.xfh or self.forwarded

    def apply(self, req: Request, peer: str) -> None:
        """Extend X-Forwarded-For and Forwarded, replace X-Forwarded-Proto/-Host.
        The lists are edited in place, in step."""
        h = req.headers
        names = h.names()
        raw = h.pairs()
        # Which of the four names the request holds, in one pass over the lowered names (a length
        # test each, compiled to C; most requests hold none): not four searches of the list.
        held = 0
        for n in names:
            k = len(n)
            if k == 15:
                if n == b"x-forwarded-for":
                    held |= 1
            elif k == 17:
                if n == b"x-forwarded-proto":
                    held |= 2
            elif k == 16:
                if n == b"x-forwarded-host":
                    held |= 4
            elif k == 9 and n == b"forwarded":
                held |= 8
        bpeer = peer.encode()
        if self.xff:
            if held & 1:
                i = names.index(b"x-forwarded-for")
                raw[i] = (raw[i][0], raw[i][1] + b", " + bpeer)
            else:
                raw.append((b"X-Forwarded-For", bpeer))
                names.append(b"x-forwarded-for")
        if self.xfp:
            if held & 2:
                h.remove(b"x-forwarded-proto")
            raw.append(self.xfp_field)
            names.append(b"x-forwarded-proto")
        if self.xfh and req.raw_host is not None:
            if held & 4:
                h.remove(b"x-forwarded-host")
            raw.append((b"X-Forwarded-Host", req.raw_host))
            names.append(b"x-forwarded-host")
        if self.forwarded:
            node = b'"[' + bpeer + b']"' if b":" in bpeer else bpeer
            value = b"for=" + node + b";proto=" + self.proto
            if req.raw_host is not None:
                value += b';host="' + req.raw_host + b'"'
            if held & 8:
                i = names.index(b"forwarded")
                raw[i] = (raw[i][0], raw[i][1] + b", " + value)
            else:
                raw.append((b"Forwarded", value))
                names.append(b"forwarded")


_NOT_FOUND_BODY = b"404 Not Found\n"


def absolute_to_origin_form(req: Request) -> None:
    """Turn an absolute-form request into origin-form; its authority becomes the Host.

    A server must accept absolute-form (RFC 9112 §3.2.2) and then ignore Host for the
    URL's authority, which is also what a ``host_header = "keep"`` upstream is sent
    (as nginx does). Raises RemoteProtocolError (400) for a target that is not
    http(s) absolute-form, and for any such target over HTTP/2, where ``:path`` must be
    origin-form (RFC 9113 §8.3.1).
    """
    if req.version == b"2":
        raise RemoteProtocolError(":path must start with '/'", status_hint=400, source=Source.DOWNSTREAM)
    authority, target = split_absolute(req.target)
    path, sep, query = target.partition(b"?")
    req.target = target
    req.path = path
    req.query = query if sep else b""
    req.raw_host = authority
    req.host = host_only(authority)
    headers = req.headers
    i = headers.index(b"host")
    if i >= 0:
        headers.replace_at(i, authority)
    else:
        headers.add(b"Host", authority)


def _name(who: Any) -> str:
    """A filter's "module:Class.phase", from its name or its bound method."""
    return who if isinstance(who, str) else filter_name(getattr(who, "__self__", who), who.__name__)


class HttpProxy:
    """The proxy service. Build through ``ProxyFactory``."""

    def __init__(
        self,
        router: Router[RouteRuntime],
        phases: Phases,
        forwarding: Forwarded,
        clusters: dict[str, UpstreamCluster],
        *,
        https: bool = False,
        normalize: bool = True,
        merge_slashes: bool = True,
        filter_timeout: float | None = None,
    ) -> None:
        self.router = router
        self._normalize = normalize or merge_slashes
        self._decode = self._dots = normalize
        self._merge = merge_slashes
        self.phases = phases
        self.forwarding = _Forwarding(forwarding, https)
        self.clusters = clusters
        # A phase with an async filter runs from its *_mixed tuple; its plain tuple is then empty.
        self._request_mixed = phases.mixed("request_filter")
        self._upstream_mixed = phases.mixed("upstream_request_filter")
        self._response_mixed = phases.mixed("response_filter")
        self._request_filters = () if self._request_mixed else phases.request_filter
        self._upstream_filters = () if self._upstream_mixed else phases.upstream_request_filter
        self._response_filters = () if self._response_mixed else phases.response_filter
        self._filter_timeout = filter_timeout
        """The server's request_timeout: async filters must be done within it from the request head."""
        self._lane = not (self._request_mixed or self._upstream_mixed or self._response_mixed) and all(
            call_kind(f) != MAYBE for f in self._request_filters
        )
        """``dispatch`` may take requests on the callback lane: no phase has a filter that may wait."""
        self.has_lane = self._lane
        """Read by ``lane_of`` when the server installs the proxy: without the lane, it is awaited."""

    async def _run_mixed(
        self, calls: tuple[Call, ...], arg: Request | Response, ctx: Context, answers: bool = False
    ) -> Response | None:
        """A phase with async (or ``@may_await``) filters, in config order; with ``answers``
        (request_filter) the first non-None answer ends it.
        Raises FilterError for an async filter that raises or outlives the deadline."""
        timeout = self._filter_timeout
        for f, is_async, name in calls:
            if is_async == MAYBE:  # a @may_await filter: awaited only when it returns an awaitable
                answer = f(arg, ctx)
                if answer is not None and not isinstance(answer, Response):
                    answer = await self._settle(answer, ctx, name)
            elif not is_async:
                answer = f(arg, ctx)
            elif timeout is None:
                try:
                    answer = await f(arg, ctx)
                except Exception as exc:
                    raise FilterError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
            else:
                try:
                    async with asyncio.timeout_at(ctx.start + timeout) as scope:
                        answer = await f(arg, ctx)
                except asyncio.CancelledError:
                    # The server's Timeout layer has the same deadline (from the request head, on a
                    # loop clock that may not have moved): both timers can fire in one iteration, and
                    # then ours re-raises the cancellation instead of TimeoutError. It is still this
                    # request's deadline, passed in a filter: answered as such, not as a slow upstream.
                    if scope.expired():
                        raise FilterError(f"request timeout of {timeout:g}s exceeded while {name} ran") from None
                    raise
                except Exception as exc:
                    if isinstance(exc, TimeoutError) and scope.expired():
                        raise FilterError(f"request timeout of {timeout:g}s exceeded while {name} ran") from None
                    raise FilterError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
            if answers and answer is not None:
                return answer  # type: ignore[no-any-return]
        return None

    async def _settle(self, pending: Any, ctx: Context, who: Any) -> Any:
        """What a ``@may_await`` filter's awaitable gives, within the server's ``request_timeout``
        from the request head. ``who`` is the filter's name, or its bound method (named only on failure)."""
        timeout = self._filter_timeout
        try:
            if timeout is None:
                return await pending
            async with asyncio.timeout_at(ctx.start + timeout) as scope:
                return await pending
        except asyncio.CancelledError:
            # The server's Timeout layer has the same deadline (from the request head, on a
            # loop clock that may not have moved): both timers can fire in one iteration, and
            # then ours re-raises the cancellation instead of TimeoutError. It is still this
            # request's deadline, passed in a filter: answered as such, not as a slow upstream.
            if timeout is not None and scope.expired():
                raise FilterError(f"request timeout of {timeout:g}s exceeded while {_name(who)} ran") from None
            raise
        except Exception as exc:
            if timeout is not None and isinstance(exc, TimeoutError) and scope.expired():
                raise FilterError(f"request timeout of {timeout:g}s exceeded while {_name(who)} ran") from None
            raise FilterError(f"{_name(who)} failed: {type(exc).__name__}: {exc}") from exc

    def _origin_path(self, req: Request) -> None:
        """``req``'s target in origin form, its path normalised when configured and needed."""
        path = req.path
        if path[:1] != b"/" and path != b"*":  # "*": OPTIONS' asterisk-form, left as it is
            absolute_to_origin_form(req)
            path = req.path
        # Does the path hold "%", "/." or "//"? The common one holds none. An int needle is a
        # memchr; a bytes needle with ``in`` first fails an int conversion (an exception raised
        # and cleared, ~2x a ``find``), so "%" and "." are tested as ints and "/." only on a dot.
        if self._normalize and (37 in path or (46 in path and path.find(b"/.") >= 0) or path.find(b"//") >= 0):
            new = normalize_path(path, decode=self._decode, dots=self._dots, merge_slashes=self._merge)
            if new != path:
                req.set_path(new)

    def _route(self, req: Request, ctx: Any) -> RouteRuntime | None:
        """The route ``req`` matches, recorded with its cluster in ``ctx``; None if none does."""
        route = self.router.match(req)
        if route is not None:
            ctx.route = route
            ctx.cluster = route.cluster
        return route

    def _for_upstream(self, req: Request, ctx: Any, route: RouteRuntime) -> None:
        """The route's request-side work before the upstream call: the prefix rewrite, the
        forwarding headers, the header edits and the plain upstream filters."""
        if route.prefix is not None:
            route.rewrite_path(req)
        if self.forwarding:
            self.forwarding.apply(req, ctx.peer)
        if route.request_ops is not None:
            route.request_ops.apply(req.headers)
        for g in self._upstream_filters:
            g(req, ctx)

    async def __call__(self, req: Request) -> Response:
        self._origin_path(req)
        ctx = req.ctx
        for f in self._request_filters:
            answer = f(req, ctx)
            if answer is not None:
                if not isinstance(answer, Response):  # a @may_await filter that has to wait
                    answer = await self._settle(answer, ctx, f)
                    if answer is None:
                        continue
                return answer  # type: ignore[no-any-return]
        if self._request_mixed:
            answer = await self._run_mixed(self._request_mixed, req, ctx, True)
            if answer is not None:
                return answer
        route = self._route(req, ctx)
        if route is None:
            return _not_found()
        cluster = route.cluster
        if route.edge is not None:
            return await self._routed(req, ctx, route, route.edge)
        self._for_upstream(req, ctx, route)
        if self._upstream_mixed:
            await self._run_mixed(self._upstream_mixed, req, ctx)
        if req.upgrade is not None:  # an Upgrade or CONNECT request the server holds for a tunnel
            resp = await switch(req, route)
        elif route.handler is not None:
            resp = await route.handler(req)
        elif route.timeout is None:
            if isinstance(cluster, UpstreamCluster) and cluster.plain_h1:
                # The upstream's future awaited here, not through a coroutine of the cluster's.
                sent = cluster.send_h1(req, route.host)
                if isinstance(sent, tuple):
                    try:
                        resp = await sent[1]
                    except BaseException as exc:
                        resp = await cluster.recover_h1(req, sent[0], exc)
                else:
                    resp = await sent
            else:
                resp = await cluster.forward(req, route.host)  # type: ignore[union-attr]  # set unless handler is
        else:
            try:
                async with asyncio.timeout(route.timeout):
                    resp = await cluster.forward(req, route.host)  # type: ignore[union-attr]
            except TimeoutError:
                raise ReadTimeout(f"route timeout of {route.timeout:g}s exceeded") from None
        if route.response_ops is not None:
            route.response_ops.apply(resp.headers)
        for h in self._response_filters:
            h(resp, ctx)
        if self._response_mixed:
            try:
                await self._run_mixed(self._response_mixed, resp, ctx)
            except BaseException:
                cancel = getattr(resp.body, "cancel", None)
                if cancel is not None:
                    cancel()  # the upstream body nobody will read: its connection is not reused
                raise
        return resp

    def dispatch(self, req: Request, replier: Replier[Request, Response]) -> Response | Awaitable[Response] | Taken:
        """``__call__`` on the callback lane (``monolake.LaneService``), answering alike: a plain
        request to a plain HTTP/1.1 cluster with an idle pooled connection is sent from here and
        answered through ``replier`` when the upstream's response arrives (response rewrites and
        filters run in that callback), with no task and no future. Whatever must wait (an async or
        ``@may_await`` filter, a route's own filters, layers or timeout, a handler, a tunnel, a
        cluster with retries, health or least-request balancing, a connect) continues as a
        coroutine from where it must (returned for the driver to await)."""
        if not self._lane or req.upgrade is not None:
            return self(req)
        self._origin_path(req)
        ctx = req.ctx
        for f in self._request_filters:
            answer = f(req, ctx)
            if answer is not None:
                return answer  # type: ignore[no-any-return]  # plain filters only here: a Response
        route = self._route(req, ctx)
        if route is None:
            return _not_found()
        cluster = route.cluster
        if route.edge is not None:
            return self._routed(req, ctx, route, route.edge)
        self._for_upstream(req, ctx, route)
        if route.handler is not None or route.timeout is not None or not isinstance(cluster, UpstreamCluster):
            return self._finish(req, route, route.call(req))
        if not cluster.plain_h1:
            return self._finish(req, route, cluster.forward(req, route.host))
        ex = _Exchange(self, req, route, cluster, replier)
        sent = cluster.send_h1_to(req, route.host, ex)
        if isinstance(sent, UpstreamConnection):
            ex.conn = sent
            return ex
        return self._finish(req, route, sent)

    async def _finish(self, req: Request, route: RouteRuntime, pending: Awaitable[Response]) -> Response:
        """The lane's slow path from the upstream call on: ``pending``'s response with the route's
        response rewrites and the (plain) response filters, as in ``__call__``."""
        resp = await pending
        if route.response_ops is not None:
            route.response_ops.apply(resp.headers)
        ctx = req.ctx
        try:
            for h in self._response_filters:
                h(resp, ctx)
        except BaseException:
            _cancel_body(resp)
            raise
        return resp

    async def _routed(self, req: Request, ctx: Context, route: RouteRuntime, edge: RouteEdge) -> Response:
        """The rest of ``__call__`` for a route with its own filters or layers: each phase runs the
        server's filters, then the route's; the upstream call goes through the route's layers."""
        for f in edge.request_filter:
            answer = f(req, ctx)
            if answer is not None:
                if not isinstance(answer, Response):  # a @may_await filter that has to wait
                    answer = await self._settle(answer, ctx, f)
                    if answer is None:
                        continue
                return answer  # type: ignore[no-any-return]
        if edge.request_mixed:
            answer = await self._run_mixed(edge.request_mixed, req, ctx, True)
            if answer is not None:
                return answer
        self._for_upstream(req, ctx, route)
        if self._upstream_mixed:
            await self._run_mixed(self._upstream_mixed, req, ctx)
        for g in edge.upstream_filter:
            g(req, ctx)
        if edge.upstream_mixed:
            await self._run_mixed(edge.upstream_mixed, req, ctx)
        if edge.timed:
            clock = asyncio.get_running_loop().time
            t0 = clock()
            resp = await edge.service(req)
            UPSTREAM_TIMES.set(ctx, (t0, clock()))
        else:
            resp = await edge.service(req)
        if route.response_ops is not None:
            route.response_ops.apply(resp.headers)
        try:
            for h in self._response_filters:
                h(resp, ctx)
            if self._response_mixed:
                await self._run_mixed(self._response_mixed, resp, ctx)
            for h in edge.response_filter:
                h(resp, ctx)
            if edge.response_mixed:
                await self._run_mixed(edge.response_mixed, resp, ctx)
        except BaseException:
            cancel = getattr(resp.body, "cancel", None)
            if cancel is not None:
                cancel()  # the upstream body nobody will read: its connection is not reused
            raise
        return resp


def _not_found() -> Response:
    """The answer when no route matches (a new Response each time: filters may change it)."""
    return Response(404, Headers([(b"Content-Type", b"text/plain")]), _NOT_FOUND_BODY)


def _cancel_body(resp: Response) -> None:
    body = resp.body
    if isinstance(body, Body):
        body.cancel()  # the upstream body nobody will read: its connection is not reused


class _Exchange(Taken):
    """A request the proxy took on the callback lane: the upstream connection's response target
    (``UpstreamConnection.request_to``) and what the driver cancels if the client goes away."""

    __slots__ = ("cluster", "conn", "dead", "proxy", "replier", "req", "route")

    def __init__(
        self,
        proxy: HttpProxy,
        req: Request,
        route: RouteRuntime,
        cluster: UpstreamCluster,
        replier: Replier[Request, Response],
    ) -> None:
        self.proxy = proxy
        self.req = req
        self.route = route
        self.cluster = cluster
        self.replier = replier
        self.conn: UpstreamConnection | None = None
        self.dead = False

    def response(self, resp: Response) -> None:
        if self.dead:
            _cancel_body(resp)
            return
        req = self.req
        try:
            ops = self.route.response_ops
            if ops is not None:
                ops.apply(resp.headers)
            ctx = req.ctx
            for h in self.proxy._response_filters:
                h(resp, ctx)
        except Exception as exc:
            _cancel_body(resp)
            self.replier.reply_error(req, exc)
            return
        self.replier.reply(req, resp)

    def error(self, exc: BaseException) -> None:
        """As ``recover_h1``: a stale pooled connection's retry (the driver awaits it), a timeout logged."""
        if self.dead:
            return
        req = self.req
        retry = self.cluster.retry_h1(req, exc)
        if retry is not None:
            self.replier.reply_later(req, self.proxy._finish(req, self.route, retry))
        else:
            self.replier.reply_error(req, exc)

    def cancel(self) -> None:
        """The client went away: the upstream connection is mid-exchange, so it is closed."""
        self.dead = True
        conn = self.conn
        if conn is not None:
            conn.close()


class ProxyFactory(Factory[HttpProxy]):
    """Builds the proxy for one server. Clusters (and so the pool) come from the worker."""

    requires = frozenset({"peer", "server"})
    provides = frozenset({"route", "cluster", "endpoint"})
    service_type = HttpProxy

    def __init__(
        self,
        name: str,
        server: Server,
        cfg: Config,
        filters: Sequence[object],
        clusters: dict[str, UpstreamCluster],
        pool: Pool,
        route_extensions: Sequence[tuple[Sequence[object], Sequence[Layer[Request, Response]]]] = (),
    ) -> None:
        self.name = name
        self.server = server
        self.cfg = cfg
        self.filters = filters
        self.clusters = clusters
        self.pool = pool
        self.route_extensions = route_extensions
        """Per route (by index, or empty): its loaded filters and layers."""

    def make(self, old: HttpProxy | None) -> HttpProxy:
        entries: list[tuple[Route, RouteRuntime]] = []
        for i, r in enumerate(self.server.routes):
            if r.gateway is not None:
                from .gateway import make_gateway  # thriftpy2 loads only for configs with a gateway

                gateway = make_gateway(self.name, i, r, self.cfg, self.server, self.clusters)
                entries.append((r, RouteRuntime(i, r, None, gateway)))
                continue
            if r.upstream is None and r.upstreams is None:  # a route for CONNECT only
                entries.append((r, RouteRuntime(i, r, None, connect_only)))
                continue
            if r.upstream is not None:
                cluster = self.clusters[r.upstream]
            else:
                assert r.upstreams is not None
                c = Cluster(
                    endpoints=r.upstreams,
                    load_balancer=r.load_balancer,
                    hash_on=r.hash_on,
                    hash_algorithm=r.hash_algorithm,
                    protocol=r.protocol,
                )
                cname = f"{self.name}.routes[{i}]"
                cluster = UpstreamCluster.from_config(cname, c, self.pool)
            entries.append((r, RouteRuntime(i, r, cluster.with_retry(r.retry))))
        log = self.cfg.log
        timed = log.access_log != "off" and uses_upstream_timing(log.access_log_format)
        if log.access_log != "off" and uses_connect_timing(log.access_log_format):
            self.pool.time_connects = True
        extensions = list(self.route_extensions) + [((), ())] * (len(entries) - len(self.route_extensions))
        for (_, rt), (filters, layers) in zip(entries, extensions, strict=True):
            if filters or layers or timed:
                rt.edge = RouteEdge(rt, filters, layers, timed)
        return HttpProxy(
            Router(entries),
            Phases(self.filters),
            self.server.forwarded,
            self.clusters,
            https=self.server.tls is not None,
            normalize=self.server.normalize_path,
            merge_slashes=self.server.merge_slashes,
            filter_timeout=self.server.request_timeout,
        )
