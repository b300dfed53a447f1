"""Micro benchmarks of the HTTP/1.1 codec, without sockets.

    python -m pytest bench/micro -q --benchmark-only

Not part of the test suite (testpaths is tests/); timings never gate CI.
"""

from __future__ import annotations

from typing import Any

from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.proto.http1._parse import RequestReader, ResponseReader
from monolake.core.proto.http1._serialize import request_head, response_head

REQUEST = (
    b"GET /api/items?id=7 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: h2load nghttp2/1.52.0\r\nAccept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 00:40:00 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 128\r\nLast-Modified: Wed, 25 Nov 2026 00:35:00 GMT\r\n"
    b'Connection: keep-alive\r\nETag: "abc-80"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 128
)


class _Requests(RequestReader):
    def __init__(self) -> None:
        self.reader_init()
        self.last: Request | None = None

    def request_received(self, req: Request, has_body: bool, content_length: int | None) -> None:
        self.last = req

    def body_received(self, data: bytes) -> None:
        return None

    def request_complete(self) -> None:
        return None


class _Responses(ResponseReader):
    def __init__(self) -> None:
        self.reader_init()
        self.last: Response | None = None

    def response_received(self, resp: Response, has_body: bool) -> None:
        self.last = resp

    def body_received(self, data: bytes) -> None:
        return None

    def response_complete(self) -> None:
        return None


def test_parse_request(benchmark: Any) -> None:
    reader = _Requests()
    benchmark(reader.feed, REQUEST)
    assert reader.last is not None and reader.last.path == b"/api/items"


def test_parse_response(benchmark: Any) -> None:
    reader = _Responses()
    benchmark(reader.feed, RESPONSE)
    assert reader.last is not None and reader.last.status == 200


def test_serialize_request_head(benchmark: Any) -> None:
    headers = Headers([(b"Host", b"example.com"), (b"User-Agent", b"x"), (b"Accept", b"*/*")])
    out = benchmark(request_head, b"GET", b"/api/items?id=7", headers, b"")
    assert out.startswith(b"GET /api/items?id=7 HTTP/1.1\r\n")


def test_serialize_response_head(benchmark: Any) -> None:
    reader = _Responses()
    reader.feed(RESPONSE)
    assert reader.last is not None
    out = benchmark(response_head, 200, reader.last.headers, b"Content-Length: 128\r\n")
    assert out.endswith(b"\r\n\r\n")
