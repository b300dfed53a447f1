"""Config for thrift servers and gateway routes: defaults, and errors that name the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from monolake.config import load_config, parse_config
from monolake.errors import ConfigError
from monolake.proxy import build_apps

REPO = Path(__file__).resolve().parents[2]


def thrift(route: dict[str, object] | None = None, **server: object) -> dict[str, object]:
    r = {"upstreams": [{"endpoint": "127.0.0.1:9090"}], **(route or {})}
    return {
        "upstreams": {"c": {"endpoints": [{"endpoint": "127.0.0.1:9091"}]}},
        "servers": {"t": {"listener": "127.0.0.1:0", "proxy_type": "thrift", "routes": [r], **server}},
    }


def test_defaults() -> None:
    s = parse_config(thrift()).servers["t"]
    assert (s.max_frame_size, s.upstream_connections, s.upstream_in_flight) == (16 * 1024 * 1024, 8, 2)
    r = s.routes[0]
    assert r.thrift_method is None and r.thrift_service is None and r.gateway is None


def test_matchers_accept_a_name_or_a_list() -> None:
    cfg = parse_config(thrift({"thrift_method": "a", "thrift_service": ["S", "T"]}))
    assert cfg.servers["t"].routes[0].thrift_service == ["S", "T"]
    build_apps(cfg)


@pytest.mark.parametrize(
    ("raw", "path", "reason"),
    [
        (thrift({"path": "/x"}), "servers.t.routes[0].path", "an HTTP route key"),
        (thrift({"methods": ["GET"]}), "servers.t.routes[0].methods", "an HTTP route key"),
        (thrift({"host_header": "upstream"}), "servers.t.routes[0].host_header", "an HTTP route key"),
        (thrift({"thrift_method": []}), "servers.t.routes[0].thrift_method", "non-empty"),
        (thrift({"thrift_service": ""}), "servers.t.routes[0].thrift_service", "non-empty"),
        (thrift({"upstream": "nope", "upstreams": None}), "servers.t.routes[0].upstream", "unknown cluster"),
        (thrift({"upstream": "c"}), "servers.t.routes[0]", "not both"),
        (
            thrift({"load_balancer": "consistent_hash", "hash_on": "header:x"}),
            "servers.t.routes[0].hash_on",
            "client_ip",
        ),
        (thrift(max_frame_size=10), "servers.t.max_frame_size", "between"),
        (thrift(upstream_connections=0), "servers.t.upstream_connections", ">= 1"),
        (thrift(upstream_in_flight=0), "servers.t.upstream_in_flight", ">= 1"),
        (thrift(filters=["nocolon"]), "servers.t.filters[0]", "module:Class"),
        (thrift(upstreams=[{"endpoint": "127.0.0.1:1"}]), "servers.t.upstreams", "routes' upstreams"),
        (thrift(routes=[]), "servers.t.routes", "at least one route"),
        (thrift(proxy_type="udp"), "servers.t.proxy_type", "Invalid enum value 'udp'"),
    ],
)
def test_errors_name_the_key(raw: dict[str, object], path: str, reason: str) -> None:
    routes = raw["servers"]["t"]["routes"]  # type: ignore[index]
    for r in routes:
        if r.get("upstreams", 1) is None:
            del r["upstreams"]
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.path == path
    assert reason in info.value.reason


def http(route: dict[str, object]) -> dict[str, object]:
    r = {"upstreams": [{"endpoint": "127.0.0.1:9090"}], **route}
    return {"servers": {"w": {"listener": "127.0.0.1:0", "routes": [r]}}}


def test_thrift_matchers_only_on_thrift_servers() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(http({"thrift_method": "x"}))
    assert info.value.path == "servers.w.routes[0].thrift_method"


IDL = REPO / "examples" / "gateway" / "echo.thrift"


@pytest.mark.parametrize(
    ("gateway", "path", "reason"),
    [
        ({"idl": "", "service": "S"}, "servers.w.routes[0].gateway.idl", "must not be empty"),
        ({"idl": str(IDL), "service": "S", "transport": "udp"}, "servers.w.routes[0].gateway.transport", "'udp'"),
        ({"idl": str(IDL), "service": "S", "extra": 1}, "servers.w.routes[0].gateway", "extra"),
    ],
)
def test_gateway_schema_errors(gateway: dict[str, object], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(http({"gateway": gateway}))
    assert info.value.path == path
    assert reason in str(info.value)


def test_gateway_idl_errors_at_build(tmp_path: Path) -> None:
    cases = [
        ({"idl": str(tmp_path / "none.thrift"), "service": "S"}, "gateway.idl", "no such file"),
        ({"idl": str(IDL), "service": "Nope"}, "gateway.service", "no service 'Nope'"),
    ]
    bad = tmp_path / "bad.thrift"
    bad.write_text("service S { void f( }")
    cases.append(({"idl": str(bad), "service": "S"}, "gateway.idl", "cannot load"))
    plain = tmp_path / "plain.thrift"
    plain.write_text("service S { void f() }")
    cases.append(({"idl": str(plain), "service": "S"}, "gateway.service", "no method with an api."))
    wrong = tmp_path / "wrong.thrift"
    wrong.write_text('struct R { 1: i32 id (api.path = "id") }\nservice S { void f(1: R r) (api.get = "/x") }')
    cases.append(({"idl": str(wrong), "service": "S"}, "gateway.idl", "path parameter 'id'"))
    for gateway, key, reason in cases:
        with pytest.raises(ConfigError) as info:
            build_apps(parse_config(http({"gateway": gateway})))
        assert key in str(info.value) and reason in str(info.value), info.value


def test_gateway_idl_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.thrift").write_text(IDL.read_text())
    conf = tmp_path / "c.toml"
    conf.write_text(
        '[servers.w]\nlistener = "127.0.0.1:0"\n[[servers.w.routes]]\nupstreams = [{ endpoint = "127.0.0.1:1" }]\n'
        'gateway = { idl = "sub/e.thrift", service = "EchoService" }\n'
    )
    cfg = load_config(conf)
    gw = cfg.servers["w"].routes[0].gateway
    assert gw is not None and gw.idl == str(tmp_path / "sub" / "e.thrift")
    build_apps(cfg)
