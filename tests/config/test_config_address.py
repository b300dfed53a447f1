"""Listener and endpoint spellings, parsed once into ListenAddress / Endpoint."""

from __future__ import annotations

import dataclasses
import pickle
from types import SimpleNamespace

import pytest

from monolake.apps.config import Endpoint, ListenAddress, parse_endpoint, parse_listener
from monolake.apps.config._schema import EndpointSpec, ListenerSpec

# --- listeners ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "addr", "text"),
    [
        ("127.0.0.1:8080", ListenAddress(host="127.0.0.1", port=8080), "127.0.0.1:8080"),
        ("0.0.0.0:0", ListenAddress(host="0.0.0.0", port=0), "0.0.0.0:0"),
        ("localhost:80", ListenAddress(host="localhost", port=80), "localhost:80"),
        ("[::1]:8443", ListenAddress(host="::1", port=8443), "[::1]:8443"),
        ("[::]:80", ListenAddress(host="::", port=80), "[::]:80"),
        ("unix:/tmp/m.sock", ListenAddress(path="/tmp/m.sock"), "unix:/tmp/m.sock"),
        (ListenerSpec(type="socket", value="10.0.0.1:1"), ListenAddress(host="10.0.0.1", port=1), "10.0.0.1:1"),
        (ListenerSpec(value="unix:/run/a"), ListenAddress(path="/run/a"), "unix:/run/a"),
        (ListenerSpec(type="unix", value="/run/b"), ListenAddress(path="/run/b"), "unix:/run/b"),
    ],
)
def test_parse_listener(spec: str | ListenerSpec, addr: ListenAddress, text: str) -> None:
    got = parse_listener(spec)
    assert got == addr
    assert str(got) == text
    assert got.is_unix is bool(addr.path)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "has no port"),
        ("127.0.0.1", "has no port"),
        ("127.0.0.1:", "invalid port"),
        ("127.0.0.1:-1", "invalid port"),
        ("127.0.0.1:65536", "invalid port"),
        (":80", "has no host"),
        ("[::1]", "must look like [v6addr]:port"),
        ("[::1]80", "must look like [v6addr]:port"),
        ("host.example:80", "must be an IP address or localhost"),
        ("999.1.1.1:80", "must be an IP address or localhost"),
        ("unix:", "needs a path"),
        (ListenerSpec(type="unix", value=""), "needs a path"),
    ],
)
def test_bad_listener(spec: str | ListenerSpec, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_listener(spec)
    assert fragment in str(info.value)


# --- endpoints ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "ep"),
    [
        ("127.0.0.1:9000", Endpoint(host="127.0.0.1", port=9000)),
        ("backend.internal:8080", Endpoint(host="backend.internal", port=8080)),
        ("http://example.com", Endpoint(host="example.com", port=80)),
        ("http://example.com/", Endpoint(host="example.com", port=80)),
        ("http://example.com:8080", Endpoint(host="example.com", port=8080)),
        ("http://[::1]", Endpoint(host="::1", port=80)),
        ("http://[::1]:81/", Endpoint(host="::1", port=81)),
        ("[2001:db8::1]:9000", Endpoint(host="2001:db8::1", port=9000)),
        ("unix:/run/app.sock", Endpoint(path="/run/app.sock")),
        (EndpointSpec(type="uri", value="http://10.0.0.1:7"), Endpoint(host="10.0.0.1", port=7)),
        (EndpointSpec(type="socket", value="10.0.0.1:7"), Endpoint(host="10.0.0.1", port=7)),
        (EndpointSpec(type="unix", value="/run/x"), Endpoint(path="/run/x")),
    ],
)
def test_parse_endpoint(spec: str | EndpointSpec, ep: Endpoint) -> None:
    assert parse_endpoint(spec) == ep


def test_endpoint_weight() -> None:
    assert parse_endpoint("a:1", 5).weight == 5
    assert parse_endpoint(EndpointSpec(type="unix", value="/s"), 3).weight == 3
    with pytest.raises(ValueError, match="weight must be >= 1, got 0"):
        parse_endpoint("a:1", 0)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("a", "has no port"),
        ("a:0", "port 0"),
        ("a:70000", "invalid port"),
        ("ftp://a:21", "scheme 'ftp' is not supported"),
        ("http://a:1/x", "must not carry a path"),
        ("http://", "has no host"),
        ("unix:", "needs a path"),
        ("[::1]", "[v6addr]:port"),
    ],
)
def test_bad_endpoint(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_endpoint(spec)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("ep", "authority", "text"),
    [
        (Endpoint(host="a", port=80), "a", "a:80"),
        (Endpoint(host="a", port=8080), "a:8080", "a:8080"),
        (Endpoint(scheme="https", host="a", port=443), "a", "a:443"),
        (Endpoint(scheme="https", host="a", port=80), "a:80", "a:80"),
        (Endpoint(host="::1", port=80), "[::1]", "::1:80"),
        (Endpoint(host="::1", port=9000), "[::1]:9000", "::1:9000"),
        (Endpoint(path="/run/s"), "localhost", "unix:/run/s"),
    ],
)
def test_endpoint_authority_and_str(ep: Endpoint, authority: str, text: str) -> None:
    assert ep.authority == authority
    assert str(ep) == text


def test_endpoint_key_ignores_weight() -> None:
    a = parse_endpoint("http://a:1", 1)
    b = parse_endpoint("a:1", 9)
    assert a.key == b.key == ("http", "a", 1, "")
    assert parse_endpoint("unix:/s").key == ("http", "", 0, "/s")
    assert {a.key, b.key, parse_endpoint("a:2").key} == {("http", "a", 1, ""), ("http", "a", 2, "")}


def test_endpoint_key_is_made_again_by_replace_and_stays_out_of_eq_and_repr() -> None:
    # The key is computed once at construction: a copy with TLS settings gets its own.
    tls = SimpleNamespace(fingerprint="f00d")
    plain = Endpoint(host="a", port=443)
    secure = dataclasses.replace(plain, scheme="https", tls=tls)
    assert plain.key == ("http", "a", 443, "")
    assert secure.key == ("https+f00d", "a", 443, "")
    assert pickle.loads(pickle.dumps(plain)).key == plain.key
    assert Endpoint(host="a", port=443) == plain and "key" not in repr(plain)
