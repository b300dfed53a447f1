"""DNS discovery against a resolver this test starts (dnslib's server on 127.0.0.1:0, UDP, in a
thread) serving A, AAAA and SRV records that the test changes: the source publishes every
address, SRV targets with their ports and weights (lowest priority only), follows changes at
the TTL, and keeps the last good set through SERVFAIL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

dnslib = pytest.importorskip("dnslib")
from dnslib import QTYPE, RCODE, RR  # noqa: E402
from dnslib.server import BaseResolver, DNSServer  # noqa: E402

from monolake.apps.config import Discovery  # noqa: E402
from monolake.apps.discovery import EndpointRecord  # noqa: E402
from monolake.apps.discovery._dns import DnsSource  # noqa: E402


class Zone(BaseResolver):  # type: ignore[misc]
    """Answers from ``records`` (zone-file lines), changeable while serving; ``fail`` → SERVFAIL."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[str] = []
        self.fail = False
        self.queries = 0

    def set(self, *lines: str) -> None:
        with self.lock:
            self.records = list(lines)

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        with self.lock:
            self.queries += 1
            if self.fail:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            qname, qtype = request.q.qname, request.q.qtype
            for rr in RR.fromZone("\n".join(self.records)) if self.records else []:
                if rr.rname == qname and (rr.rtype == qtype or qtype == QTYPE.ANY):
                    reply.add_answer(rr)
        return reply


@pytest.fixture(scope="module")
def zone() -> Iterator[tuple[Zone, int]]:
    z = Zone()
    server = DNSServer(z, port=0, address="127.0.0.1", logger=_Quiet())
    server.start_thread()
    try:
        yield z, server.server.server_address[1]
    finally:
        server.stop()
        server.server.server_close()


class _Quiet:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class Sink:
    def __init__(self) -> None:
        self.sets: list[list[EndpointRecord]] = []
        self.errors: list[str] = []
        self.changed = asyncio.Event()

    def update(self, records: Any) -> None:
        self.sets.append(list(records))
        self.changed.set()

    def error(self, why: str) -> None:
        self.errors.append(why)
        self.changed.set()

    async def wait(self, cond: Any) -> None:
        async with asyncio.timeout(10):
            while not cond():
                self.changed.clear()
                await self.changed.wait()


def addresses(records: list[EndpointRecord]) -> list[tuple[str, int]]:
    return [(r.address, r.weight) for r in records]


async def running(src: DnsSource, sink: Sink) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(src.run(sink))


async def test_a_and_aaaa_fan_out_follow_changes_and_survive_failures(zone: tuple[Zone, int]) -> None:
    z, port = zone
    z.fail = False
    z.set("api.test. 0 IN A 10.0.0.1", "api.test. 0 IN A 10.0.0.2", "api.test. 0 IN AAAA ::1")
    d = Discovery(kind="dns", name="api.test", port=8080, nameservers=[f"127.0.0.1:{port}"], min_interval=0.05)
    src, sink = DnsSource("api", d), Sink()
    task = await running(src, sink)
    try:
        await sink.wait(lambda: sink.sets)
        assert addresses(sink.sets[0]) == [("10.0.0.1:8080", 1), ("10.0.0.2:8080", 1), ("[::1]:8080", 1)]
        z.set("api.test. 0 IN A 10.0.0.3")
        await sink.wait(lambda: addresses(sink.sets[-1]) == [("10.0.0.3:8080", 1)])
        z.fail = True
        n = len(sink.sets)
        await sink.wait(lambda: len(sink.errors) >= 2)
        assert "SERVFAIL" in sink.errors[0] or "NoNameservers" in sink.errors[0]
        z.fail = False
        z.set()  # no address at all: a failure too, never an empty set
        await sink.wait(lambda: any("no A+AAAA address" in e for e in sink.errors))
        assert all(s for s in sink.sets[n:])
    finally:
        task.cancel()
        z.fail = False


async def test_srv_ports_weights_and_lowest_priority(zone: tuple[Zone, int]) -> None:
    z, port = zone
    z.set(
        "_http._tcp.svc.test. 0 IN SRV 10 5 8001 a.svc.test.",
        "_http._tcp.svc.test. 0 IN SRV 10 0 8002 b.svc.test.",
        "_http._tcp.svc.test. 0 IN SRV 20 1 8003 c.svc.test.",
        "a.svc.test. 0 IN A 10.1.0.1",
        "b.svc.test. 0 IN A 10.1.0.2",
        "c.svc.test. 0 IN A 10.1.0.3",
    )
    d = Discovery(
        kind="dns", name="_http._tcp.svc.test", record="SRV", nameservers=[f"127.0.0.1:{port}"], min_interval=0.05
    )
    src, sink = DnsSource("svc", d), Sink()
    task = await running(src, sink)
    try:
        await sink.wait(lambda: sink.sets)
        assert addresses(sink.sets[0]) == [("10.1.0.1:8001", 5), ("10.1.0.2:8002", 1)]
        assert sink.sets[0][0].tags == ("a.svc.test",)
        z.set("_http._tcp.svc.test. 0 IN SRV 10 7 9000 a.svc.test.", "a.svc.test. 0 IN A 10.1.0.9")
        await sink.wait(lambda: addresses(sink.sets[-1]) == [("10.1.0.9:9000", 7)])
    finally:
        task.cancel()


async def test_ttl_bounds_the_next_lookup(zone: tuple[Zone, int]) -> None:
    z, port = zone
    z.set("slow.test. 3600 IN A 10.2.0.1")
    d = Discovery(
        kind="dns",
        name="slow.test",
        record="A",
        port=80,
        nameservers=[f"127.0.0.1:{port}"],
        min_interval=0.05,
        max_interval=0.2,
    )
    src, sink = DnsSource("slow", d), Sink()
    task = await running(src, sink)
    try:
        await sink.wait(lambda: sink.sets)
        z.set("slow.test. 3600 IN A 10.2.0.2")
        # A TTL of an hour is re-resolved after max_interval anyway.
        await sink.wait(lambda: addresses(sink.sets[-1]) == [("10.2.0.2:80", 1)])
    finally:
        task.cancel()
