"""DNS discovery: A/AAAA fan-out or SRV, re-resolved at the records' TTL.

Every address of the name becomes an endpoint (``record = "A" | "AAAA" | "A+AAAA"`` with the
configured port), or every target of its SRV records with the record's port and weight
(``record = "SRV"``; only the lowest priority is used, RFC 2782; a weight of 0 counts as 1,
since our balancers need weights >= 1; each target's A and AAAA addresses are resolved).
The next lookup is at the smallest TTL seen, clamped to ``[min_interval, max_interval]``; a
failed lookup (timeout, SERVFAIL, no such name) keeps the last good set, is logged and counted,
and is retried ``min_interval`` later. An answer with no address at all counts as a failure
too: an empty set from a flapping resolver would turn every request into a 503.

Resolution uses dnspython's asyncio resolver, asking the configured ``nameservers`` (each
"ip" or "ip:port") or the system's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from ..config import Discovery
from ..config._validate import split_nameserver
from ._record import EndpointRecord
from ._source import EndpointSource, Sink

log = logging.getLogger("monolake.discovery")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DnsSource(EndpointSource):
    kind = "dns"

    def __init__(self, cluster: str, d: Discovery) -> None:
        super().__init__(cluster)
        self.cfg = d
        self.resolver = dns.asyncresolver.Resolver(configure=not d.nameservers)
        if d.nameservers:
            servers: list[str | dns.nameserver.Nameserver] = []
            for ns in d.nameservers:
                host, port = split_nameserver(ns)
                servers.append(dns.nameserver.Do53Nameserver(host, port))
            self.resolver.nameservers = servers
        self.resolver.lifetime = d.timeout
        self.resolver.cache = None  # we re-resolve at the TTL ourselves

    def describe(self) -> str:
        return f"dns {self.cfg.record} {self.cfg.name}"

    async def _addresses(self, name: str, families: Sequence[str]) -> tuple[list[str], float]:
        """Addresses of ``name`` and the smallest TTL; a family with no records is skipped, but
        NXDOMAIN or a failure raises (dnspython's exceptions)."""
        addrs: list[str] = []
        ttl = float("inf")
        missing = 0
        for rdtype in families:
            try:
                answer = await self.resolver.resolve(name, rdtype)
            except dns.resolver.NoAnswer:
                missing += 1
                continue
            assert answer.rrset is not None
            ttl = min(ttl, answer.rrset.ttl)
            addrs += [r.address for r in answer]
        return addrs, ttl

    async def lookup(self) -> tuple[list[EndpointRecord], float]:
        """The records now and the TTL to wait. Raises dns.exception.DNSException or ValueError."""
        d = self.cfg
        if d.record == "SRV":
            answer = await self.resolver.resolve(d.name, "SRV")
            assert answer.rrset is not None
            ttl = float(answer.rrset.ttl)
            rrs = list(answer)
            best = min(r.priority for r in rrs)
            out: list[EndpointRecord] = []
            for r in rrs:
                if r.priority != best:
                    continue
                target = r.target.to_text(omit_final_dot=True)
                addrs, t = await self._addresses(target, ("A", "AAAA"))
                ttl = min(ttl, t)
                scheme = "https://" if d.scheme == "https" else ""
                out += [
                    EndpointRecord(address=scheme + _hostport(a, r.port), weight=max(1, r.weight), tags=(target,))
                    for a in addrs
                ]
        else:
            families = ("A", "AAAA") if d.record == "A+AAAA" else (d.record,)
            addrs, ttl = await self._addresses(d.name, families)
            scheme = "https://" if d.scheme == "https" else ""
            out = [EndpointRecord(address=scheme + _hostport(a, d.port)) for a in addrs]
        if not out:
            raise ValueError(f"{d.name} has no {d.record} address")
        out.sort(key=lambda r: r.address)
        return out, ttl

    async def run(self, sink: Sink) -> None:
        d = self.cfg
        while True:
            try:
                records, ttl = await self.lookup()
            except asyncio.CancelledError:
                raise
            except (dns.exception.DNSException, ValueError, OSError) as exc:
                sink.error(f"{d.record} {d.name}: {type(exc).__name__}: {exc}")
                wait = d.min_interval
            else:
                sink.update(records)
                wait = min(max(ttl, d.min_interval), d.max_interval)
            await asyncio.sleep(wait)
