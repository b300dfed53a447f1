"""Response compression (gzip, br, zstd) decoded by curl --compressed and httpx; request
decompression with a zip-bomb-safe cap."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import zlib
from collections.abc import Iterator
from typing import Any

import brotli
import httpx
import pytest
import zstandard

from monolake.apps.config import parse_config
from monolake.core.errors import ConfigError

from ._support import EchoOrigin, InProcessProxy, LoopThread

TEXT = b"".join(b"line %d of a compressible text body, repeated\n" % i for i in range(600))  # ~28 KB
BIG = os.urandom(64).hex().encode() * 40000  # 5 MB of text-ish bytes: streamed through the proxy


def answer(method: bytes, target: bytes, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
    path = target.decode()
    if path == "/text":
        return 200, [("Content-Type", "text/plain; charset=utf-8"), ("ETag", '"v1"')], TEXT
    if path == "/big":
        return 200, [("Content-Type", "application/json")], BIG
    if path == "/small":
        return 200, [("Content-Type", "text/plain")], b"tiny"
    if path == "/png":
        return 200, [("Content-Type", "image/png")], TEXT
    if path == "/encoded":
        return 200, [("Content-Type", "text/plain"), ("Content-Encoding", "gzip")], gzip.compress(TEXT)
    if path == "/range":
        part = TEXT[:1000]
        return 206, [("Content-Type", "text/plain"), ("Content-Range", f"bytes 0-999/{len(TEXT)}")], part
    if path == "/upload":
        return 200, [("Content-Type", "application/octet-stream")], hashlib.sha256(body).hexdigest().encode()
    return 404, [("Content-Type", "text/plain")], b"no\n"


CONFIG_ROUTES = [
    {
        "path": "/upload",
        "filters": [{"use": "decompress", "args": {"max_size": 1_000_000}}],
    },
    {"path": "/", "filters": ["compress"]},
]


@pytest.fixture(scope="module")
def proxy() -> Iterator[InProcessProxy]:
    lt = LoopThread()
    origin = EchoOrigin(lt, answer)
    routes = [{**r, "upstreams": [{"endpoint": origin.url}]} for r in CONFIG_ROUTES]
    p = InProcessProxy(lt, {"servers": {"web": {"listener": "127.0.0.1:0", "routes": routes}}})
    yield p
    p.close()
    origin.close()
    lt.close()


def raw(proxy: InProcessProxy, path: str, accept: str) -> httpx.Response:
    """The response as sent (``_raw``: the body not decoded)."""
    headers = {"Accept-Encoding": accept}
    with httpx.Client(base_url=proxy.url, timeout=30) as c, c.stream("GET", path, headers=headers) as r:
        r._raw = b"".join(r.iter_raw())  # type: ignore[attr-defined]
        return r


def decode(enc: str, data: bytes) -> bytes:
    if enc == "gzip":
        return gzip.decompress(data)
    if enc == "br":
        return bytes(brotli.decompress(data))
    return zstandard.ZstdDecompressor().stream_reader(data).read()


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_each_encoding_whole_and_streamed(proxy: InProcessProxy, enc: str) -> None:
    for path, want, ctype in (("/text", TEXT, "text/plain"), ("/big", BIG, "application/json")):
        r = raw(proxy, path, enc)
        assert r.headers["content-encoding"] == enc and r.headers["vary"] == "Accept-Encoding"
        assert ctype in r.headers["content-type"]
        assert decode(enc, r._raw) == want  # type: ignore[attr-defined]
        assert len(r._raw) < len(want) // 2  # type: ignore[attr-defined]
        if path == "/big":  # streamed: not buffered to learn a length
            assert r.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.headers
        else:
            assert r.headers["etag"] == 'W/"v1"'
        with httpx.Client(base_url=proxy.url, timeout=30) as c:  # httpx decodes it itself
            assert c.get(path, headers={"Accept-Encoding": enc}).content == want


def test_curl_compressed_decodes(proxy: InProcessProxy) -> None:
    out = subprocess.run(
        ["curl", "-sS", "--compressed", "-D", "-", "-o", "-", f"{proxy.url}/big"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"content-encoding: " in head.lower()
    assert body == BIG


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        ("gzip;q=0.5, br;q=0.9, zstd;q=0", "br"),
        ("gzip, br, zstd", "zstd"),  # equal q: the configured order (zstd, br, gzip)
        ("*;q=0.1, zstd;q=0", "br"),
        ("GZIP", "gzip"),
        ("identity", None),
        ("gzip;q=0", None),
        ("", None),
    ],
)
def test_accept_encoding_q_values(proxy: InProcessProxy, accept: str, chosen: str | None) -> None:
    r = raw(proxy, "/text", accept)
    assert r.headers.get("content-encoding") == chosen
    assert r.headers["vary"] == "Accept-Encoding"  # on every response of a compressible type
    if chosen is None:
        assert r._raw == TEXT and r.headers["etag"] == '"v1"'  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/small", "/png", "/encoded", "/range"])
def test_left_untouched(proxy: InProcessProxy, path: str) -> None:
    r = raw(proxy, path, "gzip, br, zstd")
    body = r._raw  # type: ignore[attr-defined]
    if path == "/encoded":
        assert r.headers["content-encoding"] == "gzip" and gzip.decompress(body) == TEXT
    else:
        assert "content-encoding" not in r.headers
    if path == "/range":
        assert r.status_code == 206 and body == TEXT[:1000]
    if path == "/png":
        assert "vary" not in r.headers and body == TEXT


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize(
    ("enc", "pack"), [("gzip", gzip.compress), ("br", lambda d: bytes(brotli.compress(d))), ("zstd", _zstd)]
)
def test_request_decompression_and_bomb(proxy: InProcessProxy, enc: str, pack: Any) -> None:
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        r = c.post("/upload", content=pack(TEXT), headers={"Content-Encoding": enc})
        assert r.status_code == 200 and r.text == hashlib.sha256(TEXT).hexdigest()
        bomb = pack(b"\0" * 10_000_000)  # 10 MB of zeros: a few KB compressed, 10x the cap
        assert len(bomb) < 20_000
        r = c.post("/upload", content=bomb, headers={"Content-Encoding": enc})
        assert r.status_code == 413
        r = c.post("/upload", content=b"not compressed", headers={"Content-Encoding": enc})
        assert r.status_code == 400


def test_compress_args_checked() -> None:
    raw_cfg = {
        "servers": {
            "web": {
                "listener": "127.0.0.1:0",
                "routes": [
                    {
                        "upstreams": [{"endpoint": "http://127.0.0.1:9"}],
                        "filters": [
                            {"use": "compress", "args": {"gzip_level": 12}},
                            {"use": "compress", "args": {"encodings": ["lz4"]}},
                            {"use": "compress", "args": {"types": ["text"]}},
                            {"use": "decompress", "args": {"max_size": 0}},
                        ],
                    }
                ],
            }
        }
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw_cfg)
    got = [str(e) for e in getattr(info.value, "errors", [info.value])]
    assert got == [
        "servers.web.routes[0].filters[0].args.gzip_level: must be between 1 and 9, got 12",
        "servers.web.routes[0].filters[1].args.encodings[0]: Invalid enum value 'lz4'",
        "servers.web.routes[0].filters[2].args.types[0]: expected 'type/subtype' or 'type/*', got 'text'",
        "servers.web.routes[0].filters[3].args.max_size: must be >= 1 (bytes)",
    ]


def test_zlib_wbits_cover_zlib_bodies_too() -> None:
    from monolake.apps.edge.compress import inflate

    assert inflate(b"gzip", zlib.compress(TEXT), 10**6) == TEXT
