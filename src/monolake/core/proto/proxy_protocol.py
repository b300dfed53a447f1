"""PROXY protocol v1 (text) and v2 (binary): parse and build, without I/O.

Theory of operation. A proxy in front of us (HAProxy, an AWS/GCP load balancer,
another monolake) may open each connection with one PROXY header naming the
original client and the address it connected to; we may send one to an upstream
the same way. The header is the first thing on the connection and is never
repeated, so a receiver reads bytes until ``parse`` returns a header and the
number of bytes it took, then treats whatever follows as the application's data.

``detect(data)`` says whether ``data`` starts with a v1 or v2 header, with none,
or cannot tell yet (listeners configured as "optional" ask it first).
``parse(data)`` returns ``(header, consumed)`` for a complete header,
``(None, 0)`` when ``data`` is a strict prefix of one and more bytes are needed, and
raises ``RemoteProtocolError`` for anything else, as early as the bytes allow: a
receiver never waits for 107 bytes of something that stopped looking like a header
at byte two.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt (sections cited
as §). Limits: a v1 line is at most 107 bytes with its CRLF (§2.1); a v2 header's
address-and-TLV block is at most ``max_v2_length`` bytes (default 4096, far above
what load balancers send, far below the 65535 the length field allows). TLVs
(§2.2) are checked for structure and returned raw; none is interpreted here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum

from ..errors import LocalProtocolError, RemoteProtocolError, Source

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107
"""The longest v1 line, CRLF included (§2.1: "PROXY UNKNOWN" + two full IPv6 addresses)."""

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LENGTH = 16
"""Signature (12), version/command (1), family/transport (1), length (2)."""
V2_MAX_LENGTH = 4096
"""Default bound on the v2 length field (addresses plus TLVs)."""

_V2_ADDR_LENGTH = {1: 12, 2: 36, 3: 216}
_UNIX_PATH = 108


class Command(IntEnum):
    LOCAL = 0
    """The sender's own connection (a health check): use the real peer, ignore addresses."""
    PROXY = 1
    """Relayed on behalf of the client the addresses name."""


class Family(IntEnum):
    UNSPEC = 0
    """Unknown or unsupported: the receiver uses the real connection endpoints (v1 ``UNKNOWN``)."""
    INET = 1
    INET6 = 2
    UNIX = 3


class Transport(IntEnum):
    UNSPEC = 0
    STREAM = 1
    DGRAM = 2


Address = tuple[str, int] | str | None
"""What ``build_*`` take: ``(ip, port)``, a Unix socket path, or None (unknown)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyHeader:
    """One received PROXY header.

    ``src_addr``/``dst_addr`` are IP addresses in their canonical text form
    (INET/INET6), socket paths (UNIX), or "" (UNSPEC, LOCAL); ports are 0 unless INET/INET6.
    """

    version: int
    command: Command = Command.PROXY
    family: Family = Family.UNSPEC
    transport: Transport = Transport.STREAM
    src_addr: str = ""
    src_port: int = 0
    dst_addr: str = ""
    dst_port: int = 0
    tlvs: tuple[tuple[int, bytes], ...] = ()

    @property
    def client(self) -> str | None:
        """The original client's address to use instead of the peer's, or None to keep the peer's."""
        if self.command is Command.LOCAL or self.family is Family.UNSPEC:
            return None
        return self.src_addr


def _error(text: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"PROXY protocol: {text}", source=Source.DOWNSTREAM)


def detect(data: bytes | bytearray | memoryview) -> int | None:
    """1 or 2 if ``data`` starts with that version's header, 0 if with neither, None if it cannot tell yet.

    Needs at most 12 bytes to decide. It only looks at the signatures: a header
    that starts right may still be malformed, which ``parse`` reports.
    """
    head = bytes(data[:12])
    if head.startswith(V1_PREFIX):
        return 1
    if head.startswith(V2_SIGNATURE):
        return 2
    if V1_PREFIX.startswith(head) or V2_SIGNATURE.startswith(head):
        return None
    return 0


def parse(
    data: bytes | bytearray | memoryview,
    *,
    versions: tuple[int, ...] = (1, 2),
    max_v2_length: int = V2_MAX_LENGTH,
) -> tuple[ProxyHeader | None, int]:
    """Parse the PROXY header at the start of ``data``.

    Returns ``(header, consumed)``, or ``(None, 0)`` if ``data`` is a prefix of a
    header and more is needed. Raises ``RemoteProtocolError`` if ``data`` is not
    (the start of) a well-formed header of one of ``versions``. Bytes after the
    header are not looked at.
    """
    head = bytes(data[:12])
    if 2 in versions and head.startswith(V2_SIGNATURE):
        return _parse_v2(data, max_v2_length)
    if 1 in versions and head.startswith(V1_PREFIX):
        return _parse_v1(data)
    if (2 in versions and V2_SIGNATURE.startswith(head)) or (1 in versions and V1_PREFIX.startswith(head)):
        return None, 0
    want = " or ".join(f"v{v}" for v in versions)
    raise _error(f"expected a {want} header, got {head[:12]!r}")


# -- v1 (§2.1) -------------------------------------------------------------------------


def _port(text: bytes) -> int:
    # §2.1: decimal, 0..65535; leading zeros would make two spellings of one port.
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == 0x30):
        raise _error(f"bad port {text!r}")
    port = int(text)
    if port > 65535:
        raise _error(f"port {port} out of range")
    return port


def _ip(text: bytes, family: Family) -> str:
    try:
        if b"%" in text:  # a zone id is no part of the v1 grammar
            raise ValueError
        addr = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise _error(f"bad address {text[:45]!r}") from None
    if (addr.version == 4) != (family is Family.INET):
        raise _error(f"address {text!r} is not {'TCP4' if family is Family.INET else 'TCP6'}")
    return str(addr)


def _parse_v1(data: bytes | bytearray | memoryview) -> tuple[ProxyHeader | None, int]:
    window = bytes(data[:V1_MAX_LENGTH])
    end = window.find(b"\r\n")
    if end < 0:
        if len(window) >= V1_MAX_LENGTH:
            raise _error(f"v1 line longer than {V1_MAX_LENGTH} bytes")
        if b"\n" in window or b"\r" in window[:-1]:
            raise _error("v1 line not terminated by CRLF")
        return None, 0
    line = window[:end]
    consumed = end + 2
    parts = line.split(b" ")
    proto = parts[1] if len(parts) > 1 else b""
    if proto == b"UNKNOWN":
        # §2.1: the rest of the line up to CRLF is ignored.
        return ProxyHeader(version=1, family=Family.UNSPEC, transport=Transport.UNSPEC), consumed
    if proto == b"TCP4":
        family = Family.INET
    elif proto == b"TCP6":
        family = Family.INET6
    else:
        raise _error(f"v1 protocol must be TCP4, TCP6 or UNKNOWN, got {proto[:16]!r}")
    if len(parts) != 6:
        raise _error(f"v1 line needs 6 single-space separated fields, got {len(parts)}")
    return (
        ProxyHeader(
            version=1,
            family=family,
            transport=Transport.STREAM,
            src_addr=_ip(parts[2], family),
            dst_addr=_ip(parts[3], family),
            src_port=_port(parts[4]),
            dst_port=_port(parts[5]),
        ),
        consumed,
    )


# -- v2 (§2.2) -------------------------------------------------------------------------


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _tlvs(block: bytes) -> tuple[tuple[int, bytes], ...]:
    out: list[tuple[int, bytes]] = []
    i, n = 0, len(block)
    while i < n:
        if n - i < 3:
            raise _error("truncated TLV header")
        size = int.from_bytes(block[i + 1 : i + 3], "big")
        if i + 3 + size > n:
            raise _error(f"TLV 0x{block[i]:02x} of {size} bytes overruns the header")
        out.append((block[i], block[i + 3 : i + 3 + size]))
        i += 3 + size
    return tuple(out)


def _parse_v2(data: bytes | bytearray | memoryview, max_length: int) -> tuple[ProxyHeader | None, int]:
    if len(data) < V2_HEADER_LENGTH:
        return None, 0
    ver_cmd, fam_proto = data[12], data[13]
    length = int.from_bytes(data[14:16], "big")
    if ver_cmd >> 4 != 2:
        raise _error(f"v2 version nibble must be 2, got {ver_cmd >> 4}")
    cmd = ver_cmd & 0x0F
    if cmd > 1:
        raise _error(f"v2 command must be LOCAL or PROXY, got {cmd}")
    fam, proto = fam_proto >> 4, fam_proto & 0x0F
    if fam > 3 or proto > 2:
        raise _error(f"v2 unknown address family/transport 0x{fam_proto:02x}")
    if length > max_length:
        raise _error(f"v2 header of {length} bytes is over the {max_length} byte limit")
    total = V2_HEADER_LENGTH + length
    if len(data) < total:
        return None, 0
    block = bytes(data[V2_HEADER_LENGTH:total])
    command = Command(cmd)
    family = Family(fam)
    addr_len = _V2_ADDR_LENGTH.get(fam, 0)
    if length < addr_len:
        raise _error(f"v2 length {length} is too short for family {family.name}")
    if command is Command.LOCAL:
        # §2.2: the receiver must accept LOCAL with any family and ignore the addresses.
        return ProxyHeader(version=2, command=command, family=Family.UNSPEC, transport=Transport(proto)), total
    src = dst = ""
    sport = dport = 0
    if family is Family.INET:
        src, dst = str(ipaddress.IPv4Address(block[0:4])), str(ipaddress.IPv4Address(block[4:8]))
        sport, dport = int.from_bytes(block[8:10], "big"), int.from_bytes(block[10:12], "big")
    elif family is Family.INET6:
        src, dst = str(ipaddress.IPv6Address(block[0:16])), str(ipaddress.IPv6Address(block[16:32]))
        sport, dport = int.from_bytes(block[32:34], "big"), int.from_bytes(block[34:36], "big")
    elif family is Family.UNIX:
        src, dst = _unix_path(block[:_UNIX_PATH]), _unix_path(block[_UNIX_PATH:216])
    return (
        ProxyHeader(
            version=2,
            command=command,
            family=family,
            transport=Transport(proto),
            src_addr=src,
            src_port=sport,
            dst_addr=dst,
            dst_port=dport,
            tlvs=_tlvs(block[addr_len:]),
        ),
        total,
    )


# -- building ---------------------------------------------------------------------------


_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip_pair(src: Address, dst: Address) -> tuple[_IP, int, _IP, int] | None:
    """Both endpoints as IPs of one family, or None when they are not (the header says UNKNOWN)."""
    if not isinstance(src, tuple) or not isinstance(dst, tuple):
        return None
    try:
        s, d = ipaddress.ip_address(src[0].partition("%")[0]), ipaddress.ip_address(dst[0].partition("%")[0])
    except ValueError:
        return None
    if s.version != d.version:
        # A dual-stack listener reports IPv4 clients as v4-mapped IPv6; unmap to agree.
        if isinstance(s, ipaddress.IPv6Address) and s.ipv4_mapped is not None:
            s = s.ipv4_mapped
        if isinstance(d, ipaddress.IPv6Address) and d.ipv4_mapped is not None:
            d = d.ipv4_mapped
        if s.version != d.version:
            return None
    for port in (src[1], dst[1]):
        if not 0 <= port <= 65535:
            raise LocalProtocolError(f"PROXY protocol: port {port} out of range")
    return s, src[1], d, dst[1]


def build_v1(src: Address, dst: Address) -> bytes:
    """A v1 line for a connection from ``src`` to ``dst``.

    Two IP endpoints of one family give TCP4/TCP6; anything else (Unix sockets,
    unknown or mixed families) gives ``PROXY UNKNOWN``, which tells the receiver to
    use the connection's own endpoints (§2.1). Raises LocalProtocolError for a port
    out of range.
    """
    pair = _ip_pair(src, dst)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    s, sport, d, dport = pair
    proto = "TCP4" if s.version == 4 else "TCP6"
    return f"PROXY {proto} {s} {d} {sport} {dport}\r\n".encode("ascii")


def _path_field(path: str) -> bytes:
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > _UNIX_PATH:
        raise LocalProtocolError(f"PROXY protocol: unix path of {len(raw)} bytes is over {_UNIX_PATH}")
    return raw.ljust(_UNIX_PATH, b"\x00")


def build_v2(
    src: Address,
    dst: Address,
    *,
    command: Command = Command.PROXY,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """A v2 header for a stream connection from ``src`` to ``dst``.

    IP endpoints of one family give INET/INET6, two Unix paths (either may be "")
    give UNIX, anything else UNSPEC; ``command=LOCAL`` always sends UNSPEC with no
    addresses. Raises LocalProtocolError for a port out of range, a Unix path over
    108 bytes or a TLV over 65535 bytes.
    """
    if command is Command.LOCAL:
        fam, addrs = Family.UNSPEC, b""
    elif isinstance(src, str) and isinstance(dst, str):
        fam, addrs = Family.UNIX, _path_field(src) + _path_field(dst)
    else:
        pair = _ip_pair(src, dst)
        if pair is None:
            fam, addrs = Family.UNSPEC, b""
        else:
            s, sport, d, dport = pair
            fam = Family.INET if s.version == 4 else Family.INET6
            addrs = s.packed + d.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    extra = bytearray()
    for kind, value in tlvs:
        if not 0 <= kind <= 255 or len(value) > 0xFFFF:
            raise LocalProtocolError(f"PROXY protocol: bad TLV type {kind} or length {len(value)}")
        extra += bytes((kind,)) + len(value).to_bytes(2, "big") + value
    body = addrs + bytes(extra)
    if len(body) > 0xFFFF:
        raise LocalProtocolError("PROXY protocol: v2 header over 65535 bytes")
    transport = Transport.UNSPEC if fam is Family.UNSPEC else Transport.STREAM
    return V2_SIGNATURE + bytes((0x20 | command, (fam << 4) | transport)) + len(body).to_bytes(2, "big") + body
