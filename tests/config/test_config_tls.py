"""TLS config: [servers.NAME.tls] and [upstreams.NAME.tls] validation (key paths), file resolution, contexts."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from monolake.apps.config import Certificate, ServerTls, UpstreamTls, parse_config, parse_endpoint
from monolake.core.errors import ConfigError
from monolake.core.tls import ServerTlsContexts, client_tls

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(tmp_path: Path, ca: trustme.CA) -> Path:
    cert = ca.issue_cert("a.example")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "cert.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return tmp_path


def doc() -> Doc:
    return {
        "upstreams": {"app": {"endpoints": [{"endpoint": "127.0.0.1:9000"}], "tls": {"ca": "ca.pem"}}},
        "servers": {
            "web": {
                "listener": "127.0.0.1:8443",
                "tls": {"certificates": [{"chain": "cert.pem", "key": "key.pem", "server_names": ["a.example"]}]},
                "routes": [{"upstream": "app"}],
            }
        },
    }


def error(raw: Doc, base_dir: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, base_dir)
    return info.value


def test_valid_and_relative_files_resolved(files: Path) -> None:
    cfg = parse_config(doc(), files)
    tls = cfg.servers["web"].tls
    assert tls is not None and tls.backend == "openssl"
    assert tls.certificates[0].chain == str(files / "cert.pem")
    assert tls.alpn is None and tls.min_version == "1.2" and tls.session_tickets is None
    up = cfg.upstreams["app"].tls
    assert up is not None and up.ca == str(files / "ca.pem") and up.verify


@pytest.mark.parametrize(
    ("edit", "path", "fragment"),
    [
        (lambda d: d["servers"]["web"]["tls"].update(backend="boringssl"), "servers.web.tls.backend", "Invalid enum"),
        (lambda d: d["upstreams"]["app"]["tls"].update(backend="gnutls"), "upstreams.app.tls.backend", "Invalid enum"),
        (
            lambda d: d["servers"]["web"]["tls"].update(backend="rustls", client_auth="required", client_ca="ca.pem"),
            "servers.web.tls.client_auth",
            "cannot verify client certificates",
        ),
        (
            lambda d: d["servers"]["web"]["tls"].update(backend="rustls", client_ca="ca.pem"),
            "servers.web.tls.client_ca",
            "cannot verify client certificates",
        ),
        (
            lambda d: d["servers"]["web"]["tls"].update(backend="rustls", session_tickets=True),
            "servers.web.tls.session_tickets",
            "cannot resume sessions",
        ),
        (
            lambda d: d["servers"]["web"]["tls"]["certificates"][0].update(chain="missing.pem"),
            "servers.web.tls.certificates[0].chain",
            "no such file",
        ),
        (
            lambda d: d["servers"]["web"]["tls"]["certificates"][0].update(key="nokey.pem"),
            "servers.web.tls.certificates[0].key",
            "no such file",
        ),
        (lambda d: d["servers"]["web"]["tls"].update(certificates=[]), "servers.web.tls.certificates", "at least"),
        (lambda d: d["servers"]["web"]["tls"].update(min_version="1.1"), "servers.web.tls.min_version", ""),
        (
            lambda d: d["servers"]["web"]["tls"].update(min_version="1.3", max_version="1.2"),
            "servers.web.tls.min_version",
            "above max_version",
        ),
        (lambda d: d["servers"]["web"]["tls"].update(alpn=["spdy/3.1"]), "servers.web.tls.alpn[0]", "not available"),
        (
            lambda d: (
                d["servers"]["web"]["tls"].update(alpn=["h2"]),
                d["servers"]["web"].update(http2={"enabled": False}),
            ),
            "servers.web.tls.alpn",
            "http2.enabled is false",
        ),
        (
            lambda d: d["servers"]["web"]["tls"].update(client_auth="required"),
            "servers.web.tls.client_auth",
            "needs client_ca",
        ),
        (lambda d: d["servers"]["web"]["tls"].update(client_ca="nope.pem"), "servers.web.tls.client_ca", "no such"),
        (lambda d: d["servers"]["web"]["tls"].update(colour="red"), "servers.web.tls", "unknown field `colour`"),
        (
            lambda d: d["servers"]["web"]["tls"]["certificates"][0].update(server_names=["a.*.example"]),
            "servers.web.tls.certificates[0].server_names[0]",
            "*.suffix",
        ),
        (lambda d: d["servers"]["web"].update(proxy_protocol="v1"), "servers.web.tls", "proxy_protocol"),
        (lambda d: d["upstreams"]["app"]["tls"].update(ca="nope.pem"), "upstreams.app.tls.ca", "no such file"),
        (
            lambda d: d["upstreams"]["app"]["tls"].update(client_cert="cert.pem"),
            "upstreams.app.tls",
            "client_key",
        ),
        (
            lambda d: d["upstreams"]["app"].update(endpoints=[{"endpoint": "http://127.0.0.1:9000"}]),
            "upstreams.app.endpoints[0]",
            "http://",
        ),
        (lambda d: d["upstreams"]["app"]["tls"].update(sni=""), "upstreams.app.tls.sni", "host name"),
        (lambda d: d["upstreams"]["app"]["tls"].update(verify="no"), "upstreams.app.tls.verify", "bool"),
    ],
)
def test_bad_tls_names_key_path(files: Path, edit: Any, path: str, fragment: str) -> None:
    raw = doc()
    edit(raw)
    exc = error(raw, files)
    assert exc.path == path, str(exc)
    assert fragment in exc.reason


def test_rustls_accepted_where_supported(files: Path) -> None:
    raw = doc()
    raw["servers"]["web"]["tls"].update(backend="rustls", session_tickets=False, ciphers="ECDHE+AESGCM")
    raw["upstreams"]["app"]["tls"].update(backend="rustls", client_cert="cert.pem", client_key="key.pem")
    cfg = parse_config(raw, files)
    server, upstream = cfg.servers["web"].tls, cfg.upstreams["app"].tls
    assert server is not None and server.backend == "rustls"
    assert upstream is not None and upstream.backend == "rustls"


def test_https_endpoints() -> None:
    ep = parse_endpoint("https://origin.example")
    assert (ep.scheme, ep.host, ep.port, ep.authority) == ("https", "origin.example", 443, "origin.example")
    assert parse_endpoint("https://origin.example:8443").authority == "origin.example:8443"
    with pytest.raises(ValueError, match="http or https"):
        parse_endpoint("ftp://x:1")


def test_pool_key_carries_tls_settings(files: Path) -> None:
    a = client_tls("upstreams.a.tls", UpstreamTls(ca=str(files / "ca.pem")))
    b = client_tls("upstreams.b.tls", UpstreamTls(ca=str(files / "ca.pem"), sni="other.example"))
    ep = parse_endpoint("https://127.0.0.1:9443")
    ka = dataclasses.replace(ep, tls=a).key
    kb = dataclasses.replace(ep, tls=b).key
    assert ka != kb and ka != ep.key
    assert ka == dataclasses.replace(ep, tls=client_tls("x", UpstreamTls(ca=str(files / "ca.pem")))).key


@pytest.mark.parametrize("backend", ["openssl", "rustls"])
def test_verify_false_warns(caplog: pytest.LogCaptureFixture, backend: Any) -> None:
    with caplog.at_level("WARNING", logger="monolake.core.tls"):
        t = client_tls("upstreams.insecure.tls", UpstreamTls(verify=False, backend=backend))
    assert t.context.verify_mode == ssl.CERT_NONE and not t.context.check_hostname
    assert "upstreams.insecure.tls.verify = false" in caplog.text


def _tls(files: Path, **kw: Any) -> ServerTls:
    return ServerTls(certificates=[Certificate(chain=str(files / "cert.pem"), key=str(files / "key.pem"))], **kw)


@pytest.fixture(params=["openssl", "rustls"])
def backend(request: pytest.FixtureRequest) -> str:
    """The TLS backend under test; every context test runs on both."""
    return str(request.param)


@pytest.mark.parametrize("key_format", ["pkcs8", "pkcs1", "ec"])
def test_key_formats_load(tmp_path: Path, ca: trustme.CA, key_format: str, backend: str) -> None:
    kind = trustme.KeyType.ECDSA if key_format == "ec" else trustme.KeyType.RSA
    cert = ca.issue_cert("a.example", key_type=kind)
    key = load_pem_private_key(cert.private_key_pem.bytes(), None)
    fmt = {
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "pkcs1": serialization.PrivateFormat.TraditionalOpenSSL,
        "ec": serialization.PrivateFormat.TraditionalOpenSSL,
    }[key_format]
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    assert (b"BEGIN RSA PRIVATE KEY" in pem) == (key_format == "pkcs1")
    (tmp_path / "key.pem").write_bytes(pem)
    (tmp_path / "cert.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    contexts = ServerTlsContexts("servers.web.tls", _tls(tmp_path, backend=backend))
    assert isinstance(contexts.ssl_context, ssl.SSLContext)
    assert type(contexts.select(None)).__module__.startswith("rtls" if backend == "rustls" else "ssl")


def test_mismatched_key_is_a_config_error(tmp_path: Path, ca: trustme.CA, backend: str) -> None:
    ca.issue_cert("a.example").private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "cert.pem").write_bytes(ca.issue_cert("b.example").cert_chain_pems[0].bytes())
    with pytest.raises(ConfigError) as info:
        ServerTlsContexts("servers.web.tls", _tls(tmp_path, backend=backend))
    assert info.value.path == "servers.web.tls.certificates[0]"


def test_bad_ciphers_is_a_config_error(files: Path, backend: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerTlsContexts("servers.web.tls", _tls(files, ciphers="NO-SUCH-CIPHER", backend=backend))
    assert info.value.path == "servers.web.tls.ciphers"


def test_reload_checks_mtimes_at_most_once_a_second(files: Path, ca: trustme.CA, backend: str) -> None:
    contexts = ServerTlsContexts("servers.web.tls", _tls(files, backend=backend))
    first = contexts.select(None)
    new = ca.issue_cert("a.example")
    new.private_key_pem.write_to_path(str(files / "key.pem"))
    (files / "cert.pem").write_bytes(b"".join(b.bytes() for b in new.cert_chain_pems))
    future = time.time() + 10
    for name in ("key.pem", "cert.pem"):
        os.utime(files / name, (future, future))
    now = time.monotonic()
    assert not contexts.check_files(now)  # checked less than a second ago (at build)
    assert contexts.check_files(now + 1.5)
    assert contexts.select(None) is not first and contexts.reloads == 1
    assert not contexts.check_files(now + 3)  # unchanged since


def test_reload_refuses_to_switch_backend(files: Path, caplog: pytest.LogCaptureFixture) -> None:
    running = ServerTlsContexts("servers.web.tls", _tls(files))
    before = running.select(None)
    with caplog.at_level("WARNING", logger="monolake.core.tls"):
        running.adopt(ServerTlsContexts("servers.web.tls", _tls(files, backend="rustls")))
    assert running.select(None) is before and running.cfg.backend == "openssl"
    assert "servers.web.tls.backend: switching 'openssl' to 'rustls' takes effect on a new listener" in caplog.text


def test_listener_reads_are_capped_and_lose_nothing(files: Path, ca: trustme.CA, backend: str) -> None:
    """uvloop's SSL layer asks a listener's SSL object for 256 KiB per read: each read returns at
    most ``READ_MAX`` (what it allocates), and reading on while data is pending gets everything."""
    from monolake.core.tls import READ_MAX

    server_ctx = ServerTlsContexts("servers.web.tls", _tls(files, backend=backend)).ssl_context
    client_ctx = ssl.create_default_context(cafile=str(files / "ca.pem"))
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="a.example")
    for _ in range(10):
        for obj in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    sent = os.urandom(3 * READ_MAX + 1000)
    client.write(sent)
    s_in.write(c_out.read())
    got, reads = [], 0
    while s_in.pending or server.pending():
        try:
            piece = server.read(256 * 1024)
        except ssl.SSLWantReadError:
            break
        assert 0 < len(piece) <= READ_MAX
        got.append(piece)
        reads += 1
    assert b"".join(got) == sent
    assert reads >= 4
    assert type(server).read is not ssl.SSLObject.read  # OpenSSL: the cap is on what read allocates
    out = bytearray(1000)  # a read into a buffer is left to the buffer's size
    client.write(b"y" * 500)
    s_in.write(c_out.read())
    assert server.read(len(out), out) == 500


def test_upstream_openssl_reads_are_capped(files: Path) -> None:
    from monolake.core.tls import READ_MAX

    ctx = client_tls("upstreams.a.tls", UpstreamTls(ca=str(files / "ca.pem"))).context
    obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="a.example")
    assert type(obj).read is not ssl.SSLObject.read
    assert READ_MAX <= 128 * 1024  # below glibc's default mmap threshold
