"""Active health checks go through the client: an https cluster is checked over TLS with its
own TLS settings, an h2c/h2 cluster over HTTP/2, on connections of the checks' own. Clusters
built from config (``UpstreamCluster.from_config``) against real origins on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_resilience import Origin, closed_port, request, wait_for  # tests/proxy is on sys.path (no package)

from conftest import issue_certs, load_h2_origin
from conftest import tls_server_context as server_ctx
from monolake.apps.config import parse_config
from monolake.apps.proxy._upstream import UpstreamCluster
from monolake.core._body import Body
from monolake.core.client import Pool
from monolake.core.proto.http1 import Request

h2_origin = load_h2_origin()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return issue_certs(tmp_path_factory.mktemp("hctls"))


class TlsOrigin(Origin):
    """test_resilience's origin behind TLS."""

    def __init__(self, name: str, ctx: ssl.SSLContext) -> None:
        super().__init__(name)
        self.ctx = ctx

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]


def build(tmp: Path, endpoints: list[str], path: str, **cluster: Any) -> UpstreamCluster:
    hc = {"path": path, "interval": 0.05, "timeout": 1, "unhealthy_threshold": 1, "healthy_threshold": 1}
    raw = {
        "upstreams": {"a": {"endpoints": [{"endpoint": e} for e in endpoints], "health_check": hc, **cluster}},
        "servers": {"web": {"listener": "127.0.0.1:0", "routes": [{"path": "/", "upstream": "a"}]}},
    }
    cfg = parse_config(raw, tmp)
    return UpstreamCluster.from_config("a", cfg.upstreams["a"], Pool())


def states(c: UpstreamCluster) -> dict[int, Any]:
    return {st.endpoint.port: st for st in c._states}


async def checked(c: UpstreamCluster, good: int, bad: int) -> None:
    """Wait until the good endpoint passed checks twice and the bad one is out."""
    s = states(c)
    cond: Callable[[], bool] = lambda: s[good].checks_passed >= 2 and not s[bad].healthy  # noqa: E731
    await wait_for(cond)
    assert s[good].healthy and s[bad].checks_failed >= 1


def hello() -> Request:
    r = request()
    r.set_path(b"/hello")
    return r


async def body_of(resp: Any) -> bytes:
    return await resp.body.read_all() if isinstance(resp.body, Body) else resp.body or b""


async def test_https_cluster_is_checked_over_tls(certs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(certs[2].read_bytes())
    tls = TlsOrigin("tls", server_ctx(certs, ["http/1.1"]))
    plain = Origin("plain")  # in the same https cluster but speaking plaintext only
    await tls.start()
    await plain.start()
    c = build(
        tmp_path, [f"https://127.0.0.1:{tls.port}", f"https://127.0.0.1:{plain.port}"], "/health", tls={"ca": "ca.pem"}
    )
    try:
        c.start()
        await checked(c, tls.port, plain.port)
        assert c.eligible() == [ep for ep in c.endpoints if ep.port == tls.port]
        # The checks never touched the request pool: its first connection is the request's.
        assert c.pool.statistics()["connects"] == 0
        resp = await c.forward(request(), None)
        assert resp.status == 200 and await body_of(resp) == b"tls"
        assert c.pool.statistics()["connects"] == 1
    finally:
        c.close()
        c.pool.close()
        await tls.stop()
        await plain.stop()


@pytest.mark.parametrize("protocol", ["h2c", "h2"])
async def test_http2_cluster_is_checked_over_http2(
    certs: tuple[Path, Path, Path], tmp_path: Path, protocol: str
) -> None:
    (tmp_path / "ca.pem").write_bytes(certs[2].read_bytes())
    tls = protocol == "h2"
    good = h2_origin.H2Origin(ssl_context=server_ctx(certs, ["h2"]) if tls else None)
    # The failing endpoint speaks HTTP/1.1 only (h2: selects http/1.1 by ALPN).
    bad: Origin = TlsOrigin("h1", server_ctx(certs, ["http/1.1"])) if tls else Origin("h1")
    await good.start()
    await bad.start()
    scheme = "https" if tls else "http"
    extra: dict[str, Any] = {"protocol": protocol}
    if tls:
        extra["tls"] = {"ca": "ca.pem"}
    c = build(tmp_path, [f"{scheme}://127.0.0.1:{good.port}", f"{scheme}://127.0.0.1:{bad.port}"], "/hello", **extra)
    try:
        c.start()
        await checked(c, good.port, bad.port)
        assert [p for _, p in good.requests] == ["/hello"] * len(good.requests)
        assert c.pool.h2.statistics()["connects"] == 0  # the checks had their own connections
        resp = await c.forward(hello(), None)
        assert resp.status == 200 and (await body_of(resp)).startswith(b"hello from connection")
    finally:
        c.close()
        c.pool.close()
        await good.close()
        await bad.stop()


async def test_http2_check_status_and_dead_endpoint(tmp_path: Path) -> None:
    good = h2_origin.H2Origin()
    await good.start()
    dead = closed_port()
    # /nope answers 404 on the live endpoint: a failed check; the closed port fails to connect.
    c = build(tmp_path, [f"127.0.0.1:{good.port}", f"127.0.0.1:{dead}"], "/nope", protocol="h2c")
    try:
        c.start()
        s = states(c)
        await wait_for(lambda: not s[good.port].healthy and not s[dead].healthy)
        assert not c.eligible()
    finally:
        c.close()
        c.pool.close()
        await good.close()
