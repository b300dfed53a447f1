"""Route ``connect`` (CONNECT tunnelling): defaults, tables, and errors that name the key path."""

from __future__ import annotations

import tomllib

import pytest

from monolake.apps.config import parse_config
from monolake.apps.config._schema import Connect
from monolake.core.errors import ConfigError

BASE = """
[servers.fwd]
listener = "127.0.0.1:0"

[[servers.fwd.routes]]
{route}
"""


def load(route: str) -> object:
    return parse_config(tomllib.loads(BASE.format(route=route))).servers["fwd"].routes[0].connect


def test_off_by_default_and_a_route_then_needs_an_upstream() -> None:
    with pytest.raises(ConfigError) as info:
        load('path = "/"')
    assert str(info.value).startswith("servers.fwd.routes[0]: a route needs 'upstream'")
    assert load('upstreams = [{ endpoint = "127.0.0.1:1" }]') is False


def test_true_means_the_defaults_and_needs_no_upstream() -> None:
    assert load("connect = true") is True
    assert Connect() == Connect(ports=[443], connect_timeout=10.0)


def test_table() -> None:
    got = load("connect = { ports = [443, 8443], connect_timeout = 2 }")
    assert got == Connect(ports=[443, 8443], connect_timeout=2)


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("connect = { ports = [443, 70000] }", "servers.fwd.routes[0].connect.ports[1]: not a TCP port: 70000"),
        ("connect = { connect_timeout = 0 }", "servers.fwd.routes[0].connect.connect_timeout: must be > 0"),
        ("connect = { port = [443] }", "servers.fwd.routes[0].connect: Object contains unknown field `port`"),
        ('connect = "yes"', "servers.fwd.routes[0].connect"),
    ],
)
def test_errors_name_the_key_path(route: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(route)
    assert str(info.value).startswith(message)


def test_thrift_routes_refuse_it() -> None:
    text = """
[servers.t]
listener = "127.0.0.1:0"
proxy_type = "thrift"

[[servers.t.routes]]
upstreams = [{ endpoint = "127.0.0.1:1" }]
connect = true
"""
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(text))
    assert str(info.value).startswith("servers.t.routes[0].connect: an HTTP route key")
