"""parse_config / load_config / validate: every error names its key path.

Each bad case starts from one valid document, breaks one thing, and checks the
ConfigError's ``path`` exactly and a fragment of its ``reason``.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from monolake.apps.config import (
    Cluster,
    Config,
    Endpoint,
    ListenAddress,
    Route,
    Server,
    load_config,
    parse_config,
    parse_endpoint,
    parse_listener,
)
from monolake.core.errors import ConfigError

Doc = dict[str, Any]


def base() -> Doc:
    return {
        "servers": {
            "web": {
                "listener": "127.0.0.1:8080",
                "routes": [{"path": "/api", "upstream": "app"}, {"upstream": "app"}],
            }
        },
        "upstreams": {"app": {"endpoints": [{"endpoint": "127.0.0.1:9000"}, {"endpoint": "127.0.0.1:9001"}]}},
    }


def web(d: Doc) -> Doc:
    return d["servers"]["web"]  # type: ignore[no-any-return]


def route(d: Doc, i: int = 0) -> Doc:
    return web(d)["routes"][i]  # type: ignore[no-any-return]


def app(d: Doc) -> Doc:
    return d["upstreams"]["app"]  # type: ignore[no-any-return]


def inline(d: Doc, **extra: Any) -> None:
    """Turn route 0 into a seed-style route with inline upstreams."""
    r = route(d)
    del r["upstream"]
    r["upstreams"] = [{"endpoint": "127.0.0.1:9000"}]
    r.update(extra)


def config_error(mutate: Callable[[Doc], Any]) -> ConfigError:
    d = base()
    mutate(d)
    with pytest.raises(ConfigError) as info:
        parse_config(d)
    return info.value


# --- the valid base and defaults ----------------------------------------------------


def test_base_is_valid_and_defaults_apply() -> None:
    cfg = parse_config(base())
    assert isinstance(cfg, Config)
    assert cfg.runtime.workers == 0 and cfg.runtime.loop == "uvloop" and cfg.runtime.drain_timeout == 10.0
    assert cfg.log.level == "info" and cfg.log.access_log == "off"
    s = cfg.servers["web"]
    assert isinstance(s, Server)
    assert s.proxy_type == "http" and s.keepalive_timeout == 75.0 and s.max_concurrency is None
    assert s.limits.max_header_bytes == 32768 and s.limits.max_headers == 100
    assert s.limits.max_body_bytes == 100 * 1024 * 1024
    assert s.forwarded.x_forwarded_for is True and s.forwarded.forwarded is False
    r = s.routes[1]
    assert isinstance(r, Route)
    assert (r.path, r.strip_prefix, r.host_header, r.load_balancer, r.timeout) == (
        None,
        False,
        "keep",
        "round_robin",
        None,
    )
    c = cfg.upstreams["app"]
    assert isinstance(c, Cluster)
    assert (c.load_balancer, c.connect_timeout, c.read_timeout, c.idle_timeout, c.max_idle_per_key) == (
        "round_robin",
        3.0,
        60.0,
        60.0,
        64,
    )
    assert [e.weight for e in c.endpoints] == [1, 1]


def test_config_is_frozen() -> None:
    cfg = parse_config(base())
    with pytest.raises(AttributeError):
        cfg.runtime = None  # type: ignore[misc]


SEED_STYLE = """
[runtime]
workers = 2
loop = "asyncio"

[servers.demo]
name = "ignored"
listener = { type = "socket", value = "0.0.0.0:8080" }
proxy_type = "http"
upstream_http_version = "http11"

[[servers.demo.routes]]
path = "/"
upstreams = [
  { endpoint = { type = "uri", value = "http://127.0.0.1:9080" }, weight = 2 },
  { endpoint = { type = "uri", value = "http://example.com" } },
  { endpoint = { type = "unix", value = "/run/app.sock" } },
]
"""


def test_seed_project_style_listener_and_endpoints() -> None:
    raw = tomllib.loads(SEED_STYLE.replace('name = "ignored"\n', ""))
    cfg = parse_config(raw)
    s = cfg.servers["demo"]
    assert parse_listener(s.listener) == ListenAddress(host="0.0.0.0", port=8080)
    ups = s.routes[0].upstreams
    assert ups is not None
    eps = [parse_endpoint(u.endpoint, u.weight) for u in ups]
    assert eps == [
        Endpoint(host="127.0.0.1", port=9080, weight=2),
        Endpoint(host="example.com", port=80),
        Endpoint(path="/run/app.sock"),
    ]
    assert cfg.runtime.workers == 2 and cfg.runtime.loop == "asyncio"


def test_seed_project_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(SEED_STYLE))
    assert info.value.path == "servers.demo"
    assert "name" in info.value.reason


def test_unix_listener_and_endpoints() -> None:
    d = base()
    web(d)["listener"] = "unix:/tmp/monolake.sock"
    app(d)["endpoints"] = [{"endpoint": "unix:/run/a.sock"}, {"endpoint": {"type": "unix", "value": "/run/b.sock"}}]
    d["servers"]["alt"] = {"listener": {"type": "unix", "value": "/tmp/alt.sock"}, "routes": [{"upstream": "app"}]}
    cfg = parse_config(d)
    assert parse_listener(cfg.servers["web"].listener) == ListenAddress(path="/tmp/monolake.sock")
    assert parse_listener(cfg.servers["alt"].listener).is_unix
    eps = [parse_endpoint(u.endpoint, u.weight) for u in cfg.upstreams["app"].endpoints]
    assert [e.path for e in eps] == ["/run/a.sock", "/run/b.sock"]


def test_everything_spelled_out_is_valid() -> None:
    d = base()
    d["runtime"] = {"workers": 4, "loop": "uvloop", "cpu_affinity": True, "drain_timeout": 0}
    d["log"] = {"level": "debug", "access_log": "stderr"}
    app(d).update(
        load_balancer="consistent_hash",
        hash_on="header:X-User",
        hash_algorithm="maglev",
        connect_timeout=0.5,
        read_timeout=5,
        idle_timeout=30,
        max_idle_per_key=0,
    )
    web(d).update(
        filters=["mod:Cls", {"use": "mod:Other", "args": {"a": 1, "b": "x", "c": ["y"]}}],
        forwarded={"forwarded": True, "x_forwarded_host": False},
        limits={"max_header_bytes": 1024, "max_headers": 10, "max_body_bytes": 0, "max_pipelined": 1},
        max_concurrency=100,
        request_timeout=2.5,
        backlog=16,
    )
    route(d).update(
        host="*.example.com",
        methods=["GET"],
        headers={"x-env": "prod"},
        strip_prefix=True,
        host_header="upstream",
        request_headers={"add": {"x-a": "1"}, "set": {"x-b": "2"}, "remove": ["x-c"]},
        response_headers={"remove": ["server"]},
        timeout=1,
    )
    route(d, 1).update(path_regex=r"^/v\d+/", prefix_rewrite=None)
    d["servers"]["other"] = {"listener": "[::1]:8080", "routes": [{"path_exact": "/health", "upstream": "app"}]}
    d["servers"]["port0a"] = {"listener": "127.0.0.1:0", "routes": [{"upstream": "app"}]}
    d["servers"]["port0b"] = {"listener": "127.0.0.1:0", "routes": [{"upstream": "app"}]}
    cfg = parse_config(d)
    assert cfg.upstreams["app"].hash_on == "header:X-User"
    assert set(cfg.servers) == {"web", "other", "port0a", "port0b"}


@pytest.mark.parametrize("hash_on", ["client_ip", "header:X-User", "header:x_y.z", "cookie:session"])
def test_consistent_hash_accepted_keys(hash_on: str) -> None:
    d = base()
    app(d).update(load_balancer="consistent_hash", hash_on=hash_on)
    assert parse_config(d).upstreams["app"].hash_on == hash_on


def test_hash_on_is_only_checked_for_consistent_hash() -> None:
    d = base()
    app(d)["hash_on"] = "whatever"
    parse_config(d)


# --- unknown keys at every level ----------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "path", "key"),
    [
        (lambda d: d.update(bogus=1), "", "bogus"),
        (lambda d: d.update(runtime={"wrokers": 1}), "runtime", "wrokers"),
        (lambda d: d.update(log={"levle": "info"}), "log", "levle"),
        (lambda d: web(d).update(listner="x"), "servers.web", "listner"),
        (lambda d: route(d, 1).update(pth="/"), "servers.web.routes[1]", "pth"),
        (lambda d: route(d).update(request_headers={"ad": {}}), "servers.web.routes[0].request_headers", "ad"),
        (lambda d: web(d).update(limits={"max_hedaers": 1}), "servers.web.limits", "max_hedaers"),
        (lambda d: web(d).update(forwarded={"xff": True}), "servers.web.forwarded", "xff"),
        (lambda d: web(d).update(filters=[{"use": "a:B", "arg": {}}]), "servers.web.filters[0]", "arg"),
        (lambda d: app(d).update(timeout=1), "upstreams.app", "timeout"),
        (lambda d: app(d)["endpoints"][1].update(wieght=2), "upstreams.app.endpoints[1]", "wieght"),
        (
            lambda d: app(d)["endpoints"][0].update(endpoint={"type": "uri", "value": "http://a:1", "x": 1}),
            "upstreams.app.endpoints[0].endpoint",
            "x",
        ),
        (
            lambda d: web(d).update(listener={"type": "socket", "value": "127.0.0.1:1", "port": 1}),
            "servers.web.listener",
            "port",
        ),
    ],
)
def test_unknown_keys_are_named(mutate: Callable[[Doc], Any], path: str, key: str) -> None:
    exc = config_error(mutate)
    assert exc.path == path
    assert "unknown field" in exc.reason and f"`{key}`" in exc.reason


def test_error_message_is_path_then_reason() -> None:
    exc = config_error(lambda d: route(d, 1).update(pth="/"))
    assert str(exc) == f"servers.web.routes[1]: {exc.reason}"


# --- wrong types --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda d: d.update(runtime={"workers": "4"}), "runtime.workers", "Expected `int`, got `str`"),
        (lambda d: d.update(runtime={"loop": "trio"}), "runtime.loop", "trio"),
        (lambda d: d.update(runtime=[]), "runtime", "Expected `object`"),
        (lambda d: d.update(log={"level": "loud"}), "log.level", "loud"),
        (lambda d: web(d).update(listener=8080), "servers.web.listener", "Expected"),
        (lambda d: web(d).update(routes={"upstream": "app"}), "servers.web.routes", "Expected `array`"),
        (lambda d: route(d).update(path=5), "servers.web.routes[0].path", "got `int`"),
        (lambda d: route(d, 1).update(methods="GET"), "servers.web.routes[1].methods", "Expected `array | null`"),
        (lambda d: route(d).update(strip_prefix="yes"), "servers.web.routes[0].strip_prefix", "Expected `bool`"),
        (lambda d: route(d).update(load_balancer="fastest"), "servers.web.routes[0].load_balancer", "fastest"),
        (lambda d: web(d).update(limits={"max_headers": "10"}), "servers.web.limits.max_headers", "got `str`"),
        (lambda d: web(d).update(max_concurrency=1.5), "servers.web.max_concurrency", "Expected"),
        (lambda d: web(d).update(proxy_type="udp"), "servers.web.proxy_type", "udp"),
        (
            lambda d: web(d).update(listener={"type": "tcp", "value": "127.0.0.1:1"}),
            "servers.web.listener.type",
            "'tcp'",
        ),
        (
            lambda d: app(d)["endpoints"][0].update(endpoint={"type": "url", "value": "http://a:1"}),
            "upstreams.app.endpoints[0].endpoint.type",
            "'url'",
        ),
        (lambda d: app(d).update(connect_timeout="3s"), "upstreams.app.connect_timeout", "got `str`"),
        (lambda d: app(d).update(endpoints="127.0.0.1:1"), "upstreams.app.endpoints", "Expected `array`"),
        (lambda d: app(d)["endpoints"][0].update(weight="2"), "upstreams.app.endpoints[0].weight", "got `str`"),
        (lambda d: app(d)["endpoints"][0].update(endpoint=9000), "upstreams.app.endpoints[0].endpoint", "Expected"),
        (lambda d: d.update(upstreams={"x": 1}), "upstreams.x", "Expected `object`"),
        (lambda d: d.update(servers=[]), "servers", "expected a table"),
        (lambda d: d.update(upstreams=[1]), "upstreams", "expected a table"),
    ],
)
def test_wrong_types_are_named(mutate: Callable[[Doc], Any], path: str, fragment: str) -> None:
    exc = config_error(mutate)
    assert exc.path == path
    assert fragment in exc.reason


# --- servers and listeners ----------------------------------------------------------


def test_missing_listener() -> None:
    exc = config_error(lambda d: web(d).pop("listener"))
    assert exc.path == "servers.web"
    assert "missing required field `listener`" in exc.reason


@pytest.mark.parametrize(
    ("listener", "fragment"),
    [
        ("8080", "has no port"),
        ("127.0.0.1", "has no port"),
        ("127.0.0.1:", "invalid port"),
        ("127.0.0.1:http", "invalid port"),
        ("127.0.0.1:65536", "invalid port"),
        (":8080", "has no host"),
        ("example.com:80", "must be an IP address or localhost"),
        ("[::1]", "[v6addr]:port"),
        ("unix:", "needs a path"),
        ({"type": "socket", "value": ""}, "has no port"),
        ({"type": "unix", "value": ""}, "needs a path"),
    ],
)
def test_bad_listener(listener: Any, fragment: str) -> None:
    exc = config_error(lambda d: web(d).update(listener=listener))
    assert exc.path == "servers.web.listener"
    assert fragment in exc.reason


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("127.0.0.1:8080", {"type": "socket", "value": "127.0.0.1:8080"}),
        ("[::1]:80", "[::1]:80"),
        ("unix:/tmp/x.sock", {"type": "unix", "value": "/tmp/x.sock"}),
    ],
)
def test_duplicate_listener_address(first: Any, second: Any) -> None:
    def mutate(d: Doc) -> None:
        web(d)["listener"] = first
        d["servers"]["api"] = {"listener": second, "routes": [{"upstream": "app"}]}

    exc = config_error(mutate)
    assert exc.path == "servers.api.listener"
    assert "already used by servers.web" in exc.reason


def test_port_zero_may_repeat() -> None:
    d = base()
    web(d)["listener"] = "127.0.0.1:0"
    d["servers"]["api"] = {"listener": "127.0.0.1:0", "routes": [{"upstream": "app"}]}
    parse_config(d)


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda d: d.update(servers={}), "servers", "no servers"),
        (lambda d: d.pop("servers"), "servers", "no servers"),
        (lambda d: web(d).update(routes=[]), "servers.web.routes", "at least one route"),
        (lambda d: web(d).pop("routes"), "servers.web.routes", "at least one route"),
        (lambda d: web(d).update(max_concurrency=0), "servers.web.max_concurrency", ">= 1"),
        (lambda d: web(d).update(limits={"max_headers": 0}), "servers.web.limits.max_headers", ">= 1"),
        (lambda d: web(d).update(limits={"max_header_bytes": 0}), "servers.web.limits.max_header_bytes", ">= 1"),
        (lambda d: web(d).update(limits={"max_pipelined": 0}), "servers.web.limits.max_pipelined", ">= 1"),
        (lambda d: web(d).update(limits={"max_body_bytes": -1}), "servers.web.limits.max_body_bytes", ">= 0"),
        (lambda d: web(d).update(filters=["nocolon"]), "servers.web.filters[0]", "module:Class"),
        (lambda d: web(d).update(filters=["a:b", "a:b:c"]), "servers.web.filters[1]", "module:Class"),
        (lambda d: web(d).update(filters=[{"use": ":X"}]), "servers.web.filters[0]", "module:Class"),
        (lambda d: d.update(runtime={"workers": -1}), "runtime.workers", ">= 0"),
        (lambda d: d.update(runtime={"drain_timeout": -0.5}), "runtime.drain_timeout", ">= 0"),
    ],
)
def test_server_and_runtime_values(mutate: Callable[[Doc], Any], path: str, fragment: str) -> None:
    exc = config_error(mutate)
    assert exc.path == path
    assert fragment in exc.reason


@pytest.mark.parametrize(
    ("key", "value"),
    [("keepalive_timeout", -1), ("header_timeout", -1), ("request_timeout", -1), ("request_timeout", 0)],
)
def test_negative_server_timeouts(key: str, value: float) -> None:
    exc = config_error(lambda d: web(d).update({key: value}))
    assert exc.path == f"servers.web.{key}"


# --- routes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda d: route(d).update(upstream="nope"), "servers.web.routes[0].upstream", "unknown cluster 'nope'"),
        (lambda d: d.pop("upstreams"), "servers.web.routes[0].upstream", "none defined"),
        (
            lambda d: route(d).update(upstreams=[{"endpoint": "127.0.0.1:1"}]),
            "servers.web.routes[0]",
            "not both",
        ),
        (lambda d: route(d, 1).pop("upstream"), "servers.web.routes[1]", "needs 'upstream'"),
        (lambda d: inline(d, upstreams=[]), "servers.web.routes[0].upstreams", "at least one endpoint"),
        (
            lambda d: route(d, 1).update(path_regex="(("),
            "servers.web.routes[1].path_regex",
            "invalid regular expression",
        ),
        (
            lambda d: route(d, 1).update(path_regex="[a-"),
            "servers.web.routes[1].path_regex",
            "invalid regular expression",
        ),
        (lambda d: route(d).update(host="a.*.com"), "servers.web.routes[0].host", "'*.suffix'"),
        (lambda d: route(d).update(host="*.*.com"), "servers.web.routes[0].host", "'*.suffix'"),
        (lambda d: route(d).update(host="*example.com"), "servers.web.routes[0].host", "'*.suffix'"),
        (lambda d: route(d).update(host=""), "servers.web.routes[0].host", "'*.suffix'"),
        (lambda d: route(d).update(path_exact="/x"), "servers.web.routes[0]", "only one of path, path_exact"),
        (lambda d: route(d, 1).update(path_exact="/x", path_regex="x"), "servers.web.routes[1]", "only one of"),
        (lambda d: route(d, 1).update(strip_prefix=True), "servers.web.routes[1]", "need a 'path' prefix"),
        (lambda d: route(d, 1).update(prefix_rewrite="/v2"), "servers.web.routes[1]", "need a 'path' prefix"),
        (
            lambda d: route(d, 1).update(path_exact="/x", strip_prefix=True),
            "servers.web.routes[1]",
            "need a 'path' prefix",
        ),
        (lambda d: route(d).update(path="api"), "servers.web.routes[0].path", "must start with '/'"),
        (lambda d: route(d, 1).update(path_exact="x"), "servers.web.routes[1].path_exact", "must start with '/'"),
        (lambda d: route(d).update(timeout=0), "servers.web.routes[0].timeout", "> 0"),
        (lambda d: route(d).update(timeout=-1), "servers.web.routes[0].timeout", "> 0"),
        (
            lambda d: inline(d, load_balancer="consistent_hash", hash_on="ip"),
            "servers.web.routes[0].hash_on",
            "client_ip, header:NAME or cookie:NAME",
        ),
        (
            lambda d: inline(d, upstreams=[{"endpoint": "127.0.0.1:1"}, {"endpoint": "nohost"}]),
            "servers.web.routes[0].upstreams[1]",
            "has no port",
        ),
    ],
)
def test_route_errors(mutate: Callable[[Doc], Any], path: str, fragment: str) -> None:
    exc = config_error(mutate)
    assert exc.path == path
    assert fragment in exc.reason


def test_first_bad_route_is_reported() -> None:
    def mutate(d: Doc) -> None:
        route(d, 1)["upstream"] = "missing1"
        web(d)["routes"].append({"upstream": "missing2"})

    assert config_error(mutate).path == "servers.web.routes[1].upstream"


# --- clusters and endpoints ---------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "fragment"),
    [
        ("127.0.0.1", "has no port"),
        ("example.com", "has no port"),
        ("wss://example.com", "scheme 'wss' is not supported"),
        ("ftp://a:21", "scheme 'ftp'"),
        ("http://a:1/path", "must not carry a path"),
        ("http://a/path/", "must not carry a path"),
        ("a:0", "port 0"),
        ("a:99999", "invalid port"),
        ("a:-1", "invalid port"),
        ("http://:80", "has no host"),
        ("[::1]", "[v6addr]:port"),
        ("unix:", "needs a path"),
        ({"type": "uri", "value": "gopher://a:1"}, "scheme 'gopher'"),
        ({"type": "socket", "value": "a"}, "has no port"),
    ],
)
def test_bad_endpoint_spellings(endpoint: Any, fragment: str) -> None:
    exc = config_error(lambda d: app(d)["endpoints"][1].update(endpoint=endpoint))
    assert exc.path == "upstreams.app.endpoints[1]"
    assert fragment in exc.reason


@pytest.mark.parametrize(
    "endpoint",
    [
        pytest.param({"type": "unix", "value": ""}, id="empty-unix-table"),  # becomes a TCP endpoint ':0'
        pytest.param("http://user@a:1", id="userinfo"),
        pytest.param(" a:1", id="leading-space"),
    ],
)
def test_more_bad_endpoint_spellings(endpoint: Any) -> None:
    exc = config_error(lambda d: app(d)["endpoints"][1].update(endpoint=endpoint))
    assert exc.path == "upstreams.app.endpoints[1]"


@pytest.mark.parametrize("weight", [0, -3])
def test_endpoint_weight_must_be_positive(weight: int) -> None:
    exc = config_error(lambda d: app(d)["endpoints"][0].update(weight=weight))
    assert exc.path == "upstreams.app.endpoints[0]"
    assert "weight must be >= 1" in exc.reason


def test_inline_endpoint_weight_zero() -> None:
    exc = config_error(lambda d: inline(d, upstreams=[{"endpoint": "127.0.0.1:1", "weight": 0}]))
    assert exc.path == "servers.web.routes[0].upstreams[0]"
    assert "weight" in exc.reason


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda d: app(d).update(endpoints=[]), "upstreams.app.endpoints", "at least one endpoint"),
        (lambda d: app(d).pop("endpoints"), "upstreams.app.endpoints", "at least one endpoint"),
        (
            lambda d: app(d).update(load_balancer="consistent_hash", hash_on="bogus"),
            "upstreams.app.hash_on",
            "client_ip, header:NAME or cookie:NAME",
        ),
        (
            lambda d: app(d).update(load_balancer="consistent_hash", hash_on="header:"),
            "upstreams.app.hash_on",
            "header:NAME",
        ),
        (
            lambda d: app(d).update(load_balancer="consistent_hash", hash_on="header:a b"),
            "upstreams.app.hash_on",
            "header:NAME",
        ),
        (
            lambda d: app(d).update(load_balancer="consistent_hash", hash_on="cookie:a=b"),
            "upstreams.app.hash_on",
            "cookie:NAME",
        ),
        (lambda d: app(d).update(hash_algorithm="jump"), "upstreams.app.hash_algorithm", "jump"),
        (lambda d: app(d).update(connect_timeout=-1), "upstreams.app.connect_timeout", "> 0"),
        (lambda d: app(d).update(connect_timeout=0), "upstreams.app.connect_timeout", "> 0"),
        (lambda d: app(d).update(read_timeout=-0.1), "upstreams.app.read_timeout", "> 0"),
        (lambda d: app(d).update(idle_timeout=-5), "upstreams.app.idle_timeout", "> 0"),
        (lambda d: app(d).update(max_idle_per_key=-1), "upstreams.app.max_idle_per_key", ">= 0"),
    ],
)
def test_cluster_errors(mutate: Callable[[Doc], Any], path: str, fragment: str) -> None:
    exc = config_error(mutate)
    assert exc.path == path
    assert fragment in exc.reason


def test_unused_cluster_is_still_validated() -> None:
    exc = config_error(lambda d: d["upstreams"].update(spare={"endpoints": [{"endpoint": "nope"}]}))
    assert exc.path == "upstreams.spare.endpoints[0]"


def test_parse_config_does_not_mutate_its_input() -> None:
    d = base()
    snapshot = copy.deepcopy(d)
    parse_config(d)
    assert d == snapshot


# --- files --------------------------------------------------------------------------

GOOD_TOML = """
[servers.web]
listener = "127.0.0.1:8080"

[[servers.web.routes]]
path = "/"
upstream = "app"

[upstreams.app]
endpoints = [{ endpoint = "http://127.0.0.1:9000" }]
"""


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    p = tmp_path / "good.toml"
    p.write_text(GOOD_TOML)
    cfg = load_config(p)
    assert list(cfg.servers) == ["web"]
    assert load_config(str(p)) == cfg


def test_invalid_toml(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[servers.web\nlistener = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.path == ""
    assert "is not valid TOML" in info.value.reason
    assert str(p) in info.value.reason


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.path == ""
    assert "cannot read" in info.value.reason and "No such file" in info.value.reason


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert "cannot read" in info.value.reason


def test_path_through_a_file_is_unreadable(tmp_path: Path) -> None:
    p = tmp_path / "file.toml"
    p.write_text(GOOD_TOML)
    with pytest.raises(ConfigError) as info:
        load_config(p / "inner.toml")
    assert "cannot read" in info.value.reason and "Not a directory" in info.value.reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of mode")
def test_unreadable_file(tmp_path: Path) -> None:
    p = tmp_path / "secret.toml"
    p.write_text(GOOD_TOML)
    p.chmod(0)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert "cannot read" in info.value.reason and "Permission denied" in info.value.reason


def test_file_errors_carry_key_paths_too(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(GOOD_TOML.replace('upstream = "app"', 'upstream = "ap"'))
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.path == "servers.web.routes[0].upstream"
    assert "unknown cluster 'ap' (known: app)" in info.value.reason


# -- discovery (issue 15) -----------------------------------------------------------


def _disc(discovery: dict[str, Any], **cluster: Any) -> dict[str, Any]:
    return {
        "upstreams": {"api": {"discovery": discovery, **cluster}},
        "servers": {"web": {"listener": "127.0.0.1:0", "routes": [{"path": "/", "upstream": "api"}]}},
    }


@pytest.mark.parametrize(
    ("raw", "path", "fragment"),
    [
        (_disc({"kind": "dns"}), "upstreams.api.discovery.name", 'kind "dns" needs it'),
        (_disc({"kind": "dns", "name": "a.test"}), "upstreams.api.discovery.port", "needs the endpoints' port"),
        (
            _disc({"kind": "dns", "name": "a", "port": 80, "nameservers": ["dns.test"]}),
            "upstreams.api.discovery.nameservers[0]",
            '"ip" or "ip:port"',
        ),
        (
            _disc({"kind": "dns", "name": "a", "port": 80, "min_interval": 5, "max_interval": 1}),
            "upstreams.api.discovery.min_interval",
            "must be <= max_interval",
        ),
        (_disc({"kind": "file"}), "upstreams.api.discovery.path", 'kind "file" needs it'),
        (_disc({"kind": "etcd", "prefix": "/x/"}), "upstreams.api.discovery.endpoints", 'kind "etcd" needs it'),
        (
            _disc({"kind": "etcd", "prefix": "/x/", "endpoints": ["127.0.0.1:2379"]}),
            "upstreams.api.discovery.endpoints[0]",
            "http://host:port",
        ),
        (
            _disc({"kind": "etcd", "prefix": "/x/", "endpoints": ["http://e:2379"], "username": "u"}),
            "upstreams.api.discovery.username",
            "go together",
        ),
        (_disc({"kind": "admin"}), "upstreams.api.endpoints", "at least one endpoint"),
        (_disc({"kind": "consul"}), "upstreams.api.discovery.kind", "consul"),
    ],
)
def test_discovery_errors(raw: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    errors = getattr(info.value, "errors", [info.value])
    assert any(e.path == path and fragment in e.reason for e in errors), str(info.value)


def test_discovery_clusters_need_no_endpoints_and_tcp_servers_follow_them() -> None:
    cfg = parse_config(_disc({"kind": "dns", "name": "api.test", "port": 80, "nameservers": ["127.0.0.1:5353"]}))
    assert cfg.upstreams["api"].endpoints == [] and cfg.upstreams["api"].discovery is not None
    raw = _disc({"kind": "file", "path": "eps.json"})
    raw["servers"]["l4"] = {"listener": "127.0.0.1:0", "proxy_type": "tcp", "upstream": "api"}
    assert parse_config(raw).servers["l4"].upstream == "api"  # the tcp server follows the discovered set
    raw = _disc({"kind": "file", "path": "eps.json"})
    raw["admin"] = {"ready_upstreams": ["nope"]}
    with pytest.raises(ConfigError, match=r"admin.ready_upstreams\[0\]"):
        parse_config(raw)
