"""PROXY protocol v1/v2 codec: pure bytes, fed whole, byte by byte and with trailing data."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monolake.core.errors import LocalProtocolError, RemoteProtocolError
from monolake.core.proto.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    Command,
    Family,
    ProxyHeader,
    Transport,
    build_v1,
    build_v2,
    detect,
    parse,
)

TRAILER = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return V2_SIGNATURE + bytes((ver_cmd, fam)) + n.to_bytes(2, "big") + body


def feed_bytewise(data: bytes, **kw: object) -> tuple[ProxyHeader, int]:
    """Parse growing prefixes of ``data``: every prefix before the end must ask for more."""
    for i in range(len(data) + 1):
        hdr, n = parse(data[:i], **kw)  # type: ignore[arg-type]
        if hdr is not None:
            return hdr, n
        assert n == 0
    raise AssertionError("never completed")


def rejects_bytewise(data: bytes, **kw: object) -> None:
    """Some prefix raises RemoteProtocolError; none before it yields a header."""
    for i in range(len(data) + 1):
        try:
            hdr, _ = parse(data[:i], **kw)  # type: ignore[arg-type]
        except RemoteProtocolError:
            return
        assert hdr is None, f"prefix {data[:i]!r} parsed as {hdr}"
    raise AssertionError(f"{data!r} was never rejected")


# -- v1 -------------------------------------------------------------------------------

V1_VALID = [
    (
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
        ProxyHeader(
            version=1,
            family=Family.INET,
            src_addr="192.0.2.1",
            dst_addr="198.51.100.2",
            src_port=56324,
            dst_port=443,
        ),
    ),
    (
        b"PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n",
        ProxyHeader(
            version=1, family=Family.INET6, src_addr="2001:db8::1", dst_addr="2001:db8::2", src_port=0, dst_port=65535
        ),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(version=1, family=Family.UNSPEC, transport=Transport.UNSPEC)),
    (
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        ProxyHeader(version=1, family=Family.UNSPEC, transport=Transport.UNSPEC),
    ),
    (
        # the longest legal line (§2.1): exactly 107 bytes
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        ProxyHeader(version=1, family=Family.UNSPEC, transport=Transport.UNSPEC),
    ),
]


@pytest.mark.parametrize(("data", "expected"), V1_VALID)
def test_v1_valid_whole_and_bytewise(data: bytes, expected: ProxyHeader) -> None:
    assert parse(data) == (expected, len(data))
    assert parse(data + TRAILER) == (expected, len(data))
    assert feed_bytewise(data + TRAILER) == (expected, len(data))
    assert parse(data, versions=(1,)) == (expected, len(data))
    assert detect(data) == 1


def test_v1_longest_line_is_107_bytes() -> None:
    assert len(V1_VALID[-1][0]) == V1_MAX_LENGTH == 107


def test_v1_client() -> None:
    assert V1_VALID[0][1].client == "192.0.2.1"
    assert V1_VALID[2][1].client is None


V1_MALFORMED = [
    b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",
    b"PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",
    b"PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
    b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
    b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 080 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 123456 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\rX\n",
    b"PROXY TCP4 \xff.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY \r\n",
    b"PROXY",  # then a non-space
    b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n",  # no CRLF within 107 bytes
    b"proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"\x00\x01\x02",
]


@pytest.mark.parametrize("data", V1_MALFORMED)
def test_v1_malformed(data: bytes) -> None:
    if data == b"PROXY":
        data += b"X"
    with pytest.raises(RemoteProtocolError):
        parse(data + TRAILER)
    rejects_bytewise(data + TRAILER)


def test_v1_rejected_early() -> None:
    # The second byte already rules a header out: no need to wait for 107 bytes.
    with pytest.raises(RemoteProtocolError):
        parse(b"PUT")
    with pytest.raises(RemoteProtocolError):
        parse(b"PROXY TCP4 1.2.3.4\n")


def test_v1_partial_line_under_limit_needs_more() -> None:
    assert parse(b"PROXY TCP4 192.0.2.1 ") == (None, 0)
    assert parse(b"PROXY UNKNOWN " + b"x" * 91) == (None, 0)  # 105 bytes, CRLF may still come
    assert parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r") == (None, 0)
    with pytest.raises(RemoteProtocolError, match="longer than 107"):
        parse(b"PROXY UNKNOWN " + b"x" * 93)


# -- v2 -------------------------------------------------------------------------------

INET_BODY = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + (56324).to_bytes(2, "big") + (443).to_bytes(2, "big")
INET6_BODY = (
    ipaddress.IPv6Address("2001:db8::1").packed
    + ipaddress.IPv6Address("2001:db8::2").packed
    + (1).to_bytes(2, "big")
    + (2).to_bytes(2, "big")
)
UNIX_BODY = b"/run/client.sock".ljust(108, b"\x00") + b"/run/server.sock".ljust(108, b"\x00")
TLVS = b"\x01\x00\x02h2" + b"\x04\x00\x00" + b"\xea\x00\x05vpc-1"

V2_VALID = [
    (
        v2(0x21, 0x11, INET_BODY),
        ProxyHeader(
            version=2, family=Family.INET, src_addr="192.0.2.1", dst_addr="198.51.100.2", src_port=56324, dst_port=443
        ),
    ),
    (
        v2(0x21, 0x21, INET6_BODY + TLVS),
        ProxyHeader(
            version=2,
            family=Family.INET6,
            src_addr="2001:db8::1",
            dst_addr="2001:db8::2",
            src_port=1,
            dst_port=2,
            tlvs=((0x01, b"h2"), (0x04, b""), (0xEA, b"vpc-1")),
        ),
    ),
    (
        v2(0x21, 0x31, UNIX_BODY),
        ProxyHeader(version=2, family=Family.UNIX, src_addr="/run/client.sock", dst_addr="/run/server.sock"),
    ),
    (
        v2(0x21, 0x00, b""),
        ProxyHeader(version=2, family=Family.UNSPEC, transport=Transport.UNSPEC),
    ),
    (
        # UNSPEC may still carry TLVs
        v2(0x21, 0x00, TLVS[:5]),
        ProxyHeader(version=2, family=Family.UNSPEC, transport=Transport.UNSPEC, tlvs=((0x01, b"h2"),)),
    ),
    (
        # LOCAL: addresses (whatever the family says) are ignored
        v2(0x20, 0x11, INET_BODY + TLVS),
        ProxyHeader(version=2, command=Command.LOCAL, family=Family.UNSPEC, transport=Transport.STREAM),
    ),
    (
        # a UDP header is well formed; whether to accept it is the listener's business
        v2(0x21, 0x12, INET_BODY),
        ProxyHeader(
            version=2,
            family=Family.INET,
            transport=Transport.DGRAM,
            src_addr="192.0.2.1",
            dst_addr="198.51.100.2",
            src_port=56324,
            dst_port=443,
        ),
    ),
]


@pytest.mark.parametrize(("data", "expected"), V2_VALID)
def test_v2_valid_whole_and_bytewise(data: bytes, expected: ProxyHeader) -> None:
    assert parse(data) == (expected, len(data))
    assert parse(data + TRAILER) == (expected, len(data))
    assert parse(bytearray(data + TRAILER)) == (expected, len(data))
    assert parse(memoryview(data + TRAILER)) == (expected, len(data))
    assert feed_bytewise(data + TRAILER) == (expected, len(data))
    assert parse(data, versions=(2,)) == (expected, len(data))
    assert detect(data) == 2


def test_v2_client() -> None:
    assert V2_VALID[0][1].client == "192.0.2.1"
    assert V2_VALID[2][1].client == "/run/client.sock"
    assert V2_VALID[3][1].client is None
    assert V2_VALID[5][1].client is None


V2_MALFORMED = [
    v2(0x11, 0x11, INET_BODY),  # version 1 in the binary format
    v2(0x31, 0x11, INET_BODY),  # version 3
    v2(0x22, 0x11, INET_BODY),  # command 2
    v2(0x2F, 0x11, INET_BODY),
    v2(0x21, 0x41, INET_BODY),  # family 4
    v2(0x21, 0x13, INET_BODY),  # transport 3
    v2(0x21, 0x11, INET_BODY[:11]),  # too short for INET
    v2(0x21, 0x21, INET_BODY),  # too short for INET6
    v2(0x21, 0x31, UNIX_BODY[:200]),  # too short for UNIX
    v2(0x21, 0x11, INET_BODY + b"\x01\x00"),  # truncated TLV header
    v2(0x21, 0x11, INET_BODY + b"\x01\x00\x05abc"),  # TLV overruns
    v2(0x21, 0x11, b"", length=4097),  # over the default bound
    v2(0x21, 0x11, b"", length=0xFFFF),
    V2_SIGNATURE[:11] + b"X" + b"\x21\x11\x00\x0c" + INET_BODY,  # signature off by one byte
]


@pytest.mark.parametrize("data", V2_MALFORMED)
def test_v2_malformed(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse(data + TRAILER)
    rejects_bytewise(data + TRAILER)


def test_v2_length_bound_is_configurable() -> None:
    data = v2(0x21, 0x11, INET_BODY + b"\x05\x00\x64" + b"x" * 100)
    assert parse(data, max_v2_length=115)[1] == len(data)
    with pytest.raises(RemoteProtocolError, match="limit"):
        parse(data, max_v2_length=114)
    # the bound is checked from the 16-byte fixed part, before the body arrives
    with pytest.raises(RemoteProtocolError, match="limit"):
        parse(data[:16], max_v2_length=114)


def test_v2_needs_whole_body() -> None:
    data = v2(0x21, 0x21, INET6_BODY + TLVS)
    for i in range(len(data)):
        assert parse(data[:i]) == (None, 0)


# -- versions and detection -------------------------------------------------------------


def test_versions_restrict() -> None:
    v1 = V1_VALID[0][0]
    v2data = V2_VALID[0][0]
    with pytest.raises(RemoteProtocolError, match="v2"):
        parse(v1, versions=(2,))
    with pytest.raises(RemoteProtocolError, match="v1"):
        parse(v2data, versions=(1,))
    assert parse(b"\r\n\r\n", versions=(2,)) == (None, 0)
    with pytest.raises(RemoteProtocolError):
        parse(b"\r\n\r\n", versions=(1,))
    assert parse(b"PRO", versions=(1,)) == (None, 0)
    with pytest.raises(RemoteProtocolError):
        parse(b"PRO", versions=(2,))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", None),
        (b"P", None),
        (b"PROXY", None),
        (b"PROXY ", 1),
        (b"PROXY TCP4", 1),
        (b"\r\n", None),
        (b"\r\n\r\n\x00\r\nQUIT", None),
        (V2_SIGNATURE, 2),
        (b"GET / HTTP/1.1\r\n", 0),
        (b"PROPFIND / HTTP/1.1\r\n", 0),
        (b"PUT", 0),
        (b"\r\n\r\nGET", 0),
        (b"\x16\x03\x01", 0),  # a TLS ClientHello
    ],
)
def test_detect(data: bytes, expected: int | None) -> None:
    assert detect(data) == expected


def test_empty_needs_more() -> None:
    assert parse(b"") == (None, 0)


# -- building ---------------------------------------------------------------------------


def test_build_v1() -> None:
    assert build_v1(("192.0.2.1", 5), ("198.51.100.2", 80)) == b"PROXY TCP4 192.0.2.1 198.51.100.2 5 80\r\n"
    assert build_v1(("2001:db8::1", 5), ("2001:db8::2", 80)) == b"PROXY TCP6 2001:db8::1 2001:db8::2 5 80\r\n"
    # v4-mapped clients of a dual-stack listener are unmapped to agree with a v4 destination
    assert build_v1(("::ffff:192.0.2.1", 5), ("198.51.100.2", 80)) == b"PROXY TCP4 192.0.2.1 198.51.100.2 5 80\r\n"
    assert build_v1(("192.0.2.1", 5), ("2001:db8::2", 80)) == b"PROXY UNKNOWN\r\n"
    assert build_v1("/a.sock", "/b.sock") == b"PROXY UNKNOWN\r\n"
    assert build_v1(None, None) == b"PROXY UNKNOWN\r\n"
    assert build_v1(("not an ip", 1), ("192.0.2.1", 2)) == b"PROXY UNKNOWN\r\n"
    with pytest.raises(LocalProtocolError):
        build_v1(("192.0.2.1", 70000), ("198.51.100.2", 80))


def test_build_v2() -> None:
    assert build_v2(("192.0.2.1", 56324), ("198.51.100.2", 443)) == V2_VALID[0][0]
    assert (
        build_v2(("2001:db8::1", 1), ("2001:db8::2", 2), tlvs=((1, b"h2"), (4, b""), (0xEA, b"vpc-1")))
        == (V2_VALID[1][0])
    )
    assert build_v2("/run/client.sock", "/run/server.sock") == V2_VALID[2][0]
    assert build_v2(None, None) == V2_VALID[3][0]
    assert build_v2(("192.0.2.1", 1), ("198.51.100.2", 2), command=Command.LOCAL) == v2(0x20, 0x00, b"")
    with pytest.raises(LocalProtocolError):
        build_v2("/" + "x" * 200, "")
    with pytest.raises(LocalProtocolError):
        build_v2(None, None, tlvs=((256, b""),))
    with pytest.raises(LocalProtocolError):
        build_v2(("192.0.2.1", -1), ("198.51.100.2", 2))


# -- properties -------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
endpoints = st.one_of(
    st.tuples(st.tuples(ipv4, ports), st.tuples(ipv4, ports)),
    st.tuples(st.tuples(ipv6, ports), st.tuples(ipv6, ports)),
)
trailers = st.binary(max_size=64)


@settings(max_examples=300, deadline=None)
@given(ends=endpoints, trailer=trailers)
def test_v1_round_trip(ends: tuple[tuple[str, int], tuple[str, int]], trailer: bytes) -> None:
    src, dst = ends
    data = build_v1(src, dst)
    assert len(data) <= V1_MAX_LENGTH
    hdr, n = parse(data + trailer)
    assert n == len(data)
    assert hdr is not None
    assert (hdr.version, hdr.command) == (1, Command.PROXY)
    assert (hdr.src_addr, hdr.src_port, hdr.dst_addr, hdr.dst_port) == (*src, *dst)
    assert hdr.family is (Family.INET if ":" not in src[0] else Family.INET6)


tlv_lists = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=5).map(tuple)
unix_paths = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30).filter(
    lambda p: len(p.encode()) <= 108
)


@settings(max_examples=300, deadline=None)
@given(ends=endpoints, tlvs=tlv_lists, trailer=trailers)
def test_v2_round_trip(
    ends: tuple[tuple[str, int], tuple[str, int]], tlvs: tuple[tuple[int, bytes], ...], trailer: bytes
) -> None:
    src, dst = ends
    data = build_v2(src, dst, tlvs=tlvs)
    hdr, n = parse(data + trailer)
    assert n == len(data)
    assert hdr is not None
    assert (hdr.version, hdr.command, hdr.transport) == (2, Command.PROXY, Transport.STREAM)
    assert (hdr.src_addr, hdr.src_port, hdr.dst_addr, hdr.dst_port) == (*src, *dst)
    assert hdr.tlvs == tlvs


@settings(max_examples=200, deadline=None)
@given(src=unix_paths, dst=unix_paths, tlvs=tlv_lists)
def test_v2_unix_round_trip(src: str, dst: str, tlvs: tuple[tuple[int, bytes], ...]) -> None:
    data = build_v2(src, dst, tlvs=tlvs)
    hdr, n = parse(data)
    assert n == len(data)
    assert hdr is not None
    assert (hdr.family, hdr.src_addr, hdr.dst_addr, hdr.tlvs) == (Family.UNIX, src, dst, tlvs)


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from([d for d, _ in V1_VALID + V2_VALID] + V1_MALFORMED + V2_MALFORMED + [b""])))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(base)))
        op = draw(st.integers(0, 2))
        if op == 0:
            del base[pos : pos + draw(st.integers(1, 4))]
        elif op == 1:
            base[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif base:
            base[min(pos, len(base) - 1)] = draw(st.integers(0, 255))
    return bytes(base)


@settings(max_examples=1000, deadline=None)
@given(data=st.one_of(mangled(), st.binary(max_size=300)), versions=st.sampled_from([(1,), (2,), (1, 2)]))
def test_anything_is_a_header_more_or_a_protocol_error(data: bytes, versions: tuple[int, ...]) -> None:
    """The fuzz rule: accepted, incomplete, or RemoteProtocolError — never another exception."""
    try:
        hdr, n = parse(data, versions=versions)
    except RemoteProtocolError:
        return
    if hdr is None:
        assert n == 0
        assert len(data) < 16 + 4096  # never waits past the v2 bound
    else:
        assert 0 < n <= len(data)
        assert hdr.version in versions
        # a header parsed from a prefix is the same header parsed from the whole
        assert parse(data[:n], versions=versions) == (hdr, n)
