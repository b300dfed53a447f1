"""The ``cache`` built-in: a real origin counts its hits; HIT/MISS/STALE, Vary, no-store,
coalesced misses, size bounds, and ``monolake check``'s key paths."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from monolake.apps.config import parse_config
from monolake.apps.edge import cache as cache_mod
from monolake.core.errors import ConfigError

from ._support import EchoOrigin, InProcessProxy, LoopThread

BIG = b"x" * 300_000  # over the route's max_entry_bytes: streamed through, never stored
MEDIUM = bytes(range(256)) * 600  # 153.6 KB
hits: Counter[str] = Counter()


def answer(method: bytes, target: bytes, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
    path = target.decode()
    hits[path] += 1
    n = str(hits[path]).encode()
    text = [("Content-Type", "text/plain")]
    if path.startswith("/fresh"):
        return 200, [*text, ("Cache-Control", "max-age=300")], b"fresh " + n
    if path.startswith("/zip/"):
        return 200, [*text, ("Cache-Control", "max-age=300")], b"compressible text\n" * 100
    if path == "/etag":
        return 200, [*text, ("Cache-Control", "max-age=300"), ("ETag", 'W/"v1"')], b"tagged"
    if path == "/validate":
        tag = [("ETag", '"e1"'), ("Last-Modified", "Mon, 07 Dec 2026 10:00:00 GMT")]
        if headers.get("if-none-match") == '"e1"':
            return 304, [("Cache-Control", "max-age=300"), *tag], b""
        return 200, [*text, ("Cache-Control", "max-age=300"), *tag], b"validated " + n
    if path == "/no-store":
        return 200, [*text, ("Cache-Control", "no-store")], b"nope " + n
    if path == "/private":
        return 200, [*text, ("Cache-Control", "private, max-age=300")], b"mine " + n
    if path == "/cookie":
        return 200, [*text, ("Cache-Control", "max-age=300"), ("Set-Cookie", "a=1")], b"cookie " + n
    if path == "/vary":
        lang = headers.get("accept-language", "-").encode()
        return 200, [*text, ("Cache-Control", "max-age=300"), ("Vary", "Accept-Language")], lang + b" " + n
    if path == "/swr":
        return 200, [*text, ("Cache-Control", "max-age=1, stale-while-revalidate=600")], b"swr " + n
    if path == "/big":
        return 200, [*text, ("Cache-Control", "max-age=300")], BIG
    if path == "/plain":
        return 200, text, b"plain " + n
    return 404, text, b"no\n"


class StreamingOrigin:
    """Sends a chunked body in pieces, a moment apart, so that the proxy relays a stream."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.server: asyncio.Server = lt.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                hits[path] += 1
                size = 50_000 if path == "/stream/small" else 150_000
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=300\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for piece in (MEDIUM[: size // 2], MEDIUM[: size - size // 2]):
                    await writer.drain()
                    await asyncio.sleep(0.02)  # a slow origin: the proxy forwards the head first
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        self.lt.run(stop())


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[LoopThread, InProcessProxy]]:
    lt = LoopThread()
    origin = EchoOrigin(lt, answer)
    streaming = StreamingOrigin(lt)
    up = [{"endpoint": origin.url}]
    routes = [
        {"path": "/zip/", "upstreams": up, "filters": ["compress", "cache"]},
        {
            "path": "/stream/",
            "upstreams": [{"endpoint": streaming.url}],
            "filters": [{"use": "cache", "args": {"max_entry_bytes": 100_000}}],
        },
        {"path": "/", "upstreams": up, "filters": [{"use": "cache", "args": {"max_entry_bytes": 100_000}}]},
    ]
    p = InProcessProxy(lt, {"servers": {"web": {"listener": "127.0.0.1:0", "routes": routes}}})
    origins[id(p)] = origin
    yield lt, p
    p.close()
    origin.close()
    streaming.close()
    lt.close()


origins: dict[int, EchoOrigin] = {}


def env_origin_requests(p: InProcessProxy) -> list[tuple[bytes, bytes, dict[str, str]]]:
    return origins[id(p)].requests


def get(p: InProcessProxy, path: str, **headers: str) -> httpx.Response:
    return httpx.get(p.url + path, headers=headers, timeout=30)


def test_miss_then_hit_with_age(env: tuple[LoopThread, InProcessProxy]) -> None:
    _, p = env
    r1 = get(p, "/fresh1")
    assert (r1.status_code, r1.headers["x-cache"], r1.content) == (200, "MISS", b"fresh 1")
    r2 = get(p, "/fresh1")
    assert (r2.headers["x-cache"], r2.content, r2.headers["cache-control"]) == ("HIT", b"fresh 1", "max-age=300")
    assert int(r2.headers["age"]) >= 0
    head = httpx.head(p.url + "/fresh1", timeout=30)
    assert (head.headers["x-cache"], head.headers["content-length"]) == ("HIT", "7")
    head = httpx.head(p.url + "/fresh-head", timeout=30)  # a HEAD miss goes upstream, is not stored
    assert head.headers["x-cache"] == "MISS" and get(p, "/fresh-head").headers["x-cache"] == "MISS"
    assert get(p, "/fresh1?q=2").headers["x-cache"] == "MISS"  # the query is part of the key
    assert hits["/fresh1"] == 1
    # A request asking to revalidate goes upstream, and its response replaces the entry.
    r3 = get(p, "/fresh1", **{"Cache-Control": "no-cache"})
    assert (r3.headers["x-cache"], r3.content) == ("MISS", b"fresh 2")
    assert get(p, "/fresh1").content == b"fresh 2"
    # A request with no-store neither reads nor writes the cache.
    assert get(p, "/fresh1", **{"Cache-Control": "no-store"}).headers["x-cache"] == "BYPASS"
    assert hits["/fresh1"] == 3


def test_http2_client_gets_the_hit(env: tuple[LoopThread, InProcessProxy]) -> None:
    _, p = env
    with httpx.Client(http2=True, http1=False, timeout=30) as c:  # h2c by prior knowledge
        rs = [c.get(p.url + "/fresh-h2") for _ in range(2)]
    assert [(r.http_version, r.headers["x-cache"], r.content) for r in rs] == [
        ("HTTP/2", "MISS", b"fresh 1"),
        ("HTTP/2", "HIT", b"fresh 1"),
    ]
    assert int(rs[1].headers["age"]) >= 0 and rs[1].headers["content-length"] == "7"


def test_compressed_variants_stored_by_accept_encoding(env: tuple[LoopThread, InProcessProxy]) -> None:
    _, p = env
    plain = b"compressible text\n" * 100
    with httpx.Client(timeout=30) as c:
        rs = [c.get(p.url + "/zip/a", headers={"Accept-Encoding": ae}) for ae in ("gzip", "gzip", "identity")]
    assert [(r.headers["x-cache"], r.headers.get("content-encoding")) for r in rs] == [
        ("MISS", "gzip"),
        ("HIT", "gzip"),
        ("MISS", None),
    ]
    assert all(r.content == plain for r in rs) and hits["/zip/a"] == 2  # httpx decoded the gzip ones


def test_if_none_match_answered_304_from_the_cache(env: tuple[LoopThread, InProcessProxy]) -> None:
    _, p = env
    assert get(p, "/etag").headers["x-cache"] == "MISS"
    r = get(p, "/etag", **{"If-None-Match": '"v0", "v1"'})
    assert (r.status_code, r.headers["x-cache"], r.headers["etag"], r.content) == (304, "HIT", 'W/"v1"', b"")
    assert get(p, "/etag", **{"If-None-Match": '"v2"'}).content == b"tagged"
    assert hits["/etag"] == 1


def test_revalidation_upstream_with_the_stored_validators(env: tuple[LoopThread, InProcessProxy]) -> None:
    _, p = env
    assert get(p, "/validate").headers["x-cache"] == "MISS"
    r = get(p, "/validate", **{"Cache-Control": "no-cache"})  # asks for a check: a 304 upstream
    assert (r.status_code, r.headers["x-cache"], r.content) == (200, "REVALIDATED", b"validated 1")
    assert get(p, "/validate").headers["x-cache"] == "HIT"
    assert hits["/validate"] == 2
    seen = [h for _, t, h in env_origin_requests(p) if t == b"/validate"]
    assert "if-none-match" not in seen[0]
    assert (seen[1]["if-none-match"], seen[1]["if-modified-since"]) == ('"e1"', "Mon, 07 Dec 2026 10:00:00 GMT")


def test_unsafe_method_invalidates(env: tuple[LoopThread, InProcessProxy]) -> None:
    _, p = env
    assert [get(p, "/fresh-post").headers["x-cache"] for _ in range(2)] == ["MISS", "HIT"]
    assert httpx.post(p.url + "/fresh-post", content=b"x", timeout=30).status_code == 200
    r = get(p, "/fresh-post")
    assert (r.headers["x-cache"], r.content) == ("MISS", b"fresh 3")


@pytest.mark.parametrize("path", ["/no-store", "/private", "/cookie", "/plain"])
def test_not_stored(env: tuple[LoopThread, InProcessProxy], path: str) -> None:
    _, p = env
    first, second = get(p, path), get(p, path)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "MISS")
    assert second.content.endswith(b" 2") and hits[path] == 2


def test_vary(env: tuple[LoopThread, InProcessProxy]) -> None:
    _, p = env
    en = get(p, "/vary", **{"Accept-Language": "en"})
    fr = get(p, "/vary", **{"Accept-Language": "fr"})
    en2 = get(p, "/vary", **{"Accept-Language": "en"})
    fr2 = get(p, "/vary", **{"Accept-Language": "fr"})
    assert [r.headers["x-cache"] for r in (en, fr, en2, fr2)] == ["MISS", "MISS", "HIT", "HIT"]
    assert (en2.content, fr2.content) == (b"en 1", b"fr 2")
    assert hits["/vary"] == 2


def test_stale_while_revalidate(env: tuple[LoopThread, InProcessProxy]) -> None:
    _, p = env
    assert get(p, "/swr").headers["x-cache"] == "MISS"
    deadline = time.monotonic() + 30
    while (r := get(p, "/swr")).headers["x-cache"] == "HIT":  # fresh for max-age=1
        assert time.monotonic() < deadline
    assert (r.headers["x-cache"], r.content) == ("STALE", b"swr 1")
    while hits["/swr"] < 2:  # the one background refresh
        assert time.monotonic() < deadline
        time.sleep(0.01)
    while (r := get(p, "/swr")).content != b"swr 2":
        assert time.monotonic() < deadline
    assert r.headers["x-cache"] in ("HIT", "STALE") and hits["/swr"] <= 3


def test_streamed_body_over_the_entry_limit(env: tuple[LoopThread, InProcessProxy]) -> None:
    _, p = env
    for _ in range(2):
        r = get(p, "/big")
        assert (r.headers["x-cache"], r.content) == ("MISS", BIG)
    assert hits["/big"] == 2


def test_streamed_body_captured_on_the_way(env: tuple[LoopThread, InProcessProxy]) -> None:
    _, p = env
    first, second = get(p, "/stream/small"), get(p, "/stream/small")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.content == second.content == MEDIUM[:25_000] + MEDIUM[:25_000]
    assert hits["/stream/small"] == 1
    # Past max_entry_bytes (150 KB, chunked: no length known up front) the capture stops.
    big = [get(p, "/stream/big") for _ in range(2)]
    assert [r.headers["x-cache"] for r in big] == ["MISS", "MISS"]
    assert big[1].content == MEDIUM[:75_000] + MEDIUM[:75_000] and hits["/stream/big"] == 2


def test_coalescing(env: tuple[LoopThread, InProcessProxy]) -> None:
    _, p = env
    n = 8

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as c:
            return await asyncio.gather(*(c.get(p.url + "/fresh-burst") for _ in range(n)))

    # The proxy runs on lt's loop; the clients here on their own: all n go out together.
    rs = asyncio.run(burst())
    assert all(r.content == b"fresh 1" for r in rs)
    assert hits["/fresh-burst"] == 1
    assert sorted(r.headers["x-cache"] for r in rs) == ["HIT"] * (n - 1) + ["MISS"]
    assert all(c.waiting == 0 and not c.pending for c in cache_mod._caches)


def test_bounds_evict_least_recently_used() -> None:
    c = cache_mod.Cache(cache_mod.CacheArgs(max_entries=2, max_bytes=10_000, max_entry_bytes=1000))
    from monolake.core.proto.http1 import Headers

    plan = cache_mod.Plan(200, (), b"", 60.0, 0.0, 0.0)
    for k in (b"h/a", b"h/b"):
        c.store(k, Headers(), plan, b"x")
    c.entries.move_to_end((b"h/a", ()))  # a was used last
    c.store(b"h/c", Headers(), plan, b"x")
    assert [k[0] for k in c.entries] == [b"h/a", b"h/c"]
    big = cache_mod.Cache(cache_mod.CacheArgs(max_bytes=3000, max_entry_bytes=1000))
    for i in range(10):
        big.store(b"h/%d" % i, Headers(), plan, b"y" * 900)
    assert big.size <= 3000 and len(big.entries) == 2
    assert big.purge("h/9") == 1 and big.purge("*") == 1 and big.size == 0


@pytest.mark.parametrize(
    ("args", "where"),
    [
        ({"max_entries": 0}, "args.max_entries"),
        ({"max_entry_bytes": 10, "max_bytes": 5}, "args.max_entry_bytes"),
        ({"statuses": [200, 99]}, "args.statuses[1]"),
        ({"header": "X Cache"}, "args.header"),
        ({"max_bytes": "lots"}, "args.max_bytes"),
        ({"ttl": 3}, "args"),
    ],
)
def test_check_names_the_key(args: dict[str, Any], where: str) -> None:
    raw = {
        "servers": {
            "web": {
                "listener": "127.0.0.1:0",
                "routes": [{"path": "/", "upstreams": [{"endpoint": "http://127.0.0.1:1"}], "filters": []}],
            }
        }
    }
    raw["servers"]["web"]["routes"][0]["filters"] = [{"use": "cache", "args": args}]
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert f"servers.web.routes[0].filters[0].{where}" in str(e.value)


def test_docs_example(tmp_path: Any) -> None:
    """examples/edge/cache.toml (docs/edge.md) caches /static/ by its default_ttl, not /."""
    from .test_edge_examples import load

    lt = LoopThread()
    origin = EchoOrigin(lt)
    raw = load("cache.toml", origin, tmp_path)
    raw.pop("admin")
    p = InProcessProxy(lt, raw)
    try:
        with httpx.Client(base_url=p.url, timeout=30) as c:
            assert [c.get("/static/a.css").headers["x-cache"] for _ in range(2)] == ["MISS", "HIT"]
            assert "x-cache" not in c.get("/other").headers
        assert [t for _, t, _ in origin.requests] == [b"/static/a.css", b"/other"]
    finally:
        p.close()
        origin.close()
        lt.close()
