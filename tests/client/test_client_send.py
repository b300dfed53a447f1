"""``Client.send`` over HTTP/1.1, HTTPS, h2c and h2 against real origins on 127.0.0.1:0: the
scripted HTTP/1 origin of test_client_pool.py (also behind TLS) and the ``h2`` library origin
of tests/e2e/h2_origin.py. Connection limit and queue, PoolTimeout, WriteError.
Every test runs on stdlib asyncio and on uvloop (conftest.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import issue_certs, load_h2_origin
from conftest import tls_server_context as server_ctx
from monolake.apps.config import Endpoint, UpstreamTls
from monolake.core._body import Body
from monolake.core.client import Client, PoolSettings
from monolake.core.errors import ConnectError, PoolTimeout, ReadError, Source, UpstreamError, WriteError
from monolake.core.proto.http1 import Headers, Request, Response
from monolake.core.tls import client_tls

from .test_client_pool import Origin, wait_until

h2_origin = load_h2_origin()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return issue_certs(tmp_path_factory.mktemp("sendtls"))


def tls_ep(port: int, ca: Path, alpn: list[str] | None = None) -> Endpoint:
    tls = client_tls("t", UpstreamTls(ca=str(ca), alpn=alpn))
    return Endpoint(scheme="https", host="127.0.0.1", port=port, tls=tls)


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    o = Origin()
    await o.start()
    yield o
    o.gate.set()
    await o.close()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    c = Client()
    yield c
    c.close()


def get(path: bytes, **headers: str) -> Request:
    return Request(b"GET", path, Headers([(k.encode(), v.encode()) for k, v in headers.items()]))


async def body_of(resp: Response) -> bytes:
    if isinstance(resp.body, Body):
        return await asyncio.wait_for(resp.body.read_all(), 10)
    return resp.body or b""


class Upload:
    """A request body producer the test feeds by hand (it never pauses)."""

    def pause_body(self) -> None:
        return None

    def resume_body(self) -> None:
        return None

    def cancel_body(self) -> None:
        return None


# --- the four protocols ---------------------------------------------------------------


async def test_http1_send_reuses_the_connection(origin: Origin, client: Client) -> None:
    ep = origin.endpoint
    for _ in range(3):
        resp = await client.send(get(b"/ok"), ep)
        assert resp.status == 200 and await body_of(resp) == b"ok"
    assert origin.accepted == 1
    # Host defaults to the endpoint's authority; a bytes body is framed by its length.
    resp = await client.send(Request(b"POST", b"/echo", Headers(), body=b"hello"), ep)
    assert await body_of(resp) == b"hello"
    assert origin.requests[-1] == (b"/echo", b"hello")


async def test_http1_streamed_response_releases_at_its_end(origin: Origin, client: Client) -> None:
    resp = await client.send(get(b"/big"), origin.endpoint)
    assert isinstance(resp.body, Body)
    assert len(await body_of(resp)) == 64 * 0x2000
    await wait_until(lambda: client.pool.statistics()["idle"] == 1)
    assert await body_of(await client.send(get(b"/ok"), origin.endpoint)) == b"ok"
    assert origin.accepted == 1


async def test_https_send_uses_the_endpoints_tls_settings(certs: tuple[Path, Path, Path], client: Client) -> None:
    o = Origin()
    await o.start(ssl=server_ctx(certs, ["http/1.1"]))
    try:
        resp = await client.send(get(b"/ok"), tls_ep(o.port, certs[2]))
        assert resp.status == 200 and await body_of(resp) == b"ok"
        assert o.requests == [(b"/ok", b"")]
    finally:
        await o.close()


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2"])
async def test_http2_send(certs: tuple[Path, Path, Path], tls: bool) -> None:
    o = h2_origin.H2Origin(ssl_context=h2_origin.server_context(str(certs[0]), str(certs[1])) if tls else None)
    await o.start()
    ep = tls_ep(o.port, certs[2], ["h2"]) if tls else Endpoint(host="127.0.0.1", port=o.port)
    client = Client(default=PoolSettings(http2=True))
    try:
        results = await asyncio.gather(*(client.send(get(b"/hello"), ep) for _ in range(5)))
        assert [r.status for r in results] == [200] * 5
        assert {await body_of(r) for r in results} == {b"hello from connection 1\n"}  # one connection
        resp = await client.send(Request(b"POST", b"/sha", Headers(), body=b"x" * 1000), ep)
        assert b'"length": 1000' in await body_of(resp)
    finally:
        client.close()
        await o.close()


# --- connection limit, queue, pool timeout ------------------------------------------------


async def test_sends_beyond_max_connections_queue_and_all_succeed(origin: Origin) -> None:
    client = Client(default=PoolSettings(max_connections=1))
    ep = origin.endpoint
    try:
        tasks = [asyncio.create_task(client.send(get(b"/gate"), ep)) for _ in range(3)]
        await wait_until(lambda: len(origin.requests) == 1 and len(client.pool._waiters.get(ep.key, ())) == 2)
        origin.gate.set()
        done = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert [r.status for r in done] == [200, 200, 200]
        assert [await body_of(r) for r in done] == [b"ok"] * 3
        assert origin.accepted == 1 and len(origin.requests) == 3
        assert not client.pool._waiters
    finally:
        client.close()


async def test_pool_timeout_when_the_one_connection_is_held(origin: Origin) -> None:
    client = Client(default=PoolSettings(max_connections=1, pool_timeout=0.2))
    ep = origin.endpoint
    try:
        held = asyncio.create_task(client.send(get(b"/gate"), ep))
        await wait_until(lambda: len(origin.requests) == 1)
        with pytest.raises(PoolTimeout) as info:
            await client.send(get(b"/ok"), ep)
        assert info.value.retry_safe and info.value.source is Source.INTERNAL
        assert len(origin.requests) == 1  # nothing of the second request was sent
        assert not client.pool._waiters
        origin.gate.set()
        assert (await asyncio.wait_for(held, 10)).status == 200
        assert (await client.send(get(b"/ok"), ep)).status == 200  # the slot is usable again
        assert origin.accepted == 1
    finally:
        client.close()


async def test_a_closed_connection_frees_its_slot_for_the_queue(origin: Origin) -> None:
    client = Client(default=PoolSettings(max_connections=1))
    ep = origin.endpoint
    try:
        first = asyncio.create_task(client.send(get(b"/partial"), ep))  # answered, then closed mid-body
        second = asyncio.create_task(client.send(get(b"/ok"), ep))
        resp = await asyncio.wait_for(first, 10)
        assert isinstance(resp.body, Body)
        with pytest.raises(UpstreamError):
            await body_of(resp)
        assert (await asyncio.wait_for(second, 10)).status == 200
        assert origin.accepted == 2
    finally:
        client.close()


async def test_a_cancelled_waiter_leaves_the_queue(origin: Origin) -> None:
    client = Client(default=PoolSettings(max_connections=1))
    ep = origin.endpoint
    try:
        held = asyncio.create_task(client.send(get(b"/gate"), ep))
        await wait_until(lambda: len(origin.requests) == 1)
        waiter = asyncio.create_task(client.send(get(b"/ok"), ep))
        await wait_until(lambda: ep.key in client.pool._waiters)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not client.pool._waiters
        origin.gate.set()
        assert (await asyncio.wait_for(held, 10)).status == 200
        await wait_until(lambda: client.pool.statistics()["idle"] == 1)  # released to the pool, not lost
    finally:
        client.close()


async def test_http2_streams_beyond_the_limit_wait_for_a_slot() -> None:
    o = h2_origin.H2Origin(max_streams=1)
    await o.start()
    ep = Endpoint(host="127.0.0.1", port=o.port)
    client = Client(default=PoolSettings(http2=True, max_connections=1, pool_timeout=0.2))
    try:
        slow = asyncio.create_task(client.send(get(b"/slow/1500"), ep))
        await wait_until(lambda: len(o.requests) == 1)
        with pytest.raises(PoolTimeout):
            await client.send(get(b"/hello"), ep)
        client.configure(ep, PoolSettings(http2=True, max_connections=1, pool_timeout=30))
        queued = asyncio.create_task(client.send(get(b"/hello"), ep))
        await wait_until(lambda: ep.key in client.pool.h2.waiters)
        assert (await asyncio.wait_for(slow, 10)).status == 200
        assert await body_of(await asyncio.wait_for(queued, 10)) == b"hello from connection 1\n"
        assert o.connections == 1
    finally:
        client.close()
        await o.close()


# --- write errors --------------------------------------------------------------------------


async def test_write_error_when_the_upstream_closes_before_the_body_is_written(origin: Origin, client: Client) -> None:
    body = Body(Upload(), None)
    body.feed(b"first piece")  # the rest never comes: the upload is still going out
    req = Request(b"POST", b"/drop-upload", Headers(), body=body)
    with pytest.raises(WriteError) as info:
        await asyncio.wait_for(client.send(req, origin.endpoint), 10)
    assert not info.value.retry_safe
    assert origin.requests == [(b"/drop-upload", b"")]


async def test_http2_write_error_when_the_connection_dies_mid_upload() -> None:
    o = h2_origin.H2Origin()
    await o.start()
    client = Client(default=PoolSettings(http2=True))
    body = Body(Upload(), None)
    body.feed(b"first piece")
    try:
        with pytest.raises(WriteError):
            await asyncio.wait_for(
                client.send(Request(b"POST", b"/die", Headers(), body=body), Endpoint(host="127.0.0.1", port=o.port)),
                10,
            )
    finally:
        client.close()
        await o.close()


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        PoolSettings(max_connections=0)
    with pytest.raises(ValueError, match="pool_timeout"):
        PoolSettings(pool_timeout=0)


async def test_per_key_settings(origin: Origin, client: Client) -> None:
    ep = origin.endpoint
    other = dataclasses.replace(ep, port=ep.port + 1)
    client.configure(ep, PoolSettings(max_connections=2))
    assert client.settings_for(ep).max_connections == 2
    assert client.settings_for(other) is client.default


async def test_closing_the_pool_fails_its_waiters(origin: Origin) -> None:
    client = Client(default=PoolSettings(max_connections=1))
    ep = origin.endpoint
    held = asyncio.create_task(client.send(get(b"/gate"), ep))
    await wait_until(lambda: len(origin.requests) == 1)
    waiter = asyncio.create_task(client.send(get(b"/ok"), ep))
    await wait_until(lambda: ep.key in client.pool._waiters)
    client.close()
    with pytest.raises(ConnectError, match="pool closed"):
        await asyncio.wait_for(waiter, 10)
    origin.gate.set()
    assert (await asyncio.wait_for(held, 10)).status == 200


async def test_stale_keepalive_race_is_retried_once_on_a_new_connection(origin: Origin, client: Client) -> None:
    ep = origin.endpoint
    assert (await client.send(get(b"/ok"), ep)).status == 200
    # /hangup: the origin reads the request and closes without a byte. On the reused
    # connection that is the stale keep-alive race (retry safe): sent again on a fresh
    # connection, where the same failure is not retry safe and is raised.
    with pytest.raises(ReadError) as info:
        await asyncio.wait_for(client.send(get(b"/hangup"), ep), 10)
    assert not info.value.retry_safe
    assert [p for p, _ in origin.requests] == [b"/ok", b"/hangup", b"/hangup"]
    assert origin.accepted == 2
