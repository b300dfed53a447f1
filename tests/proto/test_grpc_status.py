"""core/proto/grpc: grpc-timeout parsing, the status for each proxy failure, the trailers-only answer."""

from __future__ import annotations

import pytest

from monolake.core.errors import ConnectError, ConnectTimeout, ReadError, ReadTimeout, UpstreamError
from monolake.core.proto.grpc import (
    deadline_of,
    encode_timeout,
    failure_response,
    is_grpc,
    parse_timeout,
    status_of,
    with_remaining_timeout,
)
from monolake.core.proto.http1 import Headers, Request
from monolake.core.server import Overloaded
from monolake.core.server._answers import failure_response as server_failure_response


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


@pytest.mark.parametrize("seconds", [1e-7, 0.001, 0.25, 1.5, 99.9999999, 100.0, 3599.5, 1e6, 1e9])
def test_encode_timeout_round_trips_never_shorter(seconds: float) -> None:
    value = encode_timeout(seconds)
    assert len(value) <= 9  # at most 8 digits and a unit
    back = parse_timeout(value)
    assert back is not None
    assert back >= seconds * (1 - 1e-12)
    assert back - seconds <= max(1e-6, seconds * 1e-6) or seconds > 1e5  # coarse units only for huge budgets


def test_the_upstream_is_told_what_is_left_of_the_deadline() -> None:
    headers = [(b":method", b"POST"), (b"grpc-timeout", b"2S"), (b"te", b"trailers")]
    out = with_remaining_timeout(headers, deadline=10.0, now=9.25)
    assert out == [(b":method", b"POST"), (b"grpc-timeout", b"750000u"), (b"te", b"trailers")]
    assert headers[1] == (b"grpc-timeout", b"2S")  # the caller's list is left alone (a retry recomputes)


def test_a_deadline_that_passed_before_sending_is_deadline_exceeded() -> None:
    with pytest.raises(ReadTimeout) as info:
        with_remaining_timeout([(b"grpc-timeout", b"1m")], deadline=5.0, now=5.0)
    assert status_of(info.value)[0] == 4


@pytest.mark.parametrize("start", [1.0, 36000.3, 3e7 + 0.1])  # loop time: just booted, ten hours, a year
def test_a_deadline_read_back_at_once_is_the_clients_own_timeout(start: float) -> None:
    # start + 0.3 - start is a little over 0.3 in floats (more so the larger the loop time): rounding that
    # up sent the upstream 300001u, more than the client's own 300000u (seen in CI, once after a grpcio
    # origin that checks it, once on a machine ten hours up).
    deadline = start + 0.3
    assert deadline - start != 0.3
    out = with_remaining_timeout([(b"grpc-timeout", b"300000u")], deadline=deadline, now=start)
    assert out == [(b"grpc-timeout", b"300000u")]
