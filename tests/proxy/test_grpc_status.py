"""proxy/_grpc: grpc-timeout parsing, the status for each proxy failure, the trailers-only answer."""

from __future__ import annotations

import pytest

from monolake.errors import ConnectError, ConnectTimeout, ReadError, ReadTimeout, UpstreamError
from monolake.proto.http1 import Headers, Request
from monolake.proxy._grpc import deadline_of, failure_response, is_grpc, parse_timeout, status_of
from monolake.server import Overloaded
from monolake.server._http import failure_response as server_failure_response


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"3S", 3.0),
        (b"250m", 0.25),
        (b"1500u", 0.0015),
        (b"99999999n", 0.099999999),
        (b"", None),
        (b"S", None),
        (b"10", None),
        (b"10x", None),
        (b"123456789S", None),  # at most 8 digits
        (b"-1S", None),
        (b"1.5S", None),
    ],
)
def test_parse_timeout(value: bytes, seconds: float | None) -> None:
    got = parse_timeout(value)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


def test_deadline_of() -> None:
    assert deadline_of(Headers([(b"grpc-timeout", b"100m")]), 10.0) == pytest.approx(10.1)
    assert deadline_of(Headers([(b"grpc-timeout", b"bogus")]), 10.0) is None
    assert deadline_of(Headers(), 10.0) is None


def test_is_grpc() -> None:
    assert is_grpc(b"application/grpc")
    assert is_grpc(b"application/grpc+proto")
    assert is_grpc(b"Application/GRPC;charset=utf-8")
    assert not is_grpc(b"application/json")
    assert not is_grpc(None)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConnectError("refused"), 14),
        (ConnectTimeout("slow"), 14),
        (ReadTimeout("no data"), 4),
        (ReadError("closed"), 14),
        (UpstreamError("reset"), 14),
        (Overloaded("shed"), 14),
        (RuntimeError("bug"), 13),
    ],
)
def test_status_of(exc: BaseException, code: int) -> None:
    assert status_of(exc)[0] == code


def test_failure_response_is_trailers_only() -> None:
    resp = failure_response(ConnectError("x"))
    assert resp.status == 200 and resp.body is None
    assert resp.headers.get("content-type") == b"application/grpc"
    assert resp.headers.get("grpc-status") == b"14"
    assert resp.headers.get("grpc-message") == b"monolake: cannot connect to the upstream"


def test_server_answers_grpc_calls_with_a_status_and_others_with_http() -> None:
    grpc_req = Request(b"POST", b"/pkg.Svc/Call", Headers([(b"content-type", b"application/grpc")]))
    resp = server_failure_response(grpc_req, ReadTimeout("t"), "127.0.0.1:1", "web")
    assert resp.status == 200 and resp.headers.get("grpc-status") == b"4"
    plain = Request(b"GET", b"/", Headers())
    assert server_failure_response(plain, ReadTimeout("t"), "127.0.0.1:1", "web").status == 504
    assert server_failure_response(plain, ConnectError("c"), "127.0.0.1:1", "web").status == 502
