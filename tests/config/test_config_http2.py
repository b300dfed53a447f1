"""The ``[servers.NAME.http2]`` table: defaults, bounds, and "h2" in a listener's ALPN."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from monolake.config import parse_config
from monolake.errors import ConfigError

BASE = """
[upstreams.app]
endpoints = [{ endpoint = "http://127.0.0.1:9000" }]

[servers.web]
listener = "127.0.0.1:0"

[[servers.web.routes]]
path = "/"
upstream = "app"
"""


def doc() -> dict[str, Any]:
    return tomllib.loads(BASE)


def test_defaults_enable_http2_with_bounded_limits() -> None:
    h = parse_config(doc()).servers["web"].http2
    assert h.enabled
    assert h.max_concurrent_streams == 128
    assert h.initial_window_size == 262144
    assert h.max_frame_size == 16384
    assert h.max_header_list_size == 65536
    assert h.max_resets_per_10s == 500
    assert (h.max_buffered_bytes, h.max_worker_buffered_bytes, h.send_timeout) == (4194304, 268435456, 60.0)


def test_values_are_read() -> None:
    d = doc()
    d["servers"]["web"]["http2"] = {"enabled": False, "max_concurrent_streams": 8, "max_resets_per_10s": 20}
    h = parse_config(d).servers["web"].http2
    assert (h.enabled, h.max_concurrent_streams, h.max_resets_per_10s) == (False, 8, 20)


@pytest.mark.parametrize(
    ("table", "path", "words"),
    [
        ({"max_concurrent_streams": 0}, "servers.web.http2.max_concurrent_streams", ">= 1"),
        ({"max_header_list_size": 0}, "servers.web.http2.max_header_list_size", ">= 1"),
        ({"max_resets_per_10s": 0}, "servers.web.http2.max_resets_per_10s", ">= 1"),
        ({"initial_window_size": 2**31}, "servers.web.http2.initial_window_size", "2147483647"),
        ({"max_frame_size": 1024}, "servers.web.http2.max_frame_size", "16384"),
        ({"max_buffered_bytes": 1000}, "servers.web.http2.max_buffered_bytes", ">= 16384"),
        ({"max_worker_buffered_bytes": 0}, "servers.web.http2.max_worker_buffered_bytes", ">= 16384"),
        ({"send_timeout": 0}, "servers.web.http2.send_timeout", "> 0 seconds"),
        ({"colour": "red"}, "servers.web.http2", "unknown field `colour`"),
        ({"enabled": "yes"}, "servers.web.http2.enabled", "Expected `bool`"),
    ],
)
def test_bad_values_name_the_key_path(table: dict[str, Any], path: str, words: str) -> None:
    d = doc()
    d["servers"]["web"]["http2"] = table
    with pytest.raises(ConfigError) as info:
        parse_config(d)
    assert info.value.path == path
    assert words in str(info.value)
