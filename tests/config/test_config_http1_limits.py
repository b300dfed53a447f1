"""Config of the HTTP/1.1 hardening (issue 17): body_timeout and limits.max_request_line_bytes."""

from __future__ import annotations

from typing import Any

import pytest

from monolake.config import parse_config
from monolake.errors import ConfigError


def doc(**server: Any) -> dict[str, Any]:
    return {
        "servers": {"web": {"listener": "127.0.0.1:8080", "routes": [{"upstream": "app"}], **server}},
        "upstreams": {"app": {"endpoints": [{"endpoint": "127.0.0.1:9000"}]}},
    }


def test_defaults() -> None:
    s = parse_config(doc()).servers["web"]
    assert s.limits.max_request_line_bytes == 8192
    assert s.body_timeout == 60.0
    assert s.header_timeout == 60.0


def test_values_are_read() -> None:
    s = parse_config(doc(body_timeout=2.5, limits={"max_request_line_bytes": 1024})).servers["web"]
    assert (s.body_timeout, s.limits.max_request_line_bytes) == (2.5, 1024)


@pytest.mark.parametrize(
    ("server", "path"),
    [
        ({"body_timeout": 0}, "servers.web.body_timeout"),
        ({"body_timeout": -1}, "servers.web.body_timeout"),
        ({"limits": {"max_request_line_bytes": 0}}, "servers.web.limits.max_request_line_bytes"),
    ],
)
def test_bad_values_name_their_key(server: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc(**server))
    assert info.value.path == path
