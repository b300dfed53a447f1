"""HttpProxy's target handling before filters and routing, with a recording handler for a route."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from monolake.config._schema import Forwarded, Route
from monolake.errors import RemoteProtocolError
from monolake.proto.http1._message import Headers, Request, Response
from monolake.proxy._filters import Phases
from monolake.proxy._proxy import HttpProxy, RouteRuntime
from monolake.proxy._router import Router


class Seen:
    """A route handler that answers 200 and keeps what it was given."""

    def __init__(self) -> None:
        self.reqs: list[Request] = []

    async def __call__(self, req: Request) -> Response:
        self.reqs.append(req)
        return Response(200)


class DenyBig:
    def request_filter(self, req: Request, ctx: object) -> Response | None:
        return Response(403) if req.path.startswith(b"/big") else None


def proxy(seen: Seen, **settings: bool) -> HttpProxy:
    routes = [Route(host="public.test"), Route(path="/")]
    entries = [(r, RouteRuntime(i, r, None, seen)) for i, r in enumerate(routes)]
    return HttpProxy(Router(entries), Phases([DenyBig()]), Forwarded(), {}, **settings)


def call(p: HttpProxy, target: bytes, host: bytes | None = b"internal.test", version: bytes = b"1.1") -> Response:
    pairs = [(b"Host", host)] if host is not None else []
    req = Request(
        b"GET", target, Headers([*pairs, (b"Accept", b"*/*")]), host=host or b"", raw_host=host, version=version
    )
    req.ctx = SimpleNamespace(peer="10.0.0.1", server="web", route=None, cluster=None)
    return asyncio.run(p(req))


@pytest.mark.parametrize("target", [b"//big", b"/x/../big", b"/./big", b"/%62ig", b"/%2e/big", b"/a/%2E%2E/big?x"])
def test_filter_sees_the_normalised_path(target: bytes) -> None:
    seen = Seen()
    assert call(proxy(seen), target).status == 403
    assert not seen.reqs


def test_handler_gets_normalised_target_and_original_is_kept() -> None:
    seen = Seen()
    assert call(proxy(seen), b"/a//b/./c/../%7e?q=/../%2e").status == 200
    (req,) = seen.reqs
    assert (req.path, req.query, req.target) == (b"/a/b/~", b"q=/../%2e", b"/a/b/~?q=/../%2e")
    assert req.original_target == b"/a//b/./c/../%7e?q=/../%2e"  # what the access log's $request shows


def test_settings_off() -> None:
    seen = Seen()
    p = proxy(seen, normalize=False, merge_slashes=False)
    assert call(p, b"//big/../x").status == 200
    assert seen.reqs[0].target == b"//big/../x"
    p = proxy(seen, normalize=False)
    assert call(p, b"//x/../%62ig").status == 200
    assert seen.reqs[1].target == b"/x/../%62ig"


@pytest.mark.parametrize("target", [b"/demo/../../etc/passwd", b"/%zz", b"ftp://h/", b"http://u@h/", b"nonsense"])
def test_bad_targets_raise_400(target: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        call(proxy(Seen()), target)
    assert info.value.status_hint == 400


def test_absolute_form_takes_its_authority_as_host() -> None:
    seen = Seen()
    assert call(proxy(seen), b"http://Public.Test:81/x/..//y?z=1").status == 200
    (req,) = seen.reqs
    assert (req.target, req.host, req.raw_host) == (b"/y?z=1", b"public.test", b"Public.Test:81")
    assert req.headers.pairs()[:2] == [(b"Host", b"Public.Test:81"), (b"Accept", b"*/*")]  # replaced in place
    assert req.headers.get(b"x-forwarded-host") == b"Public.Test:81"
    assert req.ctx.route.index == 0  # the host route, not the Host header's


def test_absolute_form_without_host_header_gets_one() -> None:
    seen = Seen()
    assert call(proxy(seen), b"http://public.test", host=None, version=b"1.0").status == 200
    assert seen.reqs[0].target == b"/"
    assert seen.reqs[0].headers.get(b"host") == b"public.test"


def test_asterisk_form_is_left_alone() -> None:
    seen = Seen()
    # "*" matches no route prefix; what matters is that it is neither rewritten nor refused.
    assert call(proxy(seen), b"*").status == 404


def test_absolute_form_over_http2_is_400() -> None:
    with pytest.raises(RemoteProtocolError, match=":path"):
        call(proxy(Seen()), b"http://public.test/", version=b"2")
