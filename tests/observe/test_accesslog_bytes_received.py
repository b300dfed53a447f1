"""``$bytes_received``: a request body's size, or what a tunnel relayed from the client."""

from __future__ import annotations

from monolake.apps.observe._accesslog import VARIABLES
from monolake.core._body import Body
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.server._relay import Switched

get = VARIABLES["bytes_received"]


class _Producer:
    def pause_body(self) -> None: ...
    def resume_body(self) -> None: ...
    def cancel_body(self) -> None: ...


def test_no_body_bytes_body_and_streamed_body() -> None:
    resp = Response(200)
    assert get(Request(b"GET", b"/", Headers()), resp, 0, 0.0) == "0"
    assert get(Request(b"POST", b"/", Headers(), body=b"abcd"), resp, 0, 0.0) == "4"
    body = Body(_Producer(), 10)
    body.feed(b"0123456789")
    assert get(Request(b"POST", b"/", Headers(), body=body), resp, 0, 0.0) == "10"


def test_a_tunnel_reports_what_it_relayed_upstream() -> None:
    switched = Switched(None, b"", "127.0.0.1:443")
    switched.tunnel_up = 12345
    resp = Response(200, body=switched)
    assert get(Request(b"CONNECT", b"a:443", Headers()), resp, 999, 0.0) == "12345"
