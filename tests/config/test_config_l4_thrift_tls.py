"""TLS on tcp and thrift servers and to their upstreams: what the config accepts, what it refuses
(with the key path), and what the built apps carry (listener context, ALPN, endpoint TLS)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from monolake.apps.config import parse_config
from monolake.apps.proxy._app import build_apps
from monolake.core.errors import ConfigError
from monolake.core.server._l4 import L4ServerApp
from monolake.core.server._thrift import ThriftServerApp

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


def tls_table(**extra: Any) -> Doc:
    return {"certificates": [{"chain": "cert.pem", "key": "key.pem", "server_names": ["a.example"]}], **extra}


def doc() -> Doc:
    return {
        "upstreams": {"secure": {"endpoints": [{"endpoint": "127.0.0.1:9000"}], "tls": {"ca": "ca.pem"}}},
        "servers": {
            "l4": {"listener": "127.0.0.1:0", "proxy_type": "tcp", "upstream": "secure", "tls": tls_table()},
            "rpc": {
                "listener": "127.0.0.1:0",
                "proxy_type": "thrift",
                "tls": tls_table(),
                "routes": [{"upstream": "secure"}],
            },
        },
    }


def error(raw: Doc, base_dir: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, base_dir)
    return info.value


@pytest.mark.parametrize("backend", ["openssl", "rustls"])
def test_tcp_and_thrift_tls_accepted_and_built(files: Path, backend: str) -> None:
    raw = doc()
    for name in ("l4", "rpc"):
        raw["servers"][name]["tls"]["backend"] = backend
    raw["upstreams"]["secure"]["tls"]["backend"] = backend
    cfg = parse_config(raw, files)
    apps = build_apps(cfg)
    l4, rpc = apps["l4"], apps["rpc"]
    assert isinstance(l4, L4ServerApp) and isinstance(rpc, ThriftServerApp)
    for app in (l4, rpc):
        assert isinstance(app.ssl_context, ssl.SSLContext)
        assert app.tls is not None and app.tls.alpn == []  # no ALPN unless asked: the bytes are not HTTP
    assert not l4.splice  # a TLS listener never splices
    ep = l4.upstream.balancer.pick(_Key())
    assert ep.tls is not None and ep.scheme == "https"
    assert ep.tls.context.verify_mode == ssl.CERT_REQUIRED


class _Key:
    def __init__(self) -> None:
        self.ctx = self
        self.peer = "127.0.0.1"
        self.headers: list[object] = []


def test_alpn_given_is_offered(files: Path) -> None:
    raw = doc()
    raw["servers"]["l4"]["tls"]["alpn"] = ["imap", "x-custom/1"]
    apps = build_apps(parse_config(raw, files))
    app = apps["l4"]
    assert isinstance(app, L4ServerApp) and app.tls is not None and app.tls.alpn == ["imap", "x-custom/1"]


def test_inline_https_endpoints_accepted(files: Path) -> None:
    raw = doc()
    raw["servers"]["l4"] = {
        "listener": "127.0.0.1:0",
        "proxy_type": "tcp",
        "upstreams": [{"endpoint": "https://127.0.0.1:9"}],
    }
    raw["servers"]["rpc"]["routes"] = [{"upstreams": [{"endpoint": "https://127.0.0.1:9"}]}]
    apps = build_apps(parse_config(raw, files))
    l4 = apps["l4"]
    assert isinstance(l4, L4ServerApp) and l4.ssl_context is None
    assert l4.upstream.balancer.pick(_Key()).tls is not None


@pytest.mark.parametrize(
    ("edit", "path", "fragment"),
    [
        (lambda d: d["servers"]["l4"].update(proxy_protocol="v1"), "servers.l4.tls", "proxy_protocol"),
        (lambda d: d["servers"]["rpc"].update(proxy_protocol="optional"), "servers.rpc.tls", "proxy_protocol"),
        (lambda d: d["servers"]["l4"].update(listener="unix:/tmp/x.sock"), "servers.l4.tls", "unix listener"),
        (lambda d: d["servers"]["l4"]["tls"].update(alpn=[""]), "servers.l4.tls.alpn[0]", "1 to 255 bytes"),
        (lambda d: d["servers"]["rpc"]["tls"].update(alpn=["x" * 256]), "servers.rpc.tls.alpn[0]", "1 to 255"),
        (lambda d: d["servers"]["l4"]["tls"].update(certificates=[]), "servers.l4.tls.certificates", "at least one"),
        (
            lambda d: d["servers"]["rpc"]["tls"].update(backend="rustls", client_auth="required", client_ca="ca.pem"),
            "servers.rpc.tls.client_auth",
            "rustls",
        ),
        (
            lambda d: d["upstreams"]["secure"].update(send_proxy_protocol="v2"),
            "upstreams.secure.send_proxy_protocol",
            "before TLS",
        ),
        (
            lambda d: d["upstreams"]["secure"]["tls"].update(ca="missing.pem"),
            "upstreams.secure.tls.ca",
            "no such file",
        ),
    ],
)
def test_refused_with_key_path(files: Path, edit: Any, path: str, fragment: str) -> None:
    raw = doc()
    edit(raw)
    exc = error(raw, files)
    assert exc.path == path, str(exc)
    assert fragment in exc.reason
