"""``ip_rules``: allow/deny lists of client networks (CIDR), for http routes/servers and tcp servers.

The client address is the connection's peer, which is the PROXY protocol header's
source when the server reads one (``proxy_protocol``). When that address is one of
``trusted_proxies``, the client is taken from ``X-Forwarded-For`` instead (http only):
walking the header from the right, the first address that is not a trusted proxy
(a client can put anything on the left of the list, so the left end is never
believed). That client (when it is an IP address, and not the peer) goes in the
``CLIENT_ADDR`` slot, as nginx's realip module replaces ``$remote_addr``: the access
log's ``$remote_addr`` and ``rate_limit``'s ``"ip"`` key (in a filter after this one) use it;
``$realip_remote_addr`` stays the peer, and ``X-Forwarded-For`` is still extended with the peer.
``deny`` wins over ``allow``; with ``allow`` given, every address not in it
is denied. A denied HTTP request is answered 403, a denied tcp connection is closed
before anything is sent upstream; both with a log line (at most 10 a second, the rest
counted). Decisions are cached per address (bounded), so a request usually costs one
dict lookup.
"""

from __future__ import annotations

import ipaddress
import logging

import msgspec

from ...core._ratelimit import RateLimitedLog
from ...core.proto.http1 import Headers, Request, Response
from ...core.service import Context
from ..proxy._filters import HttpFilter
from ._base import ArgError
from ._slots import CLIENT_ADDR

log = logging.getLogger("monolake.edge.ip_rules")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_UNSEEN = object()


class IpRulesArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    allow: list[str] = []
    """Networks ("10.0.0.0/8", "2001:db8::/32", or one address) allowed; empty: every one not denied."""
    deny: list[str] = []
    """Networks denied (checked first)."""
    trusted_proxies: list[str] = []
    """Networks of proxies in front whose ``forwarded_header`` is believed (http servers)."""
    forwarded_header: str = "X-Forwarded-For"
    """The header a trusted proxy appends the client's address to."""
    status: int = 403
    """The answer to a denied HTTP request."""


def _networks(key: str, values: list[str]) -> tuple[Network, ...]:
    out = []
    for i, v in enumerate(values):
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError as exc:
            raise ArgError(f"{key}[{i}]", f"not an IP network: {exc}") from None
    return tuple(out)


def _in(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: tuple[Network, ...]) -> bool:
    if addr.version == 6 and addr.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a v4 client
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in nets)


class IpRules(HttpFilter):
    """Allow/deny by client network; see the module docstring. Also a tcp server's filter
    (``on_connect``)."""

    Args = IpRulesArgs
    kinds = ("http", "tcp")

    def __init__(self, args: IpRulesArgs) -> None:
        self.allow = _networks("allow", args.allow)
        self.deny = _networks("deny", args.deny)
        self.trusted = _networks("trusted_proxies", args.trusted_proxies)
        if not self.allow and not self.deny:
            raise ArgError("allow", "give allow and/or deny networks")
        if not 400 <= args.status <= 499:
            raise ArgError("status", f"must be a 4xx status, got {args.status}")
        self.header = args.forwarded_header.lower().encode("latin-1")
        self.status = args.status
        self._verdicts: dict[str, bool] = {}
        self._trusted: dict[str, bool] = {}
        self._addresses: dict[str, str | None] = {}
        self._log = RateLimitedLog(log, "ip_rules refusals")

    def permitted(self, address: str) -> bool:
        """Whether ``address`` (text) may pass; cached."""
        ok = self._verdicts.get(address)
        if ok is None:
            try:
                addr = ipaddress.ip_address(address.strip().strip("[]"))
            except ValueError:
                ok = not self.allow  # not an IP (a unix socket peer, garbage): only an allow list stops it
            else:
                ok = not _in(addr, self.deny) and (not self.allow or _in(addr, self.allow))
            if len(self._verdicts) < 65536:
                self._verdicts[address] = ok
        return ok

    def is_trusted(self, address: str) -> bool:
        t = self._trusted.get(address)
        if t is None:
            try:
                t = _in(ipaddress.ip_address(address.strip().strip("[]")), self.trusted)
            except ValueError:
                t = False
            if len(self._trusted) < 65536:
                self._trusted[address] = t
        return t

    def client(self, peer: str, headers: Headers) -> str:
        """The client's address: ``peer``, or from the forwarded header when ``peer`` is trusted."""
        if not self.trusted or not self.is_trusted(peer):
            return peer
        values = headers.get_all(self.header)
        if not values:
            return peer
        hops = [h.strip().decode("latin-1") for v in values for h in v.split(b",")]
        for hop in reversed(hops):
            if hop and not self.is_trusted(hop):
                return hop
        return hops[0] or peer  # every hop is a trusted proxy: the leftmost is the client

    def address(self, text: str) -> str | None:
        """``text`` as an IP address's canonical text, or None when it is not one; cached."""
        out = self._addresses.get(text, _UNSEEN)
        if out is _UNSEEN:
            try:
                out = str(ipaddress.ip_address(text.strip().strip("[]")))
            except ValueError:
                out = None
            if len(self._addresses) < 65536:
                self._addresses[text] = out
        return out  # type: ignore[return-value]

    def request_filter(self, req: Request, ctx: Context) -> Response | None:
        peer = ctx.peer
        if self.trusted:
            client = self.client(peer, req.headers)
            if client != peer:
                addr = self.address(client)
                if addr is not None:  # a forwarded value that is not an address is never "the client"
                    CLIENT_ADDR.set(ctx, addr)
        else:
            client = peer
        if self.permitted(client):
            return None
        self._log.log(
            "ip_rules: refused %s (peer %s) on server %s: %s %s",
            client,
            peer,
            ctx.server,
            req.method.decode("latin-1"),
            req.path.decode("latin-1"),
        )
        return Response(self.status, Headers([(b"Content-Type", b"text/plain")]), b"Forbidden\n")

    def on_connect(self, peer: str, ctx: Context) -> bool:
        if self.permitted(peer):
            return True
        self._log.log("ip_rules: refused connection from %s on server %s", peer, ctx.server)
        return False
