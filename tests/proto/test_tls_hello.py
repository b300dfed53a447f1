"""proto.tls_hello: the SNI name of real ClientHellos (OpenSSL's and rustls'), whole, byte by byte,
split over several records, without a name, and bytes that are no ClientHello."""

from __future__ import annotations

import ssl
from types import ModuleType

import pytest
import rtls

from monolake.core.proto.tls_hello import server_name


def client_hello(module: ModuleType, name: str | None) -> bytes:
    """The first flight of a real client of ``module`` (ssl or rtls) sending SNI ``name``."""
    ctx = module.SSLContext(module.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = module.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    data = outgoing.read()
    assert data[0] == 0x16
    return bytes(data)


def split_records(hello: bytes, size: int) -> bytes:
    """``hello``'s handshake message re-framed into records of at most ``size`` bytes."""
    assert hello[0] == 0x16
    length = int.from_bytes(hello[3:5], "big")
    body, rest = hello[5 : 5 + length], hello[5 + length :]
    out = b""
    for i in range(0, len(body), size):
        chunk = body[i : i + size]
        out += hello[:3] + len(chunk).to_bytes(2, "big") + chunk
    return out + rest


@pytest.mark.parametrize("module", [ssl, rtls], ids=["openssl", "rustls"])
def test_name_of_real_client_hellos(module: ModuleType) -> None:
    hello = client_hello(module, "Www.Example.COM")
    assert server_name(hello) == (True, "www.example.com")
    assert server_name(hello + b"\x17\x03\x03\x00\x05trail") == (True, "www.example.com")
    for cut in range(len(hello)):  # every strict prefix asks for more
        assert server_name(hello[:cut]) == (False, None), cut
    fragmented = split_records(hello, 50)
    assert server_name(fragmented) == (True, "www.example.com")
    for cut in range(0, len(fragmented), 7):
        assert server_name(fragmented[:cut]) == (False, None), cut


def test_no_name_and_not_a_client_hello() -> None:
    # OpenSSL sends no SNI for an IP address
    assert server_name(client_hello(ssl, "127.0.0.1")) == (True, None)
    assert server_name(client_hello(ssl, None)) == (True, None)
    assert server_name(b"GET / HTTP/1.1\r\n\r\n") == (True, None)
    assert server_name(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00") == (True, None)  # a ServerHello type
    assert server_name(b"\x16\x03\x01\x00\x05\x01\xff\xff\xff\x00") == (True, None)  # over MAX_HELLO
    assert server_name(b"\x16\x03\x01\x00\x00") == (True, None)  # a zero-length handshake record


def test_malformed_client_hello_gives_no_name() -> None:
    short = b"\x01\x00\x00\x0a" + bytes(10)  # a ClientHello too short for its random
    assert server_name(b"\x16\x03\x01\x00\x0e" + short) == (True, None)
    hello = bytearray(client_hello(ssl, "a.example"))
    hello[5 + 4 + 34] = 0xFF  # a session id running past the cipher suites into the extensions
    complete, _ = server_name(bytes(hello))
    assert complete
