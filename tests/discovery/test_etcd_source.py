"""etcd discovery against real etcd (Debian's etcd-server): the records under a prefix are read,
then watched; puts, reweights and deletes arrive as whole sets; a record that does not parse is
an error and left out; a 3-member cluster with the watched member killed: the watch moves to
another member, resumes from the last revision and loses nothing."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_cluster import Cluster, delete, put, put_retrying  # tests/discovery is on sys.path
from test_dns_source import Sink, addresses

from monolake.apps.config import Discovery
from monolake.apps.discovery._etcd import EtcdSource, prefix_end

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd (Debian's etcd-server)")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("etcd1"), 1)
    c.start()
    yield c
    c.stop()


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"


async def test_range_then_watch_puts_reweights_deletes(etcd: Cluster) -> None:
    url = etcd.urls[0]
    put(url, "/svc/api/1", {"address": "10.0.0.1:80"})
    put(url, "/svc/apiother/1", {"address": "10.9.9.9:80"})  # another prefix: not ours
    src = EtcdSource("api", Discovery(kind="etcd", endpoints=[url], prefix="/svc/api/"))
    sink = Sink()
    task = asyncio.get_running_loop().create_task(src.run(sink))
    try:
        await sink.wait(lambda: sink.sets)
        assert addresses(sink.sets[0]) == [("10.0.0.1:80", 1)]
        await sink.wait(lambda: src.watching is not None)
        await asyncio.to_thread(put, url, "/svc/api/2", {"address": "10.0.0.2:80", "weight": 4, "zone": "b"})
        await sink.wait(lambda: addresses(sink.sets[-1]) == [("10.0.0.1:80", 1), ("10.0.0.2:80", 4)])
        assert sink.sets[-1][1].zone == "b"
        await asyncio.to_thread(put, url, "/svc/api/2", {"address": "10.0.0.2:80", "weight": 1})
        await sink.wait(lambda: addresses(sink.sets[-1]) == [("10.0.0.1:80", 1), ("10.0.0.2:80", 1)])
        await asyncio.to_thread(put, url, "/svc/api/3", "not json")
        await sink.wait(lambda: sink.errors)
        assert "/svc/api/3" in sink.errors[-1]
        await asyncio.to_thread(delete, url, "/svc/api/1")
        await sink.wait(lambda: addresses(sink.sets[-1]) == [("10.0.0.2:80", 1)])
    finally:
        task.cancel()


async def test_three_members_one_killed_the_watch_moves_and_loses_nothing(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3)
    await asyncio.to_thread(cluster.start)
    try:
        urls = cluster.urls
        put(urls[0], "/fleet/a", {"address": "10.0.0.1:80"})
        src = EtcdSource("x", Discovery(kind="etcd", endpoints=urls, prefix="/fleet/", timeout=2.0))
        sink = Sink()
        task = asyncio.get_running_loop().create_task(src.run(sink))
        try:
            await sink.wait(lambda: sink.sets and src.watching is not None)
            watched = src.watching
            assert watched is not None
            victim = next(m for m in cluster.members if m.client == watched.port)
            victim.stop(kill=True)
            others = [m.url for m in cluster.members if m is not victim]
            # Written while the watch is down or moving: it must still arrive, once.
            await asyncio.to_thread(put_retrying, others[0], "/fleet/b", {"address": "10.0.0.2:80"})
            await asyncio.to_thread(put_retrying, others[1], "/fleet/c", {"address": "10.0.0.3:80"})
            want = [("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)]
            await sink.wait(lambda: addresses(sink.sets[-1]) == want)
            assert src.watching is not None and src.watching.port != victim.client
            assert sink.errors  # the lost member was noticed (and logged by the hub)
        finally:
            task.cancel()
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_tls_and_auth(tmp_path: Path) -> None:
    import ssl

    import trustme
    from etcd_cluster import call

    from monolake.apps.config import UpstreamTls

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "chain.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    cluster = Cluster(tmp_path, 1, tls=(tmp_path / "chain.pem", tmp_path / "key.pem"), ctx=ctx)
    await asyncio.to_thread(cluster.start)
    try:
        url = cluster.urls[0]
        call(url, "/v3/auth/user/add", {"name": "root", "password": "pw"}, ctx=ctx)
        call(url, "/v3/auth/user/grant", {"user": "root", "role": "root"}, ctx=ctx)
        call(url, "/v3/auth/enable", {}, ctx=ctx)
        token = call(url, "/v3/auth/authenticate", {"name": "root", "password": "pw"}, ctx=ctx)["token"]
        put(url, "/s/1", {"address": "10.0.0.1:80"}, token=token, ctx=ctx)
        tls = UpstreamTls(ca=str(tmp_path / "ca.pem"))
        good = EtcdSource(
            "s", Discovery(kind="etcd", endpoints=[url], prefix="/s/", username="root", password="pw", tls=tls)
        )
        bad = EtcdSource(
            "s", Discovery(kind="etcd", endpoints=[url], prefix="/s/", username="root", password="no", tls=tls)
        )
        sink, refused = Sink(), Sink()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(good.run(sink)), loop.create_task(bad.run(refused))]
        try:
            await sink.wait(lambda: sink.sets and good.watching is not None)
            assert addresses(sink.sets[0]) == [("10.0.0.1:80", 1)]
            await asyncio.to_thread(put, url, "/s/2", {"address": "10.0.0.2:80"}, token=token, ctx=ctx)
            await sink.wait(lambda: len(sink.sets[-1]) == 2)
            await refused.wait(lambda: refused.errors)
            assert "authentication failed" in refused.errors[0] and not refused.sets
        finally:
            for t in tasks:
                t.cancel()
    finally:
        await asyncio.to_thread(cluster.stop)
