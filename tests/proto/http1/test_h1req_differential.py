"""The native request-head scan (``_h1req.scan_head``) against llhttp, differentially.

``RequestReader`` reads a head of the common shape in one C pass and gives every other
head to llhttp from its first byte. The scan must accept nothing llhttp refuses (the
smuggling shapes above all) and build the same objects for what it accepts. Here many
generated streams (good heads, and every bad shape: framing, characters, spacing,
Content-Length variants, limits, pipelining) go through two readers, one with the scan
and one with llhttp only (``native_heads = False``), whole and split; everything the
hooks see, every error and the head-timing state after each feed must be the same.
A direct look at ``scan_head`` checks it declines the bad shapes itself and takes the
common ones (so the comparison is not between two llhttp runs).
"""

from __future__ import annotations

import random
import sys
from typing import Any

import pytest

from monolake.core.errors import ProtocolError
from monolake.core.proto.http._message import Request
from monolake.core.proto.http1 import _parse
from monolake.core.proto.http1._parse import RequestReader

built = pytest.mark.skipif(
    _parse._SCAN is None, reason="monolake.core.proto.http1._h1req not built (no C compiler at install)"
)

LIMITS = {"max_request_line_bytes": 200, "max_header_bytes": 600, "max_headers": 12, "max_body_bytes": 40}


class Recorder(RequestReader):
    """Everything a driver would see, as comparable values."""

    def __init__(self, native: bool) -> None:
        # Per instance: a compiled RequestReader reads its own slots, not a subclass's class attributes.
        self.tunnels = True
        self.native_heads = native
        for name, value in LIMITS.items():
            setattr(self, name, value)
        self.reader_init()
        self.events: list[Any] = []

    def request_received(self, req: Request, has_body: bool, content_length: int | None) -> None:
        h = req.headers
        self.events.append(
            (
                "req",
                req.method,
                req.target,
                req.path,
                req.query,
                req.version,
                h.pairs(),
                h.names(),
                req.hop_headers,
                req.host,
                req.raw_host,
                req.keep_alive,
                req.expect_continue,
                req.upgrade,
                has_body,
                content_length,
            )
        )

    def body_received(self, data: bytes) -> None:
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)
        else:
            self.events.append(("body", data))

    def request_complete(self) -> None:
        self.events.append(("end",))

    def switch_held(self, req: Request, rest: bytes) -> None:
        self.events.append(("held", rest))


def run(native: bool, pieces: list[bytes]) -> list[Any]:
    r = Recorder(native)
    for i, piece in enumerate(pieces):
        try:
            r.feed(piece, float(i))
        except ProtocolError as exc:
            r.events.append(("error", exc.status_hint, str(exc)))
            break
        if any(e[0] == "held" for e in r.events):
            break  # a driver stops reading after a held head
        r.events.append(("fed", r._in_head, r._head_bytes, r.head_since if r._in_head else None))
    return r.events


def same(data: bytes, pieces: list[bytes] | None = None) -> list[Any]:
    pieces = pieces if pieces is not None else [data]
    fast, slow = run(True, pieces), run(False, pieces)
    assert fast == slow, (data, [len(p) for p in pieces])
    return fast


# -- generated streams ---------------------------------------------------------------------

GOOD_FIELDS = [
    b"User-Agent: curl/8.5.0",
    b"Accept: */*",
    b"accept-encoding: gzip, br",
    b"Cookie: a=b; c=d",
    b"X-Empty:",
    b"X-Empty2: ",
    b"X-Sp:  spaced  ",
    b"X-Tab:\tv\t",
    b"X-Mid: a  b",
    b"x-lower: v",
    b"X-Forwarded-For: 10.0.0.1",
    b"Keep-Alive: timeout=5",
    b"TE: trailers",
    b"Trailer: x",
    b"Proxy-Authorization: Basic eA==",
    b"Proxy-Authenticate: x",
    b"Expect: 100-continue",
    b"Expect: 100-Continue",
    b"Connection: keep-alive",
    b"Connection: Keep-Alive",
    b"X-Tok: !#$%&'*+-.^_`|~09azAZ",
]
BAD_FIELDS = [
    b"X-Sp : v",
    b" folded",
    b"\tfolded",
    b"Na me: v",
    b"X: a\x00b",
    b"X: a\x7fb",
    b"X: \x80\xff",
    b"X: a\rb",
    b"X: a\nb",
    b": v",
    b"X(: v",
    b"X\x01: v",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip",
    b"Transfer-Encoding: chunked, gzip",
    b"transfer-encoding: identity",
    b"Connection: close",
    b"Connection: keep-alive, close",
    b"Connection: x-hop",
    b"X-Hop: 1",
    b"Connection: upgrade",
    b"Upgrade: websocket",
    b"Upgrade: h2c",
    b"Proxy-Connection: close",
    b"Proxy-Connection: keep-alive",
    b"Expect: nothing",
    b"Expect: 100-continue, x",
]
HOSTS = [
    b"Host: example.com",
    b"Host: Example.COM:8080",
    b"host: a",
    b"HOST: a:",
    b"Host: a.b-c_d~e%41!$&'()*+;=",
    b"Host:  spaced ",
    b"Host: [::1]:80",
    b"Host: [::1]",
    b"Host: a b",
    b"Host: a,b",
    b"Host: a:80:90",
    b"Host: a:x",
    b"Host: a/b",
    b"Host: a@b",
    b"Host:",
    b"Host: ",
    b"Host: \x80",
]
CL = [
    b"0",
    b"5",
    b"007",
    b" 5 ",
    b"5 ",
    b"5, 5",
    b"-1",
    b"+5",
    b"5x",
    b"",
    b"0x5",
    b"99999999999999999999",
    b"999999999999999999",
    b"41",
    b"40",
]
METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE", b"get", b"FOO"]
TARGETS = [
    b"/",
    b"/a/b?x=1&y=2",
    b"/%20a",
    b"/~!$&'()*+,;=:@/?",
    b"/a?b?c",
    b"*",
    b"http://h/x",
    b"h:443",
    b"/a#f",
    b"/a b",
    b"/\x80",
    b"/a\x00",
    b"/a\\b",
    b'/"',
    b"/{}",
    b"/" + b"x" * 185,
    b"/" + b"x" * 190,
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"http/1.1"]


def head(rng: random.Random) -> bytes:
    """One message: mostly valid, with a bad part now and then."""
    bad = rng.random() < 0.35
    method = rng.choice(METHODS if bad else METHODS[:7])
    target = rng.choice(TARGETS if bad else TARGETS[:5])
    version = rng.choice(VERSIONS if bad else VERSIONS[:4])
    sp = rng.choice([b" ", b" ", b" ", b"  ", b"\t"]) if bad else b" "
    eol = rng.choice([b"\r\n", b"\r\n", b"\n", b"\r"]) if bad else b"\r\n"
    fields = rng.sample(GOOD_FIELDS, rng.randint(0, 6))
    if rng.random() < 0.9:
        fields.insert(rng.randint(0, len(fields)), rng.choice(HOSTS if bad else HOSTS[:6]))
    if bad:
        for _ in range(rng.randint(1, 2)):
            fields.insert(rng.randint(0, len(fields)), rng.choice(BAD_FIELDS + HOSTS))
    if rng.random() < 0.1:
        fields += [b"X-Many: v"] * rng.randint(5, 14)  # around max_headers
    if rng.random() < 0.05:
        fields.append(b"X-Long: " + b"v" * rng.randint(300, 600))  # around max_header_bytes
    body = b""
    if rng.random() < 0.5:
        cl = rng.choice(CL if bad else CL[:3] + CL[-2:])
        fields.insert(rng.randint(0, len(fields)), b"Content-Length: " + cl)
        if rng.random() < 0.1:
            fields.append(b"Content-Length: " + rng.choice(CL))
        n = int(cl) if cl.strip().isdigit() and len(cl) < 5 else 3
        body = bytes(rng.choice(b"abcdefgh") for _ in range(n))
    if rng.random() < 0.1:
        fields.append(b"Transfer-Encoding: chunked")
        body += b"3\r\nabc\r\n0\r\n\r\n"
    lead = rng.choice([b"\r\n", b"\n"]) if bad and rng.random() < 0.2 else b""
    line = method + sp + target + sp + version + eol
    return lead + line + b"".join(f + eol for f in fields) + eol + body


def streams(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [b"".join(head(rng) for _ in range(rng.choice([1, 1, 2, 3]))) for _ in range(count)]


@built
@pytest.mark.parametrize("seed", range(4))
def test_generated_streams_whole_and_split(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for data in streams(seed, 400):
        same(data)
        for _ in range(3):
            i = rng.randint(1, len(data) - 1)
            same(data, [data[:i], data[i:]])


COMMON = [
    b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a:8080\r\nConnection: keep-alive\r\nX-Empty:\r\n\r\n"
    b"POST /up?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello"
    b"HEAD /h HTTP/1.1\r\nhost: A\r\nTE: trailers\r\n\r\n",
    b"PUT /p HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /up HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\nraw",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 41\r\n\r\n" + b"x" * 41,
]


@built
@pytest.mark.parametrize("data", COMMON, ids=range(len(COMMON)))
def test_split_at_every_offset(data: bytes) -> None:
    same(data)
    same(data, [data[i : i + 1] for i in range(len(data))])
    for i in range(1, len(data)):
        same(data, [data[:i], data[i:]])


# -- the scan itself -----------------------------------------------------------------------


def scan(data: bytes) -> Any:
    assert _parse._SCAN is not None
    return _parse._SCAN(data, 0, 8192, 32768, 100)


@built
def test_scan_takes_the_common_heads() -> None:
    """What the comparison above covers is the scan's work, not llhttp's twice."""
    for data in COMMON[:3]:
        got = scan(data)
        assert got is not None, data
        assert data[got[0] - 4 : got[0]] == b"\r\n\r\n"
    taken = sum(scan(d) is not None for d in streams(9, 300))
    assert taken > 100


@built
@pytest.mark.parametrize(
    "data",
    [
        # llhttp refuses these (or frames them some other way); the scan must not take them.
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 1\r\n\r\nx",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: \x80\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nExpect: x\r\n\r\n",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r",
    ],
)
def test_scan_declines_what_llhttp_must_decide(data: bytes) -> None:
    assert scan(data) is None
    same(data)


@built
def test_scan_declines_past_the_limits() -> None:
    assert _parse._SCAN is not None
    data = b"GET /" + b"x" * 100 + b" HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 100 + b"\r\n\r\n"
    assert _parse._SCAN(data, 0, 200, 1000, 10) is not None
    assert _parse._SCAN(data, 0, 113, 1000, 10) is None  # request line: 414 from llhttp's path
    assert _parse._SCAN(data, 0, 200, len(data) - 1, 10) is None  # head size: 431
    assert _parse._SCAN(data, 0, 200, 1000, 1) is None  # field count: 431
    assert _parse._SCAN(data, 1, 200, 1000, 10) is None
    assert _parse._SCAN(data, len(data), 200, 1000, 10) is None


@built
def test_names_past_the_scans_name_table() -> None:
    """The scan keeps the first few hundred names it sees; any later one is made per field."""
    rng = random.Random(7)
    for i in range(60):
        fields = b"".join(
            b"X-%d-%s: v\r\n" % (i * 10 + k, bytes(rng.choice(b"aAbBzZ-") for _ in range(rng.randint(1, 30))))
            for k in range(10)
        )
        got = same(b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
        assert got[0][0] == "req" and [n.lower() for n, _ in got[0][6]] == got[0][7]


def test_without_the_module_llhttp_parses_every_head(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback where the C extension is not built: no scan, the reader as before."""
    monkeypatch.setitem(sys.modules, "monolake.core.proto.http1._h1req", None)
    assert _parse._native_scan() is None
    r = Recorder(native=False)
    r.feed(COMMON[1])
    assert [e[0] for e in r.events] == ["req", "end", "req", "body", "end", "req", "end"]
