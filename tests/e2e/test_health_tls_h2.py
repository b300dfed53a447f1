"""Health checks through the client, in a running proxy: an h2 cluster (HTTP/2 over TLS, its
own CA) checks its endpoints over TLS and HTTP/2. The TLS h2 origin is healthy; an endpoint in
the same cluster that speaks cleartext h2c only is marked unhealthy, and every request goes to
the healthy one. (On HTTP/1 https clusters: tests/proxy/test_health_checks.py.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from test_h2_upstream import H2OriginProcess

from conftest import ProxyFactory

pytestmark = pytest.mark.e2e

CONFIG = """
[runtime]
drain_timeout = 1

[upstreams.h2]
endpoints = [{ endpoint = "https://127.0.0.1:{good}" }, { endpoint = "https://127.0.0.1:{plain}" }]
protocol = "h2"
health_check = { path = "/hello", interval = 0.1, timeout = 1.0, unhealthy_threshold = 1 }

[upstreams.h2.tls]
ca = "{ca}"

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "h2"
"""


@pytest.fixture(scope="module")
def origins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[H2OriginProcess, H2OriginProcess, Path]]:
    d = tmp_path_factory.mktemp("hc-h2tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    (d / "chain.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    good = H2OriginProcess("--cert", str(d / "chain.pem"), "--key", str(d / "key.pem"))
    plain = H2OriginProcess()
    yield good, plain, d / "ca.pem"
    good.close()
    plain.close()


def test_h2_cluster_checked_over_tls_and_http2(
    proxy: ProxyFactory, origins: tuple[H2OriginProcess, H2OriginProcess, Path]
) -> None:
    good, plain, ca = origins
    p = proxy(CONFIG, good=good.port, plain=plain.port, ca=ca)
    p.log.wait_line(rf"endpoint unhealthy: cluster=h2 endpoint=127\.0\.0\.1:{plain.port}\b")
    assert not re.search(rf"endpoint unhealthy: cluster=h2 endpoint=127\.0\.0\.1:{good.port}\b", p.log.text)
    with httpx.Client(timeout=30, trust_env=False) as c:
        for _ in range(6):
            r = c.get(f"{p.url}/hello")
            assert r.status_code == 200 and r.text.startswith("hello from connection")
    # The check requests reached the TLS origin over HTTP/2 (it speaks nothing else).
    assert good.log.count(r"^CONN \d+$") >= 2
