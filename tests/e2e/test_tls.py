"""TLS with the ssl (OpenSSL) backend: HTTPS listeners (SNI, mTLS, certificate reload) and TLS upstreams."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import trustme

from conftest import Origin, Proxy, ProxyFactory, render

pytestmark = pytest.mark.e2e


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "30", *args], capture_output=True, timeout=60)


def write_cert(cert: trustme.LeafCert, directory: Path, stem: str) -> tuple[Path, Path]:
    chain, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    key.write_bytes(cert.private_key_pem.bytes())
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return chain, key


def headers_of(echo: dict[str, object]) -> dict[str, str]:
    pairs = echo["headers"]
    assert isinstance(pairs, list)
    return {k.lower(): v for k, v in pairs}


def https_url(proxy: Proxy, server: str) -> str:
    return f"https://{proxy.servers[server]}"


def port_of(proxy: Proxy, server: str) -> int:
    return int(proxy.servers[server].rpartition(":")[2])


def peer_cert(port: int, server_name: str | None, cafile: Path | None = None) -> bytes:
    """The DER certificate the listener presents for ``server_name`` (not verified unless ``cafile``;
    None sends no SNI: an IP address is never sent as a server name)."""
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl._create_unverified_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name or ("127.0.0.1" if cafile else None)) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der_of(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


LISTENER = """
[runtime]
drain_timeout = 1

[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[servers.web.tls]
certificates = [
  { chain = "{chain}", key = "{key}" },
  { chain = "{a_chain}", key = "{a_key}", server_names = ["a.example"] },
  { chain = "{w_chain}", key = "{w_key}", server_names = ["*.w.example"] },
]

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


@pytest.fixture
def listener(proxy: ProxyFactory, origin: Origin, ca: trustme.CA, tmp_path: Path) -> Proxy:
    chain, key = write_cert(ca.issue_cert("127.0.0.1", "localhost"), tmp_path, "default")
    a_chain, a_key = write_cert(ca.issue_cert("a.example", key_type=trustme.KeyType.ECDSA), tmp_path, "a")
    w_chain, w_key = write_cert(ca.issue_cert("*.w.example"), tmp_path, "w")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return proxy(
        LISTENER,
        origin=origin.url,
        chain=chain,
        key=key,
        a_chain=a_chain,
        a_key=a_key,
        w_chain=w_chain,
        w_key=w_key,
    )


def test_curl_and_httpx_through_tls_listener(listener: Proxy, tmp_path: Path) -> None:
    cafile = tmp_path / "ca.pem"
    out = curl("--cacert", str(cafile), "-i", https_url(listener, "web") + "/echo?x=1")
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    echo = json.loads(body)
    assert echo["path"] == "/echo?x=1"
    assert headers_of(echo)["x-forwarded-proto"] == "https"

    ctx = ssl.create_default_context(cafile=str(cafile))
    with httpx.Client(verify=ctx, trust_env=False, timeout=30) as client:
        for i in range(3):  # keep-alive over one TLS connection
            r = client.post(https_url(listener, "web") + "/echo", content=b"x" * (100_000 + i))
            assert r.status_code == 200
            assert r.json()["body_len"] == 100_000 + i
            assert r.http_version == "HTTP/1.1"

    # a plain-text request on the TLS port gets no HTTP answer
    out = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://{listener.servers['web']}/echo")
    assert out.stdout != b"200"


def test_sni_selects_exact_wildcard_then_default(listener: Proxy, tmp_path: Path, ca: trustme.CA) -> None:
    port = port_of(listener, "web")
    cafile = tmp_path / "ca.pem"
    a = peer_cert(port, "a.example", cafile)
    w = peer_cert(port, "x.w.example", cafile)
    default = peer_cert(port, None)
    other = peer_cert(port, "other.example")
    assert a == der_of_file(tmp_path / "a.pem")
    assert w == der_of_file(tmp_path / "w.pem")
    assert default == other == der_of_file(tmp_path / "default.pem")
    # curl with a name resolved to the proxy: the exact name's certificate verifies
    out = curl("--cacert", str(cafile), "--resolve", f"a.example:{port}:127.0.0.1", f"https://a.example:{port}/echo")
    assert out.returncode == 0, out.stderr
    assert headers_of(json.loads(out.stdout))["host"] == f"a.example:{port}"
    out = curl(
        "--cacert", str(cafile), "--resolve", f"b.w.example:{port}:127.0.0.1", f"https://b.w.example:{port}/echo"
    )
    assert out.returncode == 0, out.stderr


def der_of_file(path: Path) -> bytes:
    """The DER of the first certificate of a PEM chain file."""
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(path.read_text().split(end)[0] + end + "\n")


def test_certificate_files_replaced_are_served_to_new_handshakes(
    listener: Proxy, tmp_path: Path, ca: trustme.CA
) -> None:
    port = port_of(listener, "web")
    cafile = tmp_path / "ca.pem"
    before = peer_cert(port, None, cafile)
    # an established connection keeps working across the swap
    kept = httpx.Client(verify=ssl.create_default_context(cafile=str(cafile)), trust_env=False, timeout=30)
    assert kept.get(https_url(listener, "web") + "/echo").status_code == 200
    new = ca.issue_cert("127.0.0.1", "localhost")
    key_tmp, chain_tmp = tmp_path / "default.key.new", tmp_path / "default.pem.new"
    key_tmp.write_bytes(new.private_key_pem.bytes())
    chain_tmp.write_bytes(b"".join(blob.bytes() for blob in new.cert_chain_pems))
    future = time.time() + 5
    for p in (key_tmp, chain_tmp):
        os.utime(p, (future, future))
    os.replace(key_tmp, tmp_path / "default.key")
    os.replace(chain_tmp, tmp_path / "default.pem")
    deadline = time.monotonic() + 15
    seen = before
    while time.monotonic() < deadline:
        seen = peer_cert(port, None, cafile)
        if seen != before:
            break
        time.sleep(0.3)
    assert seen == der_of(new)
    listener.log.wait_line(r"servers\.web\.tls: certificates reloaded")
    assert kept.get(https_url(listener, "web") + "/echo").status_code == 200
    kept.close()


MTLS = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[servers.web.tls]
certificates = [{ chain = "{chain}", key = "{key}" }]
client_ca = "{client_ca}"
client_auth = "required"
min_version = "1.2"
max_version = "1.3"

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


def test_mtls_required(proxy: ProxyFactory, origin: Origin, ca: trustme.CA, tmp_path: Path) -> None:
    chain, key = write_cert(ca.issue_cert("127.0.0.1"), tmp_path, "server")
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    c_chain, c_key = write_cert(client_ca.issue_cert("client.example"), tmp_path, "client")
    p = proxy(MTLS, origin=origin.url, chain=chain, key=key, client_ca=tmp_path / "client-ca.pem")
    url = https_url(p, "web") + "/echo"
    out = curl("--cacert", str(tmp_path / "ca.pem"), url)
    assert out.returncode != 0
    out = curl("--cacert", str(tmp_path / "ca.pem"), "--cert", str(c_chain), "--key", str(c_key), url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["method"] == "GET"
    # a certificate from another CA is refused too
    stranger = trustme.CA()
    s_chain, s_key = write_cert(stranger.issue_cert("client.example"), tmp_path, "stranger")
    out = curl("--cacert", str(tmp_path / "ca.pem"), "--cert", str(s_chain), "--key", str(s_key), url)
    assert out.returncode != 0


# -- upstream TLS --------------------------------------------------------------------


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "headers": list(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def tls_origin(ca: trustme.CA) -> Iterator[int]:
    """A TLS origin (threaded stdlib server) on 127.0.0.1 with a certificate for "origin.example" and 127.0.0.1."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("origin.example", "127.0.0.1").configure_cert(ctx)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


UPSTREAM = """
[upstreams.good]
endpoints = [{ endpoint = "https://127.0.0.1:{port}" }]
[upstreams.good.tls]
ca = "{ca}"
sni = "origin.example"

[upstreams.bad]
endpoints = [{ endpoint = "127.0.0.1:{port}" }]
[upstreams.bad.tls]
ca = "{wrong_ca}"

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/good"
upstream = "good"

[[servers.web.routes]]
path = "/bad"
upstream = "bad"
"""


def test_upstream_tls(proxy: ProxyFactory, tls_origin: int, ca: trustme.CA, tmp_path: Path) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "wrong.pem"))
    p = proxy(UPSTREAM, port=tls_origin, ca=tmp_path / "ca.pem", wrong_ca=tmp_path / "wrong.pem")
    with httpx.Client(trust_env=False, timeout=30) as client:
        for _ in range(3):  # the second and third reuse the pooled TLS connection
            r = client.get(p.url + "/good/x")
            assert r.status_code == 200, r.text
            hdrs = {k.lower(): v for k, v in r.json()["headers"]}
            assert hdrs["x-forwarded-proto"] == "http"
        mark = p.log.mark()
        r = client.get(p.url + "/bad/x")
        assert r.status_code == 502
    line = p.log.wait_line(r"TLS handshake with 127\.0\.0\.1:\d+ .*certificate verify failed", after=mark)
    assert "cluster=bad" in line.string
    assert "unable to get local issuer certificate" in line.string


RELOADABLE = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[servers.web.tls]
certificates = [{ chain = "{chain}", key = "{key}" }]

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


def test_reload_switches_certificates_on_the_running_listener(
    proxy: ProxyFactory, origin: Origin, ca: trustme.CA, tmp_path: Path
) -> None:
    one = ca.issue_cert("127.0.0.1")
    two = ca.issue_cert("127.0.0.1")
    chain1, key1 = write_cert(one, tmp_path, "one")
    chain2, key2 = write_cert(two, tmp_path, "two")
    p = proxy(RELOADABLE, origin=origin.url, chain=chain1, key=key1)
    port = port_of(p, "web")
    assert peer_cert(port, None) == der_of(one)
    tmp = p.config_path.with_name("next.toml")
    tmp.write_text(render(RELOADABLE, origin=origin.url, chain=chain2, key=key2))
    os.replace(tmp, p.config_path)
    mark = p.log.mark()
    os.kill(p.pid, signal.SIGHUP)
    m = p.log.wait_line(r"reload \d+ \([^)]*\) (done|failed|aborted|refused)", after=mark)
    assert m[1] == "done", m.string
    assert port_of(p, "web") == port
    assert peer_cert(port, None) == der_of(two)
    out = curl("--cacert", str(write_ca(ca, tmp_path)), f"https://127.0.0.1:{port}/echo")
    assert out.returncode == 0, out.stderr


def write_ca(ca: trustme.CA, directory: Path) -> Path:
    path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path
