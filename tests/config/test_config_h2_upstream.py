"""``protocol`` of an upstream cluster (http1, h2c, h2): validation with key paths, and what it builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme

from monolake.client import Pool
from monolake.config import parse_config
from monolake.errors import ConfigError
from monolake.proxy._upstream import UpstreamCluster

Doc = dict[str, Any]


def doc(**cluster: Any) -> Doc:
    c: Doc = {"endpoints": [{"endpoint": "127.0.0.1:9000"}]}
    c.update(cluster)
    return {
        "upstreams": {"app": c},
        "servers": {"web": {"listener": "127.0.0.1:8080", "routes": [{"upstream": "app"}]}},
    }


def error(raw: Doc) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value


def test_default_is_http1() -> None:
    assert parse_config(doc()).upstreams["app"].protocol == "http1"


def test_h2c_and_h2_accepted(tmp_path: Path) -> None:
    assert parse_config(doc(protocol="h2c")).upstreams["app"].protocol == "h2c"
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    raw = doc(protocol="h2", endpoints=[{"endpoint": "https://127.0.0.1:9443"}], tls={"ca": "ca.pem"})
    c = parse_config(raw, tmp_path).upstreams["app"]
    cluster = UpstreamCluster.from_config("app", c, Pool())
    assert cluster.protocol == "h2"
    ep = cluster.endpoints[0]
    # ALPN offers h2 only, and the pool key differs from an http1 cluster's to the same endpoint.
    plain = parse_config(doc(tls={"ca": "ca.pem"}), tmp_path).upstreams["app"]
    http1 = UpstreamCluster.from_config("app1", plain, Pool())
    assert ep.tls.context is not http1.endpoints[0].tls.context
    assert ep.key != http1.endpoints[0].key


@pytest.mark.parametrize(
    ("raw", "path", "fragment"),
    [
        (doc(protocol="h3"), "upstreams.app.protocol", "Invalid enum"),
        (doc(protocol="h2"), "upstreams.app.protocol", '"h2" is HTTP/2 over TLS'),
        (
            doc(protocol="h2c", endpoints=[{"endpoint": "https://127.0.0.1:9443"}]),
            "upstreams.app.protocol",
            '"h2c" is HTTP/2 in cleartext',
        ),
        (
            doc(protocol="h2c", circuit_breaker={"max_connections": 10}),
            "upstreams.app.circuit_breaker.max_connections",
            "not available with protocol = 'h2c'",
        ),
    ],
)
def test_errors_name_the_key(raw: Doc, path: str, fragment: str) -> None:
    err = error(raw)
    assert err.path == path, err
    assert fragment in err.reason, err


def inline(**route: Any) -> Doc:
    r: Doc = {"upstreams": [{"endpoint": "127.0.0.1:9000"}]}
    r.update(route)
    return {"servers": {"web": {"listener": "127.0.0.1:8080", "routes": [r]}}}


def test_inline_upstreams_take_a_protocol() -> None:
    assert parse_config(inline(protocol="h2c")).servers["web"].routes[0].protocol == "h2c"
    err = error(inline(protocol="h2"))
    assert err.path == "servers.web.routes[0].protocol" and "HTTP/2 over TLS" in err.reason
    raw = doc()
    raw["servers"]["web"]["routes"][0]["protocol"] = "h2c"
    err = error(raw)
    assert err.path == "servers.web.routes[0].protocol" and "set it on the cluster" in err.reason


def test_guarded_features_accepted_on_h2_cluster() -> None:
    raw = doc(
        protocol="h2c", circuit_breaker={"max_requests": 10}, outlier_detection={}, health_check={"path": "/health"}
    )
    raw["servers"]["web"]["routes"][0]["retry"] = {"attempts": 1}
    cfg = parse_config(raw)
    cluster = UpstreamCluster.from_config("app", cfg.upstreams["app"], Pool())
    assert cluster.guarded and cluster.forward == cluster._forward_guarded
    assert cluster._exchange == cluster._exchange_h2
    assert cluster._checker is not None and cluster._checker.http2  # checked over HTTP/2
    assert parse_config(inline(protocol="h2c", retry={"attempts": 1})).servers["web"].routes[0].retry is not None
