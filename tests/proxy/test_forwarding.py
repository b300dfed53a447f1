"""X-Forwarded-* and Forwarded on a request's fields (``_Forwarding.apply``): appended when absent,
extended (For, Forwarded) or replaced (Proto, Host) when the client sent them, in any case."""

from __future__ import annotations

from monolake.apps.config._schema import Forwarded
from monolake.apps.proxy._proxy import _Forwarding
from monolake.core.proto.http._message import Headers, Request

ALL = _Forwarding(Forwarded(forwarded=True))


def request(fields: list[tuple[bytes, bytes]]) -> Request:
    h = Headers(list(fields), lower=[n.lower() for n, _ in fields])
    return Request(b"GET", b"/", h, host=b"client.test", raw_host=b"client.test:81")


def test_absent_fields_are_appended() -> None:
    req = request([(b"Host", b"client.test:81"), (b"Accept", b"*/*")])
    ALL.apply(req, "10.0.0.1")
    assert req.headers.pairs()[2:] == [
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"client.test:81"),
        (b"Forwarded", b'for=10.0.0.1;proto=http;host="client.test:81"'),
    ]
    assert req.headers.names() == [n.lower() for n, _ in req.headers.pairs()]


def test_sent_fields_are_extended_or_replaced_whatever_their_case() -> None:
    req = request(
        [
            (b"Host", b"client.test:81"),
            (b"x-FORWARDED-for", b"203.0.113.7"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"evil"),
            (b"FORWARDED", b"for=203.0.113.7"),
            (b"X-Forwarded-Hostx", b"kept"),
        ]
    )
    _Forwarding(Forwarded(forwarded=True), https=True).apply(req, "::1")
    h = req.headers
    assert h.get_all(b"x-forwarded-for") == [b"203.0.113.7, ::1"]
    assert h.get_all(b"x-forwarded-proto") == [b"https"]
    assert h.get_all(b"x-forwarded-host") == [b"client.test:81"]
    assert h.get_all(b"forwarded") == [b'for=203.0.113.7, for="[::1]";proto=https;host="client.test:81"']
    assert h.get_all(b"x-forwarded-hostx") == [b"kept"]
    assert h.names() == [n.lower() for n, _ in h.pairs()]


def test_off_fields_are_left_alone() -> None:
    req = request([(b"Host", b"h"), (b"X-Forwarded-Proto", b"https")])
    _Forwarding(Forwarded(x_forwarded_for=False, x_forwarded_proto=False, x_forwarded_host=False)).apply(req, "1.2.3.4")
    assert req.headers.pairs() == [(b"Host", b"h"), (b"X-Forwarded-Proto", b"https")]
