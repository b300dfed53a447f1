"""TLS on both backends (ssl/OpenSSL and rtls/rustls), each over every event loop: HTTPS listeners (SNI,
key formats, ALPN, session resumption, mTLS, certificate reload) and TLS upstreams (verification, SNI, ALPN,
client certificates).

Where the rustls backend lacks a feature the test is skipped naming the gap; the config refuses that
feature on rustls (tests/config/test_config_tls.py)."""

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
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from conftest import Origin, Proxy, ProxyFactory, free_port, render

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


BACKENDS = ["openssl", "rustls"]
NO_MTLS = "rtls builds its rustls ServerConfig with_no_client_auth: a rustls listener cannot verify client certs"
NO_RESUMPTION = "rtls builds a rustls ServerConfig per connection: no session cache or ticket key outlives it"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The TLS backend of the proxy's listeners and upstreams; every TLS test runs on each."""
    return str(request.param)


LISTENER = """
[runtime]
drain_timeout = 1

[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[servers.web.tls]
backend = "{backend}"
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
def listener(proxy: ProxyFactory, origin: Origin, ca: trustme.CA, tmp_path: Path, backend: str) -> Proxy:
    chain, key = write_cert(ca.issue_cert("127.0.0.1", "localhost"), tmp_path, "default")
    a_chain, a_key = write_cert(ca.issue_cert("a.example", key_type=trustme.KeyType.ECDSA), tmp_path, "a")
    w_chain, w_key = write_cert(ca.issue_cert("*.w.example"), tmp_path, "w")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return proxy(
        LISTENER,
        backend=backend,
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


def test_failed_handshake_is_one_line(listener: Proxy) -> None:
    """Plain HTTP on a TLS port (either backend): one log line naming the peer, no traceback."""
    port = free_port()
    assert curl("--local-port", str(port), f"http://{listener.servers['web']}/").returncode != 0
    listener.log.wait_line(rf"tls handshake failed from 127\.0\.0\.1:{port}: .+ \(servers\.web\.tls\)$")
    assert not listener.log.count("Traceback")


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


def test_mtls_required(proxy: ProxyFactory, origin: Origin, ca: trustme.CA, tmp_path: Path, backend: str) -> None:
    if backend == "rustls":
        pytest.skip(NO_MTLS)
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


def test_mtls_refusal_is_logged_and_alerted(
    proxy: ProxyFactory, origin: Origin, ca: trustme.CA, tmp_path: Path
) -> None:
    """A client without an acceptable certificate gets the TLS alert (before: the connection just
    closed, "Empty reply from server") and the proxy logs one line with the peer and the reason;
    so do other failed handshakes (plain HTTP on the TLS port)."""
    chain, key = write_cert(ca.issue_cert("127.0.0.1"), tmp_path, "server")
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    stranger = trustme.CA()
    s_chain, s_key = write_cert(stranger.issue_cert("client.example"), tmp_path, "stranger")
    p = proxy(MTLS, origin=origin.url, chain=chain, key=key, client_ca=tmp_path / "client-ca.pem")
    url = https_url(p, "web") + "/echo"
    cafile = str(tmp_path / "ca.pem")
    cases = [
        (
            ["--tlsv1.3"],
            "alert certificate required",
            r"tls handshake refused from {peer}: peer did not return a certificate",
        ),
        (
            ["--tls-max", "1.2"],
            "alert handshake failure",
            r"tls handshake refused from {peer}: peer did not return a certificate",
        ),
        (
            ["--cert", str(s_chain), "--key", str(s_key)],
            "alert unknown ca",
            r"tls handshake refused from {peer}: certificate verify failed: unable to get local issuer certificate",
        ),
    ]
    for args, alert, line in cases:
        port = free_port()
        mark = p.log.mark()
        out = curl("--cacert", cafile, "--local-port", str(port), *args, url)
        assert out.returncode != 0 and alert in out.stderr.decode(), out.stderr
        p.log.wait_line(line.format(peer=rf"127\.0\.0\.1:{port}") + r" \(servers\.web\.tls\)", after=mark)
    port = free_port()
    mark = p.log.mark()
    assert curl("--local-port", str(port), f"http://{p.servers['web']}/echo").returncode != 0
    p.log.wait_line(rf"tls handshake failed from 127\.0\.0\.1:{port}: plain HTTP sent to a TLS port", after=mark)
    # a flood of them is rate-limited: a few lines, then one count
    for _ in range(15):
        with socket.create_connection(("127.0.0.1", port_of(p, "web")), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(100)  # the close
    p.log.wait_line(r"tls: failed handshakes: \d+ more suppressed", after=mark)
    assert not p.log.count("Traceback")
    # and a client with a good certificate is still served
    c_chain, c_key = write_cert(client_ca.issue_cert("client.example"), tmp_path, "client")
    out = curl("--cacert", cafile, "--cert", str(c_chain), "--key", str(c_key), url)
    assert out.returncode == 0, out.stderr


# -- upstream TLS --------------------------------------------------------------------


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        conn = self.connection
        assert isinstance(conn, ssl.SSLSocket)
        body = json.dumps(
            {
                "path": self.path,
                "headers": list(self.headers.items()),
                "alpn": conn.selected_alpn_protocol(),
                "client_cert": conn.getpeercert() is not None and conn.getpeercert() != {},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_tls_origin(ca: trustme.CA, client_ca: trustme.CA | None = None) -> Iterator[int]:
    """A TLS origin (threaded stdlib server) on 127.0.0.1 with a certificate for "origin.example" and
    127.0.0.1, offering ALPN http/1.1; with ``client_ca`` it requires a client certificate from that CA."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("origin.example", "127.0.0.1").configure_cert(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    if client_ca is not None:
        client_ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tls_origin(ca: trustme.CA) -> Iterator[int]:
    yield from serve_tls_origin(ca)


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def mtls_origin(ca: trustme.CA, client_ca: trustme.CA) -> Iterator[int]:
    yield from serve_tls_origin(ca, client_ca)


UPSTREAM = """
[upstreams.good]
endpoints = [{ endpoint = "https://127.0.0.1:{port}" }]
[upstreams.good.tls]
backend = "{backend}"
ca = "{ca}"
sni = "origin.example"

[upstreams.bad]
endpoints = [{ endpoint = "127.0.0.1:{port}" }]
[upstreams.bad.tls]
backend = "{backend}"
ca = "{wrong_ca}"

[upstreams.insecure]
endpoints = [{ endpoint = "127.0.0.1:{port}" }]
[upstreams.insecure.tls]
backend = "{backend}"
verify = false

[upstreams.mtls]
endpoints = [{ endpoint = "127.0.0.1:{mtls_port}" }]
[upstreams.mtls.tls]
backend = "{backend}"
ca = "{ca}"
client_cert = "{client_chain}"
client_key = "{client_key}"

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/good"
upstream = "good"

[[servers.web.routes]]
path = "/bad"
upstream = "bad"

[[servers.web.routes]]
path = "/insecure"
upstream = "insecure"

[[servers.web.routes]]
path = "/mtls"
upstream = "mtls"
"""


def test_upstream_tls(
    proxy: ProxyFactory,
    tls_origin: int,
    mtls_origin: int,
    ca: trustme.CA,
    client_ca: trustme.CA,
    tmp_path: Path,
    backend: str,
) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "wrong.pem"))
    client_chain, client_key = write_cert(client_ca.issue_cert("proxy.example"), tmp_path, "client")
    p = proxy(
        UPSTREAM,
        backend=backend,
        port=tls_origin,
        mtls_port=mtls_origin,
        ca=tmp_path / "ca.pem",
        wrong_ca=tmp_path / "wrong.pem",
        client_chain=client_chain,
        client_key=client_key,
    )
    with httpx.Client(trust_env=False, timeout=30) as client:
        for _ in range(3):  # the second and third reuse the pooled TLS connection
            r = client.get(p.url + "/good/x")
            assert r.status_code == 200, r.text
            hdrs = {k.lower(): v for k, v in r.json()["headers"]}
            assert hdrs["x-forwarded-proto"] == "http"
            assert r.json()["alpn"] == "http/1.1"  # the upstream alpn option, default ["http/1.1"]
            assert r.json()["client_cert"] is False
        r = client.get(p.url + "/mtls/x")
        assert r.status_code == 200, r.text
        assert r.json()["client_cert"] is True
        mark = p.log.mark()
        r = client.get(p.url + "/insecure/x")  # the origin's CA is not trusted, verification is off
        assert r.status_code == 200, r.text
        r = client.get(p.url + "/bad/x")
        assert r.status_code == 502
    line = p.log.wait_line(r"TLS handshake with 127\.0\.0\.1:\d+ .*certificate verify failed", after=mark)
    assert "cluster=bad" in line.string
    reason = "UnknownIssuer" if backend == "rustls" else "unable to get local issuer certificate"
    assert reason in line.string
    assert "upstreams.insecure.tls.verify = false" in "\n".join(p.log.lines)


RELOADABLE = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[servers.web.tls]
backend = "{backend}"
certificates = [{ chain = "{chain}", key = "{key}" }]

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


def test_reload_switches_certificates_on_the_running_listener(
    proxy: ProxyFactory, origin: Origin, ca: trustme.CA, tmp_path: Path, backend: str
) -> None:
    one = ca.issue_cert("127.0.0.1")
    two = ca.issue_cert("127.0.0.1")
    chain1, key1 = write_cert(one, tmp_path, "one")
    chain2, key2 = write_cert(two, tmp_path, "two")
    p = proxy(RELOADABLE, origin=origin.url, chain=chain1, key=key1, backend=backend)
    port = port_of(p, "web")
    assert peer_cert(port, None) == der_of(one)
    tmp = p.config_path.with_name("next.toml")
    tmp.write_text(render(RELOADABLE, origin=origin.url, chain=chain2, key=key2, backend=backend))
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


# -- key formats, ALPN, session resumption ---------------------------------------------

FORMATS = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"

[servers.web.tls]
backend = "{backend}"
alpn = ["http/1.1"]
session_tickets = {tickets}
certificates = [
  { chain = "{pkcs8_chain}", key = "{pkcs8_key}", server_names = ["pkcs8.example"] },
  { chain = "{pkcs1_chain}", key = "{pkcs1_key}", server_names = ["pkcs1.example"] },
  { chain = "{ec_chain}", key = "{ec_key}", server_names = ["ec.example"] },
]

[[servers.web.routes]]
path = "/"
upstream = "origin"
"""

KEY_HEADERS = {"pkcs8": b"BEGIN PRIVATE KEY", "pkcs1": b"BEGIN RSA PRIVATE KEY", "ec": b"BEGIN EC PRIVATE KEY"}


def write_key_format(cert: trustme.LeafCert, directory: Path, key_format: str) -> tuple[Path, Path]:
    """``cert``'s chain and its key re-encoded as PKCS#8, PKCS#1 (RSA) or SEC1 (EC)."""
    chain, key_path = write_cert(cert, directory, key_format)
    key = load_pem_private_key(cert.private_key_pem.bytes(), None)
    fmt = serialization.PrivateFormat.PKCS8 if key_format == "pkcs8" else serialization.PrivateFormat.TraditionalOpenSSL
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    assert KEY_HEADERS[key_format] in pem
    key_path.write_bytes(pem)
    return chain, key_path


@pytest.fixture
def formats(proxy: ProxyFactory, origin: Origin, ca: trustme.CA, tmp_path: Path, backend: str) -> Proxy:
    files: dict[str, Path] = {}
    for fmt, kind in (("pkcs8", trustme.KeyType.RSA), ("pkcs1", trustme.KeyType.RSA), ("ec", trustme.KeyType.ECDSA)):
        cert = ca.issue_cert(f"{fmt}.example", "127.0.0.1", key_type=kind)
        chain, key = write_key_format(cert, tmp_path, fmt)
        files[f"{fmt}_chain"], files[f"{fmt}_key"] = chain, key
    write_ca(ca, tmp_path)
    tickets = "true" if backend == "openssl" else "false"
    return proxy(FORMATS, origin=origin.url, backend=backend, tickets=tickets, **files)


@pytest.mark.parametrize("key_format", ["pkcs8", "pkcs1", "ec"])
def test_key_formats_serve_https(formats: Proxy, tmp_path: Path, key_format: str) -> None:
    port = port_of(formats, "web")
    host = f"{key_format}.example"
    assert peer_cert(port, host, tmp_path / "ca.pem") == der_of_file(tmp_path / f"{key_format}.pem")
    out = curl(
        "--cacert", str(tmp_path / "ca.pem"), "--resolve", f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/echo"
    )
    assert out.returncode == 0, out.stderr
    assert headers_of(json.loads(out.stdout))["host"] == f"{host}:{port}"


def alpn_handshake(port: int, cafile: Path, offer: list[str]) -> str | None:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.set_alpn_protocols(offer)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="ec.example") as tls,
    ):
        tls.sendall(b"GET /echo HTTP/1.1\r\nHost: ec.example\r\nConnection: close\r\n\r\n")
        assert tls.recv(12) == b"HTTP/1.1 200"
        return tls.selected_alpn_protocol()


def test_alpn_selects_http11(formats: Proxy, tmp_path: Path, backend: str) -> None:
    port = port_of(formats, "web")
    cafile = tmp_path / "ca.pem"
    # curl offers h2 and http/1.1 over TLS; the listener picks http/1.1
    out = curl(
        "--cacert", str(cafile), "--resolve", f"ec.example:{port}:127.0.0.1",
        "-o", "/dev/null", "-w", "%{http_version}", f"https://ec.example:{port}/echo",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"1.1"
    assert alpn_handshake(port, cafile, ["h2", "http/1.1"]) == "http/1.1"
    assert alpn_handshake(port, cafile, []) is None  # no ALPN offered: HTTP/1.1 anyway
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cafile)), trust_env=False, timeout=30) as client:
        r = client.get(f"https://127.0.0.1:{port}/echo")
        assert r.status_code == 200 and r.http_version == "HTTP/1.1"
    # a client that offers only protocols the listener lacks: OpenSSL carries on without ALPN,
    # rustls refuses the handshake (RFC 7301 section 3.2 no_application_protocol)
    if backend == "openssl":
        assert alpn_handshake(port, cafile, ["h2"]) is None
    else:
        with pytest.raises((ssl.SSLError, OSError)):
            alpn_handshake(port, cafile, ["h2"])


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_session_resumption(formats: Proxy, tmp_path: Path, backend: str, version: ssl.TLSVersion) -> None:
    if backend == "rustls":
        pytest.skip(NO_RESUMPTION)
    port = port_of(formats, "web")
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    ctx.maximum_version = version
    session = None
    reused = []
    for _ in range(3):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="pkcs8.example", session=session) as tls,
        ):
            tls.sendall(b"GET /echo HTTP/1.1\r\nHost: pkcs8.example\r\nConnection: close\r\n\r\n")
            assert tls.recv(12) == b"HTTP/1.1 200"  # TLS 1.3 tickets arrive before the response
            reused.append(tls.session_reused)
            session = tls.session
    assert reused == [False, True, True]


VERSIONS = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.tls13]
listener = "127.0.0.1:0"
[servers.tls13.tls]
backend = "{backend}"
min_version = "1.3"
certificates = [{ chain = "{chain}", key = "{key}" }]
[[servers.tls13.routes]]
path = "/"
upstream = "origin"

[servers.tls12]
listener = "127.0.0.1:0"
[servers.tls12.tls]
backend = "{backend}"
max_version = "1.2"
ciphers = "ECDHE-ECDSA-CHACHA20-POLY1305"
certificates = [{ chain = "{chain}", key = "{key}" }]
[[servers.tls12.routes]]
path = "/"
upstream = "origin"
"""


def handshake(port: int, cafile: Path, max_version: ssl.TLSVersion | None = None) -> tuple[str | None, str]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    if max_version is not None:
        ctx.maximum_version = max_version
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return tls.version(), cipher[0]


def test_versions_and_ciphers(
    proxy: ProxyFactory, origin: Origin, ca: trustme.CA, tmp_path: Path, backend: str
) -> None:
    chain, key = write_cert(ca.issue_cert("127.0.0.1", key_type=trustme.KeyType.ECDSA), tmp_path, "ec")
    cafile = write_ca(ca, tmp_path)
    p = proxy(VERSIONS, origin=origin.url, backend=backend, chain=chain, key=key)
    assert handshake(port_of(p, "tls13"), cafile)[0] == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(port_of(p, "tls13"), cafile, ssl.TLSVersion.TLSv1_2)
    assert handshake(port_of(p, "tls12"), cafile) == ("TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305")
    out = curl("--cacert", str(cafile), f"https://127.0.0.1:{port_of(p, 'tls12')}/echo")
    assert out.returncode == 0, out.stderr


H2_OVER_TLS = """
[upstreams.origin]
endpoints = [{ endpoint = "{origin}" }]

[servers.web]
listener = "127.0.0.1:0"
[servers.web.tls]
backend = "{backend}"
alpn = ["h2", "http/1.1"]
certificates = [{ chain = "{chain}", key = "{key}" }]
[[servers.web.routes]]
path = "/"
upstream = "origin"
"""


def test_alpn_h2_over_tls(proxy: ProxyFactory, origin: Origin, ca: trustme.CA, tmp_path: Path, backend: str) -> None:
    chain, key = write_cert(ca.issue_cert("127.0.0.1"), tmp_path, "h2")
    cafile = write_ca(ca, tmp_path)
    p = proxy(H2_OVER_TLS, origin=origin.url, backend=backend, chain=chain, key=key)
    url = https_url(p, "web") + "/echo"
    out = curl("--cacert", str(cafile), "--http2", "-o", "/dev/null", "-w", "%{http_version}", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"2"
    out = curl("--cacert", str(cafile), "--http1.1", "-o", "/dev/null", "-w", "%{http_version}", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"1.1"


H2_UPSTREAM = """
[upstreams.back]
endpoints = [{ endpoint = "https://127.0.0.1:{back_port}" }]
protocol = "{protocol}"
[upstreams.back.tls]
backend = "{backend}"
ca = "{ca}"
{alpn}

[servers.front]
listener = "127.0.0.1:0"
[[servers.front.routes]]
path = "/"
upstream = "back"
"""


@pytest.mark.parametrize("protocol", ["h2", "http1"])
def test_upstream_alpn(
    proxy: ProxyFactory, origin: Origin, ca: trustme.CA, tmp_path: Path, backend: str, protocol: str
) -> None:
    """A TLS upstream offering ALPN h2 (HTTP/2) or http/1.1: another proxy whose TLS listener offers both."""
    chain, key = write_cert(ca.issue_cert("127.0.0.1"), tmp_path, "back")
    cafile = write_ca(ca, tmp_path)
    back = proxy(H2_OVER_TLS, origin=origin.url, backend="openssl", chain=chain, key=key)
    alpn = "" if protocol == "h2" else 'alpn = ["http/1.1"]'  # protocol = "h2" offers h2 itself
    front = proxy(H2_UPSTREAM, back_port=port_of(back, "web"), protocol=protocol, backend=backend, ca=cafile, alpn=alpn)
    with httpx.Client(trust_env=False, timeout=30) as client:
        for _ in range(3):
            r = client.get(front.url + "/echo")
            assert r.status_code == 200, r.text
            assert r.json()["path"] == "/echo"
