"""Protocol switches in the HTTP/1.1 readers, pure bytes: held Upgrade/CONNECT requests
(``RequestReader.tunnels``) and 101 responses (``ResponseReader.expect_switch``).

Every input is fed whole, byte by byte and split at every position; all must agree.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monolake.core.errors import ProtocolError, RemoteProtocolError
from monolake.core.proto.http._message import Request, Response
from monolake.core.proto.http1._parse import RequestReader, ResponseReader


class Requests(RequestReader):
    def __init__(self, tunnels: bool = True) -> None:
        self.tunnels = tunnels  # not a class attribute: a compiled base reads its own slot
        self.reader_init()
        self.events: list[tuple[Any, ...]] = []
        self.held: bytes | None = None

    def request_received(self, req: Request, has_body: bool, content_length: int | None) -> None:
        self.events.append(("req", req.method, req.target, req.path, req.host, req.upgrade, has_body))

    def body_received(self, data: bytes) -> None:
        self.events.append(("body", bytes(data)))

    def request_complete(self) -> None:
        self.events.append(("complete",))

    def switch_held(self, req: Request, rest: bytes) -> None:
        self.events.append(("held", req.target))
        self.held = rest

    def feed_all(self, pieces: list[bytes]) -> None:
        # Once held, the driver feeds nothing more until the answer: later pieces are held too.
        for p in pieces:
            if self.held is None:
                self.feed(p)
            else:
                self.held += p


def splits(data: bytes) -> list[list[bytes]]:
    return [[data], [data[i : i + 1] for i in range(len(data))]] + [[data[:i], data[i:]] for i in range(1, len(data))]


def merge_bodies(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A body arrives in as many pieces as it was fed in: compare it whole."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        if e[0] == "body" and out and out[-1][0] == "body":
            out[-1] = ("body", out[-1][1] + e[1])
        else:
            out.append(e)
    return out


def requests(data: bytes) -> tuple[list[tuple[Any, ...]], bytes | None]:
    results = []
    for pieces in splits(data):
        r = Requests()
        r.feed_all(pieces)
        results.append((merge_bodies(r.events), r.held))
    assert all(res == results[0] for res in results), "whole, byte-by-byte and split feeds disagree"
    return results[0]


def request_error(data: bytes) -> int:
    hints = set()
    for pieces in splits(data):
        r = Requests()
        with pytest.raises(ProtocolError) as info:
            r.feed_all(pieces)
        hints.add(info.value.status_hint)
    assert len(hints) == 1
    return hints.pop()


WS = b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"


def test_upgrade_request_is_held_with_what_follows() -> None:
    events, held = requests(WS + b"\x81\x02hi")
    assert events == [("req", b"GET", b"/chat", b"/chat", b"a", b"websocket", False), ("complete",), ("held", b"/chat")]
    assert held == b"\x81\x02hi"


def test_upgrade_request_after_pipelined_requests_is_held() -> None:
    first = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
    events, held = requests(first + WS + b"GET /not-parsed HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [e[2] for e in events if e[0] == "req"] == [b"/1", b"/chat"]
    assert held == b"GET /not-parsed HTTP/1.1\r\nHost: a\r\n\r\n"


def test_upgrade_not_listed_in_connection_is_plain_http() -> None:
    data = b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n"
    events, held = requests(data)
    assert held is None
    assert [e for e in events if e[0] == "req"] == [
        ("req", b"GET", b"/x", b"/x", b"a", None, False),
        ("req", b"GET", b"/y", b"/y", b"a", None, False),
    ]


def test_upgrade_request_with_a_body_is_plain_http() -> None:
    data = b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\nContent-Length: 2\r\n\r\nok"
    events, held = requests(data)
    assert held is None
    assert events == [("req", b"POST", b"/x", b"/x", b"a", None, True), ("body", b"ok"), ("complete",)]


def test_connect_is_held_and_routes_as_slash_with_the_target_host() -> None:
    data = b"CONNECT Example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01"
    events, held = requests(data)
    assert events[0] == ("req", b"CONNECT", b"Example.com:443", b"/", b"example.com", b"CONNECT", False)
    assert events[-1] == ("held", b"Example.com:443")
    assert held == b"\x16\x03\x01"


def test_connect_ipv6_target() -> None:
    events, _ = requests(b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n")
    assert events[0][4] == b"[::1]"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"CONNECT a:443 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT nohost HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ],
)
def test_bad_connect_requests(data: bytes, status: int) -> None:
    assert request_error(data) == status


def test_without_tunnels_connect_is_405() -> None:
    with pytest.raises(ProtocolError) as info:
        Requests(tunnels=False).feed(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert info.value.status_hint == 405


# -- responses ---------------------------------------------------------------------------


class Responses(ResponseReader):
    def __init__(self, expect_switch: bool) -> None:
        self.reader_init()
        self.expect_switch = expect_switch
        self.events: list[tuple[Any, ...]] = []

    def response_received(self, resp: Response, has_body: bool) -> None:
        self.events.append(("resp", resp.status, resp.reason, resp.headers.pairs(), has_body))

    def body_received(self, data: bytes) -> None:
        self.events.append(("body", bytes(data)))

    def response_complete(self) -> None:
        self.events.append(("complete",))

    def protocol_switched(self, rest: bytes) -> None:
        self.events.append(("switched", self.switch_token, rest))


SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: abc\r\n\r\n"
)


def responses(data: bytes, expect_switch: bool = True) -> list[tuple[Any, ...]]:
    results = []
    for pieces in splits(data):
        r = Responses(expect_switch)
        for p in pieces:
            if r.switch_token is not None:
                # After the switch the driver reads the new protocol itself.
                r.events.append(("raw", p))
                continue
            r.feed(p)
        # Join what followed the head, however it was split.
        tail = b"".join(e[2] if e[0] == "switched" else e[1] for e in r.events if e[0] in ("switched", "raw"))
        results.append([*merge_bodies([e for e in r.events if e[0] not in ("switched", "raw")]), ("tail", tail)])
    assert all(res == results[0] for res in results)
    return results[0]


def test_101_is_handed_over_with_the_bytes_after_it() -> None:
    events = responses(SWITCH + b"\x81\x02hi")
    assert events == [
        ("resp", 101, b"Switching Protocols", [(b"Sec-WebSocket-Accept", b"abc")], False),
        ("tail", b"\x81\x02hi"),
    ]


def test_101_records_the_upgrade_token() -> None:
    r = Responses(True)
    r.feed(SWITCH)
    assert r.switch_token == b"websocket"
    assert r.events[-1] == ("switched", b"websocket", b"")


def test_non_101_answer_to_an_upgrade_is_an_ordinary_response() -> None:
    events = responses(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    assert events == [("resp", 403, b"Forbidden", [], True), ("body", b"no"), ("complete",), ("tail", b"")]


def test_unrequested_101_is_an_upstream_error() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        Responses(False).feed(SWITCH)
    assert info.value.status_hint == 502


def test_101_without_upgrade_header_is_an_upstream_error() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        Responses(True).feed(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n")
    assert "Upgrade" in str(info.value)


_SEEDS = [WS, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]


@settings(max_examples=300, deadline=None)
@given(seed=st.sampled_from(_SEEDS), cut=st.integers(0, 80), junk=st.binary(max_size=60), pieces=st.integers(1, 4))
def test_tunnel_reader_accepts_or_raises_protocol_error(seed: bytes, cut: int, junk: bytes, pieces: int) -> None:
    data = seed[:cut] + junk + seed[cut:]
    r = Requests()
    step = max(1, len(data) // pieces)
    try:
        r.feed_all([data[i : i + step] for i in range(0, len(data), step)])
    except ProtocolError:
        return
    # Held at most once, and only right after the request it names.
    held = [e for e in r.events if e[0] == "held"]
    assert len(held) <= 1
    if held:
        assert r.events[-1][0] == "held" and r.held is not None
