"""The native response head scan (``_h1resp``) against llhttp: same responses, same results.

Every input is fed to two ``ResponseReader``s, one with ``native_heads`` (the C scan takes
the common heads, llhttp the rest) and one parsing every head with llhttp; what the hooks
see (status, reason, version, the kept wire block, the hop-by-hop fields, framing,
keep-alive, the body pieces joined, completion) or the error raised must be the same.
Inputs: generated heads, good and bad, with every hop-by-hop name in odd case and spacing;
and common responses split across reads at every byte offset.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from monolake.core.errors import ProtocolError
from monolake.core.proto.http._message import Response
from monolake.core.proto.http1._parse import ResponseReader

h1resp = pytest.importorskip(
    "monolake.core.proto.http1._h1resp", reason="the native scan is not built here (no C compiler at install)"
)


class Recorder(ResponseReader):
    def __init__(self, native: bool, **limits: int) -> None:
        for name, value in limits.items():
            setattr(self, name, value)
        self.reader_init()
        self.native_heads = native
        self.events: list[Any] = []
        self.pieces: list[bytes] = []

    def response_received(self, resp: Response, has_body: bool) -> None:
        block = resp.headers.block  # before .raw parses it
        self.events.append(
            [
                "head",
                resp.status,
                resp.reason,
                resp.version,
                block,
                list(resp.headers.raw),
                resp.hop_headers,
                resp.content_length,
                resp.keep_alive,
                has_body,
            ]
        )

    def body_received(self, data: bytes) -> None:
        self.pieces.append(data)
        if self.events and self.events[-1][0] == "body":
            self.events[-1][1] += data
        else:
            self.events.append(["body", bytes(data)])

    def response_complete(self) -> None:
        self.events.append(["complete"])


def outcome(pieces: list[bytes], native: bool, head_only: bool = False, **limits: int) -> list[Any]:
    r = Recorder(native, **limits)
    r.expect_no_body = head_only
    try:
        for p in pieces:
            r.feed(p)
    except ProtocolError as exc:
        return [*r.events, ["error", exc.status_hint, exc.source, str(exc)]]
    return r.events


def same(pieces: list[bytes], head_only: bool = False, **limits: int) -> list[Any]:
    want = outcome(pieces, False, head_only, **limits)
    got = outcome(pieces, True, head_only, **limits)
    for w, g in zip(want, got, strict=False):
        if w[0] == g[0] == "head" and w[4] is None:
            # llhttp's path parses the block when Connection has more than one token (to drop
            # the fields it names); the native one keeps it when they name none: the pairs agree.
            g[4] = None
    assert got == want, (b"".join(pieces), [len(p) for p in pieces], head_only, limits)
    return got


NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 00:40:00 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 16\r\nConnection: keep-alive\r\n"
    b'ETag: "abc-80"\r\nAccept-Ranges: bytes\r\n\r\n0123456789abcdef'
)


# --- generated heads ------------------------------------------------------------------

HOP = [
    "Connection",
    "Content-Length",
    "Keep-Alive",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "Proxy-Connection",
    "Expect",
]
PLAIN = ["Server", "Date", "Content-Type", "ETag", "X-Content-Length", "X-Connection", "Te-X", "Connections", "A"]


def odd_case(rng: random.Random, name: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)


def value_for(rng: random.Random, lname: str) -> str:
    if lname == "content-length":
        return rng.choice(["0", "3", "10", "007", "", "+1", "-1", "1 2", "3,3", "99999999999999999999", "0x1", "3 "])
    if lname == "connection":
        return rng.choice(
            ["keep-alive", "close", "Keep-Alive", "CLOSE", "keep-alive, close", "close ,keep-alive", "upgrade", "x-a",
             "keep-alive, X-A", "", " , ", "keep-alive,", "keep-alive ,  keep-alive", "close\t"]
        )  # fmt: skip
    if lname == "transfer-encoding":
        return rng.choice(["chunked", "gzip", "gzip, chunked", "Chunked", "chunked, gzip", ""])
    return rng.choice(["v", "a b", " spaced\t", "", "x=1; y=2", "\x7fdel", "caf\xe9", "nul\x00", 'q"uoted"', "a:b"])


def header_line(rng: random.Random) -> str:
    roll = rng.random()
    name = rng.choice(HOP if roll < 0.6 else PLAIN)
    name = odd_case(rng, name)
    value = value_for(rng, name.lower())
    sep = rng.choice([":", ": ", ":\t", ":  ", ": ", ": ", " :", ":"])
    line = name + sep + value
    bad = rng.random()
    if bad < 0.02:
        line = " folded"  # obs-fold
    elif bad < 0.03:
        line = ": no-name"
    elif bad < 0.04:
        line = "Bad Name: x"
    elif bad < 0.05:
        line = "X-Ctl: a\x01b"
    return line


def status_line(rng: random.Random) -> str:
    version = rng.choice(["HTTP/1.1"] * 8 + ["HTTP/1.0"] * 2 + ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "http/1.1"])
    status = rng.choice(["200"] * 6 + ["204", "304", "404", "599", "100", "101", "103", "199", "600", "099", "2000"])
    reason = rng.choice([" OK", " OK", " Not Found", "", " ", "  two", " tab\there", " caf\xe9", " x\x01"])
    return f"{version} {status}{reason}"


def generated(rng: random.Random) -> bytes:
    lines = [status_line(rng), *(header_line(rng) for _ in range(rng.randrange(0, 7)))]
    if rng.random() < 0.7:
        lines.insert(rng.randrange(1, len(lines) + 1), f"Content-Length: {rng.choice([0, 3, 10])}")
    if rng.random() < 0.5:
        lines.insert(rng.randrange(1, len(lines) + 1), "Connection: keep-alive")
    eol = "\r\n" if rng.random() > 0.03 else "\n"
    head = (eol.join(lines) + eol + eol).encode("latin-1")
    body = b"0123456789abcdef"[: rng.choice([0, 3, 10, 16])]
    if "chunked" in head.decode("latin-1").lower() and rng.random() < 0.7:
        body = b"3\r\nabc\r\n0\r\n\r\n"
    return head + body


@pytest.mark.parametrize("seed", range(4))
def test_generated_heads_read_the_same_natively_and_by_llhttp(seed: int) -> None:
    rng = random.Random(seed)
    taken = 0
    for _ in range(1500):
        data = generated(rng)
        if rng.random() < 0.3:
            data += generated(rng)  # back to back in one read
        head_only = rng.random() < 0.1
        limits = {"max_headers": rng.choice([3, 200])} if rng.random() < 0.2 else {}
        same([data], head_only, **limits)
        taken += h1resp.scan(data, 0, 200, 65536) is not None
    assert taken > 50  # the native path is exercised, not only declined


HOPPY = (
    b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\nTE: trailers\r\nContent-Length: 3\r\n"
    b"Trailer: X\r\nConnection: keep-alive\r\nProxy-Authenticate: Basic\r\n\r\nabc"
)
INTERESTING = b"\r\n\x00\t :,;\x7f\x80\xffAz09-+"


@pytest.mark.parametrize("seed", range(2))
def test_mutated_common_responses_read_the_same(seed: int) -> None:
    """Byte edits of responses the native path takes: each one taken the same way or declined."""
    rng = random.Random(seed)
    for _ in range(1500):
        data = bytearray(rng.choice([NGINX, HOPPY]))
        for _ in range(rng.choice([1, 1, 2])):
            at = rng.randrange(len(data))
            edit = rng.random()
            if edit < 0.6:
                data[at] = rng.choice(INTERESTING)
            elif edit < 0.8:
                data.insert(at, rng.choice(INTERESTING))
            else:
                del data[at]
        same([bytes(data)], rng.random() < 0.1)


@pytest.mark.parametrize(
    "lines",
    [
        ["Content-Length: 3", "Connection: keep-alive"],
        ["content-length:3", "CONNECTION:KEEP-ALIVE"],
        ["CoNtEnT-LeNgTh: \t3\t ", "cOnNeCtIoN:\tkeep-alive ,close"],
        ["Keep-Alive: timeout=5", "Content-Length: 3", "TE: trailers", "Trailer: X", "X-A: 1"],
        ["X-A: 1", "Proxy-Authenticate: Basic", "PROXY-AUTHORIZATION: x", "X-B: 2", "Content-Length: 3"],
        ["Te:", "tE: a", "Content-Length: 3", "Te-Not: kept", "X-Te: kept"],
        ["Content-Length: 3", "Content-Length: 3"],
        ["Content-Length: 3", "Transfer-Encoding: chunked"],
        ["Content-Length: 3", "Upgrade: h2c"],
        ["Content-Length: 3", "Proxy-Connection: keep-alive"],
        ["Content-Length: 3", "Connection: X-A", "X-A: 1"],
        ["Content-Length: 3", "Expect: 100-continue"],
        ["Content-Length : 3"],
        ["Transfer-Encoding: chunked"],
        ["transfer-encoding:\tCHUNKED ", "Connection: keep-alive", "TE: trailers"],
        ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: gzip, chunked"],
        ["Content-Length: 3", "X: a\x00b"],
        ["Content-Length: 3", "X: caf\xe9"],
    ],
)
@pytest.mark.parametrize("start", ["HTTP/1.1 200 OK", "HTTP/1.0 200 OK", "HTTP/1.1 304 Not Modified"])
def test_every_hop_by_hop_name_in_odd_case_and_spacing(lines: list[str], start: str) -> None:
    data = ("\r\n".join([start, *lines]) + "\r\n\r\n").encode("latin-1") + b"abc"
    for head_only in (False, True):
        same([data], head_only)


# --- reads split anywhere ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "head_only"),
    [
        pytest.param(NGINX, False, id="nginx-like"),
        pytest.param(NGINX + NGINX, False, id="two-back-to-back"),
        pytest.param(b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n" + NGINX, False, id="204-then-200"),
        pytest.param(NGINX[: NGINX.index(b"\r\n\r\n") + 4] + NGINX, True, id="head-then-200"),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n" + NGINX, False, id="100-then-200"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", False, id="chunked"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\nX: y\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n" + NGINX,
            False,
            id="chunked-with-trailer-then-200",
        ),
        pytest.param(NGINX.replace(b"keep-alive", b"close") + b"HTTP/1.1 200 OK\r\n\r\n", False, id="data-after-close"),
    ],
)
def test_split_across_reads_at_every_offset(data: bytes, head_only: bool) -> None:
    whole = same([data], head_only)
    # After a chunked body, where the next response would start is not tracked within a read
    # (llhttp's path too): in the same read it is an error, in the next one it is read.
    invariant = b"0\r\nX-T: 1\r\n\r\nHTTP" not in data
    for i in range(1, len(data)):
        got = same([data[:i], data[i:]], head_only)
        assert got == whole or not invariant, i
    for i in range(1, len(data) - 1, 7):
        same([data[:i], data[i : i + 5], data[i + 5 :]], head_only)


def test_a_body_in_later_reads_is_handed_on_as_read() -> None:
    """No copy of a body piece that arrives on its own: the bytes read are what is handed on."""
    head = NGINX[: NGINX.index(b"\r\n\r\n") + 4]
    r = Recorder(True)
    middle, last = b"3456", b"789abcdef"
    r.feed(head + b"012")
    r.feed(middle)
    r.feed(last)  # the body's end and nothing after it
    assert r.pieces == [b"012", middle, last]
    assert r.pieces[1] is middle and r.pieces[2] is last
    assert r.events[-1] == ["complete"]


def test_limits_are_llhttp_paths_errors() -> None:
    data = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5)) + b"Content-Length: 0\r\n\r\n"
    assert same([data], max_headers=5)[-1][0] == "error"
    assert same([data], max_headers=6)[-1] == ["complete"]
    assert same([data], max_header_bytes=len(data) - 1)[-1][0] == "error"
    assert same([data], max_header_bytes=len(data))[-1] == ["complete"]


def test_scan_never_raises_on_any_prefix_or_offset() -> None:
    data = NGINX + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    for i in range(len(data) + 1):
        for pos in (0, 1, i // 2, len(data)):
            found = h1resp.scan(data[:i], pos, 200, 65536)
            assert found is None or found[0] <= i
    with pytest.raises(TypeError):
        h1resp.scan(bytearray(data), 0, 200, 65536)
