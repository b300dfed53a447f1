"""TLS settings of a listener and of an upstream: what ``core.tls`` builds contexts from.

Plain frozen msgspec structs, so the proxy's TOML schema uses them as its ``tls`` tables unchanged
(an unknown key is an error there too) and a user's own service builds them in Python.
"""

from __future__ import annotations

from typing import Literal

import msgspec

READ_MAX = 65536
"""The most one TLS object's ``read`` without a buffer asks for, on both backends (uvloop asks for
256 KiB, which OpenSSL and rtls allocate before decrypting: an mmap and munmap per read while the
heap is small). Here, below both backends: ``tls`` loads ``rtls_impl``."""

__all__ = ["Certificate", "ServerTls", "TlsVersion", "UpstreamTls"]

TlsVersion = Literal["1.2", "1.3"]


class UpstreamTls(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """TLS to a cluster's endpoints (every endpoint of the cluster speaks TLS)."""

    backend: Literal["openssl", "rustls"] = "openssl"
    """"openssl" (the stdlib ``ssl`` module) or "rustls" (the ``rtls`` package); both support every option."""
    ca: str | None = None
    """PEM file of the CAs that sign the upstreams' certificates; default the system roots."""
    sni: str | None = None
    """Server name sent and verified; default the endpoint's host."""
    client_cert: str | None = None
    """PEM certificate chain presented to upstreams that ask for one (needs ``client_key``)."""
    client_key: str | None = None
    alpn: list[str] | None = None
    """Protocols offered by ALPN; None: ["http/1.1"] to HTTP upstreams, none to tcp and thrift ones."""
    verify: bool = True
    """False skips certificate and host name verification (a warning is logged)."""
    min_version: TlsVersion | None = None
    max_version: TlsVersion | None = None


class Certificate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    chain: str
    """PEM file: the certificate, then its intermediates."""
    key: str
    """PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)."""
    server_names: list[str] = []
    """SNI names this certificate serves: exact names or "*.suffix"."""


class ServerTls(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """TLS on a server's listener (http, tcp or thrift). Certificate files are reloaded when they change."""

    backend: Literal["openssl", "rustls"] = "openssl"
    """"openssl" (the stdlib ``ssl`` module) or "rustls" (the ``rtls`` package; it cannot verify client
    certificates nor resume sessions, see monolake/core/rtls_impl.py)."""
    certificates: list[Certificate]
    """The first is the default (no SNI, or a name no certificate lists)."""
    alpn: list[str] | None = None
    """Protocols offered by ALPN; None: ["http/1.1"] on http servers, none on tcp and thrift ones."""
    min_version: TlsVersion = "1.2"
    max_version: TlsVersion = "1.3"
    ciphers: str | None = None
    """OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults)."""
    session_tickets: bool | None = None
    """Session resumption with tickets; None: on where the backend supports it (openssl), off on rustls."""
    client_ca: str | None = None
    """PEM file of the CAs client certificates must chain to (mutual TLS)."""
    client_auth: Literal["none", "optional", "required"] = "none"
    transport: Literal["monolake", "loop"] = "monolake"
    """Who drives TLS above the record layer: "monolake" (its own transport over the plain socket
    transport: less CPU per request) or "loop" (the event loop's SSL protocol layer, as before)."""
