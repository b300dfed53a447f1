"""HTTP/2 clients through the proxy to an HTTP/2 origin (h2 → h2): header translation, trailers,
bodies both ways with flow control. Both codecs, both loops."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import httpx
import pytest
from hyperframe.frame import DataFrame, HeadersFrame
from test_h2_server import RawH2
from test_h2_upstream import H2OriginProcess

from conftest import TIMEOUT, Proxy, ProxyFactory, pattern_sha
from monolake.core.proto.http2 import codec_kinds

pytestmark = pytest.mark.e2e

CONFIG = """
[runtime]
drain_timeout = 1

[upstreams.h2]
endpoints = [{ endpoint = "127.0.0.1:{port}" }]
protocol = "h2c"
read_timeout = 30

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "h2"
"""


@pytest.fixture(scope="module")
def h2c_origin() -> Iterator[H2OriginProcess]:
    o = H2OriginProcess()
    yield o
    o.close()


@pytest.fixture(scope="module", params=["h2", "native"])
def h2h2(request: pytest.FixtureRequest, module_proxy: ProxyFactory, h2c_origin: H2OriginProcess) -> Proxy:
    if request.param not in codec_kinds():
        pytest.skip("the native HTTP/2 codec (libnghttp2 extension) is not built here")
    return module_proxy(CONFIG, port=h2c_origin.port, env={"MONOLAKE_H2_CODEC": request.param})


def client() -> httpx.Client:
    return httpx.Client(http1=False, http2=True, trust_env=False, timeout=TIMEOUT)


def test_headers_cross_as_http2(h2h2: Proxy) -> None:
    with client() as c:
        r = c.get(h2h2.url + "/headers", headers=[("x-a", "1"), ("cookie", "a=1"), ("cookie", "b=2")])
    assert r.status_code == 200 and r.http_version == "HTTP/2"
    fields = [(k.lower(), v) for k, v in json.loads(r.content)]
    names = [k for k, _ in fields]
    assert (":authority", h2h2.address) in fields
    assert ("x-a", "1") in fields
    assert "host" not in names and "connection" not in names and "transfer-encoding" not in names
    assert [v for k, v in fields if k == "cookie"] in (["a=1; b=2"], ["a=1", "b=2"])


def test_trailers_reach_an_http2_client(h2h2: Proxy) -> None:
    c = RawH2(h2h2.address)
    try:
        c.request(1, "/trailers")
        frames = []
        while True:
            f = c.frame()
            assert f is not None
            if f.stream_id != 1:
                continue
            frames.append(f)
            if "END_STREAM" in f.flags:
                break
    finally:
        c.close()
    heads = [f for f in frames if isinstance(f, HeadersFrame)]
    assert len(heads) == 2
    assert (b":status", b"200") in heads[0].decoded  # type: ignore[attr-defined]
    assert heads[1].decoded == [(b"x-checksum", b"abc123"), (b"x-done", b"yes")]  # type: ignore[attr-defined]
    assert "END_STREAM" in heads[1].flags
    assert b"".join(f.data for f in frames if isinstance(f, DataFrame)) == b"body before trailers\n"


def test_large_bodies_both_ways(h2h2: Proxy) -> None:
    size = 20 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)
    with client() as c:
        up = c.post(h2h2.url + "/sha", content=payload)
        assert up.json() == {"sha256": hashlib.sha256(payload).hexdigest(), "length": size}
        down = c.get(h2h2.url + f"/bytes/{size}")
        assert hashlib.sha256(down.content).hexdigest() == pattern_sha(size)
        # An echo streams the response while the request is sent; httpx returns no window
        # until it has sent the whole request, so a larger echo would stall any flow-controlled
        # path (the client's deadlock, not the proxy's): stay within the buffers on the way.
        echo = c.post(h2h2.url + "/echo", content=payload[:200_000])
        assert echo.content == payload[:200_000]
