"""Fuzz target for the HTTP/1 request reader.

The rule (h11/h2 style): for any bytes, fed in any pieces, ``RequestReader.feed``
either accepts them or raises ``ProtocolError``; never anything else. "Anything
else" includes raw httptools exceptions leaking through, ``ValueError`` from a
value the reader failed to validate, and hooks called out of order (a body
before its head, a message completed twice), which ``Recorder`` asserts. And where the
native head scan is built, a reader with it and one without (llhttp only) see the same
messages and the same error: the scan takes nothing llhttp would refuse.

Run it:

    python fuzz/fuzz_http1.py                 # atheris (libFuzzer) if installed
    python fuzz/fuzz_http1.py --hypothesis N  # otherwise: N hypothesis examples

The first byte of each atheris input picks how the rest is split (whole, byte by
byte, or fixed-size pieces), so the fuzzer explores feed boundaries too. The same
property runs under pytest for a bounded number of examples in
``tests/proto/http1/test_http1_fuzz.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from monolake.core.errors import ProtocolError
from monolake.core.proto.http._message import Request
from monolake.core.proto.http1 import _parse
from monolake.core.proto.http1._parse import RequestReader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared runner beside this file
from _runner import main, run_hypothesis

SEEDS: tuple[bytes, ...] = (
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /p?q=1 HTTP/1.0\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\nContent-Length: 2\r\n\r\n"
    b"hiGET / HTTP/1.1\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nxGET / HTTP/1.1\r\n",
)
"""Valid and nearly-valid requests that mutations start from."""

TOKENS: tuple[bytes, ...] = (
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b"Host: a\r\n",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Connection: close\r\n",
    b"Connection: upgrade\r\nUpgrade: x\r\n",
    b"Expect: 100-continue\r\n",
    b"0\r\n\r\n",
    b"-1",
    b"99999999999999999999",
    b"ffffffff;",
    b"GET / HTTP/1.1\r\n",
    b"HTTP/1.0",
)
"""Fragments that mutations splice in: framing headers, line ends, numbers."""


class Recorder(RequestReader):
    """Checks hook order while it records. Small limits so limits get exercised (set per
    instance: a compiled RequestReader reads its own slots, not a subclass's class attributes)."""

    def __init__(self, native: bool = True) -> None:
        self.native_heads = native
        self.max_header_bytes = 2048
        self.max_headers = 16
        self.max_body_bytes = 4096
        self.reader_init()
        self.messages: list[tuple[Request, bytes]] = []
        self._open = False

    def request_received(self, req: Request, has_body: bool, content_length: int | None) -> None:
        assert not self._open, "request_received while the previous message is open"
        assert isinstance(req.method, bytes) and isinstance(req.target, bytes)
        assert content_length is None or content_length >= 0
        self._open = True
        self.messages.append((req, b""))

    def body_received(self, data: bytes) -> None:
        assert self._open, "body_received outside a message"
        req, body = self.messages[-1]
        self.messages[-1] = (req, body + bytes(data))

    def request_complete(self) -> None:
        assert self._open, "request_complete without request_received"
        self._open = False


def pieces(data: bytes, step: int) -> Iterable[bytes]:
    if step <= 0:
        yield data
        return
    for i in range(0, len(data), step):
        yield data[i : i + step]


def _feed(data: bytes, step: int, native: bool) -> tuple[Recorder, ProtocolError | None]:
    r = Recorder(native)
    try:
        for p in pieces(data, step):
            r.feed(p)
    except ProtocolError as exc:
        assert 400 <= exc.status_hint < 600, exc.status_hint
        return r, exc
    return r, None


def _seen(r: Recorder, exc: ProtocolError | None) -> object:
    msgs = [
        (q.method, q.target, q.version, q.headers.pairs(), q.headers.names(), q.hop_headers, q.host, q.raw_host)
        for q, _ in r.messages
    ]
    more = [(q.keep_alive, q.expect_continue, q.upgrade, body) for q, body in r.messages]
    return msgs, more, r._open, None if exc is None else (exc.status_hint, str(exc))


def check_request_bytes(data: bytes, step: int = 0) -> list[tuple[Request, bytes]] | None:
    """Feed ``data`` in pieces of ``step`` bytes (0: whole). Returns the messages if
    accepted, None if a ProtocolError rejected them; anything else propagates."""
    r, exc = _feed(data, step, True)
    if _parse._SCAN is not None:
        slow, slow_exc = _feed(data, step, False)
        assert _seen(r, exc) == _seen(slow, slow_exc), "the native head scan and llhttp differ"
    return None if exc is not None else r.messages


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    step = data[0] % 9  # 0: whole, 1: byte by byte, 2..8: fixed pieces
    check_request_bytes(data[1:], step)


def _run_hypothesis(n: int) -> None:
    run_hypothesis(TestOneInput, n, max_size=513)


if __name__ == "__main__":
    main(sys.argv, TestOneInput, max_size=513)
