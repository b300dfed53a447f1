"""Streamed request decompression (``decompress``, apps/edge/compress.py): bodies sent compressed by
curl, httpx and a raw socket, checked as the upstream receives them (decoded, chunked, never more
than the cap), with 413 past the cap and 400 for a corrupt or cut stream."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import os
import socket
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import brotli
import httpx
import pytest
import zstandard

from monolake.apps.edge.compress import TooLarge, inflate

from ._support import InProcessProxy, LoopThread

CAP = 1_000_000
PACK: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda d: gzip.compress(d, 6),
    "br": lambda d: bytes(brotli.compress(d, quality=4)),
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
}
TEXT = b"".join(b"row %d: some compressible request text\n" % i for i in range(2000))  # ~80 KB
NEAR_CAP = (os.urandom(32).hex().encode() + b"\n") * (CAP // 65 - 10)  # just under the cap, ~10x smaller packed


def pack_in_two(enc: str, first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """One stream in two parts, the first flushed so that it decodes to ``first`` on its own."""
    if enc == "gzip":
        z = zlib.compressobj(6, zlib.DEFLATED, 31)
        return z.compress(first) + z.flush(zlib.Z_SYNC_FLUSH), z.compress(second) + z.flush()
    if enc == "br":
        b = brotli.Compressor(quality=4)
        return b.process(first) + b.flush(), b.process(second) + b.finish()
    zc = zstandard.ZstdCompressor().compressobj()
    return zc.compress(first) + zc.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK), zc.compress(second) + zc.flush()


class Rec:
    """One request as the origin received it."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.body = bytearray()
        self.complete = False
        self.cut = False
        """The connection ended mid-body."""


class BodyOrigin:
    """An HTTP/1.1 origin that records each request's body as it arrives (``requests``) and answers
    with its SHA-256."""

    def __init__(self, lt: LoopThread) -> None:
        self.requests: list[Rec] = []
        self.lt = lt
        self.server: asyncio.Server = lt.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec = None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    if line:
                        k, _, v = line.partition(b":")
                        headers[k.decode().lower()] = v.strip().decode("latin-1")
                rec = Rec(headers)
                self.requests.append(rec)
                if "content-length" in headers:
                    rec.body += await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding") == "chunked":
                    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                        rec.body += (await reader.readexactly(size + 2))[:-2]
                    await reader.readuntil(b"\r\n")
                rec.complete = True
                out = hashlib.sha256(rec.body).hexdigest().encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            if rec is not None and not rec.complete:
                rec.cut = True
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        self.lt.run(stop())


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[InProcessProxy, BodyOrigin]]:
    lt = LoopThread()
    origin = BodyOrigin(lt)
    route = {"upstreams": [{"endpoint": origin.url}], "filters": [{"use": "decompress", "args": {"max_size": CAP}}]}
    proxy = InProcessProxy(lt, {"servers": {"web": {"listener": "127.0.0.1:0", "routes": [route]}}})
    yield proxy, origin
    proxy.close()
    origin.close()
    lt.close()


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def last_request(origin: BodyOrigin, n_before: int) -> Rec:
    wait_for(lambda: len(origin.requests) > n_before, "the origin got no request")
    return origin.requests[-1]


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_curl_sends_compressed_bodies(stack: tuple[InProcessProxy, BodyOrigin], enc: str, tmp_path: Path) -> None:
    proxy, origin = stack
    for name, data in (("small", TEXT), ("large", NEAR_CAP)):
        f = tmp_path / name
        f.write_bytes(PACK[enc](data))
        n = len(origin.requests)
        out = subprocess.run(
            [
                *("curl", "-sS", "--data-binary", f"@{f}", "-w", " %{http_code}"),
                *("-H", f"Content-Encoding: {enc}", "-H", "Content-Type: text/plain", f"{proxy.url}/upload"),
            ],
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout.decode()
        assert out == f"{hashlib.sha256(data).hexdigest()} 200", name
        rec = origin.requests[n]
        assert bytes(rec.body) == data and rec.complete
        assert "content-encoding" not in rec.headers and "content-length" not in rec.headers
        assert rec.headers.get("transfer-encoding") == "chunked"  # framed as it streams


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_httpx_streams_a_compressed_body_in_pieces(stack: tuple[InProcessProxy, BodyOrigin], enc: str) -> None:
    proxy, origin = stack
    packed = PACK[enc](NEAR_CAP)
    pieces = (packed[i : i + 4096] for i in range(0, len(packed), 4096))
    n = len(origin.requests)
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        r = c.post("/upload", content=pieces, headers={"Content-Encoding": enc})
    assert r.status_code == 200 and r.text == hashlib.sha256(NEAR_CAP).hexdigest()
    assert bytes(origin.requests[n].body) == NEAR_CAP


def host_port(proxy: InProcessProxy) -> tuple[str, int]:
    host, _, port = proxy.url.removeprefix("http://").partition(":")
    return host, int(port)


@pytest.mark.parametrize("enc", ["gzip", "zstd"])
def test_http2_clients_too(stack: tuple[InProcessProxy, BodyOrigin], enc: str) -> None:
    """h2c by prior knowledge: the stream's body decoded on the way, the bomb refused."""
    proxy, origin = stack
    packed = PACK[enc](NEAR_CAP)
    n = len(origin.requests)
    with httpx.Client(base_url=proxy.url, http2=True, http1=False, timeout=30) as c:
        pieces = (packed[i : i + 4096] for i in range(0, len(packed), 4096))
        r = c.post("/upload", content=pieces, headers={"Content-Encoding": enc})
        assert r.http_version == "HTTP/2"
        assert r.status_code == 200 and r.text == hashlib.sha256(NEAR_CAP).hexdigest()
        assert bytes(origin.requests[n].body) == NEAR_CAP
        r = c.post("/upload", content=PACK[enc](b"\0" * (20 * CAP)), headers={"Content-Encoding": enc})
        assert r.status_code == 413
    for rec in origin.requests[n + 1 :]:
        assert len(rec.body) <= CAP


def chunked_head(enc: str) -> bytes:
    return (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Encoding: %s\r\n\r\n" % enc.encode()
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def response_status(sock: socket.socket) -> int:
    sock.settimeout(30)
    data = b""
    while b"\r\n" not in data:
        got = sock.recv(4096)
        if not got:
            break
        data += got
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_the_upstream_gets_decoded_bytes_before_the_client_is_done(
    stack: tuple[InProcessProxy, BodyOrigin], enc: str
) -> None:
    """No whole-body buffer: the first half goes upstream decoded while the client holds the rest."""
    proxy, origin = stack
    first, second = pack_in_two(enc, NEAR_CAP[: CAP // 2], NEAR_CAP[CAP // 2 :])
    n = len(origin.requests)
    with socket.create_connection(host_port(proxy), timeout=30) as s:
        s.sendall(chunked_head(enc) + chunk(first))
        rec = last_request(origin, n)
        wait_for(lambda: len(rec.body) > 0, "nothing decoded went upstream before the body ended")
        assert not rec.complete
        s.sendall(chunk(second) + b"0\r\n\r\n")
        assert response_status(s) == 200
    assert bytes(rec.body) == NEAR_CAP and rec.complete


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_a_zip_bomb_is_413_and_at_most_the_cap_goes_upstream(
    stack: tuple[InProcessProxy, BodyOrigin], enc: str
) -> None:
    proxy, origin = stack
    bomb = PACK[enc](b"\0" * (20 * CAP))  # 20x the cap, a few KB packed
    assert len(bomb) < 40_000
    n = len(origin.requests)
    with socket.create_connection(host_port(proxy), timeout=30) as s:  # the body in the head's segment
        s.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (enc.encode(), len(bomb), bomb)
        )
        assert response_status(s) == 413
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        r = c.post("/upload", content=bomb, headers={"Content-Encoding": enc})
        assert r.status_code == 413
        assert c.post("/upload", content=TEXT).status_code == 200  # the proxy serves on
    # Decoding waits for the upstream once a body's buffer is full: a bomb may have been forwarded
    # before it passed the cap. Then the upstream got at most the cap, and its connection was cut.
    for rec in origin.requests[n:-1]:
        wait_for(lambda rec=rec: rec.cut, "the upstream connection was not closed mid-body")
        assert len(rec.body) <= CAP and not any(rec.body)
    assert bytes(origin.requests[-1].body) == TEXT


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_passing_the_cap_mid_stream_is_413_and_cuts_the_upstream(
    stack: tuple[InProcessProxy, BodyOrigin], enc: str, caplog: Any
) -> None:
    proxy, origin = stack
    over = NEAR_CAP + TEXT  # passes the cap by ~80 KB
    first, second = pack_in_two(enc, over[: CAP // 2], over[CAP // 2 :])
    n = len(origin.requests)
    with caplog.at_level("WARNING", logger="monolake.edge.compress"):
        with socket.create_connection(host_port(proxy), timeout=30) as s:
            s.sendall(chunked_head(enc) + chunk(first))
            rec = last_request(origin, n)
            wait_for(lambda: len(rec.body) > 0, "nothing went upstream before the cap was passed")
            with contextlib.suppress(OSError):  # the proxy may answer and close before it took it all
                s.sendall(chunk(second) + b"0\r\n\r\n")
            assert response_status(s) == 413
        wait_for(lambda: rec.cut, "the upstream connection was not closed mid-body")
    assert len(rec.body) <= CAP and not rec.complete
    assert bytes(rec.body) == over[: len(rec.body)]
    assert "decompress: 413 for a request body already going upstream" in caplog.text


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_corrupt_and_cut_streams_are_400(stack: tuple[InProcessProxy, BodyOrigin], enc: str) -> None:
    proxy, origin = stack
    packed = PACK[enc](TEXT)
    junk = b"this is not " + enc.encode()
    n = len(origin.requests)
    with socket.create_connection(host_port(proxy), timeout=30) as s:  # the body in the head's segment
        s.sendall(chunked_head(enc) + chunk(junk) + b"0\r\n\r\n")
        assert response_status(s) == 400
    assert len(origin.requests) == n  # found with the head: nothing went upstream
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        assert c.post("/upload", content=junk, headers={"Content-Encoding": enc}).status_code == 400
    # cut short: the decoded part may have gone upstream; the client gets 400, the upstream a cut body
    n = len(origin.requests)
    with socket.create_connection(host_port(proxy), timeout=30) as s:
        s.sendall(chunked_head(enc) + chunk(packed[: len(packed) - 20]) + b"0\r\n\r\n")
        assert response_status(s) == 400
    for rec in origin.requests[n:]:
        wait_for(lambda rec=rec: rec.cut, "the upstream connection was not closed mid-body")
        assert not rec.complete and TEXT.startswith(bytes(rec.body))


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_inflate_pieces_and_frames(enc: str) -> None:
    """Several gzip members / zstd frames in one body decode whole; the cap holds byte-exact."""
    data = PACK[enc](TEXT[:1000])
    if enc != "br":  # a brotli stream has no members to concatenate
        assert inflate(enc.encode(), data + data, 10_000) == TEXT[:1000] * 2
    assert inflate(enc.encode(), data, 1000) == TEXT[:1000]
    with pytest.raises(TooLarge):
        inflate(enc.encode(), data, 999)
    with pytest.raises(ValueError, match="ends early"):
        inflate(enc.encode(), data[:-3], 10_000)


class Producer:
    """The client side of a ``Body``: counts pauses and resumes."""

    def __init__(self) -> None:
        self.paused = False

    def pause_body(self) -> None:
        self.paused = True

    def resume_body(self) -> None:
        self.paused = False

    def cancel_body(self) -> None:
        pass


class Collect:
    """An upstream's sink."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ended = False

    def write(self, data: bytes) -> None:
        self.data += data

    def end(self) -> None:
        self.ended = True

    def abort(self, exc: BaseException) -> None:
        raise AssertionError(exc)


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd"])
def test_a_chunk_that_inflates_a_lot_is_decoded_as_the_upstream_takes_it(enc: str) -> None:
    """Before the upstream reads, decoding stops at the body's high-water mark (plus a piece), the
    rest of the compressed chunk is kept and the client paused; piping resumes it all."""
    from monolake.apps.edge.compress import _DECODERS, STEP, _Inflate
    from monolake.core._body import HIGH_WATER, Body

    # gzip, br: ~4 MB packed into a few KB, decoded in STEP pieces; zstd: its decoder takes input in
    # 16 KiB slices (it makes a slice's output at once), so here 1.2 MB of hex, packed to about half
    data = NEAR_CAP * 4 if enc != "zstd" else os.urandom(600_000).hex().encode()
    producer = Producer()
    up = Body(producer, None)
    up.feed(PACK[enc](data))
    pipe = _Inflate(up, _DECODERS[enc.encode()](), 10 * CAP)
    assert pipe.failed is None and pipe.stash is not None  # held: not all decoded
    assert producer.paused
    held = sum(len(b) for b in pipe.out._buf)
    assert HIGH_WATER <= held <= HIGH_WATER + 2 * STEP
    up.feed_eof()  # the client is done meanwhile
    sink = Collect()
    pipe.out.pipe(sink)
    assert sink.ended and bytes(sink.data) == data
    assert not producer.paused
