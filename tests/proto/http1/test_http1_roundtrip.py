"""Property: requests and responses serialized by ``_serialize`` parse back the same.

Random methods, targets, header sets and bodies (Content-Length or chunked with
random chunk sizes), one to three pipelined per buffer, fed whole and in random
pieces. What comes out must be the same method, target, end-to-end headers (the
hop-by-hop ones we add are dropped), body bytes and keep-alive. Responses likewise
(status, reason, end-to-end headers, framing, body), one per reader as upstreams send
them, fed whole, in random pieces and byte by byte.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monolake.core.proto.http._message import Headers, Request, Response
from monolake.core.proto.http1._parse import HOP_BY_HOP, RequestReader, ResponseReader
from monolake.core.proto.http1._serialize import (
    CHUNKED_LINE,
    CLOSE_LINE,
    LAST_CHUNK,
    chunk,
    content_length_line,
    reason_phrase,
    request_head,
    response_head,
)

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%"

methods = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE"])
segments = st.lists(st.text(PCHAR, min_size=0, max_size=12), min_size=1, max_size=5)
targets = st.builds(
    lambda segs, q: ("/" + "/".join(segs) + (f"?{q}" if q is not None else "")).encode(),
    segments,
    st.none() | st.text(PCHAR + "/?", max_size=20),
)
header_names = st.text(TCHAR, min_size=1, max_size=16).filter(
    lambda n: n.lower().encode() not in HOP_BY_HOP and n.lower() != "host"
)
# Field values: visible characters with inner spaces/tabs, no leading or trailing OWS.
header_values = st.one_of(
    st.just(""),
    st.builds(
        lambda a, mid, b: a + mid + b if mid else a,
        st.text(VCHAR, min_size=1, max_size=1),
        st.text(VCHAR + " \t", max_size=30),
        st.text(VCHAR, min_size=1, max_size=1),
    ),
)
hosts = st.sampled_from(
    [
        ("example.com", b"example.com"),
        ("Example.COM:8080", b"example.com"),
        ("[::1]:80", b"[::1]"),
        ("10.0.0.1", b"10.0.0.1"),
    ]
)
hop_lines = st.lists(
    st.sampled_from(
        [b"Keep-Alive: timeout=5\r\n", b"TE: trailers\r\n", b"Proxy-Connection: keep-alive\r\n", b"Upgrade: h2c\r\n"]
    ),
    max_size=3,
    unique=True,
)


@dataclass
class Spec:
    method: bytes
    target: bytes
    host: tuple[str, bytes]
    headers: list[tuple[bytes, bytes]]
    framing: str  # "none", "cl", "chunked"
    body: bytes
    cuts: list[int]
    hop: list[bytes]
    close: bool

    def wire(self) -> bytes:
        headers = Headers([(b"Host", self.host[0].encode()), *self.headers])
        framing = b"".join(self.hop) + (CLOSE_LINE if self.close else b"")
        if self.framing == "cl":
            framing += content_length_line(len(self.body))
        elif self.framing == "chunked":
            framing += CHUNKED_LINE
        out = request_head(self.method, self.target, headers, framing)
        if self.framing == "cl":
            out += self.body
        elif self.framing == "chunked":
            bounds = [0, *sorted(c % (len(self.body) + 1) for c in self.cuts), len(self.body)]
            for a, b in itertools.pairwise(bounds):
                if b > a:
                    out += b"".join(chunk(self.body[a:b]))
            out += LAST_CHUNK
        return out


@st.composite
def specs(draw: st.DrawFn, *, last: bool) -> Spec:
    framing = draw(st.sampled_from(["none", "cl", "chunked"]))
    body = draw(st.binary(max_size=300)) if framing != "none" else b""
    return Spec(
        method=draw(methods),
        target=draw(targets),
        host=draw(hosts),
        headers=[
            (n.encode(), v.encode()) for n, v in draw(st.lists(st.tuples(header_names, header_values), max_size=8))
        ],
        framing=framing,
        body=body,
        cuts=draw(st.lists(st.integers(0, 10_000), max_size=4)),
        hop=draw(hop_lines),
        # Connection: close only on the last request: llhttp refuses data after it.
        close=last and draw(st.booleans()),
    )


@st.composite
def pipelines(draw: st.DrawFn) -> list[Spec]:
    n = draw(st.integers(1, 3))
    return [draw(specs(last=i == n - 1)) for i in range(n)]


class Collect(RequestReader):
    def __init__(self) -> None:
        self.reader_init()
        self.out: list[tuple[Request, bool, int | None, bytearray, list[bool]]] = []

    def request_received(self, req: Request, has_body: bool, content_length: int | None) -> None:
        self.out.append((req, has_body, content_length, bytearray(), [False]))

    def body_received(self, data: bytes) -> None:
        self.out[-1][3].extend(data)

    def request_complete(self) -> None:
        self.out[-1][4][0] = True


def check(specs_: list[Spec], pieces: list[bytes]) -> None:
    r = Collect()
    for p in pieces:
        r.feed(p)
    assert len(r.out) == len(specs_)
    for spec, (req, has_body, cl, body, done) in zip(specs_, r.out, strict=True):
        assert done == [True]
        assert req.method == spec.method
        assert req.target == spec.target
        assert req.headers.raw == [(b"Host", spec.host[0].encode()), *spec.headers]
        assert req.host == spec.host[1]
        assert bytes(body) == spec.body
        assert req.keep_alive is not spec.close
        if spec.framing == "cl":
            assert cl == len(spec.body) and has_body is bool(spec.body)
        elif spec.framing == "chunked":
            assert cl is None and has_body is True
        else:
            assert cl is None and has_body is False
        assert req.upgrade == (b"h2c" if b"Upgrade: h2c\r\n" in spec.hop else None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipelines(), st.lists(st.integers(0, 100_000), max_size=8))
def test_serialized_requests_parse_back(specs_: list[Spec], cut_points: list[int]) -> None:
    wire = b"".join(s.wire() for s in specs_)
    check(specs_, [wire])
    cuts = sorted({c % (len(wire) + 1) for c in cut_points} | {0, len(wire)})
    check(specs_, [wire[a:b] for a, b in itertools.pairwise(cuts)])


@settings(max_examples=40, deadline=None)
@given(specs(last=True))
def test_serialized_request_parses_back_byte_by_byte(spec: Spec) -> None:
    wire = spec.wire()
    check([spec], [wire[i : i + 1] for i in range(len(wire))])


# --- responses ----------------------------------------------------------------------

statuses = st.sampled_from([200, 201, 202, 204, 206, 301, 302, 304, 400, 404, 500, 502, 599])
reasons = st.one_of(st.just(b""), st.text(VCHAR + " ", min_size=1, max_size=20).map(lambda t: t.strip().encode()))
resp_hop_lines = st.lists(
    st.sampled_from(
        [
            b"Keep-Alive: timeout=5\r\n",
            b"Proxy-Authenticate: Basic\r\n",
            b"Trailer: X-T\r\n",
            b"Connection: keep-alive\r\n",
            b"Proxy-Connection: keep-alive\r\n",
            b"Upgrade: h2c\r\n",
            b"TE: trailers\r\n",
        ]
    ),
    max_size=4,
    unique=True,
)


@dataclass
class RespSpec:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    framing: str  # "cl", "chunked"
    body: bytes
    cuts: list[int]
    hop: list[bytes]
    listed: list[tuple[bytes, bytes]]  # headers named in Connection: dropped

    @property
    def bodiless(self) -> bool:
        return self.status in (204, 304)

    def wire(self) -> bytes:
        hop = b"".join(self.hop)
        if self.listed:
            hop += b"Connection: " + b", ".join(n for n, _ in self.listed) + b"\r\n"
        headers = Headers([*self.headers[:1], *self.listed, *self.headers[1:]])
        if self.bodiless:
            framing = hop
        elif self.framing == "cl":
            framing = content_length_line(len(self.body)) + hop
        else:
            framing = hop + CHUNKED_LINE
        out = response_head(self.status, headers, framing, self.reason)
        if self.bodiless:
            return out
        if self.framing == "cl":
            return out + self.body
        bounds = [0, *sorted(c % (len(self.body) + 1) for c in self.cuts), len(self.body)]
        for a, b in itertools.pairwise(bounds):
            if b > a:
                out += b"".join(chunk(self.body[a:b]))
        return out + LAST_CHUNK


listed_names = st.lists(st.sampled_from([b"X-Hop-A", b"x-hop-b", b"X-HOP-C"]), max_size=2, unique=True)


@st.composite
def resp_specs(draw: st.DrawFn) -> RespSpec:
    return RespSpec(
        status=draw(statuses),
        reason=draw(reasons),
        headers=[
            (n.encode(), v.encode())
            for n, v in draw(st.lists(st.tuples(header_names, header_values), max_size=8))
            if not n.lower().startswith("x-hop-")
        ],
        framing=draw(st.sampled_from(["cl", "chunked"])),
        body=draw(st.binary(max_size=300)),
        cuts=draw(st.lists(st.integers(0, 10_000), max_size=4)),
        hop=draw(resp_hop_lines),
        listed=[(n, b"v") for n in draw(listed_names)],
    )


class CollectResponses(ResponseReader):
    def __init__(self) -> None:
        self.reader_init()
        self.out: list[tuple[Response, bool, bytearray, list[bool]]] = []

    def response_received(self, resp: Response, has_body: bool) -> None:
        self.out.append((resp, has_body, bytearray(), [False]))

    def body_received(self, data: bytes) -> None:
        self.out[-1][2].extend(data)

    def response_complete(self) -> None:
        self.out[-1][3][0] = True


def check_response(spec: RespSpec, pieces: list[bytes]) -> None:
    r = CollectResponses()
    for p in pieces:
        r.feed(p)
    [(resp, has_body, body, done)] = r.out
    assert done == [True]
    assert resp.status == spec.status
    assert resp.reason == (spec.reason or reason_phrase(spec.status))
    assert resp.headers.raw == spec.headers
    assert resp.keep_alive is True
    if spec.bodiless:
        assert (has_body, bytes(body)) == (False, b"")
    elif spec.framing == "cl":
        assert resp.content_length == len(spec.body)
        assert has_body is bool(spec.body)
        assert bytes(body) == spec.body
    else:
        assert resp.content_length is None and has_body is True
        assert bytes(body) == spec.body


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resp_specs(), st.lists(st.integers(0, 100_000), max_size=6))
def test_serialized_responses_parse_back(spec: RespSpec, cut_points: list[int]) -> None:
    wire = spec.wire()
    check_response(spec, [wire])
    cuts = sorted({c % (len(wire) + 1) for c in cut_points} | {0, len(wire)})
    check_response(spec, [wire[a:b] for a, b in itertools.pairwise(cuts)])
    check_response(spec, [wire[i : i + 1] for i in range(len(wire))])
